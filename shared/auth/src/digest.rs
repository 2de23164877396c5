//! Body digests: what a signed request commits to.
//!
//! JSON bodies: `0x` + lowercase hex of sha256 over the body. Clients hash the exact bytes
//! they send (ceramic-one), or `JSON.stringify` of the body object, which is the same bytes
//! for what js-ceramic sends. The reference server hashed `JSON.stringify(JSON.parse(body))`:
//! a compact re-serialization in the original key order. We accept either.
//!
//! CAR bodies: the string of the CAR's first root CID (not a hash), as js-ceramic signs it.

use std::fmt::Write as _;

use serde::{
    Deserialize, Serialize,
    de::{MapAccess, SeqAccess, Visitor},
    ser::{SerializeMap, SerializeSeq},
};
use sha2::{Digest as _, Sha256};

/// A request body, by form.
#[derive(Debug, Clone, Copy)]
pub enum BodyDigest<'a> {
    /// `application/json` (or no content type).
    Json(&'a [u8]),
    /// `application/vnd.ipld.car`.
    Car(&'a [u8]),
}

impl BodyDigest<'_> {
    /// The digest a client signs for this body (`None`: a CAR without a readable root).
    pub fn compute(&self) -> Option<String> {
        match self {
            Self::Json(bytes) => Some(sha256_digest(bytes)),
            Self::Car(bytes) => cas_core::car_root(bytes).ok().map(|root| root.to_string()),
        }
    }

    /// Whether `claimed` is this body's digest.
    pub fn matches(&self, claimed: &str) -> bool {
        match self {
            Self::Json(bytes) => {
                claimed.eq_ignore_ascii_case(&sha256_digest(bytes))
                    || canonical_json_digest(bytes)
                        .is_some_and(|canonical| claimed.eq_ignore_ascii_case(&canonical))
            }
            Self::Car(_) => self.compute().is_some_and(|root| root == claimed),
        }
    }
}

/// `0x` + lowercase hex(sha256(bytes)).
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(66);
    out.push_str("0x");
    for byte in hash {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// The digest of the compact re-serialization of a JSON body, keys in their original order
/// (what `JSON.stringify(JSON.parse(body))` gives for bodies without floats). `None` if the
/// body is not JSON.
pub fn canonical_json_digest(bytes: &[u8]) -> Option<String> {
    let value: Ordered = serde_json::from_slice(bytes).ok()?;
    let compact = serde_json::to_vec(&value).ok()?;
    Some(sha256_digest(&compact))
}

/// A JSON value that keeps object keys in document order (serde_json's own `Value` sorts
/// them unless the workspace-wide `preserve_order` feature is on).
enum Ordered {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Ordered>),
    Object(Vec<(String, Ordered)>),
}

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OrderedVisitor)
    }
}

struct OrderedVisitor;

impl<'de> Visitor<'de> for OrderedVisitor {
    type Value = Ordered;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Ordered, E> {
        Ok(Ordered::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Ordered, E> {
        Ok(Ordered::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Ordered, E> {
        Ok(Ordered::Number(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Ordered, E> {
        Ok(Ordered::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Ordered, E> {
        serde_json::Number::from_f64(v)
            .map(Ordered::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Ordered, E> {
        Ok(Ordered::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Ordered, E> {
        Ok(Ordered::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Ordered, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ordered::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
        let mut entries: Vec<(String, Ordered)> = Vec::new();
        while let Some((key, value)) = map.next_entry::<String, Ordered>()? {
            // Like JSON.parse: a repeated key keeps its first position and its last value.
            match entries.iter_mut().find(|(k, _)| *k == key) {
                Some(entry) => entry.1 = value,
                None => entries.push((key, value)),
            }
        }
        Ok(Ordered::Object(entries))
    }
}

impl Serialize for Ordered {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Null => serializer.serialize_unit(),
            Self::Bool(b) => serializer.serialize_bool(*b),
            Self::Number(n) => n.serialize(serializer),
            Self::String(s) => serializer.serialize_str(s),
            Self::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Self::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"streamId":"k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b","cid":"bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54","timestamp":"2024-07-30T00:11:15.631123456+00:00","ceramicOneVersion":"ceramic-one/0.40.0"}"#;

    #[test]
    fn raw_digest_is_sha256_hex() {
        assert_eq!(
            sha256_digest(b""),
            "0xe3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let body = BodyDigest::Json(BODY.as_bytes());
        assert!(body.matches(&sha256_digest(BODY.as_bytes())));
        assert!(
            body.matches(
                &sha256_digest(BODY.as_bytes())
                    .to_uppercase()
                    .replace("0X", "0x")
            )
        );
        assert!(!body.matches("0x00"));
        assert!(!body.matches(""));
    }

    #[test]
    fn reformatted_json_matches_its_compact_form_in_key_order() {
        // The same object pretty-printed: the client signed the compact bytes.
        let pretty = BODY
            .replace("\",\"", "\",\n  \"")
            .replace("\":\"", "\": \"")
            .replace('{', "{ ");
        assert_ne!(pretty, BODY);
        let signed = sha256_digest(BODY.as_bytes());
        assert!(BodyDigest::Json(pretty.as_bytes()).matches(&signed));
        // Key order is part of the digest: a sorted re-serialization is another body.
        let sorted: serde_json::Value = serde_json::from_str(BODY).unwrap();
        let sorted = serde_json::to_string(&sorted).unwrap();
        assert_ne!(sorted, BODY);
        assert!(!BodyDigest::Json(sorted.as_bytes()).matches(&signed));
        // JSON.parse semantics for a repeated key.
        assert_eq!(
            canonical_json_digest(br#"{"a":1,"b":2,"a":3}"#),
            Some(sha256_digest(br#"{"a":3,"b":2}"#))
        );
        assert_eq!(canonical_json_digest(b"{"), None);
    }

    #[tokio::test]
    async fn car_digest_is_the_root_cid_string() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/tests/data");
        let car = std::fs::read(format!("{dir}/cas-car-request.car")).unwrap();
        let reader = iroh_car::CarReader::new(std::io::Cursor::new(&car[..]))
            .await
            .unwrap();
        let root = reader.header().roots()[0].to_string();
        assert!(BodyDigest::Car(&car).matches(&root));
        assert!(!BodyDigest::Car(&car).matches(&sha256_digest(&car)));
        assert!(!BodyDigest::Car(b"garbage").matches(&root));
    }
}
