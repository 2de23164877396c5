//! Shared helpers for the integration tests.
#![allow(dead_code, unreachable_pub)]

use cas_merkle::{Cid, DAG_CBOR, DAG_JOSE, IDENTITY, RAW, SHA2_256, dag_cbor_cid};
use cid::multihash::Multihash;
use sha2::{Digest, Sha256};

/// Deterministic dag-cbor leaves: CID of sha256(index as u32 BE) as a block.
pub fn cbor_leaves(n: usize) -> Vec<Cid> {
    (0..n as u32)
        .map(|i| dag_cbor_cid(&i.to_be_bytes()))
        .collect()
}

fn sha(i: usize, salt: u8) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([salt]);
    h.update((i as u64).to_be_bytes());
    h.finalize().into()
}

/// Deterministic leaves cycling through codecs and CID versions: dag-cbor,
/// dag-jose, raw, CIDv0, a tiny identity CID and a long (64-byte) digest.
pub fn mixed_leaves(n: usize) -> Vec<Cid> {
    (0..n)
        .map(|i| {
            let d = sha(i, 1);
            match i % 6 {
                0 => Cid::new_v1(DAG_CBOR, Multihash::wrap(SHA2_256, &d).unwrap()),
                1 => Cid::new_v1(DAG_JOSE, Multihash::wrap(SHA2_256, &d).unwrap()),
                2 => Cid::new_v1(RAW, Multihash::wrap(SHA2_256, &d).unwrap()),
                3 => Cid::new_v0(Multihash::wrap(SHA2_256, &d).unwrap()).unwrap(),
                4 => Cid::new_v1(RAW, Multihash::wrap(IDENTITY, &d[..3]).unwrap()),
                _ => {
                    let mut long = [0u8; 64];
                    long[..32].copy_from_slice(&d);
                    long[32..].copy_from_slice(&sha(i, 2));
                    // sha2-512 code, 64-byte digest
                    Cid::new_v1(DAG_JOSE, Multihash::wrap(0x13, &long).unwrap())
                }
            }
        })
        .collect()
}
