//! Blob storage for batch files and tree artifacts.
//!
//! [`BlobStore`] is the boundary. Implementations: `S3BlobStore` (production, any
//! S3-compatible endpoint, path-style) and `LocalDirBlobStore` (a directory, for `cas dev`).
//! Both pass the same conformance suite (`testsuite`, behind the `testsuite` feature).

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;

mod local;
mod s3;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use local::LocalDirBlobStore;
pub use s3::S3BlobStore;

/// Errors of a blob store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// The store could not be reached or throttled us; retrying later may work.
    #[error("blob store unavailable: {0}")]
    Unavailable(String),
    /// The key is not acceptable (empty, absolute, `..`, or otherwise unsafe).
    #[error("invalid blob key {0:?}")]
    InvalidKey(String),
    /// Anything else.
    #[error("blob store error: {0}")]
    Internal(String),
}

impl BlobError {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// A flat key-value store of immutable objects.
///
/// Contract:
/// - keys are `/`-separated relative paths of `[A-Za-z0-9._-]` segments (no empty, `.` or `..`
///   segment); anything else is [`BlobError::InvalidKey`];
/// - `put` is atomic: a reader sees the whole old object, the whole new one, or nothing;
///   putting the same key again replaces the object;
/// - `get` of a missing key is `Ok(None)`;
/// - `get_range` returns the bytes of `range` clipped to the object's end (an empty range,
///   or one starting at or past the end, gives empty bytes); `Ok(None)` if the key is missing.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Store an object.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError>;
    /// Read a whole object.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError>;
    /// Read part of an object.
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BlobError>;
}

/// Check a key against the [`BlobStore`] contract.
pub fn validate_key(key: &str) -> Result<(), BlobError> {
    let ok = !key.is_empty()
        && key.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        });
    if ok {
        Ok(())
    } else {
        Err(BlobError::InvalidKey(key.to_owned()))
    }
}
