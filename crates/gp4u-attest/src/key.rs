//! Key files: ed25519, generated on first start into a data dir with mode 0600. The agent's
//! node key (`node.key`: its public half is registered with the platform; it signs attestations
//! and visibility answers) and the server's platform key (`platform.key`: it signs visibility
//! challenges, later ledger checkpoints) use the same format: 64 hex characters.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;

/// The agent's node key file.
pub const KEY_FILE: &str = "node.key";
/// The server's platform key file.
pub const PLATFORM_KEY_FILE: &str = "platform.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} does not hold a 32-byte ed25519 key (64 hex characters); move it away to generate a new one"
    )]
    Corrupt { path: PathBuf },
    #[error("{path} is readable by others (mode {mode:o}); run chmod 600 on it")]
    TooOpen { path: PathBuf, mode: u32 },
}

/// Loads the node key, generating it from `random` on first start.
pub fn load_or_generate(
    data_dir: &Path,
    random: impl FnOnce() -> [u8; 32],
) -> Result<SigningKey, KeyError> {
    load_or_generate_file(data_dir, KEY_FILE, random)
}

/// Loads the key in `data_dir/file_name`, generating it from `random` on first start.
pub fn load_or_generate_file(
    data_dir: &Path,
    file_name: &str,
    random: impl FnOnce() -> [u8; 32],
) -> Result<SigningKey, KeyError> {
    let path = data_dir.join(file_name);
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::TooOpen { path, mode });
                }
            }
            let bytes =
                decode_hex(text.trim()).ok_or_else(|| KeyError::Corrupt { path: path.clone() })?;
            Ok(SigningKey::from_bytes(&bytes))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let key = SigningKey::from_bytes(&random());
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).map_err(io)?;
            let hex = gp4u_core::hex::encode(&key.to_bytes());
            file.write_all(hex.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "generated an ed25519 key (mode 0600)");
            Ok(key)
        }
        Err(error) => Err(io(error)),
    }
}

/// The public key as the platform stores it: standard base64 of the 32 bytes.
pub fn public_key_base64(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().to_bytes())
}

/// Parses a public key in the form `public_key_base64` writes.
pub fn parse_public_key(text: &str) -> Option<ed25519_dalek::VerifyingKey> {
    let bytes: [u8; 32] = STANDARD.decode(text.trim()).ok()?.try_into().ok()?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(dir.path(), || [7; 32]).unwrap();
        let second = load_or_generate(dir.path(), || [9; 32]).unwrap();
        assert_eq!(first.to_bytes(), second.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            STANDARD.decode(public_key_base64(&first)).unwrap().len(),
            32
        );
    }

    #[test]
    fn corrupt_and_open_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, "nope").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            assert!(matches!(
                load_or_generate(dir.path(), || [1; 32]),
                Err(KeyError::Corrupt { .. })
            ));
            std::fs::write(&path, "ab".repeat(32)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                load_or_generate(dir.path(), || [1; 32]),
                Err(KeyError::TooOpen { .. })
            ));
        }
    }
}
