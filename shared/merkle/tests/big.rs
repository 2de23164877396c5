//! A 2^20-leaf tree: stable root, uniform depth, a verifying witness.

mod common;

use std::time::Instant;

use cas_merkle::{AnchorProof, MerkleTree, dag_cbor_cid, verify_witness_car};
use common::cbor_leaves;

const N: usize = 1 << 20;
/// Root of the tree over `cbor_leaves(2^20)`, pinned after cross-checking the
/// fast builder against the naive serde reference on smaller sizes
/// (tests/reference.rs).
const ROOT_2_20: &str = "bafyreiefibljabfqdsui2h5lhuqivlqkpdlkc56jcyqcbzkhixx75srwoy";

#[tokio::test]
async fn tree_of_2_pow_20_leaves() {
    let leaves = cbor_leaves(N);
    let t = Instant::now();
    let tree = MerkleTree::build(leaves.clone()).unwrap();
    let seq = t.elapsed();
    let t = Instant::now();
    let par = MerkleTree::build_parallel(leaves, 0).unwrap();
    let parallel = t.elapsed();
    println!("2^20 leaves: build {seq:?}, build_parallel {parallel:?}");

    assert_eq!(tree.root().to_string(), ROOT_2_20);
    assert_eq!(par.root(), tree.root());
    assert_eq!(tree.node_count(), N - 1);

    let mut samples: Vec<usize> = (0..N).step_by(4099).collect();
    samples.extend([0, 1, N / 2 - 1, N / 2, N - 2, N - 1]);
    for &i in &samples {
        let bits = tree.path_bits(i).unwrap();
        assert_eq!(bits.len(), 20, "leaf {i}");
        // With a power of two, the path is the leaf index in binary.
        let as_index = bits
            .iter()
            .fold(0usize, |acc, b| (acc << 1) | usize::from(*b));
        assert_eq!(as_index, i);
    }
    assert_eq!(tree.path(N - 1).unwrap(), vec!["1"; 20].join("/"));

    let proof = AnchorProof::contract(tree.root(), [9; 32], "eip155:1337");
    let w = tree
        .witness_car(N - 3, dag_cbor_cid(b"genesis"), &proof)
        .await
        .unwrap();
    let v = verify_witness_car(&w.car).await.unwrap();
    assert_eq!(v.commit.prev, tree.leaves()[N - 3]);
    assert_eq!(v.merkle_nodes.len(), 20);
    assert_eq!(v.anchor_commit_cid, w.anchor_commit_cid);
}
