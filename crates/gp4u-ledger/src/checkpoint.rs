//! C2SP transparency log checkpoints (<https://c2sp.org/tlog-checkpoint>): the signed note
//! body `<origin>\n<size>\n<base64 root>\n[extension lines]`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;

use crate::hash::Hash;
use crate::note::{NoteError, NoteVerifier, sign_note};

/// A log's signed tree head: origin, size and root, plus optional opaque extension lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity (first line), e.g. `example.com/log42`.
    pub origin: String,
    /// Number of leaves.
    pub size: u64,
    /// RFC 6962 root hash at that size.
    pub root: Hash,
    /// Extension lines, without their newlines; each non-empty. Not auditable by monitors,
    /// so their use is discouraged.
    pub extensions: Vec<String>,
}

/// Why a checkpoint body is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The body does not end with a newline.
    #[error("body must end with a newline")]
    MissingFinalNewline,
    /// The body has fewer than three lines.
    #[error("body has {0} lines, needs at least origin, size and root")]
    TooFewLines(usize),
    /// A line (1-based) is empty; this includes an empty origin.
    #[error("line {0} is empty")]
    EmptyLine(usize),
    /// A line (1-based) holds a newline or another ASCII control character.
    #[error("line {0} holds a control character")]
    ControlCharacter(usize),
    /// The size line is not a decimal number without leading zeros that fits in 64 bits.
    #[error("tree size {0:?} is not a decimal number without leading zeros")]
    BadSize(String),
    /// The root line is not the standard base64 of 32 bytes.
    #[error("root hash {0:?} is not the base64 of 32 bytes")]
    BadRoot(String),
}

fn check_line(n: usize, line: &str) -> Result<(), CheckpointError> {
    if line.is_empty() {
        return Err(CheckpointError::EmptyLine(n));
    }
    if line.chars().any(|c| c < ' ') {
        return Err(CheckpointError::ControlCharacter(n));
    }
    Ok(())
}

impl Checkpoint {
    /// A checkpoint without extension lines.
    pub fn new(origin: impl Into<String>, size: u64, root: Hash) -> Self {
        Self {
            origin: origin.into(),
            size,
            root,
            extensions: Vec::new(),
        }
    }

    /// The note body. Fails if the origin or an extension line is empty or holds a newline
    /// or another control character (it would not parse back).
    pub fn to_body(&self) -> Result<String, CheckpointError> {
        check_line(1, &self.origin)?;
        for (i, ext) in self.extensions.iter().enumerate() {
            check_line(i + 4, ext)?;
        }
        let mut body = format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        );
        for ext in &self.extensions {
            body.push_str(ext);
            body.push('\n');
        }
        Ok(body)
    }

    /// Parse a note body strictly: at least three lines, each ending in a newline and none
    /// empty; no control characters; the size in decimal without leading zeros (except `0`)
    /// and without sign; the root the canonical standard base64 of 32 bytes.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let body = body
            .strip_suffix('\n')
            .ok_or(CheckpointError::MissingFinalNewline)?;
        let lines: Vec<&str> = body.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            check_line(i + 1, line)?;
        }
        let [origin, size, root, extensions @ ..] = lines.as_slice() else {
            return Err(CheckpointError::TooFewLines(lines.len()));
        };
        let bad_size = || CheckpointError::BadSize((*size).to_owned());
        if !size.bytes().all(|b| b.is_ascii_digit()) || (size.len() > 1 && size.starts_with('0')) {
            return Err(bad_size());
        }
        let size: u64 = size.parse().map_err(|_| bad_size())?;
        let bad_root = || CheckpointError::BadRoot((*root).to_owned());
        let root: Hash = STANDARD
            .decode(root)
            .map_err(|_| bad_root())?
            .try_into()
            .map_err(|_| bad_root())?;
        Ok(Self {
            origin: (*origin).to_owned(),
            size,
            root,
            extensions: extensions.iter().map(|s| (*s).to_owned()).collect(),
        })
    }
}

/// Sign a checkpoint as a note with `key` under the key name `name`. The C2SP convention is
/// that the key name equals the origin, but this function does not require it.
pub fn sign_checkpoint(
    checkpoint: &Checkpoint,
    name: &str,
    key: &SigningKey,
) -> Result<String, NoteError> {
    sign_note(&checkpoint.to_body()?, name, key)
}

/// Open a signed checkpoint: the note must be signed by `verifier_key` (see
/// [`crate::open_note`]), its body must parse, and its origin must equal `origin`, so that a
/// checkpoint of another log signed by the same key is not taken for this log's.
pub fn open_checkpoint(
    note: impl AsRef<[u8]>,
    verifier_key: &str,
    origin: &str,
) -> Result<Checkpoint, NoteError> {
    open_checkpoint_with(note, &NoteVerifier::parse(verifier_key)?, origin)
}

/// [`open_checkpoint`] with an already parsed verifier.
pub fn open_checkpoint_with(
    note: impl AsRef<[u8]>,
    verifier: &NoteVerifier,
    origin: &str,
) -> Result<Checkpoint, NoteError> {
    let checkpoint = Checkpoint::parse_body(&verifier.open(note)?)?;
    if checkpoint.origin != origin {
        return Err(NoteError::OriginMismatch {
            expected: origin.to_owned(),
            got: checkpoint.origin,
        });
    }
    Ok(checkpoint)
}
