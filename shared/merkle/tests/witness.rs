//! Witness CAR round trips and hostile input to the verifier.

mod common;

use cas_merkle::{
    AnchorCommit, AnchorProof, Cid, MerkleTree, WitnessError, build_witness_car, dag_cbor_cid,
    encode_node, path_nodes_from_blocks, verify_witness_car,
};
use cid::multihash::Multihash;
use common::{cbor_leaves, mixed_leaves};
use iroh_car::{CarHeader, CarWriter};

fn stream_init() -> Cid {
    dag_cbor_cid(b"genesis")
}

fn proof_for(tree: &MerkleTree) -> AnchorProof {
    AnchorProof::contract(tree.root(), [0x42; 32], "eip155:1337")
}

async fn roundtrip_all(leaves: Vec<Cid>) {
    let n = leaves.len();
    let tree = MerkleTree::build(leaves).unwrap();
    let proof = proof_for(&tree);
    for i in 0..n {
        let w = tree.witness_car(i, stream_init(), &proof).await.unwrap();
        let v = verify_witness_car(&w.car)
            .await
            .unwrap_or_else(|e| panic!("n={n} i={i}: {e}"));
        assert_eq!(v.anchor_commit_cid, w.anchor_commit_cid);
        assert_eq!(v.anchor_commit_cid, w.anchor_commit.cid());
        assert_eq!(v.commit, w.anchor_commit);
        assert_eq!(v.commit.prev, tree.leaves()[i]);
        assert_eq!(v.commit.id, stream_init());
        assert_eq!(v.commit.path, tree.path(i).unwrap());
        assert_eq!(v.path, tree.path_bits(i).unwrap());
        assert_eq!(v.proof, proof);
        let path_cids: Vec<Cid> = tree
            .path_nodes(i)
            .unwrap()
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(v.merkle_nodes, path_cids);
        assert_eq!(
            tree.anchor_commit(i, stream_init(), proof.cid()).unwrap(),
            w.anchor_commit
        );
    }
}

#[tokio::test]
async fn every_leaf_of_small_trees_verifies() {
    for n in 1..=40 {
        roundtrip_all(cbor_leaves(n)).await;
    }
}

#[tokio::test]
async fn every_leaf_of_larger_trees_verifies() {
    roundtrip_all(cbor_leaves(1000)).await;
    roundtrip_all(mixed_leaves(1025)).await;
}

#[tokio::test]
async fn mixed_codec_leaves_verify() {
    for n in [1, 2, 3, 6, 7, 13, 40] {
        roundtrip_all(mixed_leaves(n)).await;
    }
}

#[tokio::test]
async fn witness_requires_matching_root_and_index() {
    let tree = MerkleTree::build(cbor_leaves(4)).unwrap();
    let other = MerkleTree::build(cbor_leaves(5)).unwrap();
    let err = tree
        .witness_car(0, stream_init(), &proof_for(&other))
        .await
        .unwrap_err();
    assert!(matches!(err, WitnessError::Inconsistent(_)), "{err}");
    let err = tree
        .witness_car(4, stream_init(), &proof_for(&tree))
        .await
        .unwrap_err();
    assert!(matches!(err, WitnessError::Merkle(_)), "{err}");
}

/// A valid 7-leaf witness plus its parts, for tampering.
async fn sample() -> (
    MerkleTree,
    AnchorProof,
    AnchorCommit,
    Vec<(Cid, Vec<u8>)>,
    Vec<u8>,
) {
    let tree = MerkleTree::build(mixed_leaves(7)).unwrap();
    let proof = proof_for(&tree);
    let w = tree.witness_car(5, stream_init(), &proof).await.unwrap();
    let nodes = tree.path_nodes(5).unwrap();
    (tree, proof, w.anchor_commit, nodes, w.car)
}

/// Writes an arbitrary CAR, bypassing every consistency check.
async fn raw_car(roots: Vec<Cid>, blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let mut w = CarWriter::new(CarHeader::new_v1(roots), Vec::<u8>::new());
    for (c, b) in blocks {
        w.write(*c, b).await.unwrap();
    }
    w.finish().await.unwrap()
}

fn all_blocks(
    proof: &AnchorProof,
    commit: &AnchorCommit,
    nodes: &[(Cid, Vec<u8>)],
) -> Vec<(Cid, Vec<u8>)> {
    let mut v = vec![
        (commit.cid(), commit.encode()),
        (proof.cid(), proof.encode()),
    ];
    v.extend_from_slice(nodes);
    v
}

#[tokio::test]
async fn rejects_garbage() {
    for input in [
        &b""[..],
        b"hello world",
        &[0xff; 64],
        &[0x01],
        &[0x05, 0xa0, 0, 0, 0, 0],
    ] {
        let err = verify_witness_car(input).await.unwrap_err();
        assert!(matches!(err, WitnessError::Car(_)), "{err}");
        assert!(err.to_string().starts_with("invalid car"));
    }
}

#[tokio::test]
async fn rejects_every_truncation() {
    let (.., car) = sample().await;
    for len in 0..car.len() {
        assert!(
            verify_witness_car(&car[..len]).await.is_err(),
            "prefix {len} verified"
        );
    }
    assert!(verify_witness_car(&car).await.is_ok());
}

#[tokio::test]
async fn rejects_every_single_byte_flip() {
    // Every flip must be rejected, except that iroh-car parses the (unhashed)
    // CAR header leniently: a flip there may still be accepted, but then it
    // must yield exactly the original witness.
    let (.., car) = sample().await;
    let good = verify_witness_car(&car).await.unwrap();
    let header_end = 1 + usize::from(car[0]);
    for i in 0..car.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = car.clone();
            bad[i] ^= mask;
            match verify_witness_car(&bad).await {
                Err(_) => {}
                Ok(v) => {
                    assert!(i > 0 && i < header_end, "flip {mask:#x} at {i} verified");
                    assert_eq!(v, good, "flip {mask:#x} at {i}");
                }
            }
        }
    }
}

#[tokio::test]
async fn rejects_wrong_hash() {
    let (_, proof, commit, nodes, _) = sample().await;
    let mut blocks = all_blocks(&proof, &commit, &nodes);
    let mut tampered = blocks[3].1.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    blocks[3].1 = tampered;
    let car = raw_car(vec![commit.cid()], &blocks).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(err, WitnessError::HashMismatch(ref c) if **c == nodes[1].0),
        "{err}"
    );
    assert!(err.to_string().contains("hash mismatch"));
}

#[tokio::test]
async fn rejects_missing_path_block() {
    let (_, proof, commit, nodes, _) = sample().await;
    let car = build_witness_car(&commit, &proof, &nodes[..nodes.len() - 1])
        .await
        .unwrap();
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(err, WitnessError::MissingBlock { ref cid, .. } if **cid == nodes.last().unwrap().0),
        "{err}"
    );
    assert!(err.to_string().contains("missing merkle node block"));

    // Missing proof block.
    let blocks = all_blocks(&proof, &commit, &nodes);
    let car = raw_car(vec![commit.cid()], &[blocks[0].clone()]).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(err, WitnessError::MissingBlock { what: "proof", .. }),
        "{err}"
    );

    // Missing root block.
    let car = raw_car(vec![commit.cid()], &blocks[1..]).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(
            err,
            WitnessError::MissingBlock {
                what: "anchor commit",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn rejects_path_leading_elsewhere() {
    let (tree, proof, commit, nodes, _) = sample().await;
    // Right nodes, but prev is another leaf.
    let wrong_prev = AnchorCommit {
        prev: tree.leaves()[4],
        ..commit.clone()
    };
    let car = build_witness_car(&wrong_prev, &proof, &nodes)
        .await
        .unwrap();
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(err, WitnessError::PathMismatch { ref expected, ref found }
            if **expected == tree.leaves()[4] && **found == tree.leaves()[5]),
        "{err}"
    );
    assert!(err.to_string().contains("path does not lead to prev"));

    // Path one step too short ends at an internal node.
    let short = AnchorCommit {
        path: "1/0".to_owned(),
        ..commit.clone()
    };
    let car = build_witness_car(&short, &proof, &nodes).await.unwrap();
    assert!(matches!(
        verify_witness_car(&car).await.unwrap_err(),
        WitnessError::PathMismatch { .. }
    ));

    // Path one step too long walks into the leaf, which is not in the CAR.
    let long = AnchorCommit {
        path: format!("{}/0", commit.path),
        ..commit.clone()
    };
    let car = build_witness_car(&long, &proof, &nodes).await.unwrap();
    assert!(matches!(
        verify_witness_car(&car).await.unwrap_err(),
        WitnessError::MissingBlock { .. }
    ));
}

#[tokio::test]
async fn rejects_bad_paths_and_nodes() {
    let (_, proof, commit, nodes, _) = sample().await;
    for bad in ["1/2/0", "1//0", "x", "/", "1/0/"] {
        let c = AnchorCommit {
            path: bad.to_owned(),
            ..commit.clone()
        };
        let car = build_witness_car(&c, &proof, &nodes).await.unwrap();
        let err = verify_witness_car(&car).await.unwrap_err();
        assert!(matches!(err, WitnessError::BadPath(_)), "{bad}: {err}");
        assert!(err.to_string().contains("bad path element"));
    }

    // A "node" that is not a list: point the proof root at a map block.
    let not_list = commit.encode();
    let bad_root = dag_cbor_cid(&not_list);
    let bad_proof = AnchorProof {
        root: bad_root,
        ..proof.clone()
    };
    let c = AnchorCommit {
        proof: bad_proof.cid(),
        path: "0".to_owned(),
        ..commit.clone()
    };
    let car = build_witness_car(&c, &bad_proof, &[(bad_root, not_list)])
        .await
        .unwrap();
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(err, WitnessError::BadNode { depth: 0, .. }),
        "{err}"
    );

    // A one-element list and a four-element list are not Merkle nodes either.
    for bytes in [vec![0x81, 0xf6], vec![0x84, 0xf6, 0xf6, 0xf6, 0xf6]] {
        let root = dag_cbor_cid(&bytes);
        let p = AnchorProof {
            root,
            ..proof.clone()
        };
        let c = AnchorCommit {
            proof: p.cid(),
            path: "0".to_owned(),
            ..commit.clone()
        };
        let car = build_witness_car(&c, &p, &[(root, bytes)]).await.unwrap();
        assert!(matches!(
            verify_witness_car(&car).await.unwrap_err(),
            WitnessError::BadNode { .. }
        ));
    }
}

#[tokio::test]
async fn single_leaf_tree_null_sibling_and_empty_path() {
    let leaf = mixed_leaves(2)[1];
    let tree = MerkleTree::build(vec![leaf]).unwrap();
    let proof = proof_for(&tree);
    let w = tree.witness_car(0, stream_init(), &proof).await.unwrap();
    assert_eq!(w.anchor_commit.path, "0");
    assert!(verify_witness_car(&w.car).await.is_ok());

    // Taking the null sibling.
    let c = AnchorCommit {
        path: "1".to_owned(),
        ..w.anchor_commit.clone()
    };
    let car = build_witness_car(&c, &proof, &tree.path_nodes(0).unwrap())
        .await
        .unwrap();
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(
            err,
            WitnessError::NotALink {
                bit: 1,
                depth: 0,
                ..
            }
        ),
        "{err}"
    );

    // Empty path: prev must be the root itself.
    let c = AnchorCommit {
        path: String::new(),
        prev: tree.root(),
        ..w.anchor_commit.clone()
    };
    let car = build_witness_car(&c, &proof, &[]).await.unwrap();
    let v = verify_witness_car(&car).await.unwrap();
    assert!(v.path.is_empty());
    assert!(v.merkle_nodes.is_empty());
    let c = AnchorCommit {
        path: String::new(),
        ..w.anchor_commit.clone()
    };
    let car = build_witness_car(&c, &proof, &[]).await.unwrap();
    assert!(matches!(
        verify_witness_car(&car).await.unwrap_err(),
        WitnessError::PathMismatch { .. }
    ));
}

#[tokio::test]
async fn accepts_old_three_element_root() {
    let leaves = cbor_leaves(2);
    let metadata = dag_cbor_cid(b"metadata");
    let mut root_bytes = encode_node(&leaves[0], Some(&leaves[1]));
    root_bytes[0] = 0x83;
    root_bytes.extend_from_slice(&[0xd8, 0x2a, 0x58, 0x25, 0x00]);
    root_bytes.extend_from_slice(&metadata.to_bytes());
    let root = dag_cbor_cid(&root_bytes);
    let proof = AnchorProof::contract(root, [1; 32], "eip155:1");
    let commit = AnchorCommit {
        id: stream_init(),
        path: "1".to_owned(),
        prev: leaves[1],
        proof: proof.cid(),
    };
    let car = build_witness_car(&commit, &proof, &[(root, root_bytes)])
        .await
        .unwrap();
    let v = verify_witness_car(&car).await.unwrap();
    assert_eq!(v.commit.prev, leaves[1]);
}

#[tokio::test]
async fn rejects_root_count_codec_and_unverifiable_hash() {
    let (_, proof, commit, nodes, _) = sample().await;
    let blocks = all_blocks(&proof, &commit, &nodes);
    let car = raw_car(vec![commit.cid(), proof.cid()], &blocks).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(matches!(err, WitnessError::RootCount(2)), "{err}");
    // iroh-car itself refuses an empty root list.
    let car = raw_car(vec![], &blocks).await;
    assert!(verify_witness_car(&car).await.is_err());

    // Root block under a raw-codec CID.
    let bytes = commit.encode();
    let raw_cid = Cid::new_v1(0x55, *dag_cbor_cid(&bytes).hash());
    let mut b2 = blocks.clone();
    b2[0].0 = raw_cid;
    let car = raw_car(vec![raw_cid], &b2).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(matches!(err, WitnessError::NotDagCbor { .. }), "{err}");

    // Root block under a hash we cannot check (blake3, made-up digest).
    let odd = Cid::new_v1(0x71, Multihash::<64>::wrap(0x1e, &[7; 32]).unwrap());
    let mut b3 = blocks.clone();
    b3[0].0 = odd;
    let car = raw_car(vec![odd], &b3).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(err, WitnessError::UnsupportedHash { code: 0x1e, .. }),
        "{err}"
    );

    // A root block that is not an anchor commit.
    let car = raw_car(vec![proof.cid()], &blocks).await;
    let err = verify_witness_car(&car).await.unwrap_err();
    assert!(
        matches!(
            err,
            WitnessError::Decode {
                what: "anchor commit",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn builder_rejects_inconsistent_parts() {
    let (tree, proof, commit, nodes, _) = sample().await;
    let other = AnchorProof {
        chain_id: "eip155:1".to_owned(),
        ..proof.clone()
    };
    assert!(matches!(
        build_witness_car(&commit, &other, &nodes)
            .await
            .unwrap_err(),
        WitnessError::Inconsistent(_)
    ));
    assert!(matches!(
        build_witness_car(&commit, &proof, &nodes[1..])
            .await
            .unwrap_err(),
        WitnessError::Inconsistent(_)
    ));
    let _ = tree;
}

#[tokio::test]
async fn hostile_cbor_in_blocks_does_not_panic() {
    let (_, proof, commit, ..) = sample().await;
    let deep: Vec<u8> = std::iter::repeat_n(0x81u8, 200_000).chain([0xf6]).collect();
    let huge_array = vec![0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xf6];
    let huge_bytes = vec![
        0x82, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
    ];
    let indefinite = vec![0x9f, 0xf6, 0xf6, 0xff];
    for bytes in [
        deep,
        huge_array,
        huge_bytes,
        indefinite,
        vec![],
        vec![0xd8, 0x2a, 0x41, 0x00],
    ] {
        let root = dag_cbor_cid(&bytes);
        let p = AnchorProof {
            root,
            ..proof.clone()
        };
        let c = AnchorCommit {
            proof: p.cid(),
            path: "0".to_owned(),
            ..commit.clone()
        };
        let car = build_witness_car(&c, &p, &[(root, bytes.clone())])
            .await
            .unwrap();
        let err = verify_witness_car(&car).await.unwrap_err();
        assert!(matches!(err, WitnessError::BadNode { .. }), "{err}");

        // The same bytes as the anchor commit and as the proof.
        let car = raw_car(vec![root], &[(root, bytes.clone())]).await;
        let err = verify_witness_car(&car).await.unwrap_err();
        assert!(
            matches!(
                err,
                WitnessError::Decode {
                    what: "anchor commit",
                    ..
                }
            ),
            "{err}"
        );
        let c = AnchorCommit {
            proof: root,
            ..commit.clone()
        };
        let car = raw_car(vec![c.cid()], &[(c.cid(), c.encode()), (root, bytes)]).await;
        let err = verify_witness_car(&car).await.unwrap_err();
        assert!(
            matches!(err, WitnessError::Decode { what: "proof", .. }),
            "{err}"
        );
    }
}

#[tokio::test]
async fn path_nodes_from_stored_blocks() {
    // Store every node of the tree (as a Merkle CAR would) and rebuild witnesses from it.
    let tree = MerkleTree::build(mixed_leaves(23)).unwrap();
    let mut store = std::collections::HashMap::new();
    tree.for_each_node(|cid, bytes| {
        store.insert(*cid, bytes.to_vec());
    });
    let proof = proof_for(&tree);
    for i in 0..23 {
        let w = tree.witness_car(i, stream_init(), &proof).await.unwrap();
        let nodes = path_nodes_from_blocks(tree.root(), &w.anchor_commit.path, |c| {
            store.get(c).cloned()
        })
        .unwrap();
        assert_eq!(nodes, tree.path_nodes(i).unwrap());
        let car = build_witness_car(&w.anchor_commit, &proof, &nodes)
            .await
            .unwrap();
        assert_eq!(car, w.car);
    }
    // A missing node ends the walk quietly; a bad path is an error.
    let path = tree.path(22).unwrap();
    let deeper = tree.path_nodes(22).unwrap()[2].0;
    let partial = path_nodes_from_blocks(tree.root(), &path, |c| {
        (*c != deeper).then(|| store[c].clone())
    })
    .unwrap();
    assert_eq!(partial, tree.path_nodes(22).unwrap()[..2].to_vec());
    assert!(path_nodes_from_blocks(tree.root(), "0/3", |c| store.get(c).cloned()).is_err());
    let err = path_nodes_from_blocks(tree.root(), "0", |_| Some(vec![0xa0])).unwrap_err();
    assert!(
        matches!(err, WitnessError::BadNode { depth: 0, .. }),
        "{err}"
    );
}
