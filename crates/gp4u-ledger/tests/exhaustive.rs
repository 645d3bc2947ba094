//! Exhaustive agreement between the storage path (Frontier + plan + assemble), the naive
//! RFC 9162 reference and the verifier, plus one-bit tamper checks.

mod common;

use common::{Store, gen_leaves};
use gp4u_ledger::{
    Frontier, Hash, assemble, consistency_proof, consistency_proof_plan, inclusion_proof,
    inclusion_proof_plan, mth, verify_consistency, verify_inclusion,
};

/// Fetch from the store, but only nodes inside the first `size` leaves: a proof for an
/// older tree must not need nodes completed later.
fn fetch_within(store: &Store, size: u64) -> impl Fn(gp4u_ledger::NodeId) -> Option<Hash> + '_ {
    move |id| {
        if id.leaves().end <= size {
            store.get(id)
        } else {
            None
        }
    }
}

#[test]
fn frontier_root_matches_mth_up_to_300() {
    let leaves = gen_leaves(300);
    let mut store = Store::build(&[]);
    for size in 0..=300u64 {
        let want = mth(&leaves[..size as usize]);
        assert_eq!(store.frontier.size(), size);
        assert_eq!(store.frontier.root(), want, "size {size}");
        // A root for any past size can be read back from stored nodes.
        let root = assemble(&[Frontier::node_ids(size)], fetch_within(&store, size));
        if size > 0 {
            assert_eq!(root, Ok(vec![want]), "stored root at size {size}");
        }
        // The frontier can be rebuilt from stored nodes after a restart.
        let parts: Vec<Hash> = Frontier::node_ids(size)
            .into_iter()
            .map(|id| store.get(id).expect("frontier node stored"))
            .collect();
        let rebuilt = Frontier::from_parts(size, parts).expect("from_parts");
        assert_eq!(rebuilt, store.frontier);
        assert_eq!(rebuilt.nodes().len(), size.count_ones() as usize);
        if size < 300 {
            // Appending to the rebuilt frontier reports the same nodes.
            let mut r = rebuilt;
            let a = r.append(leaves[size as usize]).expect("append");
            store.append(leaves[size as usize]);
            for (id, hash) in a {
                assert_eq!(store.get(id), Some(hash));
            }
            assert_eq!(r, store.frontier);
        }
    }
    // Every perfect subtree of 300 leaves, once: 300 + 150 + 75 + 37 + 18 + 9 + 4 + 2 + 1.
    assert_eq!(store.nodes.len(), 596);
}

#[test]
fn inclusion_plan_matches_naive_up_to_70() {
    let leaves = gen_leaves(70);
    let store = Store::build(&leaves);
    for size in 1..=70u64 {
        let tree = &leaves[..size as usize];
        let root = mth(tree);
        for index in 0..size {
            let naive = inclusion_proof(tree, index).expect("naive");
            let plan = inclusion_proof_plan(index, size).expect("plan");
            let got = assemble(&plan, fetch_within(&store, size)).expect("assemble");
            assert_eq!(got, naive, "index {index} size {size}");
            assert_eq!(
                verify_inclusion(&tree[index as usize], index, size, &got, &root),
                Ok(())
            );
        }
        assert!(inclusion_proof(tree, size).is_err());
        assert!(inclusion_proof_plan(size, size).is_err());
    }
}

#[test]
fn consistency_plan_matches_naive_up_to_40() {
    let leaves = gen_leaves(40);
    let store = Store::build(&leaves);
    for new_size in 0..=40u64 {
        let tree = &leaves[..new_size as usize];
        let new_root = mth(tree);
        for old_size in 0..=new_size {
            let old_root = mth(&leaves[..old_size as usize]);
            let naive = consistency_proof(tree, old_size).expect("naive");
            let plan = consistency_proof_plan(old_size, new_size).expect("plan");
            let got = assemble(&plan, fetch_within(&store, new_size)).expect("assemble");
            assert_eq!(got, naive, "sizes {old_size} {new_size}");
            assert_eq!(
                verify_consistency(old_size, new_size, &got, &old_root, &new_root),
                Ok(()),
                "sizes {old_size} {new_size}"
            );
        }
        assert!(consistency_proof(tree, new_size + 1).is_err());
        assert!(consistency_proof_plan(new_size + 1, new_size).is_err());
    }
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut h = *h;
    h[bit / 8] ^= 1 << (bit % 8);
    h
}

/// Which side each inclusion proof element sits on (true: left of the leaf). The RFC 9162
/// verifier's computation depends only on this pattern.
fn sides(index: u64, size: u64) -> Option<Vec<bool>> {
    let plan = inclusion_proof_plan(index, size).ok()?;
    Some(plan.iter().map(|g| g[0].leaves().start < index).collect())
}

#[test]
fn inclusion_one_bit_changes_fail() {
    let leaves = gen_leaves(70);
    for (index, size) in [(0u64, 1u64), (2, 5), (5, 8), (13, 21), (40, 64), (69, 70)] {
        let tree = &leaves[..size as usize];
        let root = mth(tree);
        let leaf = tree[index as usize];
        let proof = inclusion_proof(tree, index).expect("proof");
        assert_eq!(verify_inclusion(&leaf, index, size, &proof, &root), Ok(()));
        for bit in 0..256 {
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i] = flip(&p[i], bit);
                assert!(verify_inclusion(&leaf, index, size, &p, &root).is_err());
            }
            assert!(verify_inclusion(&flip(&leaf, bit), index, size, &proof, &root).is_err());
            assert!(verify_inclusion(&leaf, index, size, &proof, &flip(&root, bit)).is_err());
        }
        let pattern = sides(index, size);
        for bit in 0..64 {
            let i2 = index ^ (1 << bit);
            assert!(
                verify_inclusion(&leaf, i2, size, &proof, &root).is_err(),
                "index {index} -> {i2} size {size}"
            );
            // A tree size is bound to its root by the checkpoint, not by the inclusion
            // proof: another size whose path has the same shape (same length, siblings on
            // the same sides) recomputes the same root, e.g. leaf 0 of 5 or of 7. Every
            // other size must fail.
            let s2 = size ^ (1 << bit);
            let ok = verify_inclusion(&leaf, index, s2, &proof, &root).is_ok();
            assert_eq!(
                ok,
                sides(index, s2) == pattern,
                "index {index} size {size} -> {s2}"
            );
        }
    }
}

#[test]
fn inclusion_does_not_bind_size_alone() {
    // Documented RFC 9162 behaviour (see inclusion_one_bit_changes_fail).
    let leaves = gen_leaves(5);
    let root = mth(&leaves);
    let proof = inclusion_proof(&leaves, 0).expect("proof");
    assert_eq!(verify_inclusion(&leaves[0], 0, 7, &proof, &root), Ok(()));
    assert!(verify_inclusion(&leaves[0], 0, 4, &proof, &root).is_err());
}

/// What the RFC 9162 consistency verifier's computation depends on: whether the old size is
/// a power of two (the old root seeds the fold) and, per element, whether it lies inside the
/// old tree (folded into both roots) or after it (folded into the new root only).
fn consistency_shape(m: u64, n: u64) -> Option<(bool, Vec<bool>)> {
    let plan = consistency_proof_plan(m, n).ok()?;
    if plan.is_empty() {
        return None;
    }
    Some((
        m.is_power_of_two(),
        plan.iter().map(|g| g[0].leaves().start < m).collect(),
    ))
}

#[test]
fn consistency_one_bit_changes_fail() {
    let leaves = gen_leaves(40);
    for (m, n) in [(1u64, 8u64), (3, 7), (6, 8), (13, 40), (32, 40), (7, 8)] {
        let new_root = mth(&leaves[..n as usize]);
        let old_root = mth(&leaves[..m as usize]);
        let proof = consistency_proof(&leaves[..n as usize], m).expect("proof");
        assert_eq!(
            verify_consistency(m, n, &proof, &old_root, &new_root),
            Ok(())
        );
        for bit in 0..256 {
            for i in 0..proof.len() {
                let mut p = proof.clone();
                p[i] = flip(&p[i], bit);
                assert!(verify_consistency(m, n, &p, &old_root, &new_root).is_err());
            }
            assert!(verify_consistency(m, n, &proof, &flip(&old_root, bit), &new_root).is_err());
            assert!(verify_consistency(m, n, &proof, &old_root, &flip(&new_root, bit)).is_err());
        }
        let shape = consistency_shape(m, n);
        for bit in 0..64 {
            let m2 = m ^ (1 << bit);
            let n2 = n ^ (1 << bit);
            assert!(
                verify_consistency(m2, n, &proof, &old_root, &new_root).is_err(),
                "old size {m} -> {m2}, new size {n}"
            );
            // As for inclusion, a new size whose proof has the same shape recomputes the
            // same roots (e.g. 3 -> 7 and 3 -> 6); the checkpoint binds size and root.
            let ok = verify_consistency(m, n2, &proof, &old_root, &new_root).is_ok();
            assert_eq!(
                ok,
                consistency_shape(m, n2) == shape,
                "old size {m}, new size {n} -> {n2}"
            );
        }
    }
}
