//! The token secret: given, or generated once into the data dir (mode 0600) so that the
//! embedded default needs no setup. `gp4u token mint` reads the same file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use gp4u_core::token::{MIN_SECRET_LEN, TokenKeys, TokenSecret};

pub const SECRET_FILE_NAME: &str = "token-secret";

pub fn secret_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SECRET_FILE_NAME)
}

fn secret_from_text(what: &str, text: &str) -> anyhow::Result<TokenSecret> {
    let bytes = text.trim_end_matches(['\n', '\r']).as_bytes().to_vec();
    if bytes.len() < MIN_SECRET_LEN {
        bail!(
            "{what} is {} bytes; it must be at least {MIN_SECRET_LEN} bytes",
            bytes.len()
        );
    }
    TokenSecret::new(bytes).with_context(|| format!("{what} is unusable"))
}

/// Reads the secret file in `data_dir`, if there is one.
pub fn read_secret_file(data_dir: &Path) -> anyhow::Result<Option<TokenSecret>> {
    let path = secret_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            secret_from_text(&format!("the token secret in {}", path.display()), &text).map(Some)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// Resolves the signing keys: `GP4U_TOKEN_SECRET` if given, else the data dir's secret file,
/// generating it (64 random hex characters, mode 0600) on first start.
pub fn load_or_generate(
    configured: Option<&str>,
    previous: Option<&str>,
    data_dir: &Path,
    random: impl FnOnce() -> [u8; 32],
) -> anyhow::Result<TokenKeys> {
    let current = match configured {
        Some(text) => secret_from_text("GP4U_TOKEN_SECRET", text)?,
        None => match read_secret_file(data_dir)? {
            Some(secret) => secret,
            None => generate(data_dir, random())?,
        },
    };
    let previous = previous
        .map(|text| secret_from_text("GP4U_TOKEN_SECRET_PREVIOUS", text))
        .transpose()?;
    Ok(TokenKeys { current, previous })
}

/// The secret `gp4u token mint` signs with: the given one, else the server's generated file.
pub fn load_for_minting(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<TokenSecret> {
    if let Some(text) = configured {
        return secret_from_text("GP4U_TOKEN_SECRET", text);
    }
    match read_secret_file(data_dir)? {
        Some(secret) => Ok(secret),
        None => bail!(
            "no token secret: set GP4U_TOKEN_SECRET, or point --data-dir at the server's data dir \
             (the server generates {} there on first start)",
            secret_path(data_dir).display()
        ),
    }
}

fn generate(data_dir: &Path, random: [u8; 32]) -> anyhow::Result<TokenSecret> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let path = secret_path(data_dir);
    let hex = gp4u_core::hex::encode(&random);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    tracing::info!(path = %path.display(), "generated a token secret (mode 0600); gp4u token mint uses it");
    secret_from_text("the generated token secret", &hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_with_mode_0600_and_reuses() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate(None, None, dir.path(), || [7; 32]).unwrap();
        let second = load_or_generate(None, None, dir.path(), || [9; 32]).unwrap();
        assert_eq!(first.current.as_bytes(), second.current.as_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(secret_path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn short_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let error = load_or_generate(Some("too-short"), None, dir.path(), || [0; 32]).unwrap_err();
        assert!(error.to_string().contains("at least 32 bytes"), "{error}");
    }
}
