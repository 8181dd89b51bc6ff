//! Pages of the change feed for a proxy filter that keeps its own copy of the revocation state
//! (`GET /revocations/changes`): from the tail in memory while this instance is in step, from
//! the store otherwise (a reader behind the tail, a link the tail does not know).
use std::time::Duration;

use super::{FeedPage, Revocations};
use crate::model::LinkTag;
use crate::store::{Change, ChangeSeq, StoreError};

impl Revocations {
    /// A page of the change feed for a proxy filter that keeps its own copy of the revocation
    /// state (`GET /revocations/changes`): the committed changes after `after`, at most `limit`.
    /// While this instance is in step they come from the changes it applied (no query);
    /// otherwise from the store. `anchor` is the link the reader was given at `after`; a
    /// history that is not the reader's — another change at `after`, or a head below it (a
    /// lossy failover, a restore) — answers [`FeedPage::Forked`], and the reader starts again
    /// from 0.
    pub async fn feed_page(
        &self,
        after: ChangeSeq,
        anchor: Option<LinkTag>,
        limit: i64,
    ) -> Result<FeedPage, StoreError> {
        if self.in_step() {
            let limit = usize::try_from(limit).unwrap_or(1).max(1);
            match self.tail.page(after, anchor, limit) {
                // Nothing applied after `after`, yet this instance wrote (or read) a newer
                // change than it applied: the store has it (its announcement is on its way).
                Some(FeedPage::Changes { changes, .. })
                    if changes.is_empty() && self.newest_seen() > after => {}
                Some(page) => return Ok(page),
                None => {}
            }
        }
        self.feed_page_from_store(after, anchor, limit).await
    }

    /// Waits, at most `wait`, until a change after `after` has been applied here (a long poll:
    /// the reader's next page then has it at once). Returns at once when one has, or when this
    /// instance is not in step (the store answers then).
    pub async fn feed_wait(&self, after: ChangeSeq, wait: Duration) {
        if self.in_step() && self.newest_seen() <= after {
            self.tail.wait_beyond(after, wait).await;
        }
    }

    /// Whether the feed may be answered from memory: loaded, on a store other instances share,
    /// and within the staleness bound.
    fn in_step(&self) -> bool {
        use crate::store::Backend;
        self.is_loaded() && self.store.is_shared() && !self.is_stale()
    }

    async fn feed_page_from_store(
        &self,
        after: ChangeSeq,
        anchor: Option<LinkTag>,
        limit: i64,
    ) -> Result<FeedPage, StoreError> {
        let (history, changes) = self
            .store
            .query(
                "feed",
                self.store
                    .inner()
                    .history_and_changes(after, &[], after, limit),
            )
            .await?;
        let Some(history) = history else {
            return Ok(FeedPage::Changes {
                changes,
                link: None,
            });
        };
        let anchored = match anchor {
            Some(tag) => history.at == Some(tag),
            None => after == 0 || history.at.is_none(),
        };
        if history.head < after || !anchored {
            return Ok(FeedPage::Forked);
        }
        let last = changes.last().map_or(after, Change::seq);
        let link = if last == after {
            history.at
        } else {
            self.store
                .query("feed", self.store.inner().history(last, &[]))
                .await?
                .and_then(|h| h.at)
        };
        Ok(FeedPage::Changes { changes, link })
    }
}
