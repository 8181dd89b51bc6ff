//! Reading the numbered log back: "changes after N" and where the history chain stands.
use async_trait::async_trait;

use super::StoreError;
use super::announcement::Link;
use crate::clock::UnixMillis;
use crate::model::{Change, ChangeSeq, DenyKind, LinkTag};

/// Where "changes after N" is read: the store's pool, or a connection the sync task holds of its
/// own (PostgreSQL's change listener, or [`RevocationStore::open_feed`]), so that an idle
/// instance polls on one connection rather than keeping pooled ones alive.
#[async_trait]
pub trait ChangeFeed: Send {
    /// Committed changes numbered after `after`, in order, at most `limit`.
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError>;
    /// Where the history stands (its links at `at` and `own`; None for a store that keeps no
    /// chain) and the first changes after `after`: in one statement where the store can, so
    /// that a catch-up costs one round trip.
    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError>;
}

/// Where the store's history stands (SPEC §10, "histories can fork"), read before a catch-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The newest committed change's number.
    pub head: ChangeSeq,
    /// The newest link of the history chain.
    pub newest: Option<Link>,
    /// The chain's link at the anchor asked about, if the store has one there.
    pub at: Option<LinkTag>,
    /// The chain's links at this instance's own writes asked about, where the store has one.
    pub own_at: Vec<Link>,
}

impl History {
    /// Whether an instance that applied changes up to `watermark`, the last of them known by
    /// `anchor`, and wrote `own` itself, is on this history: the store has every change it
    /// applied or wrote, with the same links where it knows them. A history restarted below the
    /// watermark (a lossy failover), or with another change at the anchor or at the instance's
    /// own write (one that has passed them since), is not ours.
    pub fn continues(&self, watermark: ChangeSeq, anchor: Option<Link>, own: &[Link]) -> bool {
        let newest_own = own.iter().map(|o| o.seq).max().unwrap_or(0);
        self.head >= watermark.max(newest_own)
            && anchor.is_none_or(|anchor| self.at == Some(anchor.tag))
            && own.iter().all(|o| self.own_at.contains(o))
    }
}

/// A callback that receives every live denylist row while the filter is (re)built.
pub type DenySink<'a> = dyn FnMut(DenyKind, &str, UnixMillis) + Send + 'a;
