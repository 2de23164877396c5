//! The anchor proof block and the anchor commit (time event).

use std::collections::BTreeMap;

use cid::Cid;
use ipld_core::ipld::Ipld;

use crate::cbor::{MAJOR_MAP, write_header, write_link, write_text};
use crate::cids::{dag_cbor_cid, tx_hash_cid};

/// `txType` of proofs anchored through the CAS contract (`anchorDagCbor(bytes32)`).
pub const TX_TYPE_CONTRACT: &str = "f(bytes32)";

/// Errors from decoding a proof or anchor commit block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not valid dag-cbor.
    #[error("invalid dag-cbor: {0}")]
    Cbor(String),
    /// The block is valid dag-cbor but not a map.
    #[error("block is not a map")]
    NotAMap,
    /// A required field is absent.
    #[error("missing field {0:?}")]
    MissingField(&'static str),
    /// A field has the wrong type.
    #[error("field {field:?} is not a {expected}")]
    WrongType {
        /// The field name.
        field: &'static str,
        /// The expected IPLD kind.
        expected: &'static str,
    },
}

fn decode_map(bytes: &[u8]) -> Result<BTreeMap<String, Ipld>, DecodeError> {
    match serde_ipld_dagcbor::from_slice::<Ipld>(bytes) {
        Ok(Ipld::Map(m)) => Ok(m),
        Ok(_) => Err(DecodeError::NotAMap),
        Err(e) => Err(DecodeError::Cbor(e.to_string())),
    }
}

fn get_link(m: &BTreeMap<String, Ipld>, field: &'static str) -> Result<Cid, DecodeError> {
    match m.get(field) {
        Some(Ipld::Link(c)) => Ok(*c),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "link",
        }),
        None => Err(DecodeError::MissingField(field)),
    }
}

fn get_opt_string(
    m: &BTreeMap<String, Ipld>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match m.get(field) {
        Some(Ipld::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(DecodeError::WrongType {
            field,
            expected: "string",
        }),
        None => Ok(None),
    }
}

fn get_string(m: &BTreeMap<String, Ipld>, field: &'static str) -> Result<String, DecodeError> {
    get_opt_string(m, field)?.ok_or(DecodeError::MissingField(field))
}

/// The anchor proof block: dag-cbor map `{root, txHash, txType, chainId}`
/// (canonical key order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnchorProof {
    /// The Merkle root (CIDv1 dag-cbor sha2-256).
    pub root: Cid,
    /// The transaction hash as an eth-tx/keccak-256 CID (see [`tx_hash_cid`]).
    pub tx_hash: Cid,
    /// The CAIP-168 transaction type, `"f(bytes32)"` for contract anchors.
    /// An empty string means "absent" (legacy raw v0 transactions): the
    /// field is then omitted from the encoding.
    pub tx_type: String,
    /// CAIP-2 chain id, e.g. `"eip155:1337"`.
    pub chain_id: String,
}

impl AnchorProof {
    /// A contract-anchor proof (`txType` = `"f(bytes32)"`) for a root, a raw
    /// 32-byte transaction hash and a CAIP-2 chain id.
    pub fn contract(root: Cid, tx_hash: [u8; 32], chain_id: impl Into<String>) -> Self {
        Self {
            root,
            tx_hash: tx_hash_cid(tx_hash),
            tx_type: TX_TYPE_CONTRACT.to_owned(),
            chain_id: chain_id.into(),
        }
    }

    /// Canonical dag-cbor encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        let fields = if self.tx_type.is_empty() { 3 } else { 4 };
        write_header(&mut out, MAJOR_MAP, fields);
        write_text(&mut out, "root");
        write_link(&mut out, &self.root);
        write_text(&mut out, "txHash");
        write_link(&mut out, &self.tx_hash);
        if !self.tx_type.is_empty() {
            write_text(&mut out, "txType");
            write_text(&mut out, &self.tx_type);
        }
        write_text(&mut out, "chainId");
        write_text(&mut out, &self.chain_id);
        out
    }

    /// CID of the encoded block (CIDv1 dag-cbor sha2-256).
    pub fn cid(&self) -> Cid {
        dag_cbor_cid(&self.encode())
    }

    /// Decodes a proof block. Unknown fields (old proofs carry `blockNumber`
    /// and `blockTimestamp`) are ignored, so re-encoding such a proof does not
    /// reproduce its bytes. A missing `txType` decodes as the empty string.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m = decode_map(bytes)?;
        Ok(Self {
            root: get_link(&m, "root")?,
            tx_hash: get_link(&m, "txHash")?,
            tx_type: get_opt_string(&m, "txType")?.unwrap_or_default(),
            chain_id: get_string(&m, "chainId")?,
        })
    }
}

/// The anchor commit / time event: dag-cbor map `{id, path, prev, proof}`
/// (canonical key order).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AnchorCommit {
    /// The stream's init (genesis) CID.
    pub id: Cid,
    /// The Merkle path from the root to `prev`, e.g. `"0/1/1"`.
    pub path: String,
    /// The anchored request CID (the Merkle leaf).
    pub prev: Cid,
    /// CID of the proof block.
    pub proof: Cid,
}

impl AnchorCommit {
    /// Canonical dag-cbor encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(200 + self.path.len());
        write_header(&mut out, MAJOR_MAP, 4);
        write_text(&mut out, "id");
        write_link(&mut out, &self.id);
        write_text(&mut out, "path");
        write_text(&mut out, &self.path);
        write_text(&mut out, "prev");
        write_link(&mut out, &self.prev);
        write_text(&mut out, "proof");
        write_link(&mut out, &self.proof);
        out
    }

    /// CID of the encoded block (CIDv1 dag-cbor sha2-256).
    pub fn cid(&self) -> Cid {
        dag_cbor_cid(&self.encode())
    }

    /// Decodes an anchor commit block. Unknown fields are ignored.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m = decode_map(bytes)?;
        Ok(Self {
            id: get_link(&m, "id")?,
            path: get_string(&m, "path")?,
            prev: get_link(&m, "prev")?,
            proof: get_link(&m, "proof")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_encode(pairs: Vec<(&str, Ipld)>) -> Vec<u8> {
        let m: BTreeMap<String, Ipld> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        serde_ipld_dagcbor::to_vec(&Ipld::Map(m)).unwrap()
    }

    fn proof() -> AnchorProof {
        AnchorProof::contract(dag_cbor_cid(b"root"), [0x11; 32], "eip155:1337")
    }

    #[test]
    fn proof_matches_serde_and_roundtrips() {
        let p = proof();
        let expected = serde_encode(vec![
            ("root", Ipld::Link(p.root)),
            ("txHash", Ipld::Link(p.tx_hash)),
            ("txType", Ipld::String(p.tx_type.clone())),
            ("chainId", Ipld::String(p.chain_id.clone())),
        ]);
        assert_eq!(p.encode(), expected);
        assert_eq!(AnchorProof::decode(&expected).unwrap(), p);
        assert_eq!(p.cid(), dag_cbor_cid(&expected));
    }

    #[test]
    fn proof_without_tx_type_and_with_extra_fields() {
        let p = proof();
        let old = serde_encode(vec![
            ("root", Ipld::Link(p.root)),
            ("txHash", Ipld::Link(p.tx_hash)),
            ("chainId", Ipld::String(p.chain_id.clone())),
            ("blockNumber", Ipld::Integer(123)),
            ("blockTimestamp", Ipld::Integer(456)),
        ]);
        let d = AnchorProof::decode(&old).unwrap();
        assert_eq!(d.tx_type, "");
        assert_eq!(d.root, p.root);
        let no_type = serde_encode(vec![
            ("root", Ipld::Link(p.root)),
            ("txHash", Ipld::Link(p.tx_hash)),
            ("chainId", Ipld::String(p.chain_id.clone())),
        ]);
        assert_eq!(d.encode(), no_type);
    }

    #[test]
    fn proof_decode_errors() {
        assert!(matches!(
            AnchorProof::decode(&[0xff, 0x00]),
            Err(DecodeError::Cbor(_))
        ));
        assert_eq!(AnchorProof::decode(&[0x80]), Err(DecodeError::NotAMap));
        let missing = serde_encode(vec![("root", Ipld::Link(proof().root))]);
        assert_eq!(
            AnchorProof::decode(&missing),
            Err(DecodeError::MissingField("txHash"))
        );
        let wrong = serde_encode(vec![("root", Ipld::String("x".into()))]);
        assert_eq!(
            AnchorProof::decode(&wrong),
            Err(DecodeError::WrongType {
                field: "root",
                expected: "link"
            })
        );
    }

    #[test]
    fn commit_matches_serde_and_roundtrips() {
        let c = AnchorCommit {
            id: dag_cbor_cid(b"genesis"),
            path: "0/1/1/0/1/0/0/1/1/1/0/1/0/1/0/1/1/0/1/0".to_owned(),
            prev: dag_cbor_cid(b"prev"),
            proof: proof().cid(),
        };
        let expected = serde_encode(vec![
            ("id", Ipld::Link(c.id)),
            ("path", Ipld::String(c.path.clone())),
            ("prev", Ipld::Link(c.prev)),
            ("proof", Ipld::Link(c.proof)),
        ]);
        assert_eq!(c.encode(), expected);
        assert_eq!(AnchorCommit::decode(&expected).unwrap(), c);
        assert_eq!(c.cid(), dag_cbor_cid(&expected));
        assert_eq!(
            AnchorCommit::decode(&proof().encode()),
            Err(DecodeError::MissingField("id"))
        );
    }
}
