//! Tree artifacts: every witness built from an artifact with ranged reads equals the one
//! built from the in-memory tree, with a bounded number of reads.

mod common;

use std::{
    ops::Range,
    sync::atomic::{AtomicUsize, Ordering},
};

use cas_merkle::{
    AnchorProof, ArtifactError, ArtifactIndex, MerkleTree, RangeRead, dag_cbor_cid,
    encode_artifact, verify_witness_car,
};
use common::{cbor_leaves, mixed_leaves};

/// An in-memory artifact that counts reads and bytes read.
struct Counting {
    bytes: Vec<u8>,
    reads: AtomicUsize,
    read_bytes: AtomicUsize,
}

impl Counting {
    fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            reads: AtomicUsize::new(0),
            read_bytes: AtomicUsize::new(0),
        }
    }
    fn take(&self) -> (usize, usize) {
        (
            self.reads.swap(0, Ordering::Relaxed),
            self.read_bytes.swap(0, Ordering::Relaxed),
        )
    }
}

impl RangeRead for Counting {
    type Bytes = Vec<u8>;

    async fn read_range(&self, range: Range<u64>) -> Result<Vec<u8>, ArtifactError> {
        let out = self.bytes.read_range(range).await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(out.len(), Ordering::Relaxed);
        Ok(out)
    }
}

fn proof_for(tree: &MerkleTree) -> AnchorProof {
    AnchorProof::contract(tree.root(), [0x42; 32], "eip155:1337")
}

async fn check_all_leaves(leaves: Vec<cas_merkle::Cid>, chunk: u32) {
    let n = leaves.len();
    let tree = MerkleTree::build(leaves).unwrap();
    let proof = proof_for(&tree);
    let source = Counting::new(encode_artifact(&tree, &proof, chunk));
    let index = ArtifactIndex::load(&source).await.unwrap();
    assert!(source.take().0 <= 3, "index load reads");
    assert_eq!(index.leaf_count(), n as u64);
    assert_eq!(index.proof(), &proof);
    let stream = dag_cbor_cid(b"stream");
    // Every leaf of small trees; a spread sample (plus both ends) of big ones.
    let step = if n > 1000 { 37 } else { 1 };
    for i in (0..n).step_by(step).chain([n - 1]) {
        let expected = tree.witness_car(i, stream, &proof).await.unwrap();
        let got = index
            .witness(&source, i as u64, stream, Some(&tree.leaves()[i]))
            .await
            .unwrap_or_else(|e| panic!("n={n} chunk={chunk} leaf {i}: {e}"));
        assert_eq!(got, expected, "n={n} chunk={chunk} leaf {i}");
        let (reads, _) = source.take();
        assert!(reads <= 2, "n={n} chunk={chunk} leaf {i}: {reads} reads");
    }
}

#[tokio::test]
async fn witnesses_from_artifacts_match_the_tree_for_many_shapes() {
    for n in 1..=40 {
        for chunk in [4, 5, 8, 1024] {
            check_all_leaves(cbor_leaves(n), chunk).await;
        }
    }
    for n in [63, 64, 65, 100, 257, 1000] {
        check_all_leaves(cbor_leaves(n), 8).await;
        check_all_leaves(mixed_leaves(n), 16).await;
    }
    check_all_leaves(mixed_leaves(3001), 1024).await;
    check_all_leaves(cbor_leaves(5000), 64).await;
}

#[tokio::test]
async fn small_chunks_are_raised_to_the_minimum() {
    check_all_leaves(cbor_leaves(50), 0).await;
    check_all_leaves(cbor_leaves(50), 2).await;
}

#[tokio::test]
async fn a_large_tree_needs_two_small_reads_per_witness() {
    let n = 1 << 16;
    let tree = MerkleTree::build(cbor_leaves(n)).unwrap();
    let proof = proof_for(&tree);
    let source = Counting::new(encode_artifact(&tree, &proof, 1024));
    let index = ArtifactIndex::load(&source).await.unwrap();
    let (_, index_bytes) = source.take();
    assert!(
        index_bytes < 16 * 1024,
        "index is small: {index_bytes} bytes"
    );
    let stream = dag_cbor_cid(b"stream");
    for i in [0, 1, 4095, 32768, n - 1] {
        let w = index
            .witness(&source, i as u64, stream, None)
            .await
            .unwrap();
        let (reads, bytes) = source.take();
        assert_eq!(reads, 2);
        assert!(bytes <= 1024 * 32 + 1024 * 37, "{bytes} bytes read");
        let verified = verify_witness_car(&w.car).await.unwrap();
        assert_eq!(verified.commit.prev, tree.leaves()[i]);
        assert_eq!(verified.proof.root, tree.root());
        assert_eq!(
            w.car,
            tree.witness_car(i, stream, &proof).await.unwrap().car
        );
    }
}

#[tokio::test]
async fn wrong_leaves_and_indexes_are_reported() {
    let tree = MerkleTree::build(cbor_leaves(10)).unwrap();
    let source = encode_artifact(&tree, &proof_for(&tree), 4);
    let index = ArtifactIndex::load(&source).await.unwrap();
    let stream = dag_cbor_cid(b"stream");
    let other = dag_cbor_cid(b"not a leaf");
    assert!(matches!(
        index.witness(&source, 3, stream, Some(&other)).await,
        Err(ArtifactError::LeafMismatch { index: 3, .. })
    ));
    assert!(matches!(
        index.witness(&source, 10, stream, None).await,
        Err(ArtifactError::LeafOutOfRange {
            index: 10,
            leaf_count: 10
        })
    ));
}

#[tokio::test]
async fn corrupt_artifacts_are_errors_not_panics() {
    let tree = MerkleTree::build(mixed_leaves(300)).unwrap();
    let good = encode_artifact(&tree, &proof_for(&tree), 8);
    let stream = dag_cbor_cid(b"stream");
    assert!(ArtifactIndex::load(&Vec::new()).await.is_err());
    assert!(ArtifactIndex::load(&b"CASTREE1".to_vec()).await.is_err());
    let mut bad_magic = good.clone();
    bad_magic[0] = b'X';
    assert!(ArtifactIndex::load(&bad_magic).await.is_err());
    // Every truncation either fails to load or fails to build some witness; none panics.
    for cut in (0..good.len()).step_by(97).chain([good.len() - 1]) {
        let truncated = good[..cut].to_vec();
        if let Ok(index) = ArtifactIndex::load(&truncated).await {
            let mut any_err = false;
            for i in (0..300).step_by(7).chain([299]) {
                any_err |= index.witness(&truncated, i, stream, None).await.is_err();
            }
            assert!(any_err, "truncation at {cut} went unnoticed");
        }
    }
    // Flipped bytes never panic; a flip in a node or leaf makes the witness differ or fail.
    for at in (0..good.len()).step_by(131) {
        let mut flipped = good.clone();
        flipped[at] ^= 0x5a;
        if let Ok(index) = ArtifactIndex::load(&flipped).await {
            for i in [0u64, 150, 299] {
                if let Ok(w) = index.witness(&flipped, i, stream, None).await {
                    let _ = verify_witness_car(&w.car).await;
                }
            }
        }
    }
}
