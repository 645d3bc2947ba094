//! A job's files on the host: its inputs, fetched and verified before it starts (mounted
//! read-only at `/input/<artifact id>`), and its `/output`, packed as tar.gz with its SHA-256
//! when it ends.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gp4u_core::ids::ArtifactId;
use gp4u_proto::AssignmentManifest;
use sha2::{Digest, Sha256};

use crate::client::PlatformClient;

/// Download attempts per input while the platform is unreachable.
const DOWNLOAD_ATTEMPTS: u32 = 5;

/// Why the inputs could not be provided: reported as `INPUT_FAILED` with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// Fetches every input of `manifest` into `input_dir/<artifact id>`, each checked against the
/// SHA-256 in the manifest and made read-only. A download that fails or differs is removed.
pub async fn fetch_inputs(
    client: &PlatformClient,
    node_id: &str,
    manifest: &AssignmentManifest,
    input_dir: &Path,
) -> Result<(), InputError> {
    for input in &manifest.inputs {
        // The id names a file on this host: only a well-formed artifact id will do.
        let artifact = ArtifactId::parse(input).map_err(|error| {
            InputError(format!("input {input:?} is not an artifact id: {error}"))
        })?;
        let expected = manifest
            .input_sha256
            .get(input)
            .map(|hex| hex.trim_start_matches("sha256:").to_ascii_lowercase())
            .ok_or_else(|| InputError(format!("the manifest has no SHA-256 for input {input}")))?;
        let dest = input_dir.join(artifact.as_str());
        if dest.exists() {
            // Listed twice, or a retried start: already fetched and verified.
            continue;
        }
        let partial = input_dir.join(format!(".{artifact}.part"));
        let mut backoff = Duration::from_millis(500);
        let mut attempt = 1;
        let actual = loop {
            match client
                .download_input(&manifest.job_id, node_id, artifact.as_str(), &partial)
                .await
            {
                Ok(actual) => break actual,
                Err(error) if error.is_transient() && attempt < DOWNLOAD_ATTEMPTS => {
                    tracing::warn!(job_id = %manifest.job_id, input, %error, retry_in = ?backoff, "input download failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
                Err(error) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(InputError(format!(
                        "input {input} could not be fetched: {error}"
                    )));
                }
            }
        };
        if actual != expected {
            let _ = std::fs::remove_file(&partial);
            return Err(InputError(format!(
                "input {input} has SHA-256 {actual}, not {expected} as recorded; refused"
            )));
        }
        let finish = || -> std::io::Result<()> {
            let mut permissions = std::fs::metadata(&partial)?.permissions();
            permissions.set_readonly(true);
            std::fs::set_permissions(&partial, permissions)?;
            std::fs::rename(&partial, &dest)
        };
        finish().map_err(|error| {
            let _ = std::fs::remove_file(&partial);
            InputError(format!("input {input}: {}: {error}", dest.display()))
        })?;
        tracing::info!(job_id = %manifest.job_id, input, sha256 = %actual, "input fetched and verified");
    }
    Ok(())
}

/// A `Write` that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A packed output archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub path: PathBuf,
    pub sha256: String,
    pub size_bytes: u64,
}

/// Packs `output_dir` (its contents at the archive's root) into `archive` as tar.gz, hashing
/// while writing. Symbolic links are stored as links, never followed: a job cannot make the
/// agent read a host file by leaving a link to it in `/output`.
pub fn pack_output(output_dir: &Path, archive: &Path) -> std::io::Result<Packed> {
    let file = std::fs::File::create(archive)?;
    let writer = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
        written: 0,
    };
    let encoder = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
    let mut builder = tar::Builder::new(encoder);
    builder.follow_symlinks(false);
    builder.append_dir_all("", output_dir)?;
    let encoder = builder.into_inner()?;
    let mut writer = encoder.finish()?;
    writer.flush()?;
    writer.inner.get_ref().sync_all()?;
    Ok(Packed {
        path: archive.to_path_buf(),
        sha256: gp4u_core::hex::encode(&writer.hasher.finalize()),
        size_bytes: writer.written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn outputs_pack_with_their_hash_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("output");
        std::fs::create_dir_all(output.join("sub")).unwrap();
        std::fs::write(output.join("result.txt"), b"accuracy 0.97\n").unwrap();
        std::fs::write(output.join("sub/model.bin"), [0u8, 1, 2]).unwrap();
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, b"do not ship").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&secret, output.join("link")).unwrap();
        let archive = dir.path().join("output.tar.gz");
        let packed = pack_output(&output, &archive).unwrap();
        let bytes = std::fs::read(&archive).unwrap();
        assert_eq!(packed.size_bytes, bytes.len() as u64);
        let digest = gp4u_core::hex::sha256(&bytes);
        assert_eq!(packed.sha256, digest);
        let mut names = Vec::new();
        let mut reader = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        for entry in reader.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().display().to_string();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert!(!data.starts_with(b"do not ship"), "{name} followed a link");
            if name == "result.txt" {
                assert_eq!(data, b"accuracy 0.97\n");
            }
            if name == "link" {
                assert_eq!(entry.header().entry_type(), tar::EntryType::Symlink);
            }
            names.push(name);
        }
        names.sort();
        assert_eq!(names, ["link", "result.txt", "sub", "sub/model.bin"]);
    }
}
