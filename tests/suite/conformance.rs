//! The store conformance suite: one set of tests of what every backend of the store roles must
//! do alike — SPEC §4's write rules as the store keeps them, change numbering and the history
//! chain, write idempotence, audit rows, the purge horizons, snapshots, the event ledger and
//! session heads — run against every backend by one macro. A new backend is proven by adding
//! one line to `on_every_store!` (and how to open it to [`Store`]).
//!
//! The same rules end to end through gRPC (with tokens, and §2's worked example) are in
//! `rules.rs`; the pipeline's recheck after a lost COMMIT answer is tested in the core
//! (`store::pipeline`) with a backend that loses it, and on PostgreSQL in `faults.rs`.
use std::sync::Arc;

use token_sidecar::clock::UnixSeconds;
use token_sidecar::store::announcement::Link;
use token_sidecar::store::{
    self, Audit, AuditAction, AuditQuery, Change, DenyEntry, DenyKind, PoolSettings, PurgeHorizon,
    RevocationStore, Rotation, RotationOutcome, SessionHead,
};

use crate::common::{PgBouncer, fresh_postgres_database};

/// Each backend, one line each.
macro_rules! on_every_store {
    ($($name:ident),* $(,)?) => {
        on_every_store!(@backend memory, {}, $($name),*);
        on_every_store!(@backend sqlite, {}, $($name),*);
        on_every_store!(@backend postgres, { $crate::require!(Postgres); }, $($name),*);
        on_every_store!(@backend pgbouncer, { $crate::require!(Postgres, Pgbouncer); }, $($name),*);
    };
    (@backend $backend:ident, $needs:block, $($name:ident),*) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $name() {
                    $needs
                    let store = super::Store::$backend().await;
                    super::$name(&store).await
                }
            )*
        }
    };
}

on_every_store!(
    a_revoke_all_never_lowers_a_cutoff,
    a_ban_is_lifted_to_now_only_while_it_runs_and_only_by_its_owner_when_asked,
    a_denylist_row_is_stored_once,
    every_kind_of_denylist_row_is_stored_and_read_back_as_itself,
    changes_are_numbered_in_order_and_a_write_that_changes_nothing_leaves_no_gap,
    the_history_chain_links_every_change_to_the_one_before,
    every_change_writes_one_audit_row_and_a_no_op_none,
    the_purge_keeps_what_can_still_refuse_and_drops_what_cannot,
    a_snapshot_holds_the_live_rows_and_its_last_change,
    an_event_is_remembered_once,
    of_two_rotations_from_one_token_one_wins_and_the_other_learns_the_winner,
);

/// A backend under test, migrated, with whatever keeps it alive.
pub struct Store {
    store: Arc<dyn RevocationStore>,
    /// Whether the store keeps a history chain (a store other instances share does).
    chained: bool,
    _dir: Option<tempfile::TempDir>,
    _bouncer: Option<PgBouncer>,
}

impl Store {
    async fn opened(url: &str, settings: PoolSettings) -> Arc<dyn RevocationStore> {
        let store = store::open_with(url, settings).await.expect("open").store;
        store.migrate().await.expect("migrate");
        store
    }

    async fn memory() -> Self {
        Self {
            store: Self::opened("memory:", PoolSettings::default()).await,
            chained: true,
            _dir: None,
            _bouncer: None,
        }
    }

    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite:{}", dir.path().join("conformance.db").display());
        Self {
            store: Self::opened(&url, PoolSettings::default()).await,
            chained: false,
            _dir: Some(dir),
            _bouncer: None,
        }
    }

    async fn postgres() -> Self {
        let url = fresh_postgres_database().await;
        Self {
            store: Self::opened(&url, PoolSettings::default()).await,
            chained: true,
            _dir: None,
            _bouncer: None,
        }
    }

    /// PostgreSQL through a transaction-pooling PgBouncer: migrated first on a direct
    /// connection (a sidecar never migrates through a pooler), then used as a fleet behind one
    /// uses it (unnamed statements, no LISTEN).
    async fn pgbouncer() -> Self {
        let direct = fresh_postgres_database().await;
        Self::opened(&direct, PoolSettings::default()).await;
        let bouncer = PgBouncer::start(2).await;
        let settings = PoolSettings {
            transaction_pooler: true,
            listen: false,
            max_connections: 2,
            ..PoolSettings::default()
        };
        Self {
            store: Self::opened(&bouncer.url_for(&direct), settings).await,
            chained: true,
            _dir: None,
            _bouncer: Some(bouncer),
        }
    }
}

const T0: i64 = 1_800_000_000_000;

fn audit(action: AuditAction, who: &str) -> Audit {
    Audit {
        action,
        who: who.into(),
        why: Some("conformance".into()),
        at_ms: T0,
    }
}

fn deny_entry(kind: DenyKind, id: &str, moot_after_ms: i64) -> DenyEntry {
    DenyEntry {
        kind,
        id: id.into(),
        user_id: Some("alice".into()),
        moot_after_ms,
    }
}

async fn a_revoke_all_never_lowers_a_cutoff(s: &Store) {
    let store = &s.store;
    let revoke = audit(AuditAction::RevokeUser, "admin");
    let first = store
        .raise_cutoff("alice", T0 + 10, &revoke)
        .await
        .expect("raise");
    assert!(first.changed);
    assert_eq!(first.cutoff_ms, T0 + 10);
    let lower = store
        .raise_cutoff("alice", T0 + 5, &revoke)
        .await
        .expect("raise");
    assert!(!lower.changed, "rule 2: C := max(C, now)");
    assert_eq!((lower.cutoff_ms, lower.seq), (T0 + 10, first.seq));
    let higher = store
        .raise_cutoff("alice", T0 + 20, &revoke)
        .await
        .expect("raise");
    assert!(higher.changed);
    assert!(higher.seq > first.seq);
    let record = store.cutoff("alice").await.expect("cutoff");
    assert_eq!((record.cutoff_ms, record.seq), (Some(T0 + 20), higher.seq));
    assert_eq!(store.cutoff("bob").await.expect("cutoff").cutoff_ms, None);
}

async fn a_ban_is_lifted_to_now_only_while_it_runs_and_only_by_its_owner_when_asked(s: &Store) {
    let store = &s.store;
    let ban = audit(AuditAction::BanUser, "ssf:https://idp-a.example");
    let lift_a = audit(AuditAction::LiftBan, "ssf:https://idp-a.example");
    let lift_b = audit(AuditAction::LiftBan, "ssf:https://idp-b.example");
    store
        .raise_cutoff("alice", T0 + 60_000, &ban)
        .await
        .expect("ban");
    assert_eq!(
        store.cutoff_owner("alice").await.expect("owner").as_deref(),
        Some("ssf:https://idp-a.example")
    );
    let by_other = store
        .lift_ban("alice", T0, Some("ssf:https://idp-b.example"), &lift_b)
        .await
        .expect("lift");
    assert_eq!(by_other, None, "another transmitter's ban stays (SPEC §13)");
    let by_owner = store
        .lift_ban("alice", T0, Some("ssf:https://idp-a.example"), &lift_a)
        .await
        .expect("lift");
    assert!(by_owner.is_some());
    assert_eq!(
        store.cutoff("alice").await.expect("cutoff").cutoff_ms,
        Some(T0),
        "C := now"
    );
    let again = store
        .lift_ban("alice", T0, None, &lift_a)
        .await
        .expect("lift");
    assert_eq!(again, None, "no running ban to lift");
    let none = store
        .lift_ban("nobody", T0, None, &lift_a)
        .await
        .expect("lift");
    assert_eq!(none, None);
}

async fn a_denylist_row_is_stored_once(s: &Store) {
    let store = &s.store;
    let revoke = audit(AuditAction::RevokeSession, "loopback");
    let entry = deny_entry(DenyKind::Session, "c2Vzc2lvbi0xAAAAAAAAAA", T0 + 60_000);
    let first = store.deny(&entry, &revoke).await.expect("deny");
    assert!(first.is_some());
    assert_eq!(
        store.deny(&entry, &revoke).await.expect("deny"),
        None,
        "idempotent"
    );
    assert!(
        store
            .is_denied(DenyKind::Session, &entry.id)
            .await
            .expect("denied")
    );
    for kind in DenyKind::ALL {
        if kind != DenyKind::Session {
            assert!(
                !store.is_denied(kind, &entry.id).await.expect("denied"),
                "kinds do not mix: {kind:?}"
            );
        }
    }
}

/// The schema (its `kind` check) and the store's column mapping accept every kind the code
/// knows: `DenyKind::ALL` is the one list.
async fn every_kind_of_denylist_row_is_stored_and_read_back_as_itself(s: &Store) {
    let store = &s.store;
    let revoke = audit(AuditAction::RevokeSession, "admin");
    for (n, kind) in DenyKind::ALL.into_iter().enumerate() {
        let entry = deny_entry(kind, &format!("aWQtAAAAAAAAAAAAAAAAA{n}"), T0 + 60_000);
        assert!(
            store.deny(&entry, &revoke).await.expect("deny").is_some(),
            "{kind:?}"
        );
        assert!(
            store.is_denied(kind, &entry.id).await.expect("denied"),
            "{kind:?}"
        );
    }
    let kinds: Vec<DenyKind> = store
        .changes_after(0, 100)
        .await
        .expect("changes")
        .into_iter()
        .filter_map(|change| match change {
            Change::Denied { kind, .. } => Some(kind),
            Change::Cutoff { .. } => None,
        })
        .collect();
    assert_eq!(kinds, DenyKind::ALL, "read back as the kind written");
}

/// A mix of writes, some of which change nothing.
async fn mixed_writes(store: &Arc<dyn RevocationStore>) -> Vec<i64> {
    let revoke = audit(AuditAction::RevokeUser, "admin");
    let deny = audit(AuditAction::RevokeToken, "admin");
    let mut numbers = Vec::new();
    numbers.extend(
        store
            .raise_cutoff("alice", T0, &revoke)
            .await
            .expect("raise")
            .changed
            .then_some(1),
    );
    let entry = deny_entry(DenyKind::Token, "dG9rZW4tMQAAAAAAAAAAAA", T0 + 60_000);
    numbers.extend(store.deny(&entry, &deny).await.expect("deny"));
    // Nothing changes: no number is spent.
    store
        .raise_cutoff("alice", T0 - 1, &revoke)
        .await
        .expect("raise");
    store.deny(&entry, &deny).await.expect("deny");
    let idp = deny_entry(DenyKind::IdpSession, "idp-a:session-9", T0 + 60_000);
    numbers.extend(store.deny(&idp, &deny).await.expect("deny"));
    numbers.push(
        store
            .raise_cutoff("bob", T0 + 1, &revoke)
            .await
            .expect("raise")
            .seq,
    );
    numbers
}

async fn changes_are_numbered_in_order_and_a_write_that_changes_nothing_leaves_no_gap(s: &Store) {
    let store = &s.store;
    mixed_writes(store).await;
    let changes = store.changes_after(0, 100).await.expect("changes");
    let seqs: Vec<i64> = changes.iter().map(Change::seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "one sequence, no gaps: {changes:?}");
    assert!(
        matches!(&changes[0], Change::Cutoff { user_id, cutoff_ms, .. } if user_id == "alice" && *cutoff_ms == T0)
    );
    assert!(matches!(
        &changes[1],
        Change::Denied {
            kind: DenyKind::Token,
            ..
        }
    ));
    assert!(
        matches!(&changes[2], Change::Denied { kind: DenyKind::IdpSession, id, .. } if id == "idp-a:session-9")
    );
    let after = store.changes_after(2, 100).await.expect("changes");
    assert_eq!(
        after.iter().map(Change::seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(
        store.changes_after(1, 1).await.expect("changes").len(),
        1,
        "limit"
    );
    assert!(
        store
            .changes_after(4, 100)
            .await
            .expect("changes")
            .is_empty()
    );
}

async fn the_history_chain_links_every_change_to_the_one_before(s: &Store) {
    let store = &s.store;
    mixed_writes(store).await;
    let history = store.history(2, &[3, 4]).await.expect("history");
    let Some(history) = history else {
        assert!(!s.chained, "a store other instances share keeps a chain");
        return;
    };
    assert!(s.chained);
    assert_eq!(history.head, 4);
    let newest = history.newest.expect("a newest link");
    assert_eq!(newest.seq, 4);
    assert_eq!(
        store.last_written(),
        Some(newest),
        "the newest own write is known with its link"
    );
    let at = Link {
        seq: 2,
        tag: history.at.expect("a link at every change"),
    };
    assert_eq!(
        history.own_at.iter().map(|l| l.seq).collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert!(history.continues(4, Some(at), &history.own_at));
    let mut other = at;
    other.tag[0] ^= 1;
    assert!(
        !history.continues(4, Some(other), &[]),
        "another link at the anchor is another history"
    );
    assert!(
        !history.continues(5, None, &[]),
        "a head below the watermark is another history"
    );
    let links: Vec<_> = (1..=4)
        .map(|seq| async move {
            store
                .history(seq, &[])
                .await
                .expect("history")
                .and_then(|h| h.at)
        })
        .collect();
    let mut tags = Vec::new();
    for link in links {
        tags.push(link.await.expect("a link"));
    }
    tags.dedup();
    assert_eq!(tags.len(), 4, "each change has a link of its own");
}

async fn every_change_writes_one_audit_row_and_a_no_op_none(s: &Store) {
    let store = &s.store;
    mixed_writes(store).await;
    let all = store
        .audit_trail(AuditQuery {
            user_id: None,
            before: None,
            limit: 100,
        })
        .await
        .expect("audit");
    assert_eq!(
        all.len(),
        4,
        "one row per change, none for a write that changed nothing"
    );
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert_eq!(all[0].action, "REVOKE_USER");
    assert_eq!(all[0].user_id.as_deref(), Some("bob"));
    assert_eq!(all[0].until_ms, Some(T0 + 1));
    assert_eq!(all[0].who, "admin");
    assert_eq!(all[0].why.as_deref(), Some("conformance"));
    assert_eq!(all[2].target.as_deref(), Some("dG9rZW4tMQAAAAAAAAAAAA"));
    let alice = store
        .audit_trail(AuditQuery {
            user_id: Some("alice"),
            before: None,
            limit: 100,
        })
        .await
        .expect("audit");
    assert_eq!(alice.len(), 3, "by user");
    let page = store
        .audit_trail(AuditQuery {
            user_id: None,
            before: Some(all[1].id),
            limit: 2,
        })
        .await
        .expect("audit");
    assert_eq!(page, all[2..4].to_vec(), "paged by id");
}

async fn the_purge_keeps_what_can_still_refuse_and_drops_what_cannot(s: &Store) {
    let store = &s.store;
    let deny = audit(AuditAction::RevokeToken, "admin");
    let revoke = audit(AuditAction::RevokeUser, "admin");
    let old = deny_entry(DenyKind::Token, "b2xkAAAAAAAAAAAAAAAAAA", T0 + 1_000);
    let live = deny_entry(DenyKind::Token, "bGl2ZQAAAAAAAAAAAAAAAA", T0 + 100_000);
    store.deny(&old, &deny).await.expect("deny");
    store.deny(&live, &deny).await.expect("deny");
    store
        .raise_cutoff("old-user", T0 - 10_000, &revoke)
        .await
        .expect("raise");
    store
        .raise_cutoff("new-user", T0 + 10_000, &revoke)
        .await
        .expect("raise");
    let horizon = PurgeHorizon {
        moot_before: T0 + 50_000,
        cutoffs_before: T0,
        audit_before: T0 - 1,
    };
    let purged = store.purge(horizon, 0).await.expect("purge");
    assert!(purged.ran);
    assert_eq!((purged.denylist, purged.cutoffs, purged.audit), (1, 1, 0));
    assert!(
        !store
            .is_denied(DenyKind::Token, &old.id)
            .await
            .expect("denied")
    );
    assert!(
        store
            .is_denied(DenyKind::Token, &live.id)
            .await
            .expect("denied")
    );
    assert_eq!(
        store.cutoff("old-user").await.expect("cutoff").cutoff_ms,
        None
    );
    assert_eq!(
        store.cutoff("new-user").await.expect("cutoff").cutoff_ms,
        Some(T0 + 10_000)
    );
    let audit_purge = PurgeHorizon {
        audit_before: T0 + 1,
        ..horizon
    };
    assert_eq!(
        store.purge(audit_purge, 0).await.expect("purge").audit,
        4,
        "audit rows by age"
    );
}

async fn a_snapshot_holds_the_live_rows_and_its_last_change(s: &Store) {
    let store = &s.store;
    mixed_writes(store).await;
    let deny = audit(AuditAction::RevokeToken, "admin");
    let gone = deny_entry(DenyKind::Token, "Z29uZQAAAAAAAAAAAAAAAA", T0 - 1);
    store.deny(&gone, &deny).await.expect("deny");
    let mut rows = Vec::new();
    let last = store
        .load_denylist(T0, &mut |kind, id, moot| {
            rows.push((kind, id.to_owned(), moot))
        })
        .await
        .expect("snapshot");
    assert_eq!(last, 5, "the snapshot's last change");
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        rows,
        vec![
            (
                DenyKind::Token,
                "dG9rZW4tMQAAAAAAAAAAAA".to_owned(),
                T0 + 60_000
            ),
            (
                DenyKind::IdpSession,
                "idp-a:session-9".to_owned(),
                T0 + 60_000
            ),
        ],
        "only rows live at `now`"
    );
}

async fn an_event_is_remembered_once(s: &Store) {
    let store = &s.store;
    assert!(!store.event_seen("ssf:a", "event-1").await.expect("seen"));
    assert!(
        store
            .remember_event("ssf:a", "event-1", T0 + 1_000)
            .await
            .expect("remember")
    );
    assert!(
        !store
            .remember_event("ssf:a", "event-1", T0 + 1_000)
            .await
            .expect("remember"),
        "a replay"
    );
    assert!(store.event_seen("ssf:a", "event-1").await.expect("seen"));
    assert!(
        !store.event_seen("ssf:b", "event-1").await.expect("seen"),
        "per sender"
    );
}

fn head(jti: &str, minted_ms: i64) -> SessionHead {
    SessionHead {
        jti: jti.into(),
        minted_ms,
        issued_at: UnixSeconds(minted_ms / 1000),
        expires_at: UnixSeconds(minted_ms / 1000 + 300),
    }
}

async fn of_two_rotations_from_one_token_one_wins_and_the_other_learns_the_winner(s: &Store) {
    let store = &s.store;
    let rotation = |new: SessionHead| Rotation {
        session_id: "c2Vzc2lvbi0yAAAAAAAAAA",
        user_id: "alice",
        presented_jti: "first",
        presented_minted_ms: T0,
        new,
        moot_after_ms: T0 + 86_400_000,
    };
    let won = store
        .rotate_session(&rotation(head("second", T0 + 1_000)))
        .await
        .expect("rotate");
    assert!(matches!(won, RotationOutcome::Rotated));
    let lost = store
        .rotate_session(&rotation(head("other", T0 + 2_000)))
        .await
        .expect("rotate");
    let RotationOutcome::Superseded(superseded) = lost else {
        panic!("the second rotation from one token must lose: {lost:?}");
    };
    assert_eq!(superseded.newest, head("second", T0 + 1_000));
    assert_eq!(
        (superseded.parent_jti.as_str(), superseded.parent_minted_ms),
        ("first", T0)
    );
}
