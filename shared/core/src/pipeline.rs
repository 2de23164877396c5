//! Formats the roles exchange: ingest messages (API → scheduler), batch messages
//! (scheduler → worker) and batch files (the sorted leaves of one batch, in blob storage).

use std::io::Cursor;

use cid::Cid;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Blob key of a batch file.
pub fn batch_file_key(batch_id: Uuid) -> String {
    format!("batches/{batch_id}")
}

/// Blob key of a batch's tree artifact.
pub fn tree_artifact_key(batch_id: Uuid) -> String {
    format!("trees/{batch_id}")
}

/// One accepted request, as published on the ingest multi-queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestEntry {
    /// Request id.
    pub id: Uuid,
    /// Canonical CID string.
    pub cid: String,
    /// Stream id.
    pub sid: String,
    /// Origin (DID or IP).
    pub org: String,
    /// Client timestamp, Unix nanoseconds.
    pub ts: i64,
}

/// A packed ingest message: many requests per queue message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestMessage {
    /// Format version (1).
    pub v: u8,
    /// The requests.
    pub reqs: Vec<IngestEntry>,
}

/// Why a pipeline message or file could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PipelineFormatError {
    /// The JSON message is malformed.
    #[error("malformed message: {0}")]
    Message(String),
    /// The message has a version this build does not know.
    #[error("unsupported message version {0}")]
    Version(u8),
    /// The batch file is malformed.
    #[error("malformed batch file: {0}")]
    BatchFile(String),
}

/// Pack entries into as few messages as possible, each at most `max_bytes` long.
/// An entry that alone exceeds the limit is an error (it cannot be sent).
pub fn pack_ingest(
    entries: &[IngestEntry],
    max_bytes: usize,
) -> Result<Vec<String>, PipelineFormatError> {
    // {"v":1,"reqs":[ ... ]} around comma-separated entries.
    const OVERHEAD: usize = r#"{"v":1,"reqs":[]}"#.len();
    let mut messages = Vec::new();
    let mut current = String::new();
    let flush = |current: &mut String, messages: &mut Vec<String>| {
        if !current.is_empty() {
            messages.push(format!(r#"{{"v":1,"reqs":[{current}]}}"#));
            current.clear();
        }
    };
    for entry in entries {
        let json = serde_json::to_string(entry)
            .map_err(|e| PipelineFormatError::Message(e.to_string()))?;
        if json.len() + OVERHEAD > max_bytes {
            return Err(PipelineFormatError::Message(format!(
                "entry of {} bytes does not fit a message",
                json.len()
            )));
        }
        if !current.is_empty() && current.len() + 1 + json.len() + OVERHEAD > max_bytes {
            flush(&mut current, &mut messages);
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&json);
    }
    flush(&mut current, &mut messages);
    Ok(messages)
}

/// Read an ingest message.
pub fn parse_ingest(body: &str) -> Result<IngestMessage, PipelineFormatError> {
    let message: IngestMessage =
        serde_json::from_str(body).map_err(|e| PipelineFormatError::Message(e.to_string()))?;
    if message.v != 1 {
        return Err(PipelineFormatError::Version(message.v));
    }
    Ok(message)
}

/// The message that hands a closed batch to the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMessage {
    /// Format version (1).
    pub v: u8,
    /// Batch id.
    pub bid: Uuid,
}

impl BatchMessage {
    /// A message for a batch.
    pub fn new(bid: Uuid) -> Self {
        Self { v: 1, bid }
    }

    /// Serialize.
    pub fn to_json(self) -> String {
        format!(r#"{{"v":1,"bid":"{}"}}"#, self.bid)
    }

    /// Read a batch message.
    pub fn parse(body: &str) -> Result<Self, PipelineFormatError> {
        let message: Self =
            serde_json::from_str(body).map_err(|e| PipelineFormatError::Message(e.to_string()))?;
        if message.v != 1 {
            return Err(PipelineFormatError::Version(message.v));
        }
        Ok(message)
    }
}

const BATCH_MAGIC: &[u8; 8] = b"CASBATC1";

/// Encode a batch file: magic, batch id (16 bytes), leaf count (u32 LE), then each leaf CID
/// as a length byte followed by its binary form. Leaves are in tree order.
pub fn encode_batch_file(batch_id: Uuid, leaves: &[Cid]) -> Vec<u8> {
    let mut out = Vec::with_capacity(28 + leaves.len() * 38);
    out.extend_from_slice(BATCH_MAGIC);
    out.extend_from_slice(batch_id.as_bytes());
    out.extend_from_slice(&(leaves.len() as u32).to_le_bytes());
    for leaf in leaves {
        let bytes = leaf.to_bytes();
        out.push(bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out
}

/// Decode a batch file.
pub fn decode_batch_file(bytes: &[u8]) -> Result<(Uuid, Vec<Cid>), PipelineFormatError> {
    let bad = |m: &str| PipelineFormatError::BatchFile(m.to_owned());
    if bytes.len() < 28 || &bytes[..8] != BATCH_MAGIC {
        return Err(bad("bad magic or short header"));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[8..24]);
    let mut count = [0u8; 4];
    count.copy_from_slice(&bytes[24..28]);
    let count = u32::from_le_bytes(count) as usize;
    let mut leaves = Vec::with_capacity(count.min(bytes.len() / 2));
    let mut at = 28;
    for _ in 0..count {
        let len = *bytes.get(at).ok_or_else(|| bad("truncated"))? as usize;
        let cid_bytes = bytes
            .get(at + 1..at + 1 + len)
            .ok_or_else(|| bad("truncated"))?;
        let mut cursor = Cursor::new(cid_bytes);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| bad(&format!("leaf cid: {e}")))?;
        if cursor.position() as usize != len {
            return Err(bad("leaf length does not match its cid"));
        }
        leaves.push(cid);
        at += 1 + len;
    }
    if at != bytes.len() {
        return Err(bad("trailing bytes"));
    }
    Ok((Uuid::from_bytes(id), leaves))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> IngestEntry {
        IngestEntry {
            id: Uuid::now_v7(),
            cid: format!("bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkz{i:05}"),
            sid: "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b".to_owned(),
            org: "127.0.0.1".to_owned(),
            ts: 1_700_000_000_000_000_000 + i as i64,
        }
    }

    #[test]
    fn packing_fills_messages_up_to_the_limit_and_round_trips() {
        let entries: Vec<IngestEntry> = (0..5000).map(entry).collect();
        let messages = pack_ingest(&entries, 256 * 1024).unwrap();
        assert!(
            messages.len() <= 6,
            "{} messages for 5000 entries",
            messages.len()
        );
        let mut back = Vec::new();
        for m in &messages {
            assert!(m.len() <= 256 * 1024);
            back.extend(parse_ingest(m).unwrap().reqs);
        }
        assert_eq!(back, entries);
        assert!(pack_ingest(&[], 1024).unwrap().is_empty());
        assert!(
            pack_ingest(&entries[..1], 50).is_err(),
            "an entry that cannot fit"
        );
        let small = pack_ingest(&entries[..10], 600).unwrap();
        assert!(small.len() >= 4 && small.iter().all(|m| m.len() <= 600));
    }

    #[test]
    fn messages_reject_garbage_and_unknown_versions() {
        assert!(parse_ingest("not json").is_err());
        assert_eq!(
            parse_ingest(r#"{"v":2,"reqs":[]}"#),
            Err(PipelineFormatError::Version(2))
        );
        let m = BatchMessage::new(Uuid::now_v7());
        assert_eq!(BatchMessage::parse(&m.to_json()).unwrap(), m);
        assert!(BatchMessage::parse(r#"{"v":1}"#).is_err());
        assert!(
            BatchMessage::parse(r#"{"v":9,"bid":"00000000-0000-0000-0000-000000000000"}"#).is_err()
        );
    }

    #[test]
    fn batch_files_round_trip_and_reject_corruption() {
        let leaves: Vec<Cid> = (0..100u32)
            .map(|i| {
                let cid: Cid = "bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54"
                    .parse()
                    .unwrap();
                let codec = if i % 2 == 0 { 0x71 } else { 0x85 };
                Cid::new_v1(codec, cid.hash().to_owned())
            })
            .collect();
        let id = Uuid::now_v7();
        let bytes = encode_batch_file(id, &leaves);
        assert_eq!(decode_batch_file(&bytes).unwrap(), (id, leaves.clone()));
        for cut in [0, 10, 27, 28, 100, bytes.len() - 1] {
            assert!(decode_batch_file(&bytes[..cut]).is_err(), "cut {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode_batch_file(&extra).is_err());
        let mut bad_len = bytes.clone();
        bad_len[28] = 3;
        assert!(decode_batch_file(&bad_len).is_err());
    }
}
