//! Published test vectors.
//!
//! Sources (github.com/transparency-dev/merkle):
//! - `testonly/constants.go`: `LeafInputs`, `NodeHashes`, `RootHashes`, `CompactTrees`,
//!   `EmptyRootHash`.
//! - `proof/verify_test.go`: `inclusionProofs`, `consistencyProofs`, `roots`, `leaves`,
//!   `sha256SomeHash`, the corruption probes (`corruptInclusionProof`,
//!   `corruptConsistencyProof`), `TestVerifyInclusionSingleEntry`, `TestVerifyInclusion` and
//!   `TestVerifyConsistency`.
//! - `proof/proof_test.go`: the node ids of `TestInclusion` and `TestConsistency`.
//!
//! Adaptation: Go's vectors use `[]byte` hashes and sometimes pass empty or short byte
//! strings as garbage or "don't care" roots; our hashes are fixed 32-byte arrays, so those
//! become fixed 32-byte values (all zeros, all ones, all twos).

mod common;

use common::{Store, h};
use gp4u_ledger::hash::bytes_from_hex;
use gp4u_ledger::{
    Frontier, Hash, NodeId, ProofPlan, VerifyError, assemble, consistency_proof,
    consistency_proof_plan, empty_root, inclusion_proof, inclusion_proof_plan, leaf_hash, mth,
    root_from_inclusion_proof, verify_consistency, verify_inclusion,
};

/// testonly/constants.go `LeafInputs` (also proof/verify_test.go `leaves`).
const LEAF_INPUTS: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// testonly/constants.go `RootHashes`: roots for sizes 0..=8 (size 0 is `EmptyRootHash`).
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// testonly/constants.go `NodeHashes`: `[level][index]` of every perfect subtree of the
/// 8-leaf tree.
const NODE_HASHES: [&[&str]; 4] = [
    &[
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ],
    &[
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ],
    &[
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    &["5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"],
];

/// testonly/constants.go `CompactTrees`: the frontier (as `NodeHashes` coordinates
/// `(level, index)`) for sizes 0..=8.
const COMPACT_TREES: [&[(usize, usize)]; 9] = [
    &[],
    &[(0, 0)],
    &[(1, 0)],
    &[(1, 0), (0, 2)],
    &[(2, 0)],
    &[(2, 0), (0, 4)],
    &[(2, 0), (1, 2)],
    &[(2, 0), (1, 2), (0, 6)],
    &[(3, 0)],
];

/// proof/verify_test.go `inclusionProofs`: `(leaf, size, proof)` with a 1-based leaf number
/// (Go's test uses `p.leaf-1` as the index). Go skips its first entry `{0, 0, nil}`.
const INCLUSION_PROOFS: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        3,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        2,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

/// proof/verify_test.go `consistencyProofs`: `(size1, size2, proof)`.
const CONSISTENCY_PROOFS: [(u64, u64, &[&str]); 5] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// proof/verify_test.go `sha256SomeHash`.
const SOME_HASH: &str = "abacaba000000000000000000000000000000000000000000060061e00123456";

fn leaves() -> Vec<Hash> {
    LEAF_INPUTS
        .iter()
        .map(|s| leaf_hash(&bytes_from_hex(s).expect("leaf input hex")))
        .collect()
}

fn root(size: u64) -> Hash {
    h(ROOTS[size as usize])
}

fn proof_of(hexes: &[&str]) -> Vec<Hash> {
    hexes.iter().map(|s| h(s)).collect()
}

#[test]
fn empty_root_matches() {
    assert_eq!(empty_root(), h(ROOTS[0]));
    assert_eq!(mth(&[]), h(ROOTS[0]));
    assert_eq!(Frontier::new().root(), h(ROOTS[0]));
}

#[test]
fn roots_for_sizes_0_to_8() {
    let leaves = leaves();
    let mut f = Frontier::new();
    for size in 0..=8u64 {
        assert_eq!(mth(&leaves[..size as usize]), root(size), "mth size {size}");
        assert_eq!(f.root(), root(size), "frontier size {size}");
        if size < 8 {
            f.append(leaves[size as usize]).expect("append");
        }
    }
}

#[test]
fn node_hashes_and_compact_trees() {
    let leaves = leaves();
    let store = Store::build(&leaves);
    let mut count = 0;
    for (level, row) in NODE_HASHES.iter().enumerate() {
        for (index, hex) in row.iter().enumerate() {
            let id = NodeId::new(level as u8, index as u64);
            assert_eq!(store.get(id), Some(h(hex)), "node {id}");
            count += 1;
        }
    }
    assert_eq!(
        store.nodes.len(),
        count,
        "exactly the perfect nodes are reported"
    );

    let mut f = Frontier::new();
    for (size, compact) in COMPACT_TREES.iter().enumerate() {
        let want: Vec<Hash> = compact.iter().map(|&(l, i)| h(NODE_HASHES[l][i])).collect();
        assert_eq!(f.hashes(), want.as_slice(), "frontier at size {size}");
        let ids: Vec<NodeId> = compact
            .iter()
            .map(|&(l, i)| NodeId::new(l as u8, i as u64))
            .collect();
        assert_eq!(
            Frontier::node_ids(size as u64),
            ids,
            "node ids at size {size}"
        );
        let rebuilt = Frontier::from_parts(size as u64, want).expect("from_parts");
        assert_eq!(rebuilt, f);
        if size < 8 {
            f.append(leaves[size]).expect("append");
        }
    }
}

/// `(description, index, size, proof, root, leaf)`.
type InclusionProbe = (&'static str, u64, u64, Vec<Hash>, Hash, Hash);
/// `(description, size1, size2, root1, root2, proof)`.
type ConsistencyProbe = (&'static str, u64, u64, Hash, Hash, Vec<Hash>);
/// `(size1, size2, root1, root2, proof, want_err)`.
type ConsistencyCase<'a> = (u64, u64, Hash, Hash, &'a [Hash], bool);

/// Go's `corruptInclusionProof` probes; every one must fail.
fn inclusion_probes(
    index: u64,
    size: u64,
    proof: &[Hash],
    root: Hash,
    leaf: Hash,
) -> Vec<InclusionProbe> {
    let some = h(SOME_HASH);
    let garbage = [0u8; 32];
    let with = |mut v: Vec<Hash>, at_end: bool, x: Hash| {
        if at_end {
            v.push(x)
        } else {
            v.insert(0, x)
        }
        v
    };
    let p = proof.to_vec();
    let mut probes = vec![
        (
            "index - 1",
            index.wrapping_sub(1),
            size,
            p.clone(),
            root,
            leaf,
        ),
        ("index + 1", index + 1, size, p.clone(), root, leaf),
        ("index ^ 2", index ^ 2, size, p.clone(), root, leaf),
        ("size * 2", index, size * 2, p.clone(), root, leaf),
        ("size / 2", index, size / 2, p.clone(), root, leaf),
        (
            "wrong leaf",
            index,
            size,
            p.clone(),
            root,
            leaf_hash(b"WrongLeaf"),
        ),
        ("empty root", index, size, p.clone(), empty_root(), leaf),
        ("random root", index, size, p.clone(), some, leaf),
        (
            "trailing garbage",
            index,
            size,
            with(p.clone(), true, garbage),
            root,
            leaf,
        ),
        (
            "trailing root",
            index,
            size,
            with(p.clone(), true, root),
            root,
            leaf,
        ),
        (
            "preceding garbage",
            index,
            size,
            with(p.clone(), false, garbage),
            root,
            leaf,
        ),
        (
            "preceding root",
            index,
            size,
            with(p.clone(), false, root),
            root,
            leaf,
        ),
    ];
    for i in 0..p.len() {
        let mut q = p.clone();
        q[i][0] ^= 8;
        probes.push(("modified proof bit 3", index, size, q, root, leaf));
    }
    if !p.is_empty() {
        probes.push((
            "removed component",
            index,
            size,
            p[..p.len() - 1].to_vec(),
            root,
            leaf,
        ));
    }
    if p.len() > 1 {
        let mut q = vec![p[0], some];
        q.extend_from_slice(&p[1..]);
        probes.push(("inserted component", index, size, q, root, leaf));
    }
    probes
}

#[test]
fn inclusion_vectors() {
    let leaves = leaves();
    let store = Store::build(&leaves);
    for (leaf_no, size, proof) in INCLUSION_PROOFS {
        let index = leaf_no - 1;
        let proof = proof_of(proof);
        let leaf = leaves[index as usize];
        let root = root(size);
        assert_eq!(
            root_from_inclusion_proof(&leaf, index, size, &proof),
            Ok(root)
        );
        assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));
        // Both ways of producing the proof give the published one.
        assert_eq!(
            inclusion_proof(&leaves[..size as usize], index),
            Ok(proof.clone())
        );
        let plan = inclusion_proof_plan(index, size).expect("plan");
        assert_eq!(assemble(&plan, |id| store.get(id)), Ok(proof.clone()));
        for (desc, i, s, p, r, l) in inclusion_probes(index, size, &proof, root, leaf) {
            assert!(
                verify_inclusion(&l, i, s, &p, &r).is_err(),
                "probe {desc} verified for index {index} size {size}"
            );
        }
    }
}

#[test]
fn verify_inclusion_single_entry() {
    // proof/verify_test.go TestVerifyInclusionSingleEntry; Go's empty []byte is zeros here.
    let hash = leaf_hash(b"data");
    let empty = [0u8; 32];
    assert_eq!(verify_inclusion(&hash, 0, 1, &[], &hash), Ok(()));
    assert!(verify_inclusion(&empty, 0, 1, &[], &hash).is_err());
    assert!(verify_inclusion(&hash, 0, 1, &[], &empty).is_err());
}

#[test]
fn verify_inclusion_bad_index_and_size() {
    // proof/verify_test.go TestVerifyInclusion probes; Go's empty []byte is zeros here.
    let some = h(SOME_HASH);
    let empty_tree = empty_root();
    let zero = [0u8; 32];
    for (index, size) in [(0, 0), (0, 1), (1, 0), (2, 1)] {
        assert!(verify_inclusion(&some, index, size, &[], &zero).is_err());
        assert!(verify_inclusion(&zero, index, size, &[], &empty_tree).is_err());
        assert!(verify_inclusion(&some, index, size, &[], &empty_tree).is_err());
    }
    assert_eq!(
        verify_inclusion(&some, 2, 1, &[], &some),
        Err(VerifyError::IndexOutOfRange { index: 2, size: 1 })
    );
}

/// Go's `corruptConsistencyProof` probes; every one must fail.
fn consistency_probes(
    size1: u64,
    size2: u64,
    root1: Hash,
    root2: Hash,
    proof: &[Hash],
) -> Vec<ConsistencyProbe> {
    let wrong = [1u8; 32];
    let garbage = [0u8; 32];
    let p = proof.to_vec();
    let with = |at_end: bool, x: Hash| {
        let mut v = p.clone();
        if at_end {
            v.push(x)
        } else {
            v.insert(0, x)
        }
        v
    };
    let mut probes = vec![
        ("size1 - 1", size1 - 1, size2, root1, root2, p.clone()),
        ("size1 + 1", size1 + 1, size2, root1, root2, p.clone()),
        ("size1 ^ 2", size1 ^ 2, size2, root1, root2, p.clone()),
        ("size2 * 2", size1, size2 * 2, root1, root2, p.clone()),
        ("size2 / 2", size1, size2 / 2, root1, root2, p.clone()),
        ("wrong root1", size1, size2, wrong, root2, p.clone()),
        ("wrong root2", size1, size2, root1, wrong, p.clone()),
        ("swapped roots", size1, size2, root2, root1, p.clone()),
        ("empty proof", size1, size2, root1, root2, vec![]),
        (
            "trailing garbage",
            size1,
            size2,
            root1,
            root2,
            with(true, garbage),
        ),
        (
            "trailing root1",
            size1,
            size2,
            root1,
            root2,
            with(true, root1),
        ),
        (
            "trailing root2",
            size1,
            size2,
            root1,
            root2,
            with(true, root2),
        ),
        (
            "preceding garbage",
            size1,
            size2,
            root1,
            root2,
            with(false, garbage),
        ),
        (
            "preceding root1",
            size1,
            size2,
            root1,
            root2,
            with(false, root1),
        ),
        (
            "preceding root2",
            size1,
            size2,
            root1,
            root2,
            with(false, root2),
        ),
        (
            "preceding proof[0]",
            size1,
            size2,
            root1,
            root2,
            with(false, p[0]),
        ),
        (
            "truncated proof",
            size1,
            size2,
            root1,
            root2,
            p[..p.len() - 1].to_vec(),
        ),
    ];
    for i in 0..p.len() {
        let mut q = p.clone();
        q[i][0] ^= 16;
        probes.push(("modified proof bit 4", size1, size2, root1, root2, q));
    }
    probes
}

#[test]
fn consistency_vectors() {
    let leaves = leaves();
    let store = Store::build(&leaves);
    for (size1, size2, proof) in CONSISTENCY_PROOFS {
        let proof = proof_of(proof);
        let (root1, root2) = (root(size1), root(size2));
        assert_eq!(
            verify_consistency(size1, size2, &proof, &root1, &root2),
            Ok(())
        );
        assert_eq!(
            consistency_proof(&leaves[..size2 as usize], size1),
            Ok(proof.clone())
        );
        let plan = consistency_proof_plan(size1, size2).expect("plan");
        assert_eq!(assemble(&plan, |id| store.get(id)), Ok(proof.clone()));
        // Go probes only non-trivial proofs.
        if proof.is_empty() {
            continue;
        }
        for (desc, s1, s2, r1, r2, p) in consistency_probes(size1, size2, root1, root2, &proof) {
            assert!(
                verify_consistency(s1, s2, &p, &r1, &r2).is_err(),
                "probe {desc} verified for sizes {size1} {size2}"
            );
        }
    }
}

#[test]
fn verify_consistency_edge_cases() {
    // proof/verify_test.go TestVerifyConsistency. Go's "don't care" roots become [1; 32] and
    // [2; 32].
    let root1 = [1u8; 32];
    let root2 = [2u8; 32];
    let empty = empty_root();
    let proof2 = [empty];
    let cases: [ConsistencyCase; 13] = [
        (0, 0, root1, root2, &[], true),
        (1, 1, root1, root2, &[], true),
        // Sizes that are always consistent.
        (0, 0, root1, root1, &[], false),
        (0, 1, root1, root2, &[], false),
        (1, 1, root2, root2, &[], false),
        // Time travel to the past.
        (1, 0, root1, root2, &[], true),
        (2, 1, root1, root2, &[], true),
        // Empty proof.
        (1, 2, root1, root2, &[], true),
        // Roots don't match.
        (0, 0, empty, root2, &[], true),
        (1, 1, empty, root2, &[], true),
        // Roots match but the proof is not empty.
        (0, 0, empty, empty, &proof2, true),
        (0, 1, empty, empty, &proof2, true),
        (1, 1, empty, empty, &proof2, true),
    ];
    for (s1, s2, r1, r2, proof, want_err) in cases {
        let got = verify_consistency(s1, s2, proof, &r1, &r2);
        assert_eq!(got.is_err(), want_err, "sizes {s1} {s2}: {got:?}");
    }
    assert_eq!(
        verify_consistency(2, 1, &[], &root1, &root2),
        Err(VerifyError::SizeOrder {
            old_size: 2,
            new_size: 1
        })
    );
}

fn plan(groups: &[&[(u8, u64)]]) -> ProofPlan {
    groups
        .iter()
        .map(|g| g.iter().map(|&(l, i)| NodeId::new(l, i)).collect())
        .collect()
}

/// proof/proof_test.go TestInclusion. Go lists the parts of a right-edge element ("rehash")
/// lowest level first; our plan lists them left to right, so those groups are reversed here.
#[test]
fn inclusion_plan_vectors() {
    for (size, index) in [(0, 0), (0, 1), (1, 2), (0, 3), (7, 8)] {
        assert!(
            inclusion_proof_plan(index, size).is_err(),
            "size {size} index {index}"
        );
    }
    let cases: Vec<(u64, u64, ProofPlan)> = vec![
        (1, 0, plan(&[])),
        (2, 0, plan(&[&[(0, 1)]])),
        (2, 1, plan(&[&[(0, 0)]])),
        (3, 1, plan(&[&[(0, 0)], &[(0, 2)]])),
        (7, 0, plan(&[&[(0, 1)], &[(1, 1)], &[(1, 2), (0, 6)]])),
        (7, 1, plan(&[&[(0, 0)], &[(1, 1)], &[(1, 2), (0, 6)]])),
        (7, 2, plan(&[&[(0, 3)], &[(1, 0)], &[(1, 2), (0, 6)]])),
        (7, 3, plan(&[&[(0, 2)], &[(1, 0)], &[(1, 2), (0, 6)]])),
        (7, 4, plan(&[&[(0, 5)], &[(0, 6)], &[(2, 0)]])),
        (7, 5, plan(&[&[(0, 4)], &[(0, 6)], &[(2, 0)]])),
        (7, 6, plan(&[&[(1, 2)], &[(2, 0)]])),
        (4, 2, plan(&[&[(0, 3)], &[(1, 0)]])),
        (5, 3, plan(&[&[(0, 2)], &[(1, 0)], &[(0, 4)]])),
        (6, 3, plan(&[&[(0, 2)], &[(1, 0)], &[(1, 2)]])),
        (6, 4, plan(&[&[(0, 5)], &[(2, 0)]])),
        (
            15,
            10,
            plan(&[&[(0, 11)], &[(1, 4)], &[(1, 6), (0, 14)], &[(3, 0)]]),
        ),
        (
            31,
            24,
            plan(&[
                &[(0, 25)],
                &[(1, 13)],
                &[(1, 14), (0, 30)],
                &[(3, 2)],
                &[(4, 0)],
            ]),
        ),
        (
            95,
            81,
            plan(&[
                &[(0, 80)],
                &[(1, 41)],
                &[(2, 21)],
                &[(2, 22), (1, 46), (0, 94)],
                &[(4, 4)],
                &[(6, 0)],
            ]),
        ),
    ];
    for (size, index, want) in cases {
        assert_eq!(
            inclusion_proof_plan(index, size),
            Ok(want),
            "size {size} index {index}"
        );
    }
}

/// proof/proof_test.go TestConsistency, with right-edge groups reversed as above.
#[test]
fn consistency_plan_vectors() {
    for (size1, size2) in [(5, 0), (9, 8)] {
        assert!(
            consistency_proof_plan(size1, size2).is_err(),
            "sizes {size1} {size2}"
        );
    }
    let cases: Vec<(u64, u64, ProofPlan)> = vec![
        (1, 2, plan(&[&[(0, 1)]])),
        (1, 4, plan(&[&[(0, 1)], &[(1, 1)]])),
        (1, 6, plan(&[&[(0, 1)], &[(1, 1)], &[(1, 2)]])),
        (2, 3, plan(&[&[(0, 2)]])),
        (2, 8, plan(&[&[(1, 1)], &[(2, 1)]])),
        (
            3,
            7,
            plan(&[&[(0, 2)], &[(0, 3)], &[(1, 0)], &[(1, 2), (0, 6)]]),
        ),
        (4, 7, plan(&[&[(1, 2), (0, 6)]])),
        (5, 7, plan(&[&[(0, 4)], &[(0, 5)], &[(0, 6)], &[(2, 0)]])),
        (6, 7, plan(&[&[(1, 2)], &[(0, 6)], &[(2, 0)]])),
        (7, 8, plan(&[&[(0, 6)], &[(0, 7)], &[(1, 2)], &[(2, 0)]])),
        (1, 1, plan(&[])),
        (2, 2, plan(&[])),
        (3, 3, plan(&[])),
        (4, 4, plan(&[])),
        (5, 5, plan(&[])),
        (7, 7, plan(&[])),
        (8, 8, plan(&[])),
        (2, 4, plan(&[&[(1, 1)]])),
        (3, 5, plan(&[&[(0, 2)], &[(0, 3)], &[(1, 0)], &[(0, 4)]])),
        (3, 6, plan(&[&[(0, 2)], &[(0, 3)], &[(1, 0)], &[(1, 2)]])),
        (4, 6, plan(&[&[(1, 2)]])),
        (1, 7, plan(&[&[(0, 1)], &[(1, 1)], &[(1, 2), (0, 6)]])),
        (
            10,
            15,
            plan(&[&[(1, 4)], &[(1, 5)], &[(1, 6), (0, 14)], &[(3, 0)]]),
        ),
        (
            24,
            31,
            plan(&[&[(3, 2)], &[(2, 6), (1, 14), (0, 30)], &[(4, 0)]]),
        ),
        (
            81,
            95,
            plan(&[
                &[(0, 80)],
                &[(0, 81)],
                &[(1, 41)],
                &[(2, 21)],
                &[(2, 22), (1, 46), (0, 94)],
                &[(4, 4)],
                &[(6, 0)],
            ]),
        ),
    ];
    for (size1, size2, want) in cases {
        assert_eq!(
            consistency_proof_plan(size1, size2),
            Ok(want),
            "sizes {size1} {size2}"
        );
    }
}
