//! Naive reference algorithms over an in-memory list of leaf hashes, straight from
//! RFC 9162 §2.1.1 (MTH), §2.1.3.1 (PATH) and §2.1.4.1 (PROOF / SUBPROOF).
//!
//! They recompute every subtree from the leaves (O(n) hashes per call), so they are meant for
//! tests and offline tools, not for serving proofs from a large log.

use crate::hash::{Hash, empty_root, node_hash};
use crate::tree::{TreeError, split_point};

fn split(n: usize) -> usize {
    // n >= 2 and fits in u64 on every supported target.
    split_point(n as u64) as usize
}

/// RFC 6962 Merkle tree hash of a list of leaf hashes (`empty_root()` for none).
pub fn mth(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [one] => *one,
        _ => {
            let k = split(leaves.len());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split(leaves.len());
    if m < k {
        path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// RFC 9162 inclusion proof `PATH(index, leaves)` for the tree of all of `leaves`.
pub fn inclusion_proof(leaves: &[Hash], index: u64) -> Result<Vec<Hash>, TreeError> {
    let size = leaves.len() as u64;
    if index >= size {
        return Err(TreeError::IndexOutOfRange { index, size });
    }
    let mut out = Vec::new();
    path(index as usize, leaves, &mut out);
    Ok(out)
}

fn subproof(m: usize, leaves: &[Hash], b: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !b {
            out.push(mth(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], b, out);
        out.push(mth(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(mth(&leaves[..k]));
    }
}

/// RFC 9162 consistency proof `PROOF(old_size, leaves)` from the tree of the first
/// `old_size` leaves to the tree of all of `leaves`. Empty when `old_size` is 0 (our
/// convention, see [`crate::consistency_proof_plan`]) or equals the number of leaves.
pub fn consistency_proof(leaves: &[Hash], old_size: u64) -> Result<Vec<Hash>, TreeError> {
    let new_size = leaves.len() as u64;
    if old_size > new_size {
        return Err(TreeError::SizeOrder { old_size, new_size });
    }
    let mut out = Vec::new();
    if old_size > 0 {
        subproof(old_size as usize, leaves, true, &mut out);
    }
    Ok(out)
}
