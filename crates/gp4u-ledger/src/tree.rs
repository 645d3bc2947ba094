//! Tree maintenance over stored *perfect subtree* hashes.
//!
//! A log store persists the hash of every perfect subtree it has completed: node
//! `(level, index)` covers leaves `[index·2^level, (index+1)·2^level)`, level 0 being the
//! leaves themselves. Those nodes never change once complete, so they can be written once.
//!
//! - [`Frontier`] is the compact range `[0, size)`: the perfect nodes for the set bits of
//!   `size`. Appending a leaf reports every node it completes, so the caller can persist
//!   them, and the frontier gives the current root without touching storage.
//! - [`inclusion_proof_plan`] and [`consistency_proof_plan`] say which stored nodes make up
//!   each element of an RFC 9162 proof; [`assemble`] turns the fetched hashes into the proof.
//!
//! An RFC 9162 proof element is always the Merkle tree hash of a leaf range `[a, b)` that is
//! a subtree of the tree: either a perfect node, or a range ending at the tree's right edge,
//! whose start is aligned to a power of two at least as large as its length. Such a range
//! splits into perfect nodes of strictly decreasing size, left to right (the binary digits of
//! `b - a`). RFC 6962's `MTH` splits a range at the largest power of two below its length,
//! which is exactly the first (largest) perfect part, so
//! `MTH(p1 ‖ p2 ‖ … ‖ pk) = node_hash(p1, MTH(p2 ‖ … ‖ pk))`: fold from the right,
//! `acc = pk; acc = node_hash(p_{j}, acc)` for `j = k-1 … 1` (see [`fold_parts`]).

use std::fmt;

use crate::hash::{Hash, empty_root, node_hash};

/// Address of a perfect subtree: node `(level, index)` covers leaves
/// `[index·2^level, (index+1)·2^level)`; level 0 is the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId {
    /// Height above the leaves (0 = a leaf), at most 63.
    pub level: u8,
    /// Position within the level, counting from the left from 0.
    pub index: u64,
}

impl NodeId {
    /// The node at `level` and `index`.
    pub const fn new(level: u8, index: u64) -> Self {
        Self { level, index }
    }

    /// The leaf node at `index`.
    pub const fn leaf(index: u64) -> Self {
        Self { level: 0, index }
    }

    /// The leaves this node covers. Saturates at `u64::MAX` for nodes that do not fit in a
    /// tree of at most `u64::MAX` leaves (none that this crate produces).
    pub fn leaves(&self) -> std::ops::Range<u64> {
        let clamp = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
        let level = u32::from(self.level.min(64));
        let begin = u128::from(self.index) << level;
        let end = (u128::from(self.index) + 1) << level;
        clamp(begin)..clamp(end)
    }

    /// The node one level up that contains this one.
    pub const fn parent(&self) -> Self {
        Self {
            level: self.level.saturating_add(1),
            index: self.index >> 1,
        }
    }

    /// The other child of this node's parent.
    pub const fn sibling(&self) -> Self {
        Self {
            level: self.level,
            index: self.index ^ 1,
        }
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "level {} index {}", self.level, self.index)
    }
}

/// Errors from proof planning, proof assembly and the naive reference functions.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    /// A leaf index is not below the tree size (this includes every index for size 0).
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size it was checked against.
        size: u64,
    },
    /// A consistency proof was asked from a larger tree to a smaller one.
    #[error("old size {old_size} is greater than new size {new_size}")]
    SizeOrder {
        /// The older (claimed smaller) tree size.
        old_size: u64,
        /// The newer (claimed larger) tree size.
        new_size: u64,
    },
    /// [`Frontier::from_parts`] got the wrong number of hashes for the size.
    #[error("frontier for size {size} needs {expected} hashes, got {got}")]
    FrontierHashCount {
        /// The tree size.
        size: u64,
        /// The number of set bits of the size.
        expected: usize,
        /// The number of hashes supplied.
        got: usize,
    },
    /// [`assemble`] could not fetch a node.
    #[error("node {0} is not available")]
    MissingNode(NodeId),
    /// [`assemble`] got a plan element with no nodes.
    #[error("proof plan element {0} lists no nodes")]
    EmptyPlanElement(usize),
    /// [`Frontier::append`] would overflow the size.
    #[error("tree is full: size {0} cannot grow")]
    TreeFull(u64),
}

/// The largest power of two strictly below `n`; `n` must be at least 2.
pub(crate) fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The decomposition of the leaf range `[begin, end)` into maximal aligned perfect subtrees,
/// left to right (empty if `begin >= end`).
///
/// For `[0, size)` this is the frontier ([`Frontier::node_ids`]); for a range starting at a
/// multiple of a power of two at least as large as its length (every subtree of an RFC 6962
/// tree, including those at the right edge) the parts have strictly decreasing sizes and
/// [`fold_parts`] gives the range's Merkle tree hash.
pub fn range_nodes(begin: u64, end: u64) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut b = begin;
    while b < end {
        let align = if b == 0 { 63 } else { b.trailing_zeros() };
        let fit = 63 - (end - b).leading_zeros();
        let level = align.min(fit);
        out.push(NodeId::new(level as u8, b >> level));
        b += 1u64 << level;
    }
    out
}

/// The Merkle tree hash of a range given as its perfect parts left to right, in decreasing
/// sizes (as [`range_nodes`] gives them for a subtree): folds from the right,
/// `acc = node_hash(part, acc)`. `None` for no parts.
pub fn fold_parts(parts: &[Hash]) -> Option<Hash> {
    let (last, rest) = parts.split_last()?;
    Some(rest.iter().rev().fold(*last, |acc, p| node_hash(p, &acc)))
}

/// The compact range `[0, size)`: enough to append leaves and compute the root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// Perfect node hashes for the set bits of `size`, highest level first.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The nodes a frontier of `size` holds, in the order [`Frontier::from_parts`] wants
    /// their hashes: one per set bit of `size`, highest level (leftmost) first.
    pub fn node_ids(size: u64) -> Vec<NodeId> {
        range_nodes(0, size)
    }

    /// Rebuild a frontier from stored nodes: `hashes` are the hashes of
    /// [`Frontier::node_ids`]`(size)`, in that order.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, TreeError> {
        let expected = size.count_ones() as usize;
        if hashes.len() != expected {
            return Err(TreeError::FrontierHashCount {
                size,
                expected,
                got: hashes.len(),
            });
        }
        Ok(Self { size, hashes })
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The frontier's node hashes, in the order of [`Frontier::node_ids`]`(self.size())`.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The frontier's nodes with their hashes, leftmost first.
    pub fn nodes(&self) -> Vec<(NodeId, Hash)> {
        Self::node_ids(self.size)
            .into_iter()
            .zip(self.hashes.iter().copied())
            .collect()
    }

    /// Append a leaf hash. Returns every perfect node this append completes, lowest first:
    /// the leaf itself at level 0, then each parent that became complete. These are exactly
    /// the nodes a store must persist; every perfect node of the tree is returned once over
    /// the appends that build it.
    ///
    /// Fails only when the tree already has `u64::MAX` leaves.
    pub fn append(&mut self, leaf: Hash) -> Result<Vec<(NodeId, Hash)>, TreeError> {
        let index = self.size;
        let new_size = index.checked_add(1).ok_or(TreeError::TreeFull(index))?;
        let mut completed = vec![(NodeId::leaf(index), leaf)];
        let mut acc = leaf;
        let mut node = NodeId::leaf(index);
        // Each trailing one bit of `index` is a left sibling waiting in the frontier.
        while node.index & 1 == 1 {
            let Some(left) = self.hashes.pop() else {
                // Unreachable: `hashes` holds one hash per set bit of `size`.
                break;
            };
            acc = node_hash(&left, &acc);
            node = node.parent();
            completed.push((node, acc));
        }
        self.hashes.push(acc);
        self.size = new_size;
        Ok(completed)
    }

    /// The RFC 6962 Merkle tree hash of the leaves so far (`empty_root()` for size 0).
    pub fn root(&self) -> Hash {
        fold_parts(&self.hashes).unwrap_or_else(empty_root)
    }
}

/// A proof to be built from stored nodes: one entry per proof element, in proof order, each
/// listing the perfect nodes (left to right) whose [`fold_parts`] is that element.
pub type ProofPlan = Vec<Vec<NodeId>>;

/// The leaf ranges of RFC 9162 `PATH(index, D[0:size])`, in proof order (leaf upwards).
fn inclusion_ranges(index: u64, size: u64) -> Result<Vec<(u64, u64)>, TreeError> {
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let mut ranges = Vec::new();
    let (mut lo, mut hi) = (0u64, size);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if index - lo < k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
        }
    }
    ranges.reverse();
    Ok(ranges)
}

/// The leaf ranges of RFC 9162 `PROOF(old_size, D[0:new_size])`, in proof order.
/// Empty when `old_size` is 0 or equal to `new_size`.
fn consistency_ranges(old_size: u64, new_size: u64) -> Result<Vec<(u64, u64)>, TreeError> {
    if old_size > new_size {
        return Err(TreeError::SizeOrder { old_size, new_size });
    }
    let mut ranges = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(ranges);
    }
    // SUBPROOF(m, D[lo:hi], b) with m = old_size - lo.
    let (mut lo, mut hi, mut b) = (0u64, new_size, true);
    loop {
        let m = old_size - lo;
        if m == hi - lo {
            if !b {
                ranges.push((lo, hi));
            }
            break;
        }
        let k = split_point(hi - lo);
        if m <= k {
            ranges.push((lo + k, hi));
            hi = lo + k;
        } else {
            ranges.push((lo, lo + k));
            lo += k;
            b = false;
        }
    }
    ranges.reverse();
    Ok(ranges)
}

/// Which stored nodes make up the RFC 9162 §2.1.3.1 inclusion proof of leaf `index` in the
/// tree of `size` leaves. Fails if `index >= size` (so always for size 0).
pub fn inclusion_proof_plan(index: u64, size: u64) -> Result<ProofPlan, TreeError> {
    Ok(inclusion_ranges(index, size)?
        .into_iter()
        .map(|(a, b)| range_nodes(a, b))
        .collect())
}

/// Which stored nodes make up the RFC 9162 §2.1.4.1 consistency proof from the tree of
/// `old_size` leaves to the tree of `new_size` leaves. Fails if `old_size > new_size`.
///
/// The plan is empty when `old_size == new_size` and, by our convention, when
/// `old_size == 0` (RFC 9162 defines proofs only for `0 < old_size < new_size`; consistency
/// with the empty tree is trivial and [`crate::verify_consistency`] accepts an empty proof).
pub fn consistency_proof_plan(old_size: u64, new_size: u64) -> Result<ProofPlan, TreeError> {
    Ok(consistency_ranges(old_size, new_size)?
        .into_iter()
        .map(|(a, b)| range_nodes(a, b))
        .collect())
}

/// Build a proof from a plan and a way to fetch stored node hashes: each element is the
/// right-to-left fold ([`fold_parts`]) of its nodes' hashes.
pub fn assemble(
    plan: &[Vec<NodeId>],
    mut fetched: impl FnMut(NodeId) -> Option<Hash>,
) -> Result<Vec<Hash>, TreeError> {
    let mut proof = Vec::with_capacity(plan.len());
    for (i, ids) in plan.iter().enumerate() {
        let mut parts = Vec::with_capacity(ids.len());
        for &id in ids {
            parts.push(fetched(id).ok_or(TreeError::MissingNode(id))?);
        }
        proof.push(fold_parts(&parts).ok_or(TreeError::EmptyPlanElement(i))?);
    }
    Ok(proof)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    #[test]
    fn split_point_values() {
        assert_eq!(split_point(2), 1);
        assert_eq!(split_point(3), 2);
        assert_eq!(split_point(4), 2);
        assert_eq!(split_point(5), 4);
        assert_eq!(split_point(8), 4);
        assert_eq!(split_point(9), 8);
        assert_eq!(split_point(u64::MAX), 1 << 63);
    }

    #[test]
    fn range_nodes_examples() {
        let n = NodeId::new;
        assert_eq!(range_nodes(0, 0), vec![]);
        assert_eq!(range_nodes(0, 7), vec![n(2, 0), n(1, 2), n(0, 6)]);
        assert_eq!(range_nodes(4, 7), vec![n(1, 2), n(0, 6)]);
        assert_eq!(range_nodes(3, 8), vec![n(0, 3), n(2, 1)]);
        assert_eq!(range_nodes(0, u64::MAX).len(), 64);
        assert_eq!(range_nodes(5, 5), vec![]);
    }

    #[test]
    fn node_id_helpers() {
        assert_eq!(NodeId::new(2, 3).leaves(), 12..16);
        assert_eq!(NodeId::new(63, 1).leaves(), 1 << 63..u64::MAX);
        assert_eq!(NodeId::new(0, 5).parent(), NodeId::new(1, 2));
        assert_eq!(NodeId::new(1, 2).sibling(), NodeId::new(1, 3));
        assert_eq!(NodeId::new(1, 2).to_string(), "level 1 index 2");
    }

    #[test]
    fn frontier_from_parts_checks_count() {
        let h = leaf_hash(b"a");
        assert_eq!(
            Frontier::from_parts(3, vec![h]),
            Err(TreeError::FrontierHashCount {
                size: 3,
                expected: 2,
                got: 1
            })
        );
        assert!(Frontier::from_parts(0, vec![]).is_ok());
    }

    #[test]
    fn frontier_full() {
        let h = leaf_hash(b"a");
        let hashes = vec![h; 64];
        let mut f = Frontier::from_parts(u64::MAX, hashes).expect("64 hashes for 64 set bits");
        assert_eq!(f.append(h), Err(TreeError::TreeFull(u64::MAX)));
    }

    #[test]
    fn assemble_errors() {
        let plan = vec![vec![NodeId::leaf(0)]];
        assert_eq!(
            assemble(&plan, |_| None),
            Err(TreeError::MissingNode(NodeId::leaf(0)))
        );
        assert_eq!(
            assemble(&[vec![]], |_| None),
            Err(TreeError::EmptyPlanElement(0))
        );
    }

    #[test]
    fn plan_errors() {
        assert_eq!(
            inclusion_proof_plan(0, 0),
            Err(TreeError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            inclusion_proof_plan(7, 7),
            Err(TreeError::IndexOutOfRange { index: 7, size: 7 })
        );
        assert_eq!(
            consistency_proof_plan(9, 8),
            Err(TreeError::SizeOrder {
                old_size: 9,
                new_size: 8
            })
        );
        assert_eq!(consistency_proof_plan(0, 8), Ok(vec![]));
        assert_eq!(consistency_proof_plan(0, 0), Ok(vec![]));
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let plan = inclusion_proof_plan(u64::MAX - 1, u64::MAX).expect("valid index");
        assert_eq!(plan.len(), 63);
        let plan = inclusion_proof_plan(0, u64::MAX).expect("valid index");
        assert_eq!(plan.len(), 64);
        let plan = consistency_proof_plan(u64::MAX - 1, u64::MAX).expect("valid sizes");
        assert!(!plan.is_empty());
    }
}
