//! C2SP signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys, byte for byte as
//! Go's `golang.org/x/mod/sumdb/note` writes and reads them.
//!
//! A signed note is the note text (ending in a newline), a blank line, and one or more
//! signature lines `— <key name> <base64(4-byte key id ‖ signature)>\n` (U+2014 EM DASH,
//! then a space). The Ed25519 signature covers the note text including its final newline.
//! The key id is the first four bytes, big-endian, of
//! `SHA-256(key name ‖ "\n" ‖ 0x01 ‖ 32-byte public key)`.
//!
//! Key strings, as Go encodes them:
//! - verifier key `<name>+<8 hex digit key id>+<base64(0x01 ‖ public key)>`;
//! - signer key `PRIVATE+KEY+<name>+<8 hex digit key id>+<base64(0x01 ‖ 32-byte seed)>`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Signature type byte of Ed25519 note keys.
pub const ALG_ED25519: u8 = 0x01;
/// Largest signed note [`open_note`] accepts, in bytes (1 MiB).
pub const MAX_NOTE_SIZE: usize = 1 << 20;
/// Most signature lines [`open_note`] accepts (Go's limit).
pub const MAX_SIGNATURES: usize = 100;
/// Start of every signature line: U+2014 EM DASH and a space.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Errors from key parsing, signing and opening notes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// The signed note is over [`MAX_NOTE_SIZE`].
    #[error("note is {len} bytes, over the {MAX_NOTE_SIZE} byte limit")]
    TooLarge {
        /// The note's length in bytes.
        len: usize,
    },
    /// The signed note does not follow the format.
    #[error("malformed note: {0}")]
    Malformed(&'static str),
    /// The text given to [`sign_note`] cannot be a note text.
    #[error("invalid note body: {0}")]
    InvalidBody(&'static str),
    /// A key name is empty or holds a Unicode space or '+'.
    #[error("invalid key name {0:?}: it must be non-empty, without spaces or '+'")]
    InvalidKeyName(String),
    /// A key string does not follow the format.
    #[error("malformed key string: {0}")]
    MalformedKey(&'static str),
    /// A key string names an algorithm other than Ed25519.
    #[error("unknown key algorithm {0:#04x}")]
    UnknownAlgorithm(u8),
    /// A key string's id is not the id of its name and key.
    #[error("key id {got:08x} in the key string does not match its name and key ({expected:08x})")]
    KeyIdMismatch {
        /// The id computed from the name and key.
        expected: u32,
        /// The id written in the key string.
        got: u32,
    },
    /// A signature line from the verifier's key does not verify.
    #[error("invalid signature for key {name}+{id:08x}")]
    InvalidSignature {
        /// The key name.
        name: String,
        /// The key id.
        id: u32,
    },
    /// No signature line from the verifier's key.
    #[error("note has no signature by key {name}+{id:08x}")]
    NotSigned {
        /// The key name.
        name: String,
        /// The key id.
        id: u32,
    },
    /// The note body is not a valid checkpoint.
    #[error("invalid checkpoint: {0}")]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The checkpoint is for another log.
    #[error("checkpoint origin is {got:?}, expected {expected:?}")]
    OriginMismatch {
        /// The origin the caller expected.
        expected: String,
        /// The origin in the checkpoint.
        got: String,
    },
}

/// Whether `name` may be a key name: non-empty, with no Unicode white space and no '+'.
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

fn id_of_encoded(name: &str, encoded_key: &[u8]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n");
    h.update(encoded_key);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn encoded(key: &VerifyingKey) -> [u8; 33] {
    let mut out = [0u8; 33];
    out[0] = ALG_ED25519;
    out[1..].copy_from_slice(key.as_bytes());
    out
}

/// The key id of an Ed25519 key under `name`: the first four bytes, big-endian, of
/// `SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key)`.
pub fn key_id(name: &str, key: &VerifyingKey) -> u32 {
    id_of_encoded(name, &encoded(key))
}

/// An Ed25519 verifier key: a key name, its public key and its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    /// The key name that appears in signature lines.
    pub name: String,
    /// The public key.
    pub key: VerifyingKey,
    /// The key id ([`key_id`] of the name and key).
    pub id: u32,
}

/// Split at the first `sep`, like Go's `chop`: `(s, "")` when there is none.
fn chop(s: &str, sep: char) -> (&str, &str) {
    s.split_once(sep).unwrap_or((s, ""))
}

fn parse_id(hex: &str) -> Result<u32, NoteError> {
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NoteError::MalformedKey("key id must be 8 hex digits"));
    }
    u32::from_str_radix(hex, 16).map_err(|_| NoteError::MalformedKey("key id must be 8 hex digits"))
}

impl NoteVerifier {
    /// The verifier for `key` under `name`.
    pub fn new(name: &str, key: VerifyingKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            id: key_id(name, &key),
            key,
        })
    }

    /// Parse a verifier key string `<name>+<hex id>+<base64(0x01 ‖ public key)>`, checking
    /// that the id matches the name and key.
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        let (name, rest) = chop(vkey, '+');
        let (hex, b64) = chop(rest, '+');
        check_name(name)?;
        let id = parse_id(hex)?;
        let raw = STANDARD
            .decode(b64)
            .map_err(|_| NoteError::MalformedKey("key is not valid base64"))?;
        let Some((&alg, key)) = raw.split_first() else {
            return Err(NoteError::MalformedKey("key is empty"));
        };
        let expected = id_of_encoded(name, &raw);
        if id != expected {
            return Err(NoteError::KeyIdMismatch { expected, got: id });
        }
        if alg != ALG_ED25519 {
            return Err(NoteError::UnknownAlgorithm(alg));
        }
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| NoteError::MalformedKey("ed25519 public key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key)
            .map_err(|_| NoteError::MalformedKey("not an ed25519 public key"))?;
        Ok(Self {
            name: name.to_owned(),
            key,
            id,
        })
    }

    /// The verifier key string.
    pub fn to_key_string(&self) -> String {
        format!(
            "{}+{:08x}+{}",
            self.name,
            self.id,
            STANDARD.encode(encoded(&self.key))
        )
    }

    /// Check a signed note and return its text (the body, with its final newline).
    ///
    /// The note must carry at least one signature line by this key (same name and id) and
    /// every such line must verify. Signature lines by other keys are ignored (C2SP
    /// signed-note, and Go's `note.Open`), but must still be well formed. Rejects notes over
    /// [`MAX_NOTE_SIZE`] bytes or with more than [`MAX_SIGNATURES`] signature lines, text that
    /// is not UTF-8 or holds ASCII control characters other than newline, and a missing blank
    /// line before the signatures.
    ///
    /// Two deliberate differences from Go's `note.Open`: every signature line by this key is
    /// checked (Go checks only the first and skips repeats; C2SP says a known key's
    /// signature must be verified), and Ed25519 verification is `verify_strict` (it also
    /// refuses weak public keys and small-order `R`, which honest signers never produce).
    pub fn open(&self, note: impl AsRef<[u8]>) -> Result<String, NoteError> {
        let msg = note.as_ref();
        if msg.len() > MAX_NOTE_SIZE {
            return Err(NoteError::TooLarge { len: msg.len() });
        }
        let msg = std::str::from_utf8(msg).map_err(|_| NoteError::Malformed("not valid UTF-8"))?;
        if msg.chars().any(|c| c < ' ' && c != '\n') {
            return Err(NoteError::Malformed("control character"));
        }
        let split = msg
            .rfind("\n\n")
            .ok_or(NoteError::Malformed("no blank line before the signatures"))?;
        let (text, sigs) = (&msg[..split + 1], &msg[split + 2..]);
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(NoteError::Malformed(
                "signature lines must end with a newline",
            ));
        };
        let mut verified = false;
        for (n, line) in sigs.split('\n').enumerate() {
            if n >= MAX_SIGNATURES {
                return Err(NoteError::Malformed("too many signatures"));
            }
            let rest = line
                .strip_prefix(SIGNATURE_PREFIX)
                .ok_or(NoteError::Malformed(
                    "signature line must start with an em dash and a space",
                ))?;
            let (name, b64) = chop(rest, ' ');
            if !is_valid_key_name(name) {
                return Err(NoteError::Malformed("invalid key name in a signature line"));
            }
            let raw = STANDARD
                .decode(b64)
                .map_err(|_| NoteError::Malformed("signature is not valid base64"))?;
            if raw.len() < 5 {
                return Err(NoteError::Malformed("signature too short"));
            }
            let id = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
            if name != self.name || id != self.id {
                continue; // Another key: ignored.
            }
            let bad = || NoteError::InvalidSignature {
                name: self.name.clone(),
                id: self.id,
            };
            let sig = Signature::from_slice(&raw[4..]).map_err(|_| bad())?;
            self.key
                .verify_strict(text.as_bytes(), &sig)
                .map_err(|_| bad())?;
            verified = true;
        }
        if !verified {
            return Err(NoteError::NotSigned {
                name: self.name.clone(),
                id: self.id,
            });
        }
        Ok(text.to_owned())
    }
}

/// The verifier key string `<name>+<hex id>+<base64(0x01 ‖ public key)>` of `key`.
pub fn verifier_key(name: &str, key: &VerifyingKey) -> Result<String, NoteError> {
    Ok(NoteVerifier::new(name, *key)?.to_key_string())
}

/// Parse a verifier key string into its name, public key and key id (checked against the
/// name and key).
pub fn parse_verifier_key(vkey: &str) -> Result<(String, VerifyingKey, u32), NoteError> {
    let v = NoteVerifier::parse(vkey)?;
    Ok((v.name, v.key, v.id))
}

/// The signer key string `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>` of `key`, as
/// Go's `note.GenerateKey` writes it. It holds the private key: keep it secret.
pub fn signer_key(name: &str, key: &SigningKey) -> Result<String, NoteError> {
    check_name(name)?;
    let mut raw = [0u8; 33];
    raw[0] = ALG_ED25519;
    raw[1..].copy_from_slice(&key.to_bytes());
    Ok(format!(
        "PRIVATE+KEY+{}+{:08x}+{}",
        name,
        key_id(name, &key.verifying_key()),
        STANDARD.encode(raw)
    ))
}

/// Parse a signer key string into its name, private key and key id (checked against the
/// name and the derived public key).
pub fn parse_signer_key(skey: &str) -> Result<(String, SigningKey, u32), NoteError> {
    let (p1, rest) = chop(skey, '+');
    let (p2, rest) = chop(rest, '+');
    let (name, rest) = chop(rest, '+');
    let (hex, b64) = chop(rest, '+');
    if p1 != "PRIVATE" || p2 != "KEY" {
        return Err(NoteError::MalformedKey(
            "signer key must start with PRIVATE+KEY+",
        ));
    }
    check_name(name)?;
    let id = parse_id(hex)?;
    let raw = STANDARD
        .decode(b64)
        .map_err(|_| NoteError::MalformedKey("key is not valid base64"))?;
    let Some((&alg, seed)) = raw.split_first() else {
        return Err(NoteError::MalformedKey("key is empty"));
    };
    if alg != ALG_ED25519 {
        return Err(NoteError::UnknownAlgorithm(alg));
    }
    let seed: [u8; 32] = seed
        .try_into()
        .map_err(|_| NoteError::MalformedKey("ed25519 seed must be 32 bytes"))?;
    let key = SigningKey::from_bytes(&seed);
    let expected = key_id(name, &key.verifying_key());
    if id != expected {
        return Err(NoteError::KeyIdMismatch { expected, got: id });
    }
    Ok((name.to_owned(), key, id))
}

/// Sign `body` (the note text, ending in a newline) with `key` under `name`: returns the body,
/// a blank line and one signature line.
pub fn sign_note(body: &str, name: &str, key: &SigningKey) -> Result<String, NoteError> {
    check_name(name)?;
    if !body.ends_with('\n') {
        return Err(NoteError::InvalidBody("must end with a newline"));
    }
    if body.chars().any(|c| c < ' ' && c != '\n') {
        return Err(NoteError::InvalidBody("control character"));
    }
    let mut raw = Vec::with_capacity(68);
    raw.extend_from_slice(&key_id(name, &key.verifying_key()).to_be_bytes());
    raw.extend_from_slice(&key.sign(body.as_bytes()).to_bytes());
    let note = format!(
        "{body}\n{SIGNATURE_PREFIX}{name} {}\n",
        STANDARD.encode(raw)
    );
    if note.len() > MAX_NOTE_SIZE {
        return Err(NoteError::TooLarge { len: note.len() });
    }
    Ok(note)
}

/// Check a signed note against a verifier key string and return its text; see
/// [`NoteVerifier::open`] for the rules.
pub fn open_note(note: impl AsRef<[u8]>, verifier_key: &str) -> Result<String, NoteError> {
    NoteVerifier::parse(verifier_key)?.open(note)
}
