//! The JSON body that describes a request ("presentation" in the reference).

use cas_store::RequestRecord;
use serde::Serialize;

use crate::BuiltWitness;

/// The wire form of a request's state. Field names and types are fixed by the clients:
/// `message` is always a string, times are Unix milliseconds, `anchorCommit` and
/// `witnessCar` appear only when COMPLETED.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Presentation {
    /// Request id (UUID).
    pub id: String,
    /// Status name.
    pub status: &'static str,
    /// The anchored CID.
    pub cid: String,
    /// The stream id.
    pub stream_id: String,
    /// Human-readable state.
    pub message: String,
    /// Creation time, Unix milliseconds.
    pub created_at: i64,
    /// Last change, Unix milliseconds.
    pub updated_at: i64,
    /// The anchor commit, when COMPLETED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor_commit: Option<AnchorCommitRef>,
    /// Base64 (standard alphabet, no padding) of the witness CAR, when COMPLETED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness_car: Option<String>,
}

/// `{"cid": ...}` of the anchor commit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AnchorCommitRef {
    /// Anchor commit CID.
    pub cid: String,
}

impl Presentation {
    /// The presentation of a stored request, with its witness if one was built. A completed
    /// request without a witness names its own CID as the anchor commit, as the reference
    /// does when it has no anchor row.
    pub fn of(record: &RequestRecord, witness: Option<&BuiltWitness>) -> Self {
        let anchor_commit = record.anchor.as_ref().map(|_| AnchorCommitRef {
            cid: witness.map_or_else(|| record.cid.clone(), |w| w.anchor_commit_cid.clone()),
        });
        Self {
            id: record.id.to_string(),
            status: record.status().as_str(),
            cid: record.cid.clone(),
            stream_id: record.stream_id.clone(),
            message: record.message().to_owned(),
            created_at: record.created_at.timestamp_millis(),
            updated_at: record.effective_updated_at().timestamp_millis(),
            witness_car: anchor_commit
                .as_ref()
                .and(witness)
                .map(|w| cas_merkle::encode_base64(&w.car)),
            anchor_commit,
        }
    }
}
