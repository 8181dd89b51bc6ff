//! Where the history chain stands, and the change feed read with it in one statement; the sync
//! task's own polling connection.
use async_trait::async_trait;
use sqlx::{Connection, PgConnection, Postgres};

use crate::store::announcement::{self, Link};
use crate::store::{Change, ChangeFeed, ChangeSeq, History, StoreError, sql};

/// Where the history stands (see the history chain), in one statement (one snapshot):
/// the newest change's number — over the chain and both tables, as writers of the version
/// before the chain numbered changes without links — the newest link, and the links at `at` and
/// `own`.
/// The history columns: head, newest link (seq, tag), the link at `$1`, and the links at the
/// numbers in `$2` (as two arrays).
const HISTORY_SQL: &str = "
    SELECT GREATEST(COALESCE(n.seq, 0),
                    (SELECT COALESCE(MAX(change_seq), 0) FROM user_cutoffs),
                    (SELECT COALESCE(MAX(change_seq), 0) FROM denylist)) AS head,
           n.seq AS newest_seq, n.tag AS newest_tag,
           (SELECT tag FROM change_chain WHERE seq = $1) AS at_tag,
           (SELECT COALESCE(array_agg(seq ORDER BY seq), '{}') FROM change_chain
                WHERE seq = ANY($2)) AS own_seqs,
           (SELECT COALESCE(array_agg(tag ORDER BY seq), '{}') FROM change_chain
                WHERE seq = ANY($2)) AS own_tags
        FROM (SELECT 1) AS one
        LEFT JOIN (SELECT seq, tag FROM change_chain ORDER BY seq DESC LIMIT 1) AS n ON true";

type HistoryRow = (
    i64,
    Option<i64>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<i64>,
    Vec<Vec<u8>>,
);

fn history_from_row(
    (head, newest_seq, newest_tag, at_tag, own_seqs, own_tags): HistoryRow,
) -> History {
    let newest = match (
        newest_seq,
        newest_tag.as_deref().and_then(announcement::link_tag),
    ) {
        (Some(seq), Some(tag)) => Some(Link { seq, tag }),
        _ => None,
    };
    History {
        head,
        newest,
        at: at_tag.as_deref().and_then(announcement::link_tag),
        own_at: own_seqs
            .into_iter()
            .zip(own_tags)
            .filter_map(|(seq, tag)| {
                Some(Link {
                    seq,
                    tag: announcement::link_tag(&tag)?,
                })
            })
            .collect(),
    }
}

/// Where the history stands (see the history chain), in one statement (one snapshot):
/// the newest change's number — over the chain and both tables, as writers of the version
/// before the chain numbered changes without links — the newest link, and the links at `at` and
/// `own`.
pub(super) async fn history_on<'c, E>(
    executor: E,
    prepared: bool,
    at: ChangeSeq,
    own: &[ChangeSeq],
) -> Result<History, StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    let row: HistoryRow = sqlx::query_as(HISTORY_SQL)
        .persistent(prepared)
        .bind(at)
        .bind(own)
        .fetch_one(executor)
        .await?;
    Ok(history_from_row(row))
}

/// The history and the first page of changes after `after`, in one statement: a catch-up costs
/// one round trip, and both are read from one snapshot.
pub(super) async fn history_and_changes_on<'c, E>(
    executor: E,
    prepared: bool,
    at: ChangeSeq,
    own: &[ChangeSeq],
    after: ChangeSeq,
    limit: i64,
) -> Result<(History, Vec<Change>), StoreError>
where
    E: sqlx::Executor<'c, Database = Postgres>,
{
    type Row = (
        i64,
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<i64>,
        Vec<Vec<u8>>,
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let statement = format!(
        "SELECT h.*, c.kind, c.id, c.value, c.seq, c.committed
             FROM ({HISTORY_SQL}) AS h
             LEFT JOIN LATERAL ({}) AS c ON true
             ORDER BY c.seq",
        sql::CHANGES_AFTER_SQL
            .replace("$1", "$3")
            .replace("$2", "$4")
    );
    let rows: Vec<Row> = sqlx::query_as(sqlx::AssertSqlSafe(statement))
        .persistent(prepared)
        .bind(at)
        .bind(own)
        .bind(after)
        .bind(limit)
        .fetch_all(executor)
        .await?;
    let mut history = None;
    let mut changes = Vec::with_capacity(rows.len());
    for (
        head,
        newest_seq,
        newest_tag,
        at_tag,
        own_seqs,
        own_tags,
        kind,
        id,
        value,
        seq,
        committed,
    ) in rows
    {
        if history.is_none() {
            history = Some(history_from_row((
                head, newest_seq, newest_tag, at_tag, own_seqs, own_tags,
            )));
        }
        if let (Some(kind), Some(id), Some(value), Some(seq), Some(committed)) =
            (kind, id, value, seq, committed)
        {
            changes.push(sql::change_from_row((kind, id, value, seq, committed))?);
        }
    }
    let history = history.ok_or(StoreError::from(sqlx::Error::RowNotFound))?;
    Ok((history, changes))
}

/// The `application_name` of the sync task's own polling connection (in poll and nats modes).
pub const FEED_APPLICATION_NAME: &str = "token-sidecar-feed";

/// The sync task's polling connection.
pub(super) struct Feed {
    pub(super) conn: PgConnection,
    pub(super) prepared: bool,
}

#[async_trait]
impl ChangeFeed for Feed {
    async fn changes_after(
        &mut self,
        after: ChangeSeq,
        limit: i64,
    ) -> Result<Vec<Change>, StoreError> {
        if self.prepared {
            return sql::changes_after(&mut self.conn, true, after, limit).await;
        }
        // Behind a transaction pooler: parse and execute on one server connection.
        let mut tx = self.conn.begin().await?;
        let changes = sql::changes_after(&mut *tx, false, after, limit).await?;
        tx.commit().await?;
        Ok(changes)
    }

    async fn history_and_changes(
        &mut self,
        at: ChangeSeq,
        own: &[ChangeSeq],
        after: ChangeSeq,
        limit: i64,
    ) -> Result<(Option<History>, Vec<Change>), StoreError> {
        if self.prepared {
            let (history, changes) =
                history_and_changes_on(&mut self.conn, true, at, own, after, limit).await?;
            return Ok((Some(history), changes));
        }
        let mut tx = self.conn.begin().await?;
        let (history, changes) =
            history_and_changes_on(&mut *tx, false, at, own, after, limit).await?;
        tx.commit().await?;
        Ok((Some(history), changes))
    }
}
