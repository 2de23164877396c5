//! The CAS Merkle tree (`@ceramicnetwork/anchor-utils` `MerkleTreeFactory` shape).

use std::num::NonZeroUsize;

use cid::Cid;

use crate::cbor::{self, MAX_LINK_BYTES};
use crate::cids::{CidBytes, dag_cbor_cid_from_digest, sha256};

/// Size of the stack buffer a node is encoded into: array header + two links.
pub(crate) const NODE_BUF: usize = 1 + 2 * MAX_LINK_BYTES;

/// Below this many leaves a subtree is always built on the current thread.
const PARALLEL_MIN_LEAVES: usize = 4096;

/// Errors from building or querying a [`MerkleTree`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The tree would have no leaves.
    #[error("cannot generate merkle structure with no elements")]
    NoLeaves,
    /// A leaf index past the end of the tree.
    #[error("leaf index {index} out of range for a tree of {len} leaves")]
    LeafOutOfRange {
        /// The requested index.
        index: usize,
        /// Number of leaves in the tree.
        len: usize,
    },
}

/// Errors from parsing a Merkle path string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A path segment other than `0` or `1`.
    #[error("bad path element {element:?} at position {position} (expected 0 or 1)")]
    BadElement {
        /// Zero-based segment position.
        position: usize,
        /// The offending segment.
        element: String,
    },
}

/// Formats path bits (`0` = left, `1` = right, root to leaf) as the CAS path
/// string, e.g. `[0, 1, 1]` → `"0/1/1"`. Any non-zero bit is written as `1`.
pub fn format_path(bits: &[u8]) -> String {
    let mut s = String::with_capacity(bits.len() * 2);
    for (i, b) in bits.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push(if *b == 0 { '0' } else { '1' });
    }
    s
}

/// Parses a CAS path string (`"0/1/1"`) into bits. The empty string is the
/// empty path (prev is the Merkle root itself).
pub fn parse_path(path: &str) -> Result<Vec<u8>, PathError> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    path.split('/')
        .enumerate()
        .map(|(position, element)| match element {
            "0" => Ok(0),
            "1" => Ok(1),
            _ => Err(PathError::BadElement {
                position,
                element: element.to_owned(),
            }),
        })
        .collect()
}

/// Sorts leaves the way the CAS does before building a tree: by the CID's
/// string form (`to_string()`), plain byte-wise string order.
///
/// The reference uses JavaScript `localeCompare`; for the lowercase base32
/// strings of CIDv1 that is the same order. For mixed-case CIDv0 (`Qm…`)
/// strings the two orders can differ; leaf order has no meaning for
/// validation, it only decides each request's path.
pub fn sort_leaves(leaves: &mut [Cid]) {
    leaves.sort_by_cached_key(|c| c.to_string());
}

/// One child of an internal node during encoding.
#[derive(Clone, Copy)]
pub(crate) enum Child<'a> {
    /// A leaf, linked with its own CID bytes.
    Leaf(&'a Cid),
    /// An internal node (always CIDv1 dag-cbor sha2-256), given by digest.
    Node(&'a [u8; 32]),
    /// The `null` right child of a single-leaf root.
    Null,
}

fn put_child(buf: &mut [u8], pos: usize, child: Child<'_>) -> usize {
    match child {
        Child::Leaf(cid) => cbor::put_link(buf, pos, CidBytes::new(cid).as_slice()),
        Child::Node(digest) => cbor::put_sha256_link(buf, pos, digest),
        Child::Null => {
            buf[pos] = cbor::NULL;
            pos + 1
        }
    }
}

/// Encodes `[left, right]` into `buf`, returning the encoded length.
pub(crate) fn encode_node_into(
    buf: &mut [u8; NODE_BUF],
    left: Child<'_>,
    right: Child<'_>,
) -> usize {
    buf[0] = (cbor::MAJOR_ARRAY << 5) | 2;
    let pos = put_child(buf, 1, left);
    put_child(buf, pos, right)
}

/// Encodes a Merkle node `[link(left), link(right) | null]` as dag-cbor.
///
/// This is the same encoding the tree uses internally; it is exposed for
/// re-encoding and checking nodes read from elsewhere.
pub fn encode_node(left: &Cid, right: Option<&Cid>) -> Vec<u8> {
    let mut buf = [0u8; NODE_BUF];
    let n = encode_node_into(
        &mut buf,
        Child::Leaf(left),
        right.map_or(Child::Null, Child::Leaf),
    );
    buf[..n].to_vec()
}

/// The Merkle path of one leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafPath {
    /// The leaf CID (the anchored request CID, i.e. the anchor commit's `prev`).
    pub leaf: Cid,
    /// Directions from the root to the leaf: `0` = left, `1` = right.
    pub bits: Vec<u8>,
    /// The internal nodes from the root down to the last node above the leaf,
    /// as `(cid, dag-cbor bytes)`; `nodes.len() == bits.len()`.
    pub nodes: Vec<(Cid, Vec<u8>)>,
}

impl LeafPath {
    /// The path string (`"0/1/1"`) as written into the anchor commit.
    pub fn path_string(&self) -> String {
        format_path(&self.bits)
    }
}

/// A range of leaves `[lo, hi)` (with `hi - lo >= 2`) whose internal nodes are
/// stored post-order at `nodes[base..base + (hi - lo) - 1]`; the range's own
/// node is the last of these.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Range {
    pub(crate) lo: usize,
    pub(crate) hi: usize,
    pub(crate) base: usize,
}

impl Range {
    pub(crate) fn len(self) -> usize {
        self.hi - self.lo
    }
    pub(crate) fn split(self) -> usize {
        self.len() / 2
    }
    pub(crate) fn own(self) -> usize {
        self.base + self.len() - 2
    }
    pub(crate) fn left(self) -> Self {
        Self {
            lo: self.lo,
            hi: self.lo + self.split(),
            base: self.base,
        }
    }
    pub(crate) fn right(self) -> Self {
        let a = self.split();
        Self {
            lo: self.lo + a,
            hi: self.hi,
            base: self.base + a - 1,
        }
    }
}

/// A CAS Merkle tree over a list of leaf CIDs.
///
/// Shape (identical to `jsc:packages/anchor-utils` `MerkleTreeFactory`): for
/// `n > 1` elements, left = the first ⌊n/2⌋, right = the rest, node =
/// `[build(left), build(right)]`; a range of one element is the leaf itself;
/// a tree of exactly one leaf has root `[leaf, null]` (path `"0"`). Every
/// internal node is a dag-cbor array of two links stored as CIDv1 dag-cbor
/// sha2-256.
///
/// Internal nodes are stored only as their 32-byte sha2-256 digests, in
/// post-order, located arithmetically from the leaf range (no pointers). Node
/// bytes are re-encoded on demand from the children, O(depth) per leaf.
///
/// Note: the `rs_merkle` crate does not fit: it pairs nodes level by level
/// (a different shape) and hashes raw concatenations rather than dag-cbor
/// nodes, so its roots differ from the CAS's.
#[derive(Debug, Clone)]
pub struct MerkleTree {
    leaves: Vec<Cid>,
    /// Internal node digests in post-order; for one leaf: the `[leaf, null]` root.
    nodes: Vec<[u8; 32]>,
}

impl MerkleTree {
    /// Builds the tree over `leaves`, in the given order (see [`sort_leaves`]).
    pub fn build(leaves: Vec<Cid>) -> Result<Self, MerkleError> {
        Self::build_with_threads(leaves, 1)
    }

    /// Like [`MerkleTree::build`] but splits the top of the tree over up to
    /// `threads` scoped threads (`0` = the available parallelism). The result
    /// is identical to the sequential build.
    pub fn build_parallel(leaves: Vec<Cid>, threads: usize) -> Result<Self, MerkleError> {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
        } else {
            threads
        };
        Self::build_with_threads(leaves, threads)
    }

    fn build_with_threads(leaves: Vec<Cid>, threads: usize) -> Result<Self, MerkleError> {
        match leaves.len() {
            0 => Err(MerkleError::NoLeaves),
            1 => {
                let mut buf = [0u8; NODE_BUF];
                let n = encode_node_into(&mut buf, Child::Leaf(&leaves[0]), Child::Null);
                let root = sha256(&buf[..n]);
                Ok(Self {
                    leaves,
                    nodes: vec![root],
                })
            }
            n => {
                let mut nodes = vec![[0u8; 32]; n - 1];
                // Number of splitting levels that get their own thread.
                let depth = usize::BITS - threads.max(1).saturating_sub(1).leading_zeros();
                build_par(&leaves, &mut nodes, depth);
                Ok(Self { leaves, nodes })
            }
        }
    }

    /// The leaves, in tree order.
    pub fn leaves(&self) -> &[Cid] {
        &self.leaves
    }

    /// Internal node digests in post-order (for one leaf: the `[leaf, null]` root). This is
    /// the node table of a tree artifact.
    pub fn node_digests(&self) -> &[[u8; 32]] {
        &self.nodes
    }

    /// Number of leaves (always at least one).
    pub fn leaf_count(&self) -> usize {
        self.leaves.len()
    }

    /// Number of internal nodes (`n - 1`, or 1 for a single-leaf tree).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The sha2-256 digest of the root node, i.e. the root CID without its
    /// `01 71 12 20` prefix (the `bytes32` sent to the anchor contract).
    pub fn root_digest(&self) -> [u8; 32] {
        // The root is the last node in post-order; `nodes` is never empty.
        self.nodes.last().copied().unwrap_or_default()
    }

    /// The root CID (CIDv1 dag-cbor sha2-256).
    pub fn root(&self) -> Cid {
        dag_cbor_cid_from_digest(self.root_digest())
    }

    /// The dag-cbor bytes of the root node.
    pub fn root_node(&self) -> (Cid, Vec<u8>) {
        if self.leaves.len() == 1 {
            return (self.root(), encode_node(&self.leaves[0], None));
        }
        self.encode_range(self.root_range())
    }

    fn root_range(&self) -> Range {
        Range {
            lo: 0,
            hi: self.leaves.len(),
            base: 0,
        }
    }

    fn check_index(&self, index: usize) -> Result<(), MerkleError> {
        if index < self.leaves.len() {
            Ok(())
        } else {
            Err(MerkleError::LeafOutOfRange {
                index,
                len: self.leaves.len(),
            })
        }
    }

    fn child(&self, r: Range) -> Child<'_> {
        if r.len() == 1 {
            Child::Leaf(&self.leaves[r.lo])
        } else {
            Child::Node(&self.nodes[r.own()])
        }
    }

    /// Re-encodes the node of range `r` (len >= 2) from its children.
    fn encode_range(&self, r: Range) -> (Cid, Vec<u8>) {
        let mut buf = [0u8; NODE_BUF];
        let n = encode_node_into(&mut buf, self.child(r.left()), self.child(r.right()));
        (
            dag_cbor_cid_from_digest(self.nodes[r.own()]),
            buf[..n].to_vec(),
        )
    }

    /// Walks from the root to leaf `index`, calling `f(range, bit)` for each
    /// internal node on the way (not for the single-leaf root).
    fn walk(&self, index: usize, mut f: impl FnMut(Range, u8)) {
        let mut r = self.root_range();
        while r.len() >= 2 {
            let right = index >= r.lo + r.split();
            f(r, u8::from(right));
            r = if right { r.right() } else { r.left() };
        }
    }

    /// Path bits of leaf `index` (`0` = left, `1` = right, root to leaf).
    pub fn path_bits(&self, index: usize) -> Result<Vec<u8>, MerkleError> {
        self.check_index(index)?;
        if self.leaves.len() == 1 {
            return Ok(vec![0]);
        }
        let mut bits = Vec::with_capacity(64);
        self.walk(index, |_, b| bits.push(b));
        Ok(bits)
    }

    /// Path string of leaf `index`, e.g. `"1/1/0"`.
    pub fn path(&self, index: usize) -> Result<String, MerkleError> {
        Ok(format_path(&self.path_bits(index)?))
    }

    /// The internal nodes on the path to leaf `index`, from the root down to
    /// the last node above the leaf, as `(cid, dag-cbor bytes)`.
    pub fn path_nodes(&self, index: usize) -> Result<Vec<(Cid, Vec<u8>)>, MerkleError> {
        Ok(self.leaf_path(index)?.nodes)
    }

    /// Leaf CID, path bits and path nodes of leaf `index`.
    pub fn leaf_path(&self, index: usize) -> Result<LeafPath, MerkleError> {
        self.check_index(index)?;
        let leaf = self.leaves[index];
        if self.leaves.len() == 1 {
            return Ok(LeafPath {
                leaf,
                bits: vec![0],
                nodes: vec![self.root_node()],
            });
        }
        let mut bits = Vec::with_capacity(64);
        let mut nodes = Vec::with_capacity(64);
        self.walk(index, |r, b| {
            bits.push(b);
            nodes.push(self.encode_range(r));
        });
        Ok(LeafPath { leaf, bits, nodes })
    }

    /// Calls `f(cid, bytes)` for every internal node in post-order (children
    /// before parents, left before right), which is the order the CAS writes
    /// them into its Merkle CAR. The root comes last.
    pub fn for_each_node(&self, mut f: impl FnMut(&Cid, &[u8])) {
        if self.leaves.len() == 1 {
            let (cid, bytes) = self.root_node();
            f(&cid, &bytes);
            return;
        }
        let mut buf = [0u8; NODE_BUF];
        self.visit(self.root_range(), &mut buf, &mut f);
    }

    fn visit(&self, r: Range, buf: &mut [u8; NODE_BUF], f: &mut impl FnMut(&Cid, &[u8])) {
        if r.len() < 2 {
            return;
        }
        let (left, right) = (r.left(), r.right());
        self.visit(left, buf, f);
        self.visit(right, buf, f);
        let n = encode_node_into(buf, self.child(left), self.child(right));
        f(&dag_cbor_cid_from_digest(self.nodes[r.own()]), &buf[..n]);
    }
}

/// Builds the subtree over `leaves` (len >= 2) into `out` (len = leaves - 1,
/// post-order), splitting onto new threads for `depth` more levels.
fn build_par(leaves: &[Cid], out: &mut [[u8; 32]], depth: u32) -> [u8; 32] {
    let m = leaves.len();
    if depth == 0 || m < PARALLEL_MIN_LEAVES {
        let mut buf = [0u8; NODE_BUF];
        return match build_seq(leaves, out, &mut buf) {
            Child::Node(d) => *d,
            // m >= 2, so the subtree root is an internal node.
            Child::Leaf(_) | Child::Null => [0u8; 32],
        };
    }
    let a = m / 2;
    let (left_leaves, right_leaves) = leaves.split_at(a);
    let (left_out, rest) = out.split_at_mut(a - 1);
    let (right_out, own) = rest.split_at_mut(m - a - 1);
    let (l, r) = std::thread::scope(|s| {
        let handle = s.spawn(|| build_par(left_leaves, left_out, depth - 1));
        let r = build_par(right_leaves, right_out, depth - 1);
        match handle.join() {
            Ok(l) => (l, r),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    });
    let mut buf = [0u8; NODE_BUF];
    let n = encode_node_into(&mut buf, Child::Node(&l), Child::Node(&r));
    let digest = sha256(&buf[..n]);
    own[0] = digest;
    digest
}

/// Sequential post-order build. Returns the subtree's top: the leaf itself for
/// a single element, else a reference to its digest in `out`.
fn build_seq<'a>(
    leaves: &'a [Cid],
    out: &'a mut [[u8; 32]],
    buf: &mut [u8; NODE_BUF],
) -> Child<'a> {
    let m = leaves.len();
    if m == 1 {
        return Child::Leaf(&leaves[0]);
    }
    let a = m / 2;
    let (left_out, rest) = out.split_at_mut(a - 1);
    let (right_out, own) = rest.split_at_mut(m - a - 1);
    let left = build_seq(&leaves[..a], left_out, buf);
    let right = build_seq(&leaves[a..], right_out, buf);
    let n = encode_node_into(buf, left, right);
    own[0] = sha256(&buf[..n]);
    Child::Node(&own[0])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cids::dag_cbor_cid;

    fn leaves(n: usize) -> Vec<Cid> {
        (0..n as u32)
            .map(|i| dag_cbor_cid(&i.to_be_bytes()))
            .collect()
    }

    #[test]
    fn path_vectors() {
        assert_eq!(
            MerkleTree::build(leaves(9)).unwrap().path(8).unwrap(),
            "1/1/1/1"
        );
        assert_eq!(
            MerkleTree::build(leaves(8)).unwrap().path(6).unwrap(),
            "1/1/0"
        );
        assert_eq!(MerkleTree::build(leaves(1)).unwrap().path(0).unwrap(), "0");
    }

    #[test]
    fn zero_leaves_and_bad_index() {
        assert_eq!(
            MerkleTree::build(vec![]).unwrap_err(),
            MerkleError::NoLeaves
        );
        let t = MerkleTree::build(leaves(3)).unwrap();
        assert_eq!(
            t.path(3).unwrap_err(),
            MerkleError::LeafOutOfRange { index: 3, len: 3 }
        );
    }

    #[test]
    fn path_parse_format_roundtrip() {
        assert_eq!(parse_path("").unwrap(), Vec::<u8>::new());
        assert_eq!(parse_path("0/1/1").unwrap(), vec![0, 1, 1]);
        assert_eq!(format_path(&[0, 1, 1]), "0/1/1");
        assert!(parse_path("0//1").is_err());
        assert!(parse_path("2").is_err());
        assert!(parse_path("0/").is_err());
        assert!(parse_path("/0").is_err());
    }

    #[test]
    fn parallel_matches_sequential() {
        for n in [2, 3, 4097, 9000, 20_001] {
            let seq = MerkleTree::build(leaves(n)).unwrap();
            for threads in [0, 2, 3, 8] {
                let par = MerkleTree::build_parallel(leaves(n), threads).unwrap();
                assert_eq!(seq.nodes, par.nodes, "n={n} threads={threads}");
            }
        }
    }

    #[test]
    fn post_order_visit_covers_all_nodes() {
        for n in [1usize, 2, 3, 5, 7, 100] {
            let t = MerkleTree::build(leaves(n)).unwrap();
            let mut seen = Vec::new();
            t.for_each_node(|cid, bytes| {
                assert_eq!(*cid, dag_cbor_cid(bytes));
                seen.push(*cid);
            });
            assert_eq!(seen.len(), t.node_count());
            assert_eq!(seen.last(), Some(&t.root()));
        }
    }
}
