//! Cross-checks the fast tree against a naive recursive reference built with
//! serde_ipld_dagcbor + Ipld (independent of the crate's hand encoder).

mod common;

use std::collections::HashMap;

use cas_merkle::{Cid, MerkleTree, dag_cbor_cid, encode_node, format_path};
use common::{cbor_leaves, mixed_leaves};
use ipld_core::ipld::Ipld;

struct Naive {
    blocks: HashMap<Cid, Vec<u8>>,
    root: Cid,
}

fn put(blocks: &mut HashMap<Cid, Vec<u8>>, node: Ipld) -> Cid {
    let bytes = serde_ipld_dagcbor::to_vec(&node).unwrap();
    let cid = dag_cbor_cid(&bytes);
    blocks.insert(cid, bytes);
    cid
}

fn naive_level(leaves: &[Cid], blocks: &mut HashMap<Cid, Vec<u8>>) -> Cid {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let half = leaves.len() / 2;
    let l = naive_level(&leaves[..half], blocks);
    let r = naive_level(&leaves[half..], blocks);
    put(blocks, Ipld::List(vec![Ipld::Link(l), Ipld::Link(r)]))
}

fn naive(leaves: &[Cid]) -> Naive {
    let mut blocks = HashMap::new();
    let root = if leaves.len() == 1 {
        put(
            &mut blocks,
            Ipld::List(vec![Ipld::Link(leaves[0]), Ipld::Null]),
        )
    } else {
        naive_level(leaves, &mut blocks)
    };
    Naive { blocks, root }
}

/// `(leaf, path bits, path nodes)` of one leaf.
type NaivePath = (Cid, Vec<u8>, Vec<(Cid, Vec<u8>)>);

/// All leaves in left-to-right order with their paths and path nodes, found by
/// a depth-first walk over the naive blocks.
fn naive_paths(t: &Naive) -> Vec<NaivePath> {
    fn dfs(
        t: &Naive,
        cid: Cid,
        bits: &mut Vec<u8>,
        nodes: &mut Vec<(Cid, Vec<u8>)>,
        out: &mut Vec<NaivePath>,
    ) {
        let Some(bytes) = t.blocks.get(&cid) else {
            out.push((cid, bits.clone(), nodes.clone()));
            return;
        };
        let Ipld::List(children) = serde_ipld_dagcbor::from_slice::<Ipld>(bytes).unwrap() else {
            panic!("not a list")
        };
        nodes.push((cid, bytes.clone()));
        for (i, child) in children.iter().enumerate() {
            if let Ipld::Link(c) = child {
                bits.push(i as u8);
                dfs(t, *c, bits, nodes, out);
                bits.pop();
            }
        }
        nodes.pop();
    }
    let mut out = Vec::new();
    dfs(t, t.root, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn check(leaves: Vec<Cid>) {
    let n = leaves.len();
    let reference = naive(&leaves);
    let tree = MerkleTree::build(leaves.clone()).unwrap();
    assert_eq!(tree.root(), reference.root, "root, n={n}");
    assert_eq!(
        tree.root_digest(),
        reference.root.hash().digest(),
        "digest, n={n}"
    );
    let paths = naive_paths(&reference);
    assert_eq!(paths.len(), n);
    for (i, (leaf, bits, nodes)) in paths.into_iter().enumerate() {
        assert_eq!(leaf, leaves[i], "leaf order n={n} i={i}");
        let lp = tree.leaf_path(i).unwrap();
        assert_eq!(lp.leaf, leaf);
        assert_eq!(lp.bits, bits, "bits n={n} i={i}");
        assert_eq!(tree.path_bits(i).unwrap(), bits);
        assert_eq!(tree.path(i).unwrap(), format_path(&bits));
        assert_eq!(lp.nodes, nodes, "path nodes n={n} i={i}");
    }
    // Post-order node enumeration yields exactly the reference blocks.
    let mut count = 0;
    tree.for_each_node(|cid, bytes| {
        count += 1;
        assert_eq!(reference.blocks.get(cid).map(Vec::as_slice), Some(bytes));
    });
    assert_eq!(count, reference.blocks.len());
}

#[test]
fn matches_reference_small_sizes() {
    for n in 1..=64 {
        check(cbor_leaves(n));
        check(mixed_leaves(n));
    }
}

#[test]
fn matches_reference_odd_sizes() {
    for n in [65, 99, 127, 128, 129, 255, 257, 1000, 1023, 1025, 3001] {
        check(mixed_leaves(n));
    }
}

#[test]
fn parallel_matches_reference() {
    for n in [5000, 8192, 12_345] {
        let leaves = mixed_leaves(n);
        let tree = MerkleTree::build_parallel(leaves.clone(), 0).unwrap();
        assert_eq!(tree.root(), naive(&leaves).root);
        let seq = MerkleTree::build(leaves).unwrap();
        assert_eq!(
            seq.path_nodes(n - 1).unwrap(),
            tree.path_nodes(n - 1).unwrap()
        );
    }
}

/// Symbolic shape: render the tree as nested brackets of leaf letters.
fn shape(n: usize) -> String {
    let leaves = cbor_leaves(n);
    let tree = MerkleTree::build(leaves.clone()).unwrap();
    let names: HashMap<Cid, char> = leaves
        .iter()
        .enumerate()
        .map(|(i, c)| (*c, (b'A' + i as u8) as char))
        .collect();
    let mut blocks = HashMap::new();
    tree.for_each_node(|cid, bytes| {
        blocks.insert(*cid, bytes.to_vec());
    });
    fn render(cid: &Cid, blocks: &HashMap<Cid, Vec<u8>>, names: &HashMap<Cid, char>) -> String {
        if let Some(name) = names.get(cid) {
            return name.to_string();
        }
        let Ipld::List(items) = serde_ipld_dagcbor::from_slice::<Ipld>(&blocks[cid]).unwrap()
        else {
            panic!()
        };
        let parts: Vec<String> = items
            .iter()
            .map(|i| match i {
                Ipld::Link(c) => render(c, blocks, names),
                Ipld::Null => "null".to_owned(),
                _ => panic!(),
            })
            .collect();
        format!("[{}]", parts.join(","))
    }
    render(&tree.root(), &blocks, &names)
}

#[test]
fn shapes() {
    assert_eq!(shape(1), "[A,null]");
    assert_eq!(shape(2), "[A,B]");
    assert_eq!(shape(3), "[A,[B,C]]");
    assert_eq!(shape(4), "[[A,B],[C,D]]");
    assert_eq!(shape(5), "[[A,B],[C,[D,E]]]");
    assert_eq!(shape(7), "[[A,[B,C]],[[D,E],[F,G]]]");
}

#[test]
fn path_vectors() {
    let t9 = MerkleTree::build(cbor_leaves(9)).unwrap();
    assert_eq!(t9.path(8).unwrap(), "1/1/1/1");
    assert_eq!(t9.path_bits(8).unwrap(), vec![1, 1, 1, 1]);
    let t8 = MerkleTree::build(cbor_leaves(8)).unwrap();
    assert_eq!(t8.path(6).unwrap(), "1/1/0");
    let t1 = MerkleTree::build(cbor_leaves(1)).unwrap();
    assert_eq!(t1.path(0).unwrap(), "0");
    let nodes = t1.path_nodes(0).unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].0, t1.root());
    assert_eq!(nodes[0].1, encode_node(&t1.leaves()[0], None));
}

#[test]
fn node_encoding_bytes() {
    let a = dag_cbor_cid(b"a");
    let b = dag_cbor_cid(b"b");
    let bytes = encode_node(&a, Some(&b));
    assert_eq!(bytes.len(), 83);
    assert_eq!(
        &bytes[..10],
        &[0x82, 0xd8, 0x2a, 0x58, 0x25, 0x00, 0x01, 0x71, 0x12, 0x20]
    );
    assert_eq!(&bytes[10..42], a.hash().digest());
    assert_eq!(
        &bytes[42..51],
        &[0xd8, 0x2a, 0x58, 0x25, 0x00, 0x01, 0x71, 0x12, 0x20]
    );
    let jose = mixed_leaves(2)[1];
    let bytes = encode_node(&a, Some(&jose));
    assert_eq!(
        &bytes[42..51],
        &[0xd8, 0x2a, 0x58, 0x26, 0x00, 0x01, 0x85, 0x01, 0x12]
    );
}

#[test]
fn sort_leaves_by_string() {
    let mut leaves = mixed_leaves(50);
    cas_merkle::sort_leaves(&mut leaves);
    let strings: Vec<String> = leaves.iter().map(Cid::to_string).collect();
    let mut sorted = strings.clone();
    sorted.sort();
    assert_eq!(strings, sorted);
    assert!(strings[0].starts_with("Qm"));
}
