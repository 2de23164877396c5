//! Anchor request bodies: JSON (every current client) and CAR (legacy js-ceramic).

use std::{collections::BTreeMap, io::Cursor};

use cid::Cid;
use ipld_core::ipld::Ipld;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{ClientTimestamp, StreamId};

/// A validated anchor request, as parsed from either body form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorRequest {
    /// The CID to anchor (any codec). Its canonical string is the request key.
    pub cid: Cid,
    /// The stream the CID belongs to.
    pub stream_id: StreamId,
    /// When the client made the request; the newest one per stream and origin wins.
    pub timestamp: ClientTimestamp,
    /// `jsCeramicVersion`, if sent (a metric label only).
    pub js_ceramic_version: Option<String>,
    /// `ceramicOneVersion`, if sent (a metric label only).
    pub ceramic_one_version: Option<String>,
}

/// Why a request body was rejected. The message is what the client sees in `{"error": ...}`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// The JSON body is not valid JSON or not an object.
    #[error("request body is not a JSON object: {0}")]
    NotJson(String),
    /// One or more fields are missing or invalid (messages joined with "; ").
    #[error("{}", .0.join("; "))]
    Fields(Vec<String>),
    /// The CAR body could not be read.
    #[error("request body is not a valid CAR file: {0}")]
    Car(String),
}

const SHA2_256: u64 = 0x12;

/// Longest version string kept; longer ones are cut (they are only labels).
const MAX_VERSION_LEN: usize = 128;

/// Longest CID or StreamID string accepted. The longest possible CID (a 64-byte digest with
/// maximal varints) is 689 characters even in base2; real ones are 59-62. Multibase decoding
/// of base36/base58 is quadratic in the length, so a 100 KB "CID" would cost seconds of CPU:
/// the bound keeps hostile input cheap.
pub const MAX_ID_TEXT_LEN: usize = 1024;

/// Parse a CID string and return it; the canonical string form is `cid.to_string()`.
pub fn parse_cid(text: &str) -> Result<Cid, String> {
    if text.is_empty() {
        return Err("cid is empty".to_owned());
    }
    if text.len() > MAX_ID_TEXT_LEN {
        return Err(format!(
            "cid is {} characters long; no CID is longer than {MAX_ID_TEXT_LEN}",
            text.len()
        ));
    }
    Cid::try_from(text).map_err(|e| format!("cid {:?} is not a valid CID: {e}", preview(text)))
}

/// Client input echoed in an error message, cut to a readable length.
fn preview(text: &str) -> String {
    const SHOWN: usize = 100;
    match text.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parse a JSON request body: `{streamId, cid, timestamp, jsCeramicVersion?, ceramicOneVersion?}`.
/// Unknown fields are ignored.
pub fn parse_json_request(body: &[u8]) -> Result<AnchorRequest, RequestError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RequestError::NotJson(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(RequestError::NotJson("expected an object".to_owned()));
    };
    let mut errors = Vec::new();
    let text_field = |name: &str, errors: &mut Vec<String>| match map.get(name) {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) | None => {
            errors.push(format!("{name} is required"));
            None
        }
        Some(_) => {
            errors.push(format!("{name} must be a string"));
            None
        }
    };
    let stream_id = text_field("streamId", &mut errors).and_then(|s| {
        s.parse::<StreamId>()
            .map_err(|e| errors.push(format!("invalid streamId {:?}: {e}", preview(&s))))
            .ok()
    });
    let cid =
        text_field("cid", &mut errors).and_then(|s| parse_cid(&s).map_err(|e| errors.push(e)).ok());
    let timestamp = text_field("timestamp", &mut errors).and_then(|s| {
        ClientTimestamp::parse(&s)
            .map_err(|e| errors.push(e.to_string()))
            .ok()
    });
    let version = |name: &str| match map.get(name) {
        Some(Value::String(s)) => Some(s.chars().take(MAX_VERSION_LEN).collect()),
        _ => None,
    };
    match (cid, stream_id, timestamp) {
        (Some(cid), Some(stream_id), Some(timestamp)) if errors.is_empty() => Ok(AnchorRequest {
            cid,
            stream_id,
            timestamp,
            js_ceramic_version: version("jsCeramicVersion"),
            ceramic_one_version: version("ceramicOneVersion"),
        }),
        _ => Err(RequestError::Fields(errors)),
    }
}

/// Parse a CAR request body (`application/vnd.ipld.car`). Only `roots[0]` is read: a dag-cbor
/// map `{streamId: bytes, timestamp: string, tip: link}`; `tip` is the CID to anchor. Other
/// blocks (genesis, signed commit, CACAO) are ignored.
pub async fn parse_car_request(body: &[u8]) -> Result<AnchorRequest, RequestError> {
    let car_err = |e: &dyn std::fmt::Display| RequestError::Car(e.to_string());
    let mut reader = iroh_car::CarReader::new(Cursor::new(body))
        .await
        .map_err(|e| car_err(&e))?;
    let root = *reader
        .header()
        .roots()
        .first()
        .ok_or_else(|| RequestError::Car("the CAR has no root".to_owned()))?;
    // Read every block, so a truncated or corrupt CAR is rejected even when its root is intact.
    let mut root_block = None;
    while let Some((cid, data)) = reader.next_block().await.map_err(|e| car_err(&e))? {
        if cid == root && root_block.is_none() {
            root_block = Some(data);
        }
    }
    let data = root_block.ok_or_else(|| {
        RequestError::Car(format!("the CAR does not contain its root block {root}"))
    })?;
    if root.hash().code() == SHA2_256 && Sha256::digest(&data)[..] != *root.hash().digest() {
        return Err(RequestError::Car(format!(
            "root block does not hash to its cid {root}"
        )));
    }
    if root.codec() != 0x71 {
        return Err(RequestError::Car(format!(
            "root block {root} is not dag-cbor"
        )));
    }
    let ipld: Ipld = serde_ipld_dagcbor::from_slice(&data)
        .map_err(|e| RequestError::Car(format!("root block is not valid dag-cbor: {e}")))?;
    let Ipld::Map(map) = ipld else {
        return Err(RequestError::Car("root block is not a map".to_owned()));
    };
    parse_car_root(&map)
}

/// The first root of a CAR body, read from its header alone. This is what a signed CAR
/// request's digest names (`car.roots[0].toString()` in js-ceramic).
pub fn car_root(body: &[u8]) -> Result<Cid, RequestError> {
    let bad = |m: &str| RequestError::Car(m.to_owned());
    let (len, rest) =
        unsigned_varint::decode::usize(body).map_err(|_| bad("malformed header length"))?;
    let header = rest.get(..len).ok_or_else(|| bad("truncated header"))?;
    let header: Ipld = serde_ipld_dagcbor::from_slice(header)
        .map_err(|e| RequestError::Car(format!("header is not dag-cbor: {e}")))?;
    let Ipld::Map(header) = header else {
        return Err(bad("header is not a map"));
    };
    if header.get("version") != Some(&Ipld::Integer(1)) {
        return Err(bad("not a CARv1"));
    }
    match header.get("roots") {
        Some(Ipld::List(roots)) => match roots.first() {
            Some(Ipld::Link(root)) => Ok(*root),
            Some(_) => Err(bad("a root is not a CID")),
            None => Err(bad("the CAR has no root")),
        },
        _ => Err(bad("header has no roots")),
    }
}

fn parse_car_root(map: &BTreeMap<String, Ipld>) -> Result<AnchorRequest, RequestError> {
    let mut errors = Vec::new();
    let stream_id = match map.get("streamId") {
        Some(Ipld::Bytes(bytes)) => StreamId::from_bytes(bytes)
            .map_err(|e| errors.push(format!("invalid streamId: {e}")))
            .ok(),
        Some(_) => {
            errors.push("streamId must be bytes".to_owned());
            None
        }
        None => {
            errors.push("streamId is required".to_owned());
            None
        }
    };
    let cid = match map.get("tip") {
        Some(Ipld::Link(cid)) => Some(*cid),
        Some(_) => {
            errors.push("tip must be a CID link".to_owned());
            None
        }
        None => {
            errors.push("tip is required".to_owned());
            None
        }
    };
    let timestamp = match map.get("timestamp") {
        Some(Ipld::String(s)) => ClientTimestamp::parse(s)
            .map_err(|e| errors.push(e.to_string()))
            .ok(),
        Some(_) => {
            errors.push("timestamp must be a string".to_owned());
            None
        }
        None => {
            errors.push("timestamp is required".to_owned());
            None
        }
    };
    match (cid, stream_id, timestamp) {
        (Some(cid), Some(stream_id), Some(timestamp)) if errors.is_empty() => Ok(AnchorRequest {
            cid,
            stream_id,
            timestamp,
            js_ceramic_version: None,
            ceramic_one_version: None,
        }),
        _ => Err(RequestError::Fields(errors)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b";
    const CID: &str = "bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54";

    fn body(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn parses_ceramic_one_body() {
        let req = parse_json_request(&body(serde_json::json!({
            "streamId": STREAM, "cid": CID,
            "timestamp": "2024-07-30T00:11:15.631123456+00:00",
            "ceramicOneVersion": "ceramic-one/0.40.0"
        })))
        .unwrap();
        assert_eq!(req.cid.to_string(), CID);
        assert_eq!(req.stream_id.to_string(), STREAM);
        assert_eq!(
            req.ceramic_one_version.as_deref(),
            Some("ceramic-one/0.40.0")
        );
        assert_eq!(req.js_ceramic_version, None);
    }

    #[test]
    fn canonicalizes_cid_strings() {
        // The same CID in base58btc (z...) is stored under its base32 form.
        let cid = Cid::try_from(CID).unwrap();
        let b58 = cid.to_string_of_base(multibase::Base::Base58Btc).unwrap();
        let req = parse_json_request(&body(serde_json::json!({
            "streamId": STREAM, "cid": b58, "timestamp": "2023-01-25T17:32:42.971Z"
        })))
        .unwrap();
        assert_eq!(req.cid.to_string(), CID);
    }

    #[test]
    fn reports_every_bad_field() {
        let err = parse_json_request(&body(serde_json::json!({
            "streamId": "nope", "cid": 5
        })))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("invalid streamId"), "{text}");
        assert!(text.contains("cid must be a string"), "{text}");
        assert!(text.contains("timestamp is required"), "{text}");

        let err = parse_json_request(&body(serde_json::json!({
            "streamId": STREAM, "cid": "bafy-not-a-cid", "timestamp": "2023-01-25T17:32:42.971Z"
        })))
        .unwrap_err();
        assert!(err.to_string().contains("not a valid CID"));
    }

    #[test]
    fn rejects_non_objects() {
        assert!(matches!(
            parse_json_request(b"[]"),
            Err(RequestError::NotJson(_))
        ));
        assert!(matches!(
            parse_json_request(b"{"),
            Err(RequestError::NotJson(_))
        ));
        assert!(matches!(
            parse_json_request(b""),
            Err(RequestError::NotJson(_))
        ));
    }

    #[tokio::test]
    async fn parses_the_recorded_car_request() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let car = std::fs::read(format!("{dir}/cas-car-request.car")).unwrap();
        let expect: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{dir}/cas-car-request.json")).unwrap())
                .unwrap();
        let req = parse_car_request(&car).await.unwrap();
        assert_eq!(
            req.cid.to_string(),
            expect["expect"]["cid"].as_str().unwrap()
        );
        assert_eq!(
            req.stream_id.to_string(),
            expect["expect"]["streamId"].as_str().unwrap()
        );
        assert_eq!(
            req.timestamp,
            ClientTimestamp::parse(expect["expect"]["timestamp"].as_str().unwrap()).unwrap()
        );
    }

    #[tokio::test]
    async fn rejects_garbage_cars() {
        for bad in [&b""[..], b"garbage", &[0xff; 64]] {
            assert!(matches!(
                parse_car_request(bad).await,
                Err(RequestError::Car(_))
            ));
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let car = std::fs::read(format!("{dir}/cas-car-request.car")).unwrap();
        for cut in [10, 60, car.len() / 2] {
            assert!(
                parse_car_request(&car[..cut]).await.is_err(),
                "cut at {cut}"
            );
        }
    }
}
