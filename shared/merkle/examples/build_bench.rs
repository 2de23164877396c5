//! Times `MerkleTree::build` for 2^20 leaves (run with `--release`); prints one JSON line per
//! figure, as `scripts/bench` expects.
//!
//! `cargo run --release -p cas-merkle --example build_bench`

use std::time::{Duration, Instant};

use cas_merkle::{AnchorProof, ArtifactIndex, Cid, MerkleTree, dag_cbor_cid, encode_artifact};
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
    // The tree artifact the worker writes, and the witnesses the API builds from it.
    let tree = MerkleTree::build_parallel(leaves.clone(), 0).expect("tree");
    let proof = AnchorProof::contract(tree.root(), [7u8; 32], "eip155:1337");
    let mut artifact = Vec::new();
    let encode = best_of(3, || {
        artifact = encode_artifact(&tree, &proof, cas_merkle::DEFAULT_CHUNK_LEAVES);
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    const WITNESSES: u64 = 20_000;
    let stream_init = dag_cbor_cid(b"bench stream");
    let (index_load, witness_each, verify_each) = runtime.block_on(async {
        let t = Instant::now();
        let index = ArtifactIndex::load(&artifact).await.expect("index");
        let index_load = t.elapsed();
        let mut cars = Vec::with_capacity(WITNESSES as usize);
        let t = Instant::now();
        for i in 0..WITNESSES {
            // Spread over the whole tree (a stride coprime with 2^20).
            let leaf = (i * 7919) % N as u64;
            let w = index
                .witness(&artifact, leaf, stream_init, Some(&leaves[leaf as usize]))
                .await
                .expect("witness");
            cars.push(w.car);
        }
        let witness_each = t.elapsed() / WITNESSES as u32;
        let t = Instant::now();
        for car in &cars {
            cas_merkle::verify_witness_car(car).await.expect("verifies");
        }
        let verify_each = t.elapsed() / WITNESSES as u32;
        (index_load, witness_each, verify_each)
    });
    let us = |d: Duration| d.as_secs_f64() * 1e6;

    let line = |name: &str, value: f64, unit: &str| {
        println!("{{\"name\":\"{name}\",\"value\":{value:.1},\"unit\":\"{unit}\"}}");
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    line("merkle_2^20_sha256_only", ms(hash_only), "ms");
    line("merkle_2^20_leaf_clone", ms(clone), "ms");
    line("merkle_2^20_build_1_core", ms(seq), "ms");
    line("merkle_2^20_build_all_cores", ms(par), "ms");
    line("merkle_2^20_artifact_encode", ms(encode), "ms");
    line(
        "merkle_2^20_tree_and_artifact_all_cores",
        ms(par + encode),
        "ms",
    );
    line(
        "merkle_2^20_artifact_size",
        artifact.len() as f64 / (1024.0 * 1024.0),
        "MiB",
    );
    line("artifact_2^20_index_load", ms(index_load), "ms");
    line("witness_from_artifact_2^20", us(witness_each), "us");
    line("witness_verify_2^20", us(verify_each), "us");
    if let Some(kib) = peak_rss_kib() {
        line("merkle_2^20_peak_rss", kib as f64 / 1024.0, "MiB");
    }
}

/// Peak resident memory of this process (Linux), in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
