//! Rows of the request store.

use cas_core::{ClientTimestamp, RequestStatus};
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The `message` strings the reference service writes; clients require a string.
pub mod messages {
    /// A request waiting for its batch.
    pub const PENDING: &str = "Request is pending.";
    /// A request whose anchor is recorded.
    pub const COMPLETED: &str = "CID successfully anchored.";
}

/// A request to insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRequest {
    /// The request id (UUIDv7, so the primary key index stays append-mostly).
    pub id: Uuid,
    /// Canonical CID string.
    pub cid: String,
    /// Base36 stream id.
    pub stream_id: String,
    /// Who asked: a DID, or the client IP.
    pub origin: String,
    /// The client's timestamp.
    pub timestamp: ClientTimestamp,
    /// When the service accepted it.
    pub created_at: DateTime<Utc>,
}

/// Where and when a request was anchored: its batch and leaf, once the batch is anchored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRecord {
    /// The batch it was anchored in.
    pub batch_id: Uuid,
    /// The leaf index within the batch's tree.
    pub leaf_index: i32,
    /// When the batch was recorded as anchored.
    pub anchored_at: DateTime<Utc>,
}

/// A batch as the scheduler closes it: members in leaf order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    /// Batch id.
    pub id: Uuid,
    /// Member request ids; position = leaf index.
    pub members: Vec<Uuid>,
    /// When the batch was closed.
    pub created_at: DateTime<Utc>,
}

/// What anchoring a batch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoredBatch {
    /// Merkle root CID.
    pub root_cid: String,
    /// Proof block CID.
    pub proof_cid: String,
    /// Transaction hash, `0x` + hex.
    pub tx_hash: String,
    /// CAIP-2 chain id.
    pub chain_id: String,
    /// When it was recorded.
    pub anchored_at: DateTime<Utc>,
}

/// A stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRecord {
    /// Batch id.
    pub id: Uuid,
    /// Number of member requests.
    pub request_count: i32,
    /// When the batch was closed.
    pub created_at: DateTime<Utc>,
    /// When its message was last sent to the workers.
    pub announced_at: Option<DateTime<Utc>>,
    /// The anchor, once anchored.
    pub anchored: Option<AnchoredBatch>,
    /// Why it failed for good, if it did.
    pub failed: Option<String>,
    /// The batch its members moved to after it failed.
    pub replaced_by: Option<Uuid>,
}

/// A claim of the newest tip of a (stream id, origin) pair; see
/// [`RequestStore::claim_tips`](crate::RequestStore::claim_tips).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TipClaim {
    /// The pair's key: the first 16 bytes of sha256(stream id, 0, origin).
    pub key: Uuid,
    /// The request claiming the tip.
    pub request_id: Uuid,
    /// Its client timestamp.
    pub timestamp: ClientTimestamp,
}

impl TipClaim {
    /// A claim for `request_id` of the tip of (`stream_id`, `origin`).
    pub fn new(
        stream_id: &str,
        origin: &str,
        request_id: Uuid,
        timestamp: ClientTimestamp,
    ) -> Self {
        Self {
            key: tip_key(stream_id, origin),
            request_id,
            timestamp,
        }
    }
}

/// The key of a (stream id, origin) pair's tip: the first 16 bytes of sha256(stream id, 0,
/// origin).
pub fn tip_key(stream_id: &str, origin: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(stream_id.as_bytes());
    hash.update([0]);
    hash.update(origin.as_bytes());
    let digest = hash.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    Uuid::from_bytes(key)
}

/// What [`RequestStore::claim_tips`](crate::RequestStore::claim_tips) decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TipClaims {
    /// Requests that are no longer PENDING and unbatched (already batched, REPLACED, or
    /// unknown): nothing was claimed for them.
    pub gone: Vec<Uuid>,
    /// Requests whose claim failed: a newer request of their stream and origin was batched
    /// before. They are to be REPLACED.
    pub outdated: Vec<Uuid>,
}

/// A position in the order in which requests were committed, with the request id breaking
/// ties (one insert commits many requests at one position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SweepPosition {
    /// The commit position (PostgreSQL: the inserting transaction's id; SQLite: the rowid).
    pub position: i64,
    /// The request id.
    pub id: Uuid,
}

impl SweepPosition {
    /// Just before every request at `position`.
    pub fn before(position: i64) -> Self {
        Self {
            position,
            id: Uuid::nil(),
        }
    }
}

/// A page of [`RequestStore::unbatched_after`](crate::RequestStore::unbatched_after).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbatchedPage {
    /// PENDING requests in no batch, in commit order, with their positions.
    pub rows: Vec<(SweepPosition, RequestRecord)>,
    /// Every request committed after the call has a position at or above this.
    pub horizon: i64,
}

/// A stored request in its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// Request id.
    pub id: Uuid,
    /// Canonical CID string.
    pub cid: String,
    /// Base36 stream id.
    pub stream_id: String,
    /// Who asked.
    pub origin: String,
    /// The client's timestamp.
    pub timestamp: ClientTimestamp,
    /// Stored status (the effective status also considers `anchor`).
    pub stored_status: RequestStatus,
    /// Stored message.
    pub stored_message: String,
    /// When it was accepted.
    pub created_at: DateTime<Utc>,
    /// When its stored state last changed.
    pub updated_at: DateTime<Utc>,
    /// Its anchor, once anchored.
    pub anchor: Option<AnchorRecord>,
}

impl RequestRecord {
    /// A freshly created PENDING record for a new request.
    pub fn pending(new: &NewRequest) -> Self {
        Self {
            id: new.id,
            cid: new.cid.clone(),
            stream_id: new.stream_id.clone(),
            origin: new.origin.clone(),
            timestamp: new.timestamp,
            stored_status: RequestStatus::Pending,
            stored_message: messages::PENDING.to_owned(),
            created_at: new.created_at,
            updated_at: new.created_at,
            anchor: None,
        }
    }

    /// The status clients see: COMPLETED once an anchor exists, else the stored one.
    pub fn status(&self) -> RequestStatus {
        if self.anchor.is_some() {
            RequestStatus::Completed
        } else {
            self.stored_status
        }
    }

    /// The message clients see.
    pub fn message(&self) -> &str {
        if self.anchor.is_some() {
            messages::COMPLETED
        } else {
            &self.stored_message
        }
    }

    /// When the visible state last changed.
    pub fn effective_updated_at(&self) -> DateTime<Utc> {
        match &self.anchor {
            Some(anchor) => anchor.anchored_at.max(self.updated_at),
            None => self.updated_at,
        }
    }
}

/// The result of inserting one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// Newly stored (the API answers 201).
    Created(RequestRecord),
    /// Already stored, in its current state (the API answers 202).
    Existing(RequestRecord),
}

impl InsertOutcome {
    /// The record, whichever way it came.
    pub fn record(&self) -> &RequestRecord {
        match self {
            Self::Created(r) | Self::Existing(r) => r,
        }
    }
}
