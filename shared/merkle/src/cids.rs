//! CID construction helpers and the multicodec constants the CAS uses.

use cid::multihash::Multihash;
use cid::{Cid, Version};

/// Multicodec code of dag-cbor.
pub const DAG_CBOR: u64 = 0x71;
/// Multicodec code of dag-jose (what js-ceramic commits use).
pub const DAG_JOSE: u64 = 0x85;
/// Multicodec code of raw bytes.
pub const RAW: u64 = 0x55;
/// Multicodec code of an Ethereum transaction (`eth-tx`).
pub const ETH_TX: u64 = 0x93;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of keccak-256.
pub const KECCAK_256: u64 = 0x1b;
/// Multihash code of the identity "hash".
pub const IDENTITY: u64 = 0x00;

/// Largest possible binary CID: version varint (1) + codec varint (10) +
/// multihash code varint (10) + digest size varint (1, digests are at most 64
/// bytes) + 64 digest bytes.
pub(crate) const MAX_CID_BYTES: usize = 1 + 10 + 10 + 1 + 64;

/// The binary prefix shared by every CIDv1 dag-cbor sha2-256 CID.
pub(crate) const DAG_CBOR_SHA256_PREFIX: [u8; 4] = [0x01, 0x71, 0x12, 0x20];

/// Builds a CIDv1 dag-cbor sha2-256 CID from a precomputed sha2-256 digest.
pub fn dag_cbor_cid_from_digest(digest: [u8; 32]) -> Cid {
    Cid::new_v1(DAG_CBOR, wrap_32(SHA2_256, &digest))
}

/// CID of a dag-cbor block: CIDv1, codec dag-cbor (0x71), multihash sha2-256.
pub fn dag_cbor_cid(block: &[u8]) -> Cid {
    dag_cbor_cid_from_digest(sha256(block))
}

/// sha2-256 initial state (FIPS 180-4 §5.3.3).
const SHA256_IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// One-shot sha2-256. Same result as `sha2::Sha256::digest`, but it feeds
/// sha2's block function (`compress256`) directly and pads the tail in a stack
/// buffer, skipping the generic buffering layer. That layer is monomorphised
/// into this crate, so in unoptimised (test) builds it dominated the cost of
/// building large trees.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut state = SHA256_IV;
    let (blocks, rest) = data.as_chunks::<64>();
    for block in blocks {
        sha2::compress256(&mut state, std::slice::from_ref(block.into()));
    }
    // Padding: 0x80, zeros, then the message length in bits (64-bit BE).
    let mut tail = [0u8; 128];
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()] = 0x80;
    let total = if rest.len() + 9 <= 64 { 64 } else { 128 };
    let bits = (data.len() as u64).wrapping_mul(8);
    tail[total - 8..total].copy_from_slice(&bits.to_be_bytes());
    let (tail_blocks, _) = tail[..total].as_chunks::<64>();
    for block in tail_blocks {
        sha2::compress256(&mut state, std::slice::from_ref(block.into()));
    }
    let mut out = [0u8; 32];
    for (o, word) in out.chunks_exact_mut(4).zip(state) {
        o.copy_from_slice(&word.to_be_bytes());
    }
    out
}

/// CID of an Ethereum transaction hash: CIDv1, codec eth-tx (0x93), multihash
/// keccak-256 (0x1b) wrapping the 32 raw hash bytes. Its string form starts
/// with `bagjqcgza`.
pub fn tx_hash_cid(hash: [u8; 32]) -> Cid {
    Cid::new_v1(ETH_TX, wrap_32(KECCAK_256, &hash))
}

/// Wraps a 32-byte digest in a multihash. A 32-byte digest always fits into
/// the 64-byte multihash storage, so the error branch cannot be taken.
fn wrap_32(code: u64, digest: &[u8; 32]) -> Multihash<64> {
    match Multihash::<64>::wrap(code, digest) {
        Ok(mh) => mh,
        // 32 <= 64: `wrap` only fails for digests longer than the storage.
        Err(_) => unreachable!("a 32-byte digest always fits a 64-byte multihash"),
    }
}

/// Writes an unsigned LEB128 varint at `buf[pos..]`, returning the new position.
fn put_varint(buf: &mut [u8], mut pos: usize, mut v: u64) -> usize {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[pos] = byte;
            return pos + 1;
        }
        buf[pos] = byte | 0x80;
        pos += 1;
    }
}

/// The binary form of a CID (`cid.to_bytes()`) written into a stack buffer,
/// without allocating. CIDv0 is written as its bare multihash, as in
/// `Cid::to_bytes`.
pub(crate) struct CidBytes {
    buf: [u8; MAX_CID_BYTES],
    len: usize,
}

impl CidBytes {
    /// Serialises `cid`.
    pub(crate) fn new(cid: &Cid) -> Self {
        let mut buf = [0u8; MAX_CID_BYTES];
        let mut pos = 0;
        if cid.version() != Version::V0 {
            pos = put_varint(&mut buf, pos, 1);
            pos = put_varint(&mut buf, pos, cid.codec());
        }
        let mh = cid.hash();
        pos = put_varint(&mut buf, pos, mh.code());
        pos = put_varint(&mut buf, pos, u64::from(mh.size()));
        let digest = mh.digest();
        buf[pos..pos + digest.len()].copy_from_slice(digest);
        pos += digest.len();
        Self { buf, len: pos }
    }

    /// The serialised bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cid_bytes_match_cid_crate() {
        let d = [7u8; 32];
        let cases = [
            dag_cbor_cid(b"hello"),
            tx_hash_cid(d),
            Cid::new_v1(DAG_JOSE, wrap_32(SHA2_256, &d)),
            Cid::new_v1(RAW, Multihash::<64>::wrap(IDENTITY, b"ab").unwrap()),
            Cid::new_v1(
                0x1234_5678_9abc,
                Multihash::<64>::wrap(0xb220, &[9u8; 64]).unwrap(),
            ),
            Cid::new_v0(wrap_32(SHA2_256, &d)).unwrap(),
        ];
        for cid in cases {
            assert_eq!(
                CidBytes::new(&cid).as_slice(),
                cid.to_bytes().as_slice(),
                "{cid}"
            );
        }
    }

    #[test]
    fn sha256_matches_sha2() {
        use sha2::{Digest, Sha256};
        for len in (0..=300).chain([1000, 4096, 65_537]) {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
            let expected: [u8; 32] = Sha256::digest(&data).into();
            assert_eq!(sha256(&data), expected, "len {len}");
        }
        // FIPS 180-2 test vector "abc".
        assert_eq!(sha256(b"abc")[..4], [0xba, 0x78, 0x16, 0xbf],);
    }

    #[test]
    fn tx_hash_cid_prefix() {
        let cid = tx_hash_cid([0xab; 32]);
        assert!(cid.to_string().starts_with("bagjqcgza"), "{cid}");
        assert_eq!(cid.hash().digest(), &[0xab; 32]);
        assert_eq!(cid.codec(), ETH_TX);
        assert_eq!(cid.hash().code(), KECCAK_256);
    }

    #[test]
    fn dag_cbor_cid_prefix() {
        let cid = dag_cbor_cid(&[0x80]);
        assert!(cid.to_string().starts_with("bafyrei"), "{cid}");
        assert_eq!(&cid.to_bytes()[..4], &DAG_CBOR_SHA256_PREFIX);
    }
}
