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
mod pg_lifecycle;
mod pg_nonce;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "sqlite")]
mod sqlite_journal;
#[cfg(feature = "sqlite")]
mod sqlite_lifecycle;
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
    HeldLock, LocalWalletLocks, MemoryTxJournal, NewTxAttempt, TxAttempt, TxJournal, TxState,
    WalletKey, WalletLock,
};
pub use model::{
    AnchorRecord, AnchoredBatch, BatchRecord, InsertOutcome, NewBatch, NewRequest, RequestRecord,
    SweepPosition, TipClaim, TipClaims, UnbatchedPage, messages, tip_key,
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
    /// A lock this process held was lost (its connection died, the database failed over).
    #[error("lock lost: {0}")]
    LockLost(String),
}

impl StoreError {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::LockLost(_))
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

    /// Batches last announced before `before` (or recorded then, if never announced) that
    /// are neither anchored nor failed, oldest first.
    async fn unanchored_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Record that the batch's message was sent to the workers at `at`.
    async fn mark_batch_announced(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Batches recorded before `before` whose message was never sent, neither anchored nor
    /// failed, oldest first.
    async fn unannounced_batches(
        &self,
        before: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<Uuid>, StoreError>;

    /// Mark a batch failed for good (its batch file is missing or corrupt). `Ok(false)` if
    /// it is unknown, anchored, or failed already.
    async fn fail_batch(&self, id: Uuid, reason: &str) -> Result<bool, StoreError>;

    /// Failed batches whose members have not moved to a new batch yet, oldest first.
    async fn failed_batches(&self, limit: i64) -> Result<Vec<Uuid>, StoreError>;

    /// The members of a batch in leaf order: request id and CID.
    async fn batch_members(&self, id: Uuid) -> Result<Vec<(Uuid, String)>, StoreError>;

    /// Move every member of the failed batch `from` to the new batch `to`, keeping their
    /// leaf order (`to.members` must be the members of `from` in leaf order), and record `to`
    /// as `from`'s replacement, atomically. `Ok(false)` if `from` is not failed or was
    /// replaced already (nothing is changed).
    async fn rebatch(&self, from: Uuid, to: &NewBatch) -> Result<bool, StoreError>;

    /// Forget the anchor of a batch whose transaction the chain lost (a reorganisation): it
    /// is no longer anchored, and its requests are PENDING again until it is. `Ok(false)` if
    /// it was not anchored.
    async fn reopen_batch(&self, id: Uuid) -> Result<bool, StoreError>;

    /// Mark PENDING requests that are in no batch as REPLACED; returns how many changed.
    async fn replace_requests(&self, ids: &[Uuid], at: DateTime<Utc>) -> Result<u64, StoreError>;

    /// For each claim whose request is still PENDING and in no batch, claim the newest tip
    /// of its (stream id, origin) for it, atomically per pair and across every process
    /// sharing the store. A claim succeeds when the pair has no tip yet, when its tip is the
    /// same request, or when the tip's client timestamp is not newer; then the tip becomes
    /// the claim's request. Returns the requests that are not PENDING and unbatched (no
    /// claim is made for them) and those whose claim failed (a newer request of their stream
    /// and origin was batched before: they are to be REPLACED). At most one claim per pair
    /// per call.
    async fn claim_tips(&self, claims: &[TipClaim]) -> Result<TipClaims, StoreError>;

    /// PENDING requests in no batch, in the order their inserts committed, after `after`
    /// (exclusive) and before the page's horizon, at most `limit`. Every request whose
    /// insert commits later than this call has a position at or above the horizon; so a
    /// scan that resumes from the horizon (or from any position it has not passed) never
    /// misses a request, however late its insert committed.
    async fn unbatched_after(
        &self,
        after: SweepPosition,
        limit: i64,
    ) -> Result<UnbatchedPage, StoreError>;

    /// The stored position of a periodic job.
    async fn cursor(&self, name: &str) -> Result<Option<i64>, StoreError>;

    /// Store the position of a periodic job.
    async fn set_cursor(&self, name: &str, position: i64) -> Result<(), StoreError>;

    /// Take the exclusive processing lock of a batch, if no one holds it. The lock is held
    /// until the returned guard is dropped (or its holder's connection dies), across every
    /// process sharing the database. `Ok(None)`: someone else holds it.
    async fn try_lock_batch(&self, id: Uuid) -> Result<Option<BatchLock>, StoreError>;

    /// A cheap liveness probe.
    async fn ping(&self) -> Result<(), StoreError>;
}
