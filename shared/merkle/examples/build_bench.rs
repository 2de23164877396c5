//! Times `MerkleTree::build` for 2^20 leaves (run with `--release`).
//!
//! `cargo run --release -p cas-merkle --example build_bench`

use std::time::{Duration, Instant};

use cas_merkle::{Cid, MerkleTree, dag_cbor_cid};
use sha2::{Digest, Sha256};

fn best_of(runs: usize, mut f: impl FnMut()) -> Duration {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() {
    const N: usize = 1 << 20;
    let leaves: Vec<Cid> = (0..N as u32)
        .map(|i| dag_cbor_cid(&i.to_be_bytes()))
        .collect();

    // Lower bound: hashing N - 1 node-sized (83-byte) buffers.
    let buf = [0x5au8; 83];
    let hash_only = best_of(5, || {
        let mut h = Sha256::new();
        let mut acc = 0u8;
        for _ in 0..N - 1 {
            h.update(buf);
            acc ^= h.finalize_reset()[0];
        }
        std::hint::black_box(acc);
    });
    let clone = best_of(5, || {
        std::hint::black_box(leaves.clone());
    });
    let seq = best_of(5, || {
        std::hint::black_box(MerkleTree::build(leaves.clone()).map(|t| t.root()).ok());
    });
    let par = best_of(5, || {
        std::hint::black_box(
            MerkleTree::build_parallel(leaves.clone(), 0)
                .map(|t| t.root())
                .ok(),
        );
    });
    println!("2^20 leaves (best of 5, includes cloning the leaf Vec):");
    println!("  sha256 of 2^20 83-byte buffers: {hash_only:?}");
    println!("  cloning the 2^20 leaves alone:  {clone:?}");
    println!("  MerkleTree::build:              {seq:?}");
    println!("  MerkleTree::build_parallel:     {par:?}");
}
