//! Minimal hand-written dag-cbor encoding: just what Merkle nodes, proofs and
//! anchor commits need (array/map headers, text strings, tag-42 links, null).

use cid::Cid;

use crate::cids::{CidBytes, DAG_CBOR_SHA256_PREFIX, MAX_CID_BYTES};

pub(crate) const MAJOR_TEXT: u8 = 3;
pub(crate) const MAJOR_ARRAY: u8 = 4;
pub(crate) const MAJOR_MAP: u8 = 5;
const MAJOR_BYTES: u8 = 2;
/// CBOR simple value `null`.
pub(crate) const NULL: u8 = 0xf6;
/// CBOR tag 42 (IPLD link), encoded as a one-byte-argument tag.
const TAG_42: [u8; 2] = [0xd8, 0x2a];

/// Largest encoded link: tag (2) + byte string header (2, the payload is < 256
/// bytes) + identity multibase prefix (1) + CID.
pub(crate) const MAX_LINK_BYTES: usize = 2 + 2 + 1 + MAX_CID_BYTES;

/// Writes a CBOR major-type header with the shortest argument encoding.
pub(crate) fn write_header(out: &mut Vec<u8>, major: u8, len: u64) {
    let m = major << 5;
    if len < 24 {
        out.push(m | len as u8);
    } else if len <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, len as u8]);
    } else if len <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else if len <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&len.to_be_bytes());
    }
}

/// Writes a CBOR text string.
pub(crate) fn write_text(out: &mut Vec<u8>, s: &str) {
    write_header(out, MAJOR_TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Writes a dag-cbor link (tag 42 over `0x00 ‖ cid bytes`).
pub(crate) fn write_link(out: &mut Vec<u8>, cid: &Cid) {
    let mut buf = [0u8; MAX_LINK_BYTES];
    let n = put_link(&mut buf, 0, CidBytes::new(cid).as_slice());
    out.extend_from_slice(&buf[..n]);
}

/// Writes a dag-cbor link for the given binary CID at `buf[pos..]` and returns
/// the new position. `cid.len()` is at most [`MAX_CID_BYTES`], so the byte
/// string header is one or two bytes.
pub(crate) fn put_link(buf: &mut [u8], mut pos: usize, cid: &[u8]) -> usize {
    buf[pos..pos + 2].copy_from_slice(&TAG_42);
    pos += 2;
    let payload = cid.len() + 1;
    if payload < 24 {
        buf[pos] = (MAJOR_BYTES << 5) | payload as u8;
        pos += 1;
    } else {
        buf[pos] = (MAJOR_BYTES << 5) | 24;
        buf[pos + 1] = payload as u8;
        pos += 2;
    }
    buf[pos] = 0x00;
    pos += 1;
    buf[pos..pos + cid.len()].copy_from_slice(cid);
    pos + cid.len()
}

/// Writes a link to a CIDv1 dag-cbor sha2-256 CID given only its digest
/// (`d8 2a 58 25 00 01 71 12 20 <digest>`), returning the new position.
pub(crate) fn put_sha256_link(buf: &mut [u8], pos: usize, digest: &[u8; 32]) -> usize {
    const HEAD: [u8; 9] = [
        0xd8,
        0x2a,
        0x58,
        0x25,
        0x00,
        DAG_CBOR_SHA256_PREFIX[0],
        DAG_CBOR_SHA256_PREFIX[1],
        DAG_CBOR_SHA256_PREFIX[2],
        DAG_CBOR_SHA256_PREFIX[3],
    ];
    buf[pos..pos + HEAD.len()].copy_from_slice(&HEAD);
    let p = pos + HEAD.len();
    buf[p..p + 32].copy_from_slice(digest);
    p + 32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipld_core::ipld::Ipld;

    #[test]
    fn headers_match_serde() {
        for len in [0usize, 1, 23, 24, 255, 256, 65535, 65536, 70000] {
            let s = "x".repeat(len);
            let mut out = Vec::new();
            write_text(&mut out, &s);
            assert_eq!(
                out,
                serde_ipld_dagcbor::to_vec(&Ipld::String(s)).unwrap(),
                "len {len}"
            );
        }
    }

    #[test]
    fn links_match_serde() {
        use cid::multihash::Multihash;
        let small = Cid::new_v1(0x55, Multihash::<64>::wrap(0, b"ab").unwrap());
        let normal = crate::cids::dag_cbor_cid(b"x");
        for cid in [small, normal] {
            let mut out = Vec::new();
            write_link(&mut out, &cid);
            assert_eq!(out, serde_ipld_dagcbor::to_vec(&Ipld::Link(cid)).unwrap());
        }
        let mut buf = [0u8; MAX_LINK_BYTES];
        let n = put_sha256_link(&mut buf, 0, &normal.hash().digest().try_into().unwrap());
        assert_eq!(
            &buf[..n],
            serde_ipld_dagcbor::to_vec(&Ipld::Link(normal)).unwrap()
        );
    }
}
