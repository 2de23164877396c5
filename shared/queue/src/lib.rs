//! At-least-once message queues: the ingest multi-queue and the batch queue.
//!
//! [`Queue`] is the boundary. Implementations: `SqsQueue` (production, aws-sdk-sqs) and
//! `MemoryQueue` (in-process, for `cas dev`). Both pass the same conformance suite
//! (`testsuite`, behind the `testsuite` feature). [`MultiQueue`] spreads sends over N
//! queues round-robin so no single queue hits SQS's in-flight limit.

use std::time::Duration;

use async_trait::async_trait;

mod memory;
mod multi;
mod sqs;
#[cfg(feature = "testsuite")]
pub mod testsuite;

pub use memory::MemoryQueue;
pub use multi::{DEFAULT_POLL_SLICE, MultiQueue};
pub use sqs::{SqsQueue, create_queue, create_queue_with_dlq};

/// SQS's limit on one message body.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// SQS's limit on messages per send/receive/delete batch call.
pub const MAX_BATCH: usize = 10;

/// Errors of a queue.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    /// The queue service could not be reached or throttled us; retrying later may work.
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The message is larger than [`MAX_MESSAGE_BYTES`].
    #[error("message of {0} bytes exceeds the queue's limit")]
    TooLarge(usize),
    /// The receipt is unknown or expired (the message may have been redelivered).
    #[error("invalid or expired receipt handle")]
    InvalidReceipt,
    /// Anything else.
    #[error("queue error: {0}")]
    Internal(String),
}

impl QueueError {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// An opaque handle to acknowledge or extend one delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Receipt(pub String);

/// One delivery of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stable id of the message (the same on every delivery).
    pub id: String,
    /// Handle of this delivery.
    pub receipt: Receipt,
    /// The body as sent.
    pub body: String,
    /// How many times the message has been received, this delivery included (1 = first).
    pub receive_count: u32,
}

/// An at-least-once queue.
///
/// Contract:
/// - `send` returns once the message is durably queued;
/// - a received message is invisible to other receivers until its visibility timeout expires,
///   then it is delivered again (with a higher `receive_count` and a new receipt), until it is
///   acknowledged;
/// - `ack` deletes messages; acking an already-deleted message is not an error;
/// - `set_visibility` changes the remaining invisibility of one delivery (0 = visible now);
/// - `receive` waits up to `wait` for at least one message and returns at most `max`
///   (`max` ≤ [`MAX_BATCH`]); it returns an empty list on timeout.
#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Queue one message.
    async fn send(&self, body: String) -> Result<(), QueueError>;
    /// Queue several messages (any number; implementations chunk as needed).
    async fn send_many(&self, bodies: Vec<String>) -> Result<(), QueueError>;
    /// Receive up to `max` messages, hiding them for `visibility`.
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Message>, QueueError>;
    /// Delete delivered messages.
    async fn ack(&self, receipts: &[Receipt]) -> Result<(), QueueError>;
    /// Change how long one delivery stays invisible, counted from now.
    async fn set_visibility(
        &self,
        receipt: &Receipt,
        visibility: Duration,
    ) -> Result<(), QueueError>;
    /// Approximate number of messages queued, visible or in flight.
    async fn approximate_depth(&self) -> Result<u64, QueueError>;
}

/// Reject a body larger than [`MAX_MESSAGE_BYTES`] (before anything is sent).
pub(crate) fn check_size(body: &str) -> Result<(), QueueError> {
    if body.len() > MAX_MESSAGE_BYTES {
        Err(QueueError::TooLarge(body.len()))
    } else {
        Ok(())
    }
}
