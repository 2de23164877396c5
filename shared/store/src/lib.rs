//! The request store: where accepted anchor requests and their anchors live.
//!
//! [`RequestStore`] is the boundary; [`PgStore`] is the PostgreSQL implementation.
//! [`GroupCommitter`] coalesces concurrent inserts into multi-row statements and answers
//! each caller only after its row is durable.
//! [`TxJournal`] records Ethereum transaction attempts and holds the wallet (nonce) lock;
//! [`PgStore`] implements it too.
//! [`NonceStore`] remembers the one-time nonces of signed requests ([`PgStore`] across API
//! instances, [`MemoryNonceStore`] in one process).

mod group_commit;
mod journal;
#[cfg(feature = "test-support")]
pub mod journal_testsuite;
mod model;
mod nonce;
#[cfg(feature = "test-support")]
pub mod nonce_testsuite;
mod pg;
mod pg_journal;
mod pg_nonce;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_journal;
#[cfg(feature = "sqlite")]
mod sqlite_nonce;
#[cfg(feature = "test-support")]
pub mod test_support;
#[cfg(feature = "test-support")]
pub mod testsuite;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

pub use group_commit::{GroupCommitConfig, GroupCommitter, GroupReader};
pub use journal::{
    LocalWalletLocks, MemoryTxJournal, NewTxAttempt, TxAttempt, TxJournal, TxState, WalletKey,
    WalletLock,
};
pub use model::{
    AnchorRecord, AnchoredBatch, BatchRecord, InsertOutcome, NewBatch, NewRequest, RequestRecord,
    messages,
};
pub use nonce::{MemoryNonceStore, NonceStore};
pub use pg::{MIGRATOR, PgStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SQLITE_MIGRATOR, SqliteStore};

/// Errors of the store. None of them is the client's fault: the API answers 5xx.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or is overloaded; retrying later may work.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered in an unexpected way.
    #[error("database error: {0}")]
    Internal(String),
    /// A batch member already belongs to another batch.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The schema is older than this build expects.
    #[error("database schema is not up to date ({0}); run `cas migrate`")]
    NotMigrated(String),
}

impl StoreError {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.to_string()),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// An exclusive lock on one batch; released when dropped.
pub struct BatchLock {
    _held: Box<dyn std::any::Any + Send>,
}

impl BatchLock {
    /// Wrap whatever keeps the lock held (a transaction, a mutex guard).
    pub fn new(held: impl std::any::Any + Send) -> Self {
        Self {
            _held: Box::new(held),
        }
    }
}

impl std::fmt::Debug for BatchLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BatchLock")
    }
}

/// Durable storage of anchor requests.
///
/// Contract: `insert_requests` is idempotent on the request CID. For every input it returns,
/// in input order, either `Created` (this call stored it) or `Existing` (a row with that CID
/// already existed, returned in its current state). When it returns, every `Created` row is
/// committed.
#[async_trait]
pub trait RequestStore: Send + Sync + 'static {
    /// Insert new requests; see the trait docs for the idempotency contract.
    async fn insert_requests(
        &self,
        requests: &[NewRequest],
    ) -> Result<Vec<InsertOutcome>, StoreError>;

    /// The request whose anchored CID has this canonical string, with its anchor if any.
    async fn get_request(&self, cid: &str) -> Result<Option<RequestRecord>, StoreError>;

    /// The stored requests among `cids`, each as [`RequestStore::get_request`] answers it,
    /// in any order; CIDs not stored are left out.
    async fn get_requests(&self, cids: &[String]) -> Result<Vec<RequestRecord>, StoreError>;

    /// The subset of `ids` that are PENDING and in no batch (what a new batch may take).
    async fn unbatched_pending(&self, ids: &[Uuid]) -> Result<Vec<Uuid>, StoreError>;

    /// Record a closed batch and its members, atomically. `Ok(false)` if a batch with this
    /// id exists already (nothing is changed); [`StoreError::Conflict`] if a member already
    /// belongs to another batch (nothing is changed).
    async fn create_batch(&self, batch: &NewBatch) -> Result<bool, StoreError>;

    /// A batch by id.
    async fn get_batch(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError>;

    /// Record that a batch is anchored. `Ok(false)` if it was already anchored (the first
    /// record is kept).
    async fn mark_batch_anchored(
        &self,
        id: Uuid,
        anchored: &AnchoredBatch,
    ) -> Result<bool, StoreError>;

    /// Batches closed before `before` and not anchored yet, oldest first.
    async fn unanchored_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Mark PENDING requests that are in no batch as REPLACED; returns how many changed.
    async fn replace_requests(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<u64, StoreError>;

    /// PENDING requests in no batch, created in `(after, until]`, oldest first.
    async fn unbatched_created_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<RequestRecord>, StoreError>;

    /// The stored checkpoint of a periodic job.
    async fn checkpoint(&self, name: &str) -> Result<Option<DateTime<Utc>>, StoreError>;

    /// Store the checkpoint of a periodic job.
    async fn set_checkpoint(&self, name: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Take the exclusive processing lock of a batch, if no one holds it. The lock is held
    /// until the returned guard is dropped (or its holder's connection dies), across every
    /// process sharing the database. `Ok(None)`: someone else holds it.
    async fn try_lock_batch(&self, id: Uuid) -> Result<Option<BatchLock>, StoreError>;

    /// A cheap liveness probe.
    async fn ping(&self) -> Result<(), StoreError>;
}
