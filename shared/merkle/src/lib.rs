//! Merkle tree, anchor proof blocks and witness CARs for the Ceramic Anchor
//! Service, byte-compatible with the reference TypeScript CAS.
//!
//! - [`MerkleTree`]: the CAS tree shape (recursive ⌊n/2⌋ split, single leaf
//!   → `[leaf, null]`), with nodes encoded as dag-cbor `[link, link]` arrays
//!   and identified by CIDv1 dag-cbor sha2-256 CIDs.
//! - [`AnchorProof`] and [`AnchorCommit`]: the proof block and the anchor
//!   commit (time event), hand-encoded in canonical dag-cbor.
//! - [`build_witness_car`] / [`verify_witness_car`]: the per-request witness
//!   CAR (`anchor commit, proof, merkle nodes root→leaf`) and its verifier.
//! - [`encode_base64`] / [`decode_base64`]: the API's unpadded base64.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use cas_merkle::{AnchorProof, MerkleTree, dag_cbor_cid, sort_leaves, verify_witness_car};
//!
//! let mut leaves: Vec<_> = (0u8..5).map(|i| dag_cbor_cid(&[i])).collect();
//! sort_leaves(&mut leaves);
//! let tree = MerkleTree::build(leaves)?;
//! let proof = AnchorProof::contract(tree.root(), [0x11; 32], "eip155:1337");
//! let witness = tree.witness_car(3, dag_cbor_cid(b"stream genesis"), &proof).await?;
//! let checked = verify_witness_car(&witness.car).await?;
//! assert_eq!(checked.commit.prev, tree.leaves()[3]);
//! assert_eq!(checked.anchor_commit_cid, witness.anchor_commit_cid);
//! # Ok(())
//! # }
//! ```

mod artifact;
mod cbor;
mod cids;
mod proof;
mod tree;
mod witness;

pub use artifact::{
    ArtifactError, ArtifactIndex, DEFAULT_CHUNK_LEAVES, RangeRead, encode_artifact,
};
pub use cid::Cid;
pub use cids::{
    DAG_CBOR, DAG_JOSE, ETH_TX, IDENTITY, KECCAK_256, RAW, SHA2_256, dag_cbor_cid,
    dag_cbor_cid_from_digest, tx_hash_cid,
};
pub use proof::{AnchorCommit, AnchorProof, DecodeError, TX_TYPE_CONTRACT};
pub use tree::{
    LeafPath, MerkleError, MerkleTree, PathError, encode_node, format_path, parse_path, sort_leaves,
};
pub use witness::{
    Base64Error, VerifiedWitness, Witness, WitnessError, build_witness_car, decode_base64,
    encode_base64, path_nodes_from_blocks, verify_witness_car,
};
