//! The pipeline's own steps with a backend that misbehaves on purpose: a COMMIT whose answer is
//! lost, a write that changes nothing.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::model::{AuditAction, DenyKind};
use crate::store::{DbError, DbErrorKind};

/// A backend whose COMMIT answer is lost, and which says afterwards whether it committed.
#[derive(Default)]
struct LosesCommitAnswer {
    committed: AtomicBool,
    asked: AtomicUsize,
    rolled_back: AtomicBool,
}

struct Tx<'a>(&'a LosesCommitAnswer, bool);

#[async_trait]
impl WriteTx for Tx<'_> {
    async fn apply(&mut self, op: &WriteOp<'_>, _who: &str) -> Result<Applied, StoreError> {
        let WriteOp::Deny(entry) = op else {
            return Ok(Applied::default());
        };
        Ok(Applied {
            change: self.1.then(|| Change::Denied {
                seq: 7,
                committed_ms: 1,
                kind: entry.kind,
                id: entry.id.clone(),
                moot_after_ms: entry.moot_after_ms,
            }),
            in_force: None,
        })
    }
    async fn record_audit(&mut self, _: ChangeSeq, _: &Audited<'_>) -> Result<(), StoreError> {
        Ok(())
    }
    async fn link(
        &mut self,
        _: ChangeSeq,
        nonce: [u8; 16],
    ) -> Result<Option<(LinkTag, LinkTag)>, StoreError> {
        Ok(Some((GENESIS, nonce)))
    }
    async fn fleet(&mut self) -> Result<Option<Arc<FleetKey>>, StoreError> {
        Ok(None)
    }
    async fn announce(&mut self, _: &Announcement, _: Option<&str>) -> Result<(), StoreError> {
        Ok(())
    }
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        Err(StoreError::Database(DbError::new(
            DbErrorKind::Connection,
            None,
            "connection reset by peer",
        )))
    }
    async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
        self.0.rolled_back.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl WriteBackend for LosesCommitAnswer {
    async fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
        Ok(Box::new(Tx(self, true)))
    }
    async fn committed(&self, _: Link) -> Result<bool, StoreError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        Ok(self.committed.load(Ordering::SeqCst))
    }
    fn answer_lost(&self, error: &StoreError) -> bool {
        matches!(error, StoreError::Database(db) if db.kind() == DbErrorKind::Connection)
    }
}

fn entry() -> DenyEntry {
    DenyEntry {
        kind: DenyKind::Token,
        id: "dG9rZW4AAAAAAAAAAAAAAA".into(),
        user_id: None,
        moot_after_ms: 10,
    }
}

fn audit() -> Audit {
    Audit {
        action: AuditAction::RevokeToken,
        who: "admin".into(),
        why: None,
        at_ms: 0,
    }
}

#[tokio::test(start_paused = true)]
async fn a_lost_commit_answer_is_acknowledged_once_the_store_shows_the_change() {
    let backend = LosesCommitAnswer::default();
    backend.committed.store(true, Ordering::SeqCst);
    let pipeline = Pipeline::new(Duration::from_secs(1), None);
    let stored = pipeline.deny(&backend, &entry(), &audit()).await;
    assert_eq!(stored.ok(), Some(Some(7)));
    assert_eq!(backend.asked.load(Ordering::SeqCst), 1);
    assert_eq!(pipeline.last_written().map(|l| l.seq), Some(7));
}

#[tokio::test(start_paused = true)]
async fn a_lost_commit_answer_the_store_cannot_confirm_is_an_unknown_outcome() {
    let backend = LosesCommitAnswer::default();
    let pipeline = Pipeline::new(Duration::from_secs(1), None);
    let stored = pipeline.deny(&backend, &entry(), &audit()).await;
    assert!(
        matches!(stored, Err(StoreError::OutcomeUnknown)),
        "{stored:?}"
    );
    assert!(
        backend.asked.load(Ordering::SeqCst) > 1,
        "asked until the timeout"
    );
    assert_eq!(
        pipeline.last_written(),
        None,
        "not acknowledged, not remembered"
    );
}

#[tokio::test]
async fn a_write_that_changes_nothing_is_rolled_back_and_announces_nothing() {
    struct NoOp(LosesCommitAnswer);
    #[async_trait]
    impl WriteBackend for NoOp {
        async fn begin(&self) -> Result<Box<dyn WriteTx + '_>, StoreError> {
            Ok(Box::new(Tx(&self.0, false)))
        }
        async fn committed(&self, _: Link) -> Result<bool, StoreError> {
            Ok(false)
        }
        fn answer_lost(&self, _: &StoreError) -> bool {
            false
        }
    }
    let backend = NoOp(LosesCommitAnswer::default());
    let pipeline = Pipeline::new(Duration::from_secs(1), None);
    let mut announced = pipeline.subscribe();
    let stored = pipeline.deny(&backend, &entry(), &audit()).await;
    assert_eq!(stored.ok(), Some(None));
    assert!(backend.0.rolled_back.load(Ordering::SeqCst));
    assert!(announced.try_recv().is_err());
}
