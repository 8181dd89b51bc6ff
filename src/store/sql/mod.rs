//! What PostgreSQL and SQLite say alike: the read queries, the change feed, the session-head
//! rotation and the purge, with their row mapping, written once over sqlx's generic `Database`
//! (both accept `$N` placeholders). Only the writes that number changes differ per backend
//! (PostgreSQL: a sequence under an advisory lock, announced with NOTIFY; SQLite: a counter row
//! in the write transaction).
//!
//! `prepared` says whether statements may be kept prepared on the server: not behind a
//! transaction-pooling PgBouncer, where the next transaction may run on another server
//! connection (there every statement is sent unnamed).
mod ledgers;
mod rows;

use sqlx::database::HasStatementCache;
use sqlx::pool::PoolConnection;
use sqlx::{Database, Executor, IntoArguments};

use super::StoreError;
pub(super) use ledgers::*;
pub(super) use rows::*;

/// How many rows a statement changed; each backend has it, under no common trait.
pub(super) trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

/// A connection one operation holds: a pooled one, or (PostgreSQL in notify mode) the
/// instance's one shared connection, which also listens (see `shared`).
pub(super) trait Lease: Send {
    type Db: Database;
    /// The connection to run statements on.
    fn conn(
        &mut self,
    ) -> impl Future<Output = Result<&mut <Self::Db as Database>::Connection, StoreError>> + Send;
    /// Marks the connection as not to be reused: it is closed when the lease ends.
    fn discard(&mut self);
}

impl<DB: Database> Lease for PoolConnection<DB> {
    type Db = DB;
    fn conn(&mut self) -> impl Future<Output = Result<&mut DB::Connection, StoreError>> + Send {
        std::future::ready(Ok(&mut **self))
    }
    fn discard(&mut self) {
        self.close_on_drop();
    }
}

/// One operation's connection; [`Session::done`] ends it.
///
/// It is reused only when its operation ended cleanly. One that was cancelled (the caller's
/// deadline passed) or failed is closed instead: a statement may still be waiting on the
/// server, or a transaction be open — or, in SQLite, already rolled back by the database
/// (`SQLITE_FULL`) while the driver believes it open — that the next user would run inside.
pub(super) struct Session<L: Lease> {
    lease: L,
    /// Whether this session began a transaction that is still open.
    open: bool,
    clean: bool,
}

impl<L> Session<L>
where
    L: Lease,
    for<'c> &'c mut <L::Db as Database>::Connection: Executor<'c, Database = L::Db>,
{
    /// A session on `lease`, inside a transaction begun with `begin` (e.g. `BEGIN`, or SQLite's
    /// `BEGIN IMMEDIATE`, which takes the write lock at once) if given. BEGIN and COMMIT go by
    /// the simple protocol: one message, which a transaction pooler cannot split.
    pub(super) async fn start(lease: L, begin: Option<&'static str>) -> Result<Self, StoreError> {
        let mut session = Self {
            lease,
            open: false,
            clean: false,
        };
        if let Some(begin) = begin {
            sqlx::raw_sql(begin).execute(session.conn().await?).await?;
            session.open = true;
        }
        Ok(session)
    }

    /// The connection to run the operation's statements on.
    pub(super) async fn conn(
        &mut self,
    ) -> Result<&mut <L::Db as Database>::Connection, StoreError> {
        self.lease.conn().await
    }

    /// Commits the transaction, if there is one, and lets the connection be reused.
    pub(super) async fn done(self) -> Result<(), StoreError> {
        self.end("COMMIT").await
    }

    /// Rolls the transaction back, if there is one, and lets the connection be reused.
    pub(super) async fn rollback(self) -> Result<(), StoreError> {
        self.end("ROLLBACK").await
    }

    async fn end(mut self, how: &'static str) -> Result<(), StoreError> {
        if self.open {
            sqlx::raw_sql(how).execute(self.conn().await?).await?;
            self.open = false;
        }
        self.clean = true;
        Ok(())
    }
}

impl<L: Lease> Drop for Session<L> {
    fn drop(&mut self) {
        if !self.clean {
            self.lease.discard();
        }
    }
}

/// A pooled session is its connection (SQLite's statements run on it directly).
impl<DB: Database> std::ops::Deref for Session<PoolConnection<DB>> {
    type Target = DB::Connection;
    fn deref(&self) -> &DB::Connection {
        &self.lease
    }
}

impl<DB: Database> std::ops::DerefMut for Session<PoolConnection<DB>> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        &mut self.lease
    }
}

/// Answers when the database is reachable.
pub(super) async fn ping<DB>(conn: &mut DB::Connection, prepared: bool) -> Result<(), StoreError>
where
    DB: Database + HasStatementCache,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    sqlx::query("SELECT 1")
        .persistent(prepared)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
