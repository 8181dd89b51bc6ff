//! A store decorator that counts and traces every call the revocation state makes: one child
//! span per call (`store_span`), `store_queries_total{kind}`, `store_errors_total`, and for the
//! writes that revoke, `store_write_failures_total{why}` when one is not acknowledged (the
//! `TokenSidecarStoreWritesFailing` alert watches it).
use std::sync::Arc;

use async_trait::async_trait;
use tracing::Instrument;

use crate::clock::UnixMillis;
use crate::metrics::Metrics;
use crate::store::announcement::{FleetKey, Link};
use crate::store::{
    Audit, AuditLog, AuditQuery, AuditRecord, Backend, Change, ChangeSeq, CutoffRecord,
    CutoffUpdate, DenyEntry, DenyKind, DenySink, EventLedger, History, Maintenance, PurgeHorizon,
    Purged, RevocationLog, RevocationReads, RevocationStore, Rotation, RotationOutcome,
    SessionHeads, StoreError,
};

/// `inner`, counted and traced.
pub struct Instrumented {
    inner: Arc<dyn RevocationStore>,
    metrics: Arc<Metrics>,
}

impl Instrumented {
    /// Counts and traces `inner`'s calls into `metrics`.
    pub fn new(inner: Arc<dyn RevocationStore>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    /// The store without the counting (for callers whose calls are not the hot path's).
    pub fn inner(&self) -> &Arc<dyn RevocationStore> {
        &self.inner
    }

    /// One call: a child span of the request (or of the catch-up) while tracing is on.
    pub(crate) async fn query<T>(
        &self,
        kind: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = call.instrument(crate::spans::store_span(kind)).await;
        self.metrics.store.query(kind);
        if result.is_err() {
            self.metrics.store.error();
        }
        result
    }

    /// [`Instrumented::query`] for a write: one the store did not acknowledge is also counted
    /// by why.
    async fn write<T>(
        &self,
        kind: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = self.query(kind, call).await;
        if let Err(e) = &result {
            self.metrics.store.write_failed(e.write_failure());
        }
        result
    }
}

#[async_trait]
impl Backend for Instrumented {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn clock_us(&self) -> Result<Option<i64>, StoreError> {
        self.inner.clock_us().await
    }
    fn check_identity(&self) -> Result<(), StoreError> {
        self.inner.check_identity()
    }
    async fn why_unreachable(&self) -> Option<StoreError> {
        self.inner.why_unreachable().await
    }
}

#[async_trait]
impl RevocationLog for Instrumented {
    async fn raise_cutoff(
        &self,
        user_id: &str,
        at_least: UnixMillis,
        audit: &Audit,
    ) -> Result<CutoffUpdate, StoreError> {
        self.write(
            "raise_cutoff",
            self.inner.raise_cutoff(user_id, at_least, audit),
        )
        .await
    }
    async fn lift_ban(
        &self,
        user_id: &str,
        now: UnixMillis,
        only_owner: Option<&str>,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.write(
            "lift_ban",
            self.inner.lift_ban(user_id, now, only_owner, audit),
        )
        .await
    }
    async fn deny(
        &self,
        entry: &DenyEntry,
        audit: &Audit,
    ) -> Result<Option<ChangeSeq>, StoreError> {
        self.write("deny", self.inner.deny(entry, audit)).await
    }
    async fn changes_after(&self, after: ChangeSeq, limit: i64) -> Result<Vec<Change>, StoreError> {
        self.query("changes", self.inner.changes_after(after, limit))
            .await
    }
    async fn history(
        &self,
        at: ChangeSeq,
        own: &[ChangeSeq],
    ) -> Result<Option<History>, StoreError> {
        self.query("history", self.inner.history(at, own)).await
    }
    async fn history_and_changes(
        &self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        self.query(
            "changes",
            self.inner.history_and_changes(at, own, after, limit),
        )
        .await
    }
    fn last_written(&self) -> Option<Link> {
        self.inner.last_written()
    }
    async fn load_denylist(
        &self,
        now: UnixMillis,
        sink: &mut DenySink<'_>,
    ) -> Result<ChangeSeq, StoreError> {
        self.query("load", self.inner.load_denylist(now, sink))
            .await
    }
    async fn fleet(&self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        self.inner.fleet().await
    }
    fn forget_fleet(&self) {
        self.inner.forget_fleet()
    }
}

#[async_trait]
impl RevocationReads for Instrumented {
    async fn cutoff(&self, user_id: &str) -> Result<CutoffRecord, StoreError> {
        self.query("cutoff", self.inner.cutoff(user_id)).await
    }
    async fn cutoff_owner(&self, user_id: &str) -> Result<Option<String>, StoreError> {
        self.query("cutoff_owner", self.inner.cutoff_owner(user_id))
            .await
    }
    async fn is_denied(&self, kind: DenyKind, id: &str) -> Result<bool, StoreError> {
        self.query("denied", self.inner.is_denied(kind, id)).await
    }
}

#[async_trait]
impl AuditLog for Instrumented {
    async fn audit_trail(&self, query: AuditQuery<'_>) -> Result<Vec<AuditRecord>, StoreError> {
        self.query("audit_trail", self.inner.audit_trail(query))
            .await
    }
}

#[async_trait]
impl EventLedger for Instrumented {
    async fn remember_event(
        &self,
        source: &str,
        jti: &str,
        moot_after_ms: UnixMillis,
    ) -> Result<bool, StoreError> {
        self.write(
            "remember_event",
            self.inner.remember_event(source, jti, moot_after_ms),
        )
        .await
    }
    async fn event_seen(&self, source: &str, jti: &str) -> Result<bool, StoreError> {
        self.query("event_seen", self.inner.event_seen(source, jti))
            .await
    }
}

#[async_trait]
impl SessionHeads for Instrumented {
    async fn rotate_session(&self, rotation: &Rotation<'_>) -> Result<RotationOutcome, StoreError> {
        self.query("rotate_session", self.inner.rotate_session(rotation))
            .await
    }
}

#[async_trait]
impl Maintenance for Instrumented {
    async fn purge(&self, horizon: PurgeHorizon, round_ms: i64) -> Result<Purged, StoreError> {
        self.query("purge", self.inner.purge(horizon, round_ms))
            .await
    }
}
