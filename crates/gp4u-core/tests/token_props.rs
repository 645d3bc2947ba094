//! Property tests of SPEC §2 tokens: round trip, tamper evidence, key rotation, expiry.

use gp4u_core::token::{Claims, TokenError, TokenKeys, TokenSecret, mint, verify};
use proptest::prelude::*;

fn secret(bytes: Vec<u8>) -> TokenSecret {
    TokenSecret::new(bytes).expect("test secrets are at least 32 bytes")
}

fn claims() -> impl Strategy<Value = Claims> {
    (
        "usr_[A-Za-z0-9_-]{1,64}",
        0_u8..=5,
        // Hundredths, as trust scores are shown; such short decimals survive JSON exactly.
        0_u32..=10_000,
        1_i64..=4_102_444_800,
    )
        .prop_map(|(sub, clr, trs_hundredths, exp)| Claims {
            sub,
            clr,
            trs: f64::from(trs_hundredths) / 100.0,
            exp,
        })
}

fn secret_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 32..=64)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn mint_then_verify_gives_the_claims_back(claims in claims(), key in secret_bytes()) {
        let keys = TokenKeys { current: secret(key.clone()), previous: None };
        let token = mint(&claims, &secret(key));
        prop_assert_eq!(verify(&token, &keys, claims.exp - 1), Ok(claims));
    }

    /// Changing any one byte of a token, to any other byte, makes it fail.
    #[test]
    fn any_single_byte_change_is_refused(
        claims in claims(),
        key in secret_bytes(),
        position in any::<prop::sample::Index>(),
        replacement in any::<u8>(),
    ) {
        let keys = TokenKeys { current: secret(key.clone()), previous: None };
        let token = mint(&claims, &secret(key));
        let mut bytes = token.clone().into_bytes();
        let index = position.index(bytes.len());
        prop_assume!(bytes[index] != replacement);
        bytes[index] = replacement;
        // A byte that breaks UTF-8 cannot even be presented as a header string: refused.
        if let Ok(tampered) = String::from_utf8(bytes) {
            prop_assert!(verify(&tampered, &keys, 0).is_err(), "{} accepted", tampered);
        }
    }

    #[test]
    fn previous_key_verifies_and_unrelated_key_fails(
        claims in claims(),
        current in secret_bytes(),
        previous in secret_bytes(),
        unrelated in secret_bytes(),
    ) {
        prop_assume!(current != previous && unrelated != current && unrelated != previous);
        let keys = TokenKeys { current: secret(current), previous: Some(secret(previous.clone())) };
        let old_token = mint(&claims, &secret(previous));
        prop_assert_eq!(verify(&old_token, &keys, 0), Ok(claims.clone()));
        let foreign_token = mint(&claims, &secret(unrelated));
        prop_assert_eq!(verify(&foreign_token, &keys, 0), Err(TokenError::BadSignature));
    }

    #[test]
    fn expiry_boundary(claims in claims(), key in secret_bytes()) {
        let keys = TokenKeys { current: secret(key.clone()), previous: None };
        let token = mint(&claims, &secret(key));
        prop_assert!(verify(&token, &keys, claims.exp - 1).is_ok());
        prop_assert_eq!(verify(&token, &keys, claims.exp), Err(TokenError::Expired));
        prop_assert_eq!(verify(&token, &keys, claims.exp + 1), Err(TokenError::Expired));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// Exhaustive over one token: every position, every other ASCII byte. Costly (about
    /// 30 000 verifications per case), so a few cases; the test above samples widely.
    #[test]
    fn every_position_is_protected(claims in claims(), key in secret_bytes()) {
        let keys = TokenKeys { current: secret(key.clone()), previous: None };
        let token = mint(&claims, &secret(key));
        for index in 0..token.len() {
            for replacement in 0_u8..128 {
                let mut bytes = token.clone().into_bytes();
                if bytes[index] == replacement {
                    continue;
                }
                bytes[index] = replacement;
                let tampered = String::from_utf8(bytes).unwrap();
                prop_assert!(verify(&tampered, &keys, 0).is_err(), "{} accepted", tampered);
            }
        }
    }
}
