//! Proof verification, following RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2 (consistency)
//! step by step.

use crate::hash::{Hash, node_hash};

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The leaf index is not below the tree size (this includes every index for size 0).
    #[error("leaf index {index} is out of range for tree size {size}")]
    IndexOutOfRange {
        /// The claimed leaf index.
        index: u64,
        /// The claimed tree size.
        size: u64,
    },
    /// The proof has more or fewer elements than the sizes call for.
    #[error("proof has the wrong number of elements ({len}) for its sizes")]
    WrongProofLength {
        /// Number of elements supplied.
        len: usize,
    },
    /// The root recomputed from an inclusion proof differs from the expected root.
    #[error("recomputed root does not match the expected root")]
    RootMismatch,
    /// A consistency proof from a larger tree to a smaller one.
    #[error("old size {old_size} is greater than new size {new_size}")]
    SizeOrder {
        /// The claimed older size.
        old_size: u64,
        /// The claimed newer size.
        new_size: u64,
    },
    /// Equal sizes (or an empty old tree) call for an empty proof.
    #[error("proof must be empty when old size is {old_size} and new size is {new_size}")]
    ProofNotEmpty {
        /// The claimed older size.
        old_size: u64,
        /// The claimed newer size.
        new_size: u64,
    },
    /// Equal sizes with different roots.
    #[error("old and new roots differ for equal sizes {0}")]
    RootsDiffer(u64),
    /// The consistency proof does not reproduce the old root.
    #[error("consistency proof does not match the old root")]
    OldRootMismatch,
    /// The consistency proof does not reproduce the new root.
    #[error("consistency proof does not match the new root")]
    NewRootMismatch,
}

/// The root that an inclusion proof implies for `leaf_hash` at `index` in a tree of `size`
/// leaves (RFC 9162 §2.1.3.2 steps 1–4 and the `sn == 0` check of step 5).
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, VerifyError> {
    // 1. If leaf_index is greater than or equal to tree_size, then fail.
    if index >= size {
        return Err(VerifyError::IndexOutOfRange { index, size });
    }
    let wrong_length = VerifyError::WrongProofLength { len: proof.len() };
    // 2. Set fn to leaf_index and sn to tree_size - 1.
    let (mut f_n, mut s_n) = (index, size - 1);
    // 3. Set r to hash.
    let mut r = *leaf_hash;
    // 4. For each value p in the inclusion_path array:
    for p in proof {
        // If sn is 0, then stop the iteration and fail the proof verification.
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            // Set r to HASH(0x01 || p || r).
            r = node_hash(p, &r);
            // If LSB(fn) is not set, then right-shift both fn and sn equally until either
            // LSB(fn) is set or fn is 0.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            // Set r to HASH(0x01 || r || p).
            r = node_hash(&r, p);
        }
        // Finally, right-shift both fn and sn one time.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. Compare sn to 0.
    if s_n != 0 {
        return Err(wrong_length);
    }
    Ok(r)
}

/// Verify that `leaf_hash` is the leaf at `index` in the tree of `size` leaves with `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    let r = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    if r != *root {
        return Err(VerifyError::RootMismatch);
    }
    Ok(())
}

/// Verify that the tree of `old_size` leaves with `old_root` is a prefix of the tree of
/// `new_size` leaves with `new_root` (RFC 9162 §2.1.4.2).
///
/// Cases outside the RFC algorithm, which covers `0 < old_size < new_size`:
/// - `old_size > new_size` fails;
/// - `old_size == new_size` needs an empty proof and `old_root == new_root`;
/// - `old_size == 0 < new_size` needs an empty proof and accepts any roots: every tree
///   extends the empty tree (RFC 9162 §2.1.4: consistency with the empty tree is trivial),
///   the same choice as transparency-dev/merkle. The caller should not rely on `old_root`
///   being checked in that case.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), VerifyError> {
    if old_size > new_size {
        return Err(VerifyError::SizeOrder { old_size, new_size });
    }
    if old_size == new_size || old_size == 0 {
        if !proof.is_empty() {
            return Err(VerifyError::ProofNotEmpty { old_size, new_size });
        }
        if old_size == new_size && old_root != new_root {
            return Err(VerifyError::RootsDiffer(old_size));
        }
        return Ok(());
    }
    let wrong_length = VerifyError::WrongProofLength { len: proof.len() };
    // 1. If consistency_path is an empty array, stop and fail the proof verification.
    let Some((first, rest)) = proof.split_first() else {
        return Err(wrong_length);
    };
    // 2. If first is an exact power of 2, then prepend first_hash to the consistency_path.
    let (start, path) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        (first, rest)
    };
    // 3. Set fn to first - 1 and sn to second - 1.
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    // 4. If LSB(fn) is set, then right-shift both fn and sn equally until LSB(fn) is not set.
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // 5. Set both fr and sr to the first value in the consistency_path array.
    let (mut fr, mut sr) = (*start, *start);
    // 6. For each subsequent value c in the consistency_path array:
    for c in path {
        // If sn is 0, then stop the iteration and fail the proof verification.
        if s_n == 0 {
            return Err(wrong_length);
        }
        if f_n & 1 == 1 || f_n == s_n {
            // Set fr to HASH(0x01 || c || fr). Set sr to HASH(0x01 || c || sr).
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            // If LSB(fn) is not set, then right-shift both fn and sn equally until either
            // LSB(fn) is set or fn is 0.
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            // Set sr to HASH(0x01 || sr || c).
            sr = node_hash(&sr, c);
        }
        // Finally, right-shift both fn and sn one time.
        f_n >>= 1;
        s_n >>= 1;
    }
    // 7. Verify fr == first_hash, sr == second_hash and sn == 0.
    if s_n != 0 {
        return Err(wrong_length);
    }
    if fr != *old_root {
        return Err(VerifyError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(VerifyError::NewRootMismatch);
    }
    Ok(())
}
