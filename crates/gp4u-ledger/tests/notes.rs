//! Signed notes and checkpoints.
//!
//! Go vectors are from golang.org/x/mod `sumdb/note/note_test.go` (github.com/golang/mod):
//! `TestNewVerifier`, `TestNewSigner`, `TestSign` and `TestOpen`.

use ed25519_dalek::SigningKey;
use gp4u_ledger::note::{MAX_NOTE_SIZE, NoteError};
use gp4u_ledger::{
    Checkpoint, CheckpointError, NoteVerifier, key_id, leaf_hash, open_checkpoint, open_note,
    parse_signer_key, parse_verifier_key, sign_checkpoint, sign_note, signer_key, verifier_key,
};

const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const PETER_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const ENOCH_VKEY: &str = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop";
const TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
const PETER_SIG: &str = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
const ENOCH_SIG: &str = "\u{2014} EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n";

fn is_malformed<T: std::fmt::Debug>(r: Result<T, NoteError>) -> bool {
    matches!(r, Err(NoteError::Malformed(_)))
}

#[test]
fn go_verifier_key() {
    let (name, key, id) = parse_verifier_key(PETER_VKEY).expect("Go's verifier key parses");
    assert_eq!(name, "PeterNeumann");
    assert_eq!(id, 0xc74f20a3);
    assert_eq!(key_id(&name, &key), 0xc74f20a3);
    assert_eq!(verifier_key(&name, &key).as_deref(), Ok(PETER_VKEY));
    assert!(parse_verifier_key(ENOCH_VKEY).is_ok());

    // Every proper substring and every one-byte increment must be rejected.
    let b = PETER_VKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            let s = String::from_utf8_lossy(&b[i..j]);
            assert!(parse_verifier_key(&s).is_err(), "substring {s:?} accepted");
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] += 1;
        let s = String::from_utf8_lossy(&m);
        assert!(parse_verifier_key(&s).is_err(), "mangled {s:?} accepted");
    }
    // Wrong length key, with adjusted key hash.
    assert!(
        parse_verifier_key(
            "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY=="
        )
        .is_err()
    );
    // Unknown algorithm, with adjusted key hash.
    assert_eq!(
        parse_verifier_key("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"),
        Err(NoteError::UnknownAlgorithm(0x65))
    );
}

#[test]
fn go_signer_key() {
    let (name, key, id) = parse_signer_key(PETER_SKEY).expect("Go's signer key parses");
    assert_eq!((name.as_str(), id), ("PeterNeumann", 0xc74f20a3));
    assert_eq!(
        verifier_key(&name, &key.verifying_key()).as_deref(),
        Ok(PETER_VKEY)
    );
    assert_eq!(signer_key(&name, &key).as_deref(), Ok(PETER_SKEY));

    let b = PETER_SKEY.as_bytes();
    for i in 0..=b.len() {
        for j in i + 1..=b.len() {
            if i == 0 && j == b.len() {
                continue;
            }
            let s = String::from_utf8_lossy(&b[i..j]);
            assert!(parse_signer_key(&s).is_err(), "substring {s:?} accepted");
        }
    }
    for i in 0..b.len() {
        let mut m = b.to_vec();
        m[i] += 1;
        let s = String::from_utf8_lossy(&m);
        assert!(parse_signer_key(&s).is_err(), "mangled {s:?} accepted");
    }
}

#[test]
fn go_sign() {
    let (name, key, _) = parse_signer_key(PETER_SKEY).expect("signer key");
    let want = format!("{TEXT}\n{PETER_SIG}");
    assert_eq!(sign_note(TEXT, &name, &key).as_deref(), Ok(want.as_str()));
    // Bad inputs: text without final newline, bad signer name.
    assert!(matches!(
        sign_note("abc", &name, &key),
        Err(NoteError::InvalidBody(_))
    ));
    assert!(matches!(
        sign_note(TEXT, "bad name", &key),
        Err(NoteError::InvalidKeyName(_))
    ));
    assert!(matches!(
        sign_note(TEXT, "a+b", &key),
        Err(NoteError::InvalidKeyName(_))
    ));
    assert!(matches!(
        sign_note("a\tb\n", &name, &key),
        Err(NoteError::InvalidBody(_))
    ));
}

#[test]
fn go_open() {
    let both = format!("{TEXT}\n{PETER_SIG}{ENOCH_SIG}");
    // One signature verified, the other (unknown key) ignored; and the other way round.
    assert_eq!(open_note(&both, PETER_VKEY).as_deref(), Ok(TEXT));
    assert_eq!(open_note(&both, ENOCH_VKEY).as_deref(), Ok(TEXT));
    // No signature by the key we trust.
    let other = SigningKey::from_bytes(&[9; 32]);
    let other_vkey = verifier_key("Other", &other.verifying_key()).expect("vkey");
    assert!(matches!(
        open_note(&both, &other_vkey),
        Err(NoteError::NotSigned { .. })
    ));

    // Too many signatures.
    let many = format!("{TEXT}\n{}", PETER_SIG.repeat(101));
    assert!(is_malformed(open_note(&many, PETER_VKEY)));
    let hundred = format!("{TEXT}\n{}", PETER_SIG.repeat(100));
    assert_eq!(open_note(&hundred, PETER_VKEY).as_deref(), Ok(TEXT));

    // Invalid signature by the known key.
    let bad = format!("{TEXT}\n{}ABCD{}", &PETER_SIG[..60], &PETER_SIG[60..]);
    assert_eq!(
        open_note(&bad, PETER_VKEY),
        Err(NoteError::InvalidSignature {
            name: "PeterNeumann".into(),
            id: 0xc74f20a3
        })
    );

    // Duplicated verified and unverified signatures.
    let dup = format!(
        "{TEXT}\n{PETER_SIG}{PETER_SIG}{ENOCH_SIG}{ENOCH_SIG}{}ABCD{}",
        &ENOCH_SIG[..60],
        &ENOCH_SIG[60..]
    );
    assert_eq!(open_note(&dup, PETER_VKEY).as_deref(), Ok(TEXT));

    // Invalid encoded message syntax.
    let mut bad_msgs: Vec<Vec<u8>> = vec![
        TEXT.into(),
        format!("{TEXT}\n").into(),
        format!("{TEXT}\n{}", &PETER_SIG[..PETER_SIG.len() - 1]).into(),
        format!("\x01{TEXT}\n{PETER_SIG}").into(),
        format!("{TEXT}\n\u{2014} Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=").into(),
        format!("{TEXT}\n{PETER_SIG}Unexpected line.\n").into(),
    ];
    let mut ff = vec![0xffu8];
    ff.extend_from_slice(format!("{TEXT}\n{PETER_SIG}").as_bytes());
    bad_msgs.push(ff);
    for msg in bad_msgs {
        let r = open_note(&msg, PETER_VKEY);
        assert!(
            is_malformed(r.clone()),
            "{:?} gave {r:?}",
            String::from_utf8_lossy(&msg)
        );
    }

    // A signature line with another name, or another key id, is from an unknown key.
    let misnamed = PETER_SIG.replace("PeterNeumann", "CarmenSandiego");
    let r = open_note(format!("{TEXT}\n{misnamed}"), PETER_VKEY);
    assert!(matches!(r, Err(NoteError::NotSigned { .. })));
    let wrong_id = PETER_SIG.replace("x08g", "xxxx");
    let r = open_note(format!("{TEXT}\n{wrong_id}"), PETER_VKEY);
    assert!(matches!(r, Err(NoteError::NotSigned { .. })));
}

fn test_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn test_checkpoint() -> Checkpoint {
    Checkpoint {
        origin: "gp4u.example/obsidian".into(),
        size: 12345,
        root: leaf_hash(b"root"),
        extensions: vec!["ext one".into(), "— ext two".into()],
    }
}

#[test]
fn checkpoint_round_trip() {
    let key = test_key();
    let name = "gp4u.example/obsidian";
    let vkey = verifier_key(name, &key.verifying_key()).expect("vkey");
    let cp = test_checkpoint();
    let note = sign_checkpoint(&cp, name, &key).expect("sign");
    let body = cp.to_body().expect("body");
    assert!(note.starts_with(&format!("{body}\n\u{2014} {name} ")));
    assert_eq!(open_checkpoint(&note, &vkey, &cp.origin), Ok(cp.clone()));
    assert_eq!(open_note(&note, &vkey), Ok(body.clone()));
    assert_eq!(Checkpoint::parse_body(&body), Ok(cp.clone()));

    // Plain checkpoint, size 0, empty root, exact body text.
    let empty = Checkpoint::new("example.com/log", 0, gp4u_ledger::empty_root());
    assert_eq!(
        empty.to_body().as_deref(),
        Ok("example.com/log\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")
    );
    let note = sign_checkpoint(&empty, "another-key-name", &key).expect("sign");
    let vkey2 = verifier_key("another-key-name", &key.verifying_key()).expect("vkey");
    assert_eq!(open_checkpoint(&note, &vkey2, "example.com/log"), Ok(empty));

    // Origin check.
    let note = sign_checkpoint(&cp, name, &key).expect("sign");
    assert!(matches!(
        open_checkpoint(&note, &vkey, "other.example/log"),
        Err(NoteError::OriginMismatch { .. })
    ));
}

#[test]
fn checkpoint_rejections() {
    let key = test_key();
    let name = "gp4u.example/obsidian";
    let vkey = verifier_key(name, &key.verifying_key()).expect("vkey");
    let cp = test_checkpoint();
    let origin = cp.origin.clone();
    let note = sign_checkpoint(&cp, name, &key).expect("sign");
    let invalid = |r: Result<Checkpoint, NoteError>| {
        assert!(
            matches!(r, Err(NoteError::InvalidSignature { .. })),
            "{r:?}"
        );
    };

    // Tampered body: a different size.
    invalid(open_checkpoint(
        note.replacen("12345", "12346", 1),
        &vkey,
        &origin,
    ));
    // Tampered body: any single bit of the body, as long as the note still parses.
    let body_len = cp.to_body().expect("body").len();
    for i in 0..body_len {
        for bit in 0..8 {
            let mut b = note.clone().into_bytes();
            b[i] ^= 1 << bit;
            assert!(
                open_checkpoint(&b, &vkey, &origin).is_err(),
                "byte {i} bit {bit}"
            );
        }
    }
    // Tampered signature: every base64 character of the signature line replaced.
    let sig_start = note.rfind(' ').expect("signature") + 1;
    for i in sig_start..note.len() - 1 {
        let mut b = note.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        assert!(
            open_checkpoint(&b, &vkey, &origin).is_err(),
            "signature char {i}"
        );
    }
    // Tampered signature bytes that stay valid base64 and keep the key id.
    let mut b = note.clone().into_bytes();
    let last = note.len() - 4; // inside the signature, past the key id, before padding
    b[last] = if b[last] == b'A' { b'Q' } else { b'A' };
    invalid(open_checkpoint(&b, &vkey, &origin));

    // Wrong key: same name, another key (another key id): not signed by it.
    let other = SigningKey::from_bytes(&[8; 32]);
    let other_vkey = verifier_key(name, &other.verifying_key()).expect("vkey");
    assert!(matches!(
        open_checkpoint(&note, &other_vkey, &origin),
        Err(NoteError::NotSigned { .. })
    ));
    // A key id collision with the right name would still fail the signature check; and a
    // forged line from another key under our name and id is rejected as invalid.
    let forged = sign_note(&cp.to_body().expect("body"), name, &other).expect("sign");
    let forged_b64 = &forged[forged.rfind(' ').expect("sig") + 1..forged.len() - 1];
    let our_b64 = &note[note.rfind(' ').expect("sig") + 1..note.len() - 1];
    use base64::Engine as _;
    let std = base64::engine::general_purpose::STANDARD;
    let mut raw = std.decode(forged_b64).expect("b64");
    raw[..4].copy_from_slice(&std.decode(our_b64).expect("b64")[..4]);
    let spoofed = note.replace(our_b64, &std.encode(raw));
    invalid(open_checkpoint(&spoofed, &vkey, &origin));

    // Missing signature: body and blank line only, or no blank line at all.
    let body = cp.to_body().expect("body");
    assert!(matches!(
        open_checkpoint(format!("{body}\n"), &vkey, &origin),
        Err(NoteError::Malformed(_))
    ));
    assert!(matches!(
        open_checkpoint(&body, &vkey, &origin),
        Err(NoteError::Malformed(_))
    ));
    // Only a signature from an unknown key.
    let other_note = sign_checkpoint(&cp, "someone-else", &other).expect("sign");
    assert!(matches!(
        open_checkpoint(&other_note, &vkey, &origin),
        Err(NoteError::NotSigned { .. })
    ));
    // Both signatures: ours verifies, the unknown one is ignored; a bad one of ours is not.
    let both = format!(
        "{note}{}",
        &other_note[other_note.rfind("\u{2014}").expect("line")..]
    );
    assert_eq!(open_checkpoint(&both, &vkey, &origin), Ok(cp.clone()));
    let good_then_bad = format!(
        "{note}{}",
        &spoofed[spoofed.rfind("\u{2014}").expect("line")..]
    );
    invalid(open_checkpoint(&good_then_bad, &vkey, &origin));

    // Malformed signature lines.
    let sig_line = &note[note.rfind("\u{2014}").expect("line")..];
    for bad_line in [
        sig_line.replacen('\u{2014}', "-", 1),
        sig_line.replacen("\u{2014} ", "\u{2014}", 1),
        sig_line.replacen(name, "gp4u example", 1),
        sig_line.replacen(name, "gp4u+example", 1),
        sig_line.replacen(' ', "", 2),
        format!("{}=\n", sig_line.trim_end()),
        "\u{2014} gp4u.example/obsidian AAAA\n".to_string(),
        "\u{2014} gp4u.example/obsidian \n".to_string(),
        format!("{sig_line}\n"),
    ] {
        let text = format!("{body}\n{bad_line}");
        let r = open_checkpoint(&text, &vkey, &origin);
        assert!(
            matches!(r, Err(NoteError::Malformed(_))),
            "{bad_line:?} gave {r:?}"
        );
    }

    // Size limit: a note over 1 MiB is refused before parsing.
    let huge = format!("{note}{}", "x".repeat(MAX_NOTE_SIZE));
    assert!(matches!(
        open_note(&huge, &vkey),
        Err(NoteError::TooLarge { .. })
    ));
    let big_body = format!("{}\n", "x".repeat(MAX_NOTE_SIZE));
    assert!(matches!(
        sign_note(&big_body, name, &key),
        Err(NoteError::TooLarge { .. })
    ));
}

#[test]
fn checkpoint_body_is_strict() {
    let root = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
    let ok = |size: &str| Checkpoint::parse_body(&format!("o\n{size}\n{root}\n"));
    assert_eq!(ok("0").map(|c| c.size), Ok(0));
    assert_eq!(ok("18446744073709551615").map(|c| c.size), Ok(u64::MAX));
    for bad in [
        "00",
        "01",
        "+1",
        "-1",
        " 1",
        "1 ",
        "",
        "1e3",
        "0x1",
        "18446744073709551616",
        "١",
    ] {
        let r = ok(bad);
        assert!(
            matches!(
                r,
                Err(CheckpointError::BadSize(_)) | Err(CheckpointError::EmptyLine(2))
            ),
            "size {bad:?} gave {r:?}"
        );
    }
    let parse = Checkpoint::parse_body;
    // Root: 31 bytes, 33 bytes, missing padding, non-canonical trailing bits, not base64.
    for bad in [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFV=",
        "47DEQpj8HBSa-_TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
    ] {
        let r = parse(&format!("o\n1\n{bad}\n"));
        assert!(
            matches!(r, Err(CheckpointError::BadRoot(_))),
            "root {bad:?} gave {r:?}"
        );
    }
    assert_eq!(
        parse(&format!("o\n1\n{root}")),
        Err(CheckpointError::MissingFinalNewline)
    );
    assert_eq!(parse("o\n1\n"), Err(CheckpointError::TooFewLines(2)));
    assert_eq!(parse(""), Err(CheckpointError::MissingFinalNewline));
    assert_eq!(
        parse(&format!("\n1\n{root}\n")),
        Err(CheckpointError::EmptyLine(1))
    );
    assert_eq!(
        parse(&format!("o\n1\n{root}\n\n")),
        Err(CheckpointError::EmptyLine(4))
    );
    assert_eq!(
        parse(&format!("o\n1\n{root}\nx\n\ny\n")),
        Err(CheckpointError::EmptyLine(5))
    );
    assert_eq!(
        parse(&format!("o\r\n1\n{root}\n")),
        Err(CheckpointError::ControlCharacter(1))
    );
    assert_eq!(
        parse(&format!("o\n1\n{root}\na\tb\n")),
        Err(CheckpointError::ControlCharacter(4))
    );
    let with_ext = parse(&format!("o\n1\n{root}\nfoo\nbar baz\n")).expect("extensions");
    assert_eq!(
        with_ext.extensions,
        vec!["foo".to_string(), "bar baz".to_string()]
    );

    // to_body refuses what would not parse back.
    let mut cp = Checkpoint::new("o", 1, [0; 32]);
    cp.origin = String::new();
    assert_eq!(cp.to_body(), Err(CheckpointError::EmptyLine(1)));
    cp.origin = "a\nb".into();
    assert_eq!(cp.to_body(), Err(CheckpointError::ControlCharacter(1)));
    cp.origin = "o".into();
    cp.extensions = vec!["ok".into(), String::new()];
    assert_eq!(cp.to_body(), Err(CheckpointError::EmptyLine(5)));
}

#[test]
fn key_names() {
    let key = test_key().verifying_key();
    for bad in ["", "a b", "a+b", "a\tb", "a\u{a0}b", "a\u{2003}b", "a\nb"] {
        assert!(
            matches!(verifier_key(bad, &key), Err(NoteError::InvalidKeyName(_))),
            "{bad:?}"
        );
        assert!(NoteVerifier::new(bad, key).is_err());
    }
    let v = NoteVerifier::new("gp4u.example/obsidian", key).expect("verifier");
    assert_eq!(NoteVerifier::parse(&v.to_key_string()), Ok(v.clone()));
    // Key id: first four bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ key), big-endian.
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"gp4u.example/obsidian\n\x01");
    h.update(key.as_bytes());
    let d = h.finalize();
    assert_eq!(v.id, u32::from_be_bytes([d[0], d[1], d[2], d[3]]));
}
