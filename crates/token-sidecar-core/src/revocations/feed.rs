//! Pages of the change feed for a proxy filter that keeps its own copy of the revocation state
//! (`GET /revocations/changes`).
use super::{FeedPage, Revocations};
use crate::model::LinkTag;
use crate::store::{Change, ChangeSeq, StoreError};

impl Revocations {
    /// A page of the store's change feed for a proxy filter that keeps its own copy of the
    /// revocation state (`GET /revocations/changes`): the committed changes after `after`, at
    /// most `limit`, read from the store (not from this instance's caches). `anchor` is the link
    /// the reader was given at `after`; a store whose history is not the reader's — another
    /// change at `after`, or a head below it (a lossy failover, a restore) — answers
    /// [`FeedPage::Forked`], and the reader starts again from 0.
    pub async fn feed_page(
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
