//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::HashMap;

use gp4u_ledger::{Frontier, Hash, NodeId, hash_from_hex, leaf_hash, mth};

/// Decode a 64-digit hex hash (panics on bad test data).
pub fn h(s: &str) -> Hash {
    hash_from_hex(s).expect("test vector hash")
}

/// `n` distinct leaf hashes.
pub fn gen_leaves(n: u64) -> Vec<Hash> {
    (0..n)
        .map(|i| leaf_hash(i.to_string().as_bytes()))
        .collect()
}

/// A node store filled only from what `Frontier::append` reports, checking on the way that
/// every node is reported once and is the MTH of the leaves it covers.
pub struct Store {
    pub frontier: Frontier,
    pub nodes: HashMap<NodeId, Hash>,
    pub leaves: Vec<Hash>,
}

impl Store {
    pub fn build(leaves: &[Hash]) -> Self {
        let mut s = Store {
            frontier: Frontier::new(),
            nodes: HashMap::new(),
            leaves: vec![],
        };
        for l in leaves {
            s.append(*l);
        }
        s
    }

    pub fn append(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
        let done = self.frontier.append(leaf).expect("append");
        assert_eq!(done[0], (NodeId::leaf(self.leaves.len() as u64 - 1), leaf));
        for (id, hash) in done {
            let r = id.leaves();
            assert_eq!(
                r.end,
                self.leaves.len() as u64,
                "completed node {id} must end at the new leaf"
            );
            assert_eq!(
                hash,
                mth(&self.leaves[r.start as usize..r.end as usize]),
                "node {id}"
            );
            assert!(
                self.nodes.insert(id, hash).is_none(),
                "node {id} reported twice"
            );
        }
    }

    pub fn get(&self, id: NodeId) -> Option<Hash> {
        self.nodes.get(&id).copied()
    }
}
