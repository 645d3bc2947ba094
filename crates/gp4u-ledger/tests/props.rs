//! Property tests: random leaves and sizes, storage path vs naive reference vs verifier.

mod common;

use common::Store;
use gp4u_ledger::{
    Frontier, Hash, NodeId, assemble, consistency_proof, consistency_proof_plan, inclusion_proof,
    inclusion_proof_plan, leaf_hash, mth, verify_consistency, verify_inclusion,
};
use proptest::prelude::*;

fn leaves_strategy() -> impl Strategy<Value = Vec<Hash>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 1..160)
        .prop_map(|data| data.iter().map(|d| leaf_hash(d)).collect())
}

/// The leaf ranges of a plan's elements, checking that each element's parts are contiguous
/// and strictly decreasing in size (the shape `fold_parts` needs).
fn element_ranges(plan: &[Vec<NodeId>]) -> Vec<(u64, u64)> {
    plan.iter()
        .map(|parts| {
            for w in parts.windows(2) {
                assert_eq!(w[0].leaves().end, w[1].leaves().start, "parts contiguous");
                assert!(w[0].level > w[1].level, "parts decreasing");
            }
            let first = parts.first().expect("non-empty element");
            let last = parts.last().expect("non-empty element");
            (first.leaves().start, last.leaves().end)
        })
        .collect()
}

/// Whether `ranges` tile `[0, end)` exactly (in any order).
fn tiles(mut ranges: Vec<(u64, u64)>, end: u64) -> bool {
    ranges.sort();
    let mut at = 0;
    for (a, b) in ranges {
        if a != at || b <= a {
            return false;
        }
        at = b;
    }
    at == end
}

proptest! {
    #[test]
    fn inclusion_agrees(leaves in leaves_strategy(), seed in any::<u64>(), cut in any::<u64>()) {
        let store = Store::build(&leaves);
        let size = 1 + cut % leaves.len() as u64;
        let index = seed % size;
        let tree = &leaves[..size as usize];
        let root = mth(tree);
        let naive = inclusion_proof(tree, index).expect("naive");
        let plan = inclusion_proof_plan(index, size).expect("plan");
        let got = assemble(&plan, |id| store.get(id).filter(|_| id.leaves().end <= size));
        prop_assert_eq!(got.as_ref(), Ok(&naive));
        prop_assert_eq!(verify_inclusion(&tree[index as usize], index, size, &naive, &root), Ok(()));
        let other = tree[((index + 1) % size) as usize];
        if other != tree[index as usize] {
            prop_assert!(verify_inclusion(&other, index, size, &naive, &root).is_err());
        }
    }

    #[test]
    fn consistency_agrees(leaves in leaves_strategy(), a in any::<u64>(), b in any::<u64>()) {
        let store = Store::build(&leaves);
        let new_size = b % (leaves.len() as u64 + 1);
        let old_size = a % (new_size + 1);
        let tree = &leaves[..new_size as usize];
        let (old_root, new_root) = (mth(&leaves[..old_size as usize]), mth(tree));
        let naive = consistency_proof(tree, old_size).expect("naive");
        let plan = consistency_proof_plan(old_size, new_size).expect("plan");
        let got = assemble(&plan, |id| store.get(id).filter(|_| id.leaves().end <= new_size));
        prop_assert_eq!(got.as_ref(), Ok(&naive));
        prop_assert_eq!(verify_consistency(old_size, new_size, &naive, &old_root, &new_root), Ok(()));
        if !naive.is_empty() {
            let mut bad = naive.clone();
            let i = (a as usize) % bad.len();
            bad[i][(b as usize) % 32] ^= 1 << (a % 8);
            prop_assert!(verify_consistency(old_size, new_size, &bad, &old_root, &new_root).is_err());
        }
    }

    #[test]
    fn frontier_agrees(leaves in leaves_strategy()) {
        let mut f = Frontier::new();
        for (i, l) in leaves.iter().enumerate() {
            f.append(*l).expect("append");
            prop_assert_eq!(f.root(), mth(&leaves[..=i]));
        }
    }

    /// Plans for huge trees: an inclusion proof's elements and the leaf tile the tree; a
    /// consistency proof's elements (with the old tree when its size is a power of two, as
    /// the verifier prepends the old root then) tile the new tree.
    #[test]
    fn plans_tile_the_tree(x in any::<u64>(), y in any::<u64>()) {
        let (lo, hi) = (x.min(y), x.max(y));
        if hi > 0 {
            let plan = inclusion_proof_plan(lo % hi, hi).expect("plan");
            let mut ranges = element_ranges(&plan);
            ranges.push((lo % hi, lo % hi + 1));
            prop_assert!(tiles(ranges, hi));
        }
        let plan = consistency_proof_plan(lo, hi).expect("plan");
        let mut ranges = element_ranges(&plan);
        if lo == 0 || lo == hi {
            prop_assert!(ranges.is_empty());
        } else {
            if lo.is_power_of_two() {
                ranges.push((0, lo));
            }
            prop_assert!(tiles(ranges, hi));
        }
        if lo < hi {
            prop_assert!(consistency_proof_plan(hi, lo).is_err());
        }
    }
}
