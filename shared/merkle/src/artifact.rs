//! The tree artifact: a compact, per-batch file from which the witness of any leaf is built
//! with a constant number of ranged reads.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! header   64 bytes   magic "CASTREE1", leaf_count u64, leaf_width u32, chunk_leaves u32,
//!                     top_count u32, proof_len u32, leaves_offset u64, nodes_offset u64,
//!                     top_offset u64, zero padding
//! proof    proof_len  the dag-cbor proof block
//! leaves   leaf_count × (1 + leaf_width)   each leaf CID: length byte, bytes, zero padding
//! nodes    node_count × 32                 internal node digests in post-order
//! top      top_count × (4 + 32)            (post-order index u32, digest) of every internal
//!                                          node above the chunk level and of the chunk roots,
//!                                          sorted by index
//! ```
//!
//! A *chunk* is the first subtree on the way down whose range has at most `chunk_leaves`
//! leaves. Its internal nodes are contiguous in post-order and its leaves are contiguous, so
//! a witness needs the header and top section (read once per batch and cached in an
//! [`ArtifactIndex`]) plus two ranged reads: the chunk's nodes and the chunk's leaves.
//! For 2^20 leaves and chunks of 1024 the artifact is about 70 MB, the cached index about
//! 75 KB, and each witness reads about 70 KB.

use std::{future::Future, io::Cursor, ops::Range as ByteRange};

use cid::Cid;

use crate::{
    AnchorCommit, AnchorProof, MerkleTree, Witness, WitnessError,
    cids::dag_cbor_cid_from_digest,
    tree::{Child, NODE_BUF, Range, encode_node_into},
    witness::build_witness_car,
};

const MAGIC: &[u8; 8] = b"CASTREE1";
const HEADER_LEN: usize = 64;
const TOP_ENTRY: usize = 4 + 32;
/// Smallest chunk: with at least 4 leaves per chunk, every child of a node above the chunk
/// level is itself an internal node, so the top section never needs leaf CIDs.
const MIN_CHUNK_LEAVES: u32 = 4;
/// Default leaves per chunk.
pub const DEFAULT_CHUNK_LEAVES: u32 = 1024;

/// Errors reading a tree artifact.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The underlying storage failed (may be temporary).
    #[error("cannot read tree artifact: {0}")]
    Read(String),
    /// The bytes are not a valid artifact.
    #[error("corrupt tree artifact: {0}")]
    Corrupt(String),
    /// The leaf index is outside the tree.
    #[error("leaf index {index} out of range for {leaf_count} leaves")]
    LeafOutOfRange {
        /// Requested index.
        index: u64,
        /// Leaves in the tree.
        leaf_count: u64,
    },
    /// The leaf stored at an index is not the CID the caller expected.
    #[error("leaf {index} is {found}, not {expected}")]
    LeafMismatch {
        /// The index.
        index: u64,
        /// The CID stored there.
        found: Box<Cid>,
        /// The CID the caller expected.
        expected: Box<Cid>,
    },
    /// Building the witness CAR failed.
    #[error(transparent)]
    Witness(#[from] WitnessError),
}

/// Random access to the bytes of one artifact (a blob store object, a file, memory).
pub trait RangeRead: Sync {
    /// What a read gives: owned bytes, or a shared handle to cached ones (no copy).
    type Bytes: AsRef<[u8]> + Send;

    /// The bytes of `range`, clipped at the end of the artifact.
    fn read_range(
        &self,
        range: ByteRange<u64>,
    ) -> impl Future<Output = Result<Self::Bytes, ArtifactError>> + Send;
}

impl RangeRead for [u8] {
    type Bytes = Vec<u8>;

    async fn read_range(&self, range: ByteRange<u64>) -> Result<Vec<u8>, ArtifactError> {
        let len = self.len() as u64;
        let start = range.start.min(len) as usize;
        let end = range.end.clamp(range.start.min(len), len) as usize;
        Ok(self[start..end].to_vec())
    }
}

impl RangeRead for Vec<u8> {
    type Bytes = Vec<u8>;

    async fn read_range(&self, range: ByteRange<u64>) -> Result<Vec<u8>, ArtifactError> {
        self.as_slice().read_range(range).await
    }
}

/// Serialize a tree and its proof into an artifact, with chunks of at most `chunk_leaves`
/// leaves (values below 4 are raised to 4).
pub fn encode_artifact(tree: &MerkleTree, proof: &AnchorProof, chunk_leaves: u32) -> Vec<u8> {
    let chunk_leaves = chunk_leaves.max(MIN_CHUNK_LEAVES);
    let leaves = tree.leaves();
    let nodes = tree.node_digests();
    let leaf_width = leaves.iter().map(|c| c.encoded_len()).max().unwrap_or(0);
    let slot = 1 + leaf_width;
    let proof_bytes = proof.encode();

    let mut top: Vec<(u32, [u8; 32])> = Vec::new();
    if leaves.len() >= 2 {
        collect_top(
            nodes,
            root_range(leaves.len()),
            chunk_leaves as usize,
            &mut top,
        );
        top.sort_unstable_by_key(|(index, _)| *index);
    }

    let leaves_offset = HEADER_LEN + proof_bytes.len();
    let nodes_offset = leaves_offset + leaves.len() * slot;
    let top_offset = nodes_offset + nodes.len() * 32;
    let total = top_offset + top.len() * TOP_ENTRY;

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(leaves.len() as u64).to_le_bytes());
    out.extend_from_slice(&(leaf_width as u32).to_le_bytes());
    out.extend_from_slice(&chunk_leaves.to_le_bytes());
    out.extend_from_slice(&(top.len() as u32).to_le_bytes());
    out.extend_from_slice(&(proof_bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&(leaves_offset as u64).to_le_bytes());
    out.extend_from_slice(&(nodes_offset as u64).to_le_bytes());
    out.extend_from_slice(&(top_offset as u64).to_le_bytes());
    out.resize(HEADER_LEN, 0);
    out.extend_from_slice(&proof_bytes);
    let mut cid_buf = Vec::with_capacity(leaf_width);
    for leaf in leaves {
        cid_buf.clear();
        // Writing into a Vec cannot fail.
        let _ = leaf.write_bytes(&mut cid_buf);
        out.push(cid_buf.len() as u8);
        out.extend_from_slice(&cid_buf);
        out.resize(out.len() + leaf_width - cid_buf.len(), 0);
    }
    for digest in nodes {
        out.extend_from_slice(digest);
    }
    for (index, digest) in &top {
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(digest);
    }
    debug_assert_eq!(out.len(), total);
    out
}

fn root_range(leaf_count: usize) -> Range {
    Range {
        lo: 0,
        hi: leaf_count,
        base: 0,
    }
}

/// Record every node whose range is larger than a chunk, and its (internal) children.
fn collect_top(nodes: &[[u8; 32]], r: Range, chunk: usize, top: &mut Vec<(u32, [u8; 32])>) {
    if r.len() <= chunk {
        return;
    }
    top.push((r.own() as u32, nodes[r.own()]));
    for child in [r.left(), r.right()] {
        if child.len() > chunk {
            collect_top(nodes, child, chunk, top);
        } else if child.len() >= 2 {
            top.push((child.own() as u32, nodes[child.own()]));
        }
    }
}

/// The cached part of an artifact: header, proof and the top section.
#[derive(Debug, Clone)]
pub struct ArtifactIndex {
    leaf_count: u64,
    leaf_width: u64,
    chunk_leaves: u64,
    leaves_offset: u64,
    nodes_offset: u64,
    proof: AnchorProof,
    top: Vec<(u32, [u8; 32])>,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

fn corrupt(msg: impl Into<String>) -> ArtifactError {
    ArtifactError::Corrupt(msg.into())
}

impl ArtifactIndex {
    /// Read the header, the proof and the top section (two or three ranged reads).
    pub async fn load(source: &(impl RangeRead + ?Sized)) -> Result<Self, ArtifactError> {
        let head = source.read_range(0..4096).await?;
        let head = head.as_ref();
        if head.len() < HEADER_LEN || &head[..8] != MAGIC {
            return Err(corrupt("bad magic or short header"));
        }
        let leaf_count = u64_at(head, 8);
        let leaf_width = u64::from(u32_at(head, 16));
        let chunk_leaves = u64::from(u32_at(head, 20));
        let top_count = u64::from(u32_at(head, 24));
        let proof_len = u32_at(head, 28) as usize;
        let leaves_offset = u64_at(head, 32);
        let nodes_offset = u64_at(head, 40);
        let top_offset = u64_at(head, 48);
        let node_count = if leaf_count == 1 {
            1
        } else {
            leaf_count.saturating_sub(1)
        };
        let consistent = leaf_count >= 1
            && leaf_width <= 255
            && chunk_leaves >= u64::from(MIN_CHUNK_LEAVES)
            && leaves_offset == (HEADER_LEN + proof_len) as u64
            && Some(nodes_offset)
                == leaf_count
                    .checked_mul(1 + leaf_width)
                    .and_then(|l| l.checked_add(leaves_offset))
            && Some(top_offset)
                == node_count
                    .checked_mul(32)
                    .and_then(|n| n.checked_add(nodes_offset))
            && top_count <= node_count;
        if !consistent {
            return Err(corrupt("inconsistent header"));
        }
        let proof_bytes = if HEADER_LEN + proof_len <= head.len() {
            head[HEADER_LEN..HEADER_LEN + proof_len].to_vec()
        } else {
            source
                .read_range(HEADER_LEN as u64..(HEADER_LEN + proof_len) as u64)
                .await?
                .as_ref()
                .to_vec()
        };
        if proof_bytes.len() != proof_len {
            return Err(corrupt("truncated proof"));
        }
        let proof =
            AnchorProof::decode(&proof_bytes).map_err(|e| corrupt(format!("proof: {e}")))?;
        let top_len = top_count * TOP_ENTRY as u64;
        let top_bytes = if top_len == 0 {
            Vec::new()
        } else {
            source
                .read_range(top_offset..top_offset + top_len)
                .await?
                .as_ref()
                .to_vec()
        };
        if top_bytes.len() as u64 != top_len {
            return Err(corrupt("truncated top section"));
        }
        let top = top_bytes
            .chunks_exact(TOP_ENTRY)
            .map(|e| {
                let mut digest = [0u8; 32];
                digest.copy_from_slice(&e[4..]);
                (u32_at(e, 0), digest)
            })
            .collect::<Vec<_>>();
        if top.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(corrupt("top section not sorted"));
        }
        Ok(Self {
            leaf_count,
            leaf_width,
            chunk_leaves,
            leaves_offset,
            nodes_offset,
            proof,
            top,
        })
    }

    /// Number of leaves.
    pub fn leaf_count(&self) -> u64 {
        self.leaf_count
    }

    /// The anchor proof of the batch.
    pub fn proof(&self) -> &AnchorProof {
        &self.proof
    }

    fn top_digest(&self, index: usize) -> Result<[u8; 32], ArtifactError> {
        self.top
            .binary_search_by_key(&(index as u32), |(i, _)| *i)
            .map(|at| self.top[at].1)
            .map_err(|_| corrupt(format!("node {index} missing from the top section")))
    }

    async fn read_leaves(
        &self,
        source: &(impl RangeRead + ?Sized),
        lo: u64,
        hi: u64,
    ) -> Result<Vec<Cid>, ArtifactError> {
        let slots = self.read_leaf_slots(source, lo, hi).await?;
        (0..(hi - lo) as usize)
            .map(|i| self.leaf_in(slots.as_ref(), i))
            .collect()
    }

    /// The raw leaf slots `[lo, hi)`; parse one with [`Self::leaf_in`].
    async fn read_leaf_slots<R: RangeRead + ?Sized>(
        &self,
        source: &R,
        lo: u64,
        hi: u64,
    ) -> Result<R::Bytes, ArtifactError> {
        let slot = 1 + self.leaf_width;
        let bytes = source
            .read_range(self.leaves_offset + lo * slot..self.leaves_offset + hi * slot)
            .await?;
        if bytes.as_ref().len() as u64 != (hi - lo) * slot {
            return Err(corrupt("truncated leaf section"));
        }
        Ok(bytes)
    }

    /// Leaf `i` of slots read by [`Self::read_leaf_slots`].
    fn leaf_in(&self, slots: &[u8], i: usize) -> Result<Cid, ArtifactError> {
        let width = 1 + self.leaf_width as usize;
        let s = slots
            .get(i * width..(i + 1) * width)
            .ok_or_else(|| corrupt("leaf outside its chunk"))?;
        let len = s[0] as usize;
        if len == 0 || len > self.leaf_width as usize {
            return Err(corrupt("bad leaf length"));
        }
        Cid::read_bytes(Cursor::new(&s[1..=len])).map_err(|e| corrupt(format!("leaf cid: {e}")))
    }

    /// The raw digests of nodes `[first, first + count)` in post-order.
    async fn read_node_bytes<R: RangeRead + ?Sized>(
        &self,
        source: &R,
        first: u64,
        count: u64,
    ) -> Result<R::Bytes, ArtifactError> {
        let start = self.nodes_offset + first * 32;
        let bytes = source.read_range(start..start + count * 32).await?;
        if bytes.as_ref().len() as u64 != count * 32 {
            return Err(corrupt("truncated node section"));
        }
        Ok(bytes)
    }

    async fn read_nodes(
        &self,
        source: &(impl RangeRead + ?Sized),
        first: u64,
        count: u64,
    ) -> Result<Vec<[u8; 32]>, ArtifactError> {
        let start = self.nodes_offset + first * 32;
        let bytes = source.read_range(start..start + count * 32).await?;
        let bytes = bytes.as_ref();
        if bytes.len() as u64 != count * 32 {
            return Err(corrupt("truncated node section"));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut d = [0u8; 32];
                d.copy_from_slice(c);
                d
            })
            .collect())
    }

    /// Build the witness of leaf `index` for a stream whose init CID is `stream_init_cid`.
    /// If `expected_leaf` is given, the leaf stored at `index` must be that CID.
    pub async fn witness(
        &self,
        source: &(impl RangeRead + ?Sized),
        index: u64,
        stream_init_cid: Cid,
        expected_leaf: Option<&Cid>,
    ) -> Result<Witness, ArtifactError> {
        if index >= self.leaf_count {
            return Err(ArtifactError::LeafOutOfRange {
                index,
                leaf_count: self.leaf_count,
            });
        }
        let mut bits: Vec<u8> = Vec::with_capacity(64);
        let mut path_nodes: Vec<(Cid, Vec<u8>)> = Vec::with_capacity(64);
        let leaf;
        if self.leaf_count == 1 {
            let leaves = self.read_leaves(source, 0, 1).await?;
            leaf = leaves[0];
            let digest = self.read_nodes(source, 0, 1).await?[0];
            let mut buf = [0u8; NODE_BUF];
            let n = encode_node_into(&mut buf, Child::Leaf(&leaf), Child::Null);
            path_nodes.push((dag_cbor_cid_from_digest(digest), buf[..n].to_vec()));
            bits.push(0);
        } else {
            let index = index as usize;
            let chunk = self.chunk_leaves as usize;
            let mut r = root_range(self.leaf_count as usize);
            // Above the chunk level: every node and its children are in the top section.
            while r.len() > chunk {
                let (left, right) = (r.left(), r.right());
                let mut buf = [0u8; NODE_BUF];
                let (ld, rd) = (self.top_digest(left.own())?, self.top_digest(right.own())?);
                let n = encode_node_into(&mut buf, Child::Node(&ld), Child::Node(&rd));
                let own = self.top_digest(r.own())?;
                path_nodes.push((dag_cbor_cid_from_digest(own), buf[..n].to_vec()));
                let go_right = index >= right.lo;
                bits.push(u8::from(go_right));
                r = if go_right { right } else { left };
            }
            // Inside the chunk: two ranged reads give everything below. Only the CIDs and
            // digests on the path are decoded, not the whole chunk.
            let slots = self
                .read_leaf_slots(source, r.lo as u64, r.hi as u64)
                .await?;
            let node_bytes = if r.len() >= 2 {
                Some(
                    self.read_node_bytes(source, r.base as u64, (r.len() - 1) as u64)
                        .await?,
                )
            } else {
                None
            };
            let node_bytes: &[u8] = node_bytes.as_ref().map_or(&[], AsRef::as_ref);
            let slots: &[u8] = slots.as_ref();
            let (lo, base) = (r.lo, r.base);
            let node_at = |i: usize| -> [u8; 32] {
                let mut d = [0u8; 32];
                d.copy_from_slice(&node_bytes[i * 32..i * 32 + 32]);
                d
            };
            while r.len() >= 2 {
                let (left, right) = (r.left(), r.right());
                let (left_cid, right_cid, left_digest, right_digest);
                let left_child = if left.len() == 1 {
                    left_cid = self.leaf_in(slots, left.lo - lo)?;
                    Child::Leaf(&left_cid)
                } else {
                    left_digest = node_at(left.own() - base);
                    Child::Node(&left_digest)
                };
                let right_child = if right.len() == 1 {
                    right_cid = self.leaf_in(slots, right.lo - lo)?;
                    Child::Leaf(&right_cid)
                } else {
                    right_digest = node_at(right.own() - base);
                    Child::Node(&right_digest)
                };
                let mut buf = [0u8; NODE_BUF];
                let n = encode_node_into(&mut buf, left_child, right_child);
                let own = node_at(r.own() - base);
                path_nodes.push((dag_cbor_cid_from_digest(own), buf[..n].to_vec()));
                let go_right = index >= right.lo;
                bits.push(u8::from(go_right));
                r = if go_right { right } else { left };
            }
            leaf = self.leaf_in(slots, r.lo - lo)?;
        }
        if let Some(expected) = expected_leaf
            && *expected != leaf
        {
            return Err(ArtifactError::LeafMismatch {
                index,
                found: Box::new(leaf),
                expected: Box::new(*expected),
            });
        }
        if path_nodes.first().map(|(cid, _)| *cid) != Some(self.proof.root) {
            return Err(corrupt("the tree's root is not the proof's root"));
        }
        let anchor_commit = AnchorCommit {
            id: stream_init_cid,
            path: crate::format_path(&bits),
            prev: leaf,
            proof: self.proof.cid(),
        };
        let car = build_witness_car(&anchor_commit, &self.proof, &path_nodes).await?;
        Ok(Witness {
            anchor_commit_cid: anchor_commit.cid(),
            anchor_commit,
            car,
        })
    }
}
