//! The request store: where accepted anchor requests and their anchors live.
//!
//! [`RequestStore`] is the boundary; [`PgStore`] is the PostgreSQL implementation.
//! [`GroupCommitter`] coalesces concurrent inserts into multi-row statements and answers
//! each caller only after its row is durable.

mod group_commit;
mod model;
mod pg;
#[cfg(feature = "test-support")]
pub mod test_support;
#[cfg(feature = "test-support")]
pub mod testsuite;

use async_trait::async_trait;

pub use group_commit::{GroupCommitConfig, GroupCommitter};
pub use model::{AnchorRecord, InsertOutcome, NewRequest, RequestRecord, messages};
pub use pg::{MIGRATOR, PgStore};

/// Errors of the store. None of them is the client's fault: the API answers 5xx.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or is overloaded; retrying later may work.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answered in an unexpected way.
    #[error("database error: {0}")]
    Internal(String),
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

    /// Record anchors (insert-only; an existing anchor for a request is kept).
    async fn insert_anchors(&self, anchors: &[AnchorRecord]) -> Result<u64, StoreError>;

    /// A cheap liveness probe.
    async fn ping(&self) -> Result<(), StoreError>;
}
