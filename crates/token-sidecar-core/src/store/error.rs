//! Why the store could not answer: one error for every backend, with the database's own
//! failure (its SQLSTATE and kind) kept as the cause.
/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database did not answer, or refused the statement. (The cause is part of the
    /// message, not chained as a source, so that it is printed once.)
    #[error("the store is unavailable: {0}")]
    Database(DbError),
    /// The schema lacks migrations this instance may not apply itself (through a transaction
    /// pooler, or `--migrate never`): what to run instead.
    #[error("{0}")]
    SchemaBehind(String),
    /// The schema could not be brought up to date.
    #[error("database migration failed: {0}")]
    Migration(Box<dyn std::error::Error + Send + Sync>),
    /// The database URL names no supported store.
    #[error("unsupported database URL scheme (use postgres://..., sqlite:... or memory:)")]
    UnsupportedUrl,
    /// The store did not answer in time.
    #[error("the store did not answer in time ({0})")]
    Timeout(&'static str),
    /// The answer to a write's COMMIT was lost and the database could not say, within the
    /// timeout, whether it committed. The write may or may not have happened; an idempotent
    /// write (every Revoke) can be retried.
    #[error("the commit's outcome is unknown (its answer was lost); retry")]
    OutcomeUnknown,
    /// Another process owns the embedded database file, or its lock cannot be taken.
    #[error("the SQLite file cannot be owned: {0}")]
    Owner(String),
    /// The embedded database file was deleted or replaced under the running process.
    #[error("the store's file is gone: {0}; writes are refused until a restart")]
    Lost(String),
    /// A row changed under a conditional write twice in a row; the caller may retry.
    #[error("a concurrent change got in the way; retry")]
    Conflict,
    /// The store's history is not the one this instance applied; it forgot what it applied and
    /// must load again.
    #[error("the store's history forked from the one applied here; reloading")]
    Forked,
    /// Too many operations of the kind any caller can cause wait for the database already
    /// (one caller's, or all of them): refused at once rather than queued (issue 40).
    #[error("too many requests wait for the store; retry shortly")]
    Overloaded,
    /// The fleet's announcement secret cannot be had (`--sync-key-file` unreadable or short, or
    /// the table the migrations fill is unreadable to this role).
    #[error("the sync key is unusable: {0}")]
    SyncKey(String),
}

impl StoreError {
    /// Whether the database refused a connection because it is full (SQLSTATE 53300, "too many
    /// clients" — also when only the slots reserved for superusers are left).
    pub fn is_database_full(&self) -> bool {
        matches!(self, StoreError::Database(db) if db.code() == Some("53300"))
    }

    /// Why a write was not acknowledged, as the `store_write_failures_total` metric labels it.
    pub fn write_failure(&self) -> &'static str {
        match self {
            StoreError::Timeout(_) => "timeout",
            StoreError::OutcomeUnknown => "outcome_unknown",
            StoreError::Lost(_) => "file_lost",
            StoreError::Overloaded => "overloaded",
            // lock_not_available (lock_timeout), query_canceled (statement_timeout),
            // idle_in_transaction_session_timeout: a wait beyond --store-timeout.
            StoreError::Database(db)
                if matches!(db.code(), Some("55P03" | "57014" | "25P03"))
                    || db.kind() == DbErrorKind::PoolTimedOut =>
            {
                "timeout"
            }
            _ => "error",
        }
    }
}

impl From<crate::model::UnknownKind> for StoreError {
    fn from(e: crate::model::UnknownKind) -> Self {
        StoreError::Database(DbError::new(DbErrorKind::Other, None, e))
    }
}

/// What kind of database failure a [`DbError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The database answered with an error (see [`DbError::code`]).
    Refused,
    /// The connection failed (I/O, TLS, protocol, a crashed worker): a statement's outcome is
    /// unknown.
    Connection,
    /// No pooled connection became free in time.
    PoolTimedOut,
    /// A row the statement needed was not there.
    RowNotFound,
    /// Anything else.
    Other,
}

/// A database failure as a store reports it: its SQLSTATE, its kind, and the driver's error as
/// the cause (its text is the message).
#[derive(Debug)]
pub struct DbError {
    code: Option<String>,
    kind: DbErrorKind,
    cause: Box<dyn std::error::Error + Send + Sync>,
}

impl DbError {
    /// A failure of `kind` with SQLSTATE `code`, caused by `cause`.
    pub fn new(
        kind: DbErrorKind,
        code: Option<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            code,
            kind,
            cause: cause.into(),
        }
    }

    /// The SQLSTATE the database answered with, if it answered.
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// What kind of failure it is.
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// The driver's error.
    pub fn cause(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.cause.as_ref()
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.cause, f)
    }
}

/// sqlx's errors as store errors (feature `sqlx`, for the SQL stores of the server crate).
#[cfg(feature = "sqlx")]
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        let (kind, code) = match &e {
            sqlx::Error::Database(db) => (
                DbErrorKind::Refused,
                db.code().map(|code| code.into_owned()),
            ),
            sqlx::Error::Io(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => (DbErrorKind::Connection, None),
            sqlx::Error::PoolTimedOut => (DbErrorKind::PoolTimedOut, None),
            sqlx::Error::RowNotFound => (DbErrorKind::RowNotFound, None),
            _ => (DbErrorKind::Other, None),
        };
        StoreError::Database(DbError::new(kind, code, e))
    }
}

#[cfg(feature = "sqlx")]
impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migration(Box::new(e))
    }
}
