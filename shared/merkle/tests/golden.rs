//! Golden test against a real COMPLETED response from the Ceramic CAS
//! (`rc:anchor-remote/src/test-data/anchor_response.json`).

use std::collections::BTreeMap;

use cas_merkle::{
    AnchorCommit, AnchorProof, Cid, build_witness_car, dag_cbor_cid, decode_base64, encode_base64,
    encode_node, verify_witness_car,
};
use ipld_core::ipld::Ipld;
use iroh_car::CarReader;

const RESPONSE: &str = include_str!("data/ceramic-one-anchor-response.json");
const EXPECTED: &str = include_str!("data/ceramic-one-anchor-response.expected.txt");

fn cid(s: &str) -> Cid {
    s.parse().unwrap()
}

fn response() -> (serde_json::Value, String, Vec<u8>) {
    let v: serde_json::Value = serde_json::from_str(RESPONSE).unwrap();
    let car_b64 = v["witnessCar"].as_str().unwrap().to_owned();
    assert!(!car_b64.contains('='));
    let car = decode_base64(&car_b64).unwrap();
    (v, car_b64, car)
}

async fn read_blocks(car: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
    let mut r = CarReader::new(car).await.unwrap();
    let roots = r.header().roots().to_vec();
    let mut blocks = Vec::new();
    while let Some(b) = r.next_block().await.unwrap() {
        blocks.push(b);
    }
    (roots, blocks)
}

/// Parses `"Cid(X): [Some(Cid(Y)), Some(Cid(Z))]"` lines of the expected dump.
fn expected_nodes() -> BTreeMap<Cid, (Cid, Cid)> {
    let mut out = BTreeMap::new();
    for line in EXPECTED.lines() {
        let line = line.trim().trim_end_matches(',').trim_matches('"');
        if !line.starts_with("Cid(") || !line.contains("): [") {
            continue;
        }
        let cids: Vec<Cid> = line
            .split("Cid(")
            .skip(1)
            .map(|p| cid(&p[..p.find(')').unwrap()]))
            .collect();
        assert_eq!(cids.len(), 3, "{line}");
        out.insert(cids[0], (cids[1], cids[2]));
    }
    out
}

#[tokio::test]
async fn verifies_real_witness_car() {
    let (v, _, car) = response();
    let w = verify_witness_car(&car).await.unwrap();
    assert_eq!(
        w.anchor_commit_cid,
        cid("bafyreie5xlnroyt5vqdzdg2w2npnyx5iqq6xtruq3xw6ifsdwdy3d2be5q")
    );
    assert_eq!(
        w.anchor_commit_cid.to_string(),
        v["anchorCommit"]["cid"].as_str().unwrap()
    );
    assert_eq!(
        w.commit.proof,
        cid("bafyreifb3bcc6vsui6rfnu4tyb64u6gthgs4i5guwaybru7desf434kgsy")
    );
    assert_eq!(
        w.proof.root,
        cid("bafyreicmmbibfikudglurxft6sijpbjloupdf4jhyfof4s4fhgcc576qte")
    );
    assert_eq!(
        w.proof.tx_hash,
        cid("bagjqcgzaflvcfmukjqlips4oxxto6wq644by77dhe77d3gglvreh345qp4ka")
    );
    assert_eq!(w.proof.tx_type, "f(bytes32)");
    assert_eq!(w.proof.chain_id, "eip155:11155111");
    assert_eq!(w.commit.path, "0/0/0/0/0/0/0/0");
    assert_eq!(w.path, vec![0; 8]);
    assert_eq!(w.commit.prev, cid(v["cid"].as_str().unwrap()));
    // ceramic-one sends its own root as both id and prev.
    assert_eq!(w.commit.id, w.commit.prev);
    assert_eq!(w.merkle_nodes.len(), 8);
    assert_eq!(w.merkle_nodes[0], w.proof.root);
}

#[tokio::test]
async fn merkle_nodes_match_expected_dump() {
    let (_, _, car) = response();
    let (_, blocks) = read_blocks(&car).await;
    let expected = expected_nodes();
    assert_eq!(expected.len(), 8);
    let nodes = &blocks[2..];
    assert_eq!(nodes.len(), 8);
    for (c, bytes) in nodes {
        let Ipld::List(items) = serde_ipld_dagcbor::from_slice::<Ipld>(bytes).unwrap() else {
            panic!("node {c} is not a list")
        };
        let links: Vec<Cid> = items
            .iter()
            .map(|i| match i {
                Ipld::Link(l) => *l,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(expected.get(c), Some(&(links[0], links[1])), "node {c}");
    }
    // The last node's sibling is a dag-jose leaf.
    let last = nodes.last().unwrap();
    assert_eq!(expected[&last.0].1.codec(), 0x85);
}

#[tokio::test]
async fn reencodes_every_block_identically() {
    let (_, _, car) = response();
    let (roots, blocks) = read_blocks(&car).await;
    assert_eq!(roots.len(), 1);
    assert_eq!(blocks.len(), 10);
    for (c, bytes) in &blocks {
        assert_eq!(dag_cbor_cid(bytes), *c, "block hash");
    }
    let commit = AnchorCommit::decode(&blocks[0].1).unwrap();
    assert_eq!(commit.encode(), blocks[0].1);
    assert_eq!(commit.cid(), blocks[0].0);
    assert_eq!(roots[0], blocks[0].0);
    let proof = AnchorProof::decode(&blocks[1].1).unwrap();
    assert_eq!(proof.encode(), blocks[1].1);
    assert_eq!(proof.cid(), blocks[1].0);
    assert_eq!(commit.proof, proof.cid());
    for (c, bytes) in &blocks[2..] {
        let Ipld::List(items) = serde_ipld_dagcbor::from_slice::<Ipld>(bytes).unwrap() else {
            panic!()
        };
        let (Ipld::Link(l), Ipld::Link(r)) = (&items[0], &items[1]) else {
            panic!()
        };
        let re = encode_node(l, Some(r));
        assert_eq!(&re, bytes, "node {c}");
        assert_eq!(dag_cbor_cid(&re), *c);
    }
}

#[tokio::test]
async fn rebuilds_identical_car_and_base64() {
    let (_, car_b64, car) = response();
    let (_, blocks) = read_blocks(&car).await;
    let commit = AnchorCommit::decode(&blocks[0].1).unwrap();
    let proof = AnchorProof::decode(&blocks[1].1).unwrap();
    let rebuilt = build_witness_car(&commit, &proof, &blocks[2..])
        .await
        .unwrap();
    assert_eq!(rebuilt, car);
    assert_eq!(encode_base64(&rebuilt), car_b64);
}
