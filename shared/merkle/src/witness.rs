//! Witness CARs: building, verifying, and their base64 transport form.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use cid::Cid;
use ipld_core::ipld::Ipld;
use iroh_car::{CarHeader, CarReader, CarWriter};

use crate::cids::{DAG_CBOR, IDENTITY, SHA2_256, sha256};
use crate::proof::{AnchorCommit, AnchorProof, DecodeError};
use crate::tree::{MerkleError, MerkleTree, PathError, parse_path};

/// Errors from building or verifying a witness CAR.
///
/// CIDs are boxed to keep the error (and every `Result` carrying it) small.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The CAR could not be read or written.
    #[error("invalid car: {0}")]
    Car(String),
    /// The CAR header does not name exactly one root.
    #[error("car must have exactly one root, found {0}")]
    RootCount(usize),
    /// A block's data does not hash to its CID.
    #[error("hash mismatch: block data does not hash to {0}")]
    HashMismatch(Box<Cid>),
    /// A block needed for verification uses a hash function we cannot check.
    #[error("block {cid} uses unsupported multihash 0x{code:x}, cannot verify it")]
    UnsupportedHash {
        /// The block CID.
        cid: Box<Cid>,
        /// Its multihash code.
        code: u64,
    },
    /// A block needed for verification is not dag-cbor.
    #[error("{what} block {cid} is not dag-cbor (codec 0x{codec:x})")]
    NotDagCbor {
        /// Which block.
        what: &'static str,
        /// The block CID.
        cid: Box<Cid>,
        /// Its codec.
        codec: u64,
    },
    /// A block referenced by the witness is not in the CAR.
    #[error("missing {what} block {cid}")]
    MissingBlock {
        /// Which block.
        what: &'static str,
        /// The missing CID.
        cid: Box<Cid>,
    },
    /// The anchor commit or proof block does not decode.
    #[error("cannot decode {what} block {cid}: {source}")]
    Decode {
        /// Which block.
        what: &'static str,
        /// The block CID.
        cid: Box<Cid>,
        /// The decoding failure.
        source: DecodeError,
    },
    /// The anchor commit's path is not a `0`/`1` path.
    #[error("bad path: {0}")]
    BadPath(#[from] PathError),
    /// A block on the path is not a Merkle node.
    #[error("merkle node {cid} at depth {depth} is not a 2- or 3-element dag-cbor list")]
    BadNode {
        /// The node CID.
        cid: Box<Cid>,
        /// Its depth (0 = root).
        depth: usize,
    },
    /// The element a path step selects is not a link.
    #[error("bad path element: element {bit} of merkle node {cid} at depth {depth} is not a link")]
    NotALink {
        /// The node CID.
        cid: Box<Cid>,
        /// Its depth (0 = root).
        depth: usize,
        /// The selected element.
        bit: u8,
    },
    /// Following the path does not end at the anchor commit's `prev`.
    #[error("path does not lead to prev: expected {expected}, found {found}")]
    PathMismatch {
        /// `prev` of the anchor commit.
        expected: Box<Cid>,
        /// Where the path ends.
        found: Box<Cid>,
    },
    /// The parts handed to the CAR builder do not fit together.
    #[error("inconsistent witness input: {0}")]
    Inconsistent(&'static str),
    /// A Merkle tree query failed.
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

/// Error from [`decode_base64`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid base64: {0}")]
pub struct Base64Error(#[from] base64::DecodeError);

/// Standard alphabet, padding optional on decode.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Encodes bytes as the API's `witnessCar` string: base64, standard alphabet
/// (`+/`), **no** `=` padding.
pub fn encode_base64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// Decodes standard-alphabet base64, with or without `=` padding.
pub fn decode_base64(s: &str) -> Result<Vec<u8>, Base64Error> {
    Ok(BASE64_LENIENT.decode(s)?)
}

fn car_err(e: iroh_car::Error) -> WitnessError {
    WitnessError::Car(e.to_string())
}

/// Builds a witness CAR (CARv1, roots = `[anchor commit CID]`) with blocks in
/// the CAS's order: the anchor commit, the proof, then the Merkle nodes along
/// the path from the root down (`path_nodes`, as `(cid, bytes)`). The leaf
/// (`prev`) itself is not included.
///
/// Checks that `commit.proof` is the proof's CID and that the first path node
/// (if any) is `proof.root`; the node bytes are written as given.
pub async fn build_witness_car(
    commit: &AnchorCommit,
    proof: &AnchorProof,
    path_nodes: &[(Cid, Vec<u8>)],
) -> Result<Vec<u8>, WitnessError> {
    let commit_bytes = commit.encode();
    let commit_cid = crate::cids::dag_cbor_cid(&commit_bytes);
    let proof_bytes = proof.encode();
    let proof_cid = crate::cids::dag_cbor_cid(&proof_bytes);
    if commit.proof != proof_cid {
        return Err(WitnessError::Inconsistent(
            "anchor commit does not link to the proof block",
        ));
    }
    if let Some((first, _)) = path_nodes.first()
        && *first != proof.root
    {
        return Err(WitnessError::Inconsistent(
            "first path node is not the proof root",
        ));
    }
    let capacity = 64
        + commit_bytes.len()
        + proof_bytes.len()
        + path_nodes.iter().map(|(_, b)| b.len() + 48).sum::<usize>()
        + 96;
    let mut writer = CarWriter::new(
        CarHeader::new_v1(vec![commit_cid]),
        Vec::<u8>::with_capacity(capacity),
    );
    writer
        .write(commit_cid, &commit_bytes)
        .await
        .map_err(car_err)?;
    writer
        .write(proof_cid, &proof_bytes)
        .await
        .map_err(car_err)?;
    for (cid, bytes) in path_nodes {
        writer.write(*cid, bytes).await.map_err(car_err)?;
    }
    writer.finish().await.map_err(car_err)
}

/// Collects the Merkle nodes along `path` starting at `root`, fetching node
/// bytes with `get` (e.g. from a stored Merkle CAR), for [`build_witness_car`].
///
/// Like the reference CAS, a node that `get` cannot find is skipped quietly;
/// since its children are then unknown, the walk stops there. Each node that
/// is found must decode as a 2- or 3-element dag-cbor list whose selected
/// element is a link (the final element, `prev`, is never fetched).
pub fn path_nodes_from_blocks(
    root: Cid,
    path: &str,
    mut get: impl FnMut(&Cid) -> Option<Vec<u8>>,
) -> Result<Vec<(Cid, Vec<u8>)>, WitnessError> {
    let bits = parse_path(path)?;
    let mut nodes = Vec::with_capacity(bits.len());
    let mut current = root;
    for (depth, &bit) in bits.iter().enumerate() {
        let Some(data) = get(&current) else { break };
        let next = select_link(current, depth, &data, bit)?;
        nodes.push((current, data));
        current = next;
    }
    Ok(nodes)
}

/// Decodes Merkle node `cid` (at `depth`) and returns its link number `bit`.
fn select_link(cid: Cid, depth: usize, data: &[u8], bit: u8) -> Result<Cid, WitnessError> {
    let list = match serde_ipld_dagcbor::from_slice::<Ipld>(data) {
        Ok(Ipld::List(l)) if l.len() == 2 || l.len() == 3 => l,
        _ => {
            return Err(WitnessError::BadNode {
                cid: Box::new(cid),
                depth,
            });
        }
    };
    match list.get(usize::from(bit)) {
        Some(Ipld::Link(next)) => Ok(*next),
        _ => Err(WitnessError::NotALink {
            cid: Box::new(cid),
            depth,
            bit,
        }),
    }
}

/// A witness CAR built for one leaf of a [`MerkleTree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Witness {
    /// CID of the anchor commit (the CAR root; the API's `anchorCommit.cid`).
    pub anchor_commit_cid: Cid,
    /// The anchor commit.
    pub anchor_commit: AnchorCommit,
    /// The CARv1 bytes.
    pub car: Vec<u8>,
}

impl MerkleTree {
    /// The anchor commit for leaf `leaf_index`: `{id: stream_init_cid, path,
    /// prev: leaf, proof: proof_cid}`.
    pub fn anchor_commit(
        &self,
        leaf_index: usize,
        stream_init_cid: Cid,
        proof_cid: Cid,
    ) -> Result<AnchorCommit, MerkleError> {
        let path = self.path(leaf_index)?;
        Ok(AnchorCommit {
            id: stream_init_cid,
            path,
            prev: self.leaves()[leaf_index],
            proof: proof_cid,
        })
    }

    /// Builds the anchor commit and witness CAR for leaf `leaf_index`.
    /// `proof.root` must be this tree's root.
    pub async fn witness_car(
        &self,
        leaf_index: usize,
        stream_init_cid: Cid,
        proof: &AnchorProof,
    ) -> Result<Witness, WitnessError> {
        if proof.root != self.root() {
            return Err(WitnessError::Inconsistent(
                "proof root is not the tree root",
            ));
        }
        let lp = self.leaf_path(leaf_index)?;
        let anchor_commit = AnchorCommit {
            id: stream_init_cid,
            path: lp.path_string(),
            prev: lp.leaf,
            proof: proof.cid(),
        };
        let car = build_witness_car(&anchor_commit, proof, &lp.nodes).await?;
        Ok(Witness {
            anchor_commit_cid: anchor_commit.cid(),
            anchor_commit,
            car,
        })
    }
}

/// The result of a successful [`verify_witness_car`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedWitness {
    /// CID of the anchor commit (the CAR root).
    pub anchor_commit_cid: Cid,
    /// The decoded anchor commit.
    pub commit: AnchorCommit,
    /// The decoded proof.
    pub proof: AnchorProof,
    /// The parsed path bits (`0` = left, `1` = right).
    pub path: Vec<u8>,
    /// CIDs of the Merkle nodes walked, from the root down.
    pub merkle_nodes: Vec<Cid>,
}

/// Checks that `data` hashes to `cid`. Returns `Ok(false)` for hash functions
/// we cannot check (sha2-256 and identity are checked).
fn check_hash(cid: &Cid, data: &[u8]) -> Result<bool, WitnessError> {
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => sha256(data)[..] == *mh.digest(),
        IDENTITY => data == mh.digest(),
        _ => return Ok(false),
    };
    if ok {
        Ok(true)
    } else {
        Err(WitnessError::HashMismatch(Box::new(*cid)))
    }
}

struct Blocks {
    map: HashMap<Cid, (Vec<u8>, bool)>,
}

impl Blocks {
    /// A dag-cbor block that must be present and have a verified hash.
    fn get(&self, cid: &Cid, what: &'static str) -> Result<&[u8], WitnessError> {
        let (data, verified) = self
            .map
            .get(cid)
            .ok_or_else(|| WitnessError::MissingBlock {
                what,
                cid: Box::new(*cid),
            })?;
        if !verified {
            return Err(WitnessError::UnsupportedHash {
                cid: Box::new(*cid),
                code: cid.hash().code(),
            });
        }
        if cid.codec() != DAG_CBOR {
            return Err(WitnessError::NotDagCbor {
                what,
                cid: Box::new(*cid),
                codec: cid.codec(),
            });
        }
        Ok(data)
    }
}

/// Verifies a witness CAR the way a Ceramic node does: exactly one root (the
/// anchor commit); every sha2-256 block hashes to its CID; the proof block is
/// present; walking `proof.root` along `commit.path` through Merkle nodes
/// present in the CAR (2- or 3-element lists) ends at `commit.prev`. An empty
/// path means `prev == proof.root`.
///
/// Never panics on hostile input.
pub async fn verify_witness_car(car: &[u8]) -> Result<VerifiedWitness, WitnessError> {
    let mut reader = CarReader::new(car).await.map_err(car_err)?;
    let roots = reader.header().roots();
    if roots.len() != 1 {
        return Err(WitnessError::RootCount(roots.len()));
    }
    let anchor_commit_cid = roots[0];
    let mut blocks = Blocks {
        map: HashMap::new(),
    };
    while let Some((cid, data)) = reader.next_block().await.map_err(car_err)? {
        let verified = check_hash(&cid, &data)?;
        blocks.map.insert(cid, (data, verified));
    }

    let commit_bytes = blocks.get(&anchor_commit_cid, "anchor commit")?;
    let commit = AnchorCommit::decode(commit_bytes).map_err(|source| WitnessError::Decode {
        what: "anchor commit",
        cid: Box::new(anchor_commit_cid),
        source,
    })?;
    let proof_bytes = blocks.get(&commit.proof, "proof")?;
    let proof = AnchorProof::decode(proof_bytes).map_err(|source| WitnessError::Decode {
        what: "proof",
        cid: Box::new(commit.proof),
        source,
    })?;
    let path = parse_path(&commit.path)?;

    let mut current = proof.root;
    let mut merkle_nodes = Vec::with_capacity(path.len());
    // Every step must find its node in the CAR (unlike `path_nodes_from_blocks`).
    for (depth, &bit) in path.iter().enumerate() {
        let data = blocks.get(&current, "merkle node")?;
        merkle_nodes.push(current);
        current = select_link(current, depth, data, bit)?;
    }
    if current != commit.prev {
        return Err(WitnessError::PathMismatch {
            expected: Box::new(commit.prev),
            found: Box::new(current),
        });
    }
    Ok(VerifiedWitness {
        anchor_commit_cid,
        commit,
        proof,
        path,
        merkle_nodes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_no_padding() {
        for len in 0..10 {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let s = encode_base64(&bytes);
            assert!(!s.contains('='));
            assert_eq!(decode_base64(&s).unwrap(), bytes);
            let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
            assert_eq!(decode_base64(&padded).unwrap(), bytes);
        }
        assert_eq!(encode_base64(&[0xfb, 0xff]), "+/8");
        assert!(decode_base64("a").is_err());
        assert!(decode_base64("-_8").is_err());
    }
}
