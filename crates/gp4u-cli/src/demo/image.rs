//! The demo's image, built here and served by digest from a registry of its own on loopback
//! ([`serve`]), so that the agent pulls `image@sha256:…` exactly as it does from any registry —
//! no registry to install, nothing pulled from the internet.
//!
//! The image is one layer: a statically linked busybox from this machine (Debian's
//! `busybox-static`), a link per applet, and the demo's workloads in `/demo`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The repository the demo's image is served under.
pub const REPOSITORY: &str = "gp4u/demo";

/// The workloads of the demo, as `/demo/<name>.sh` in the image (and in the process runtime's
/// job directory).
pub const WORKLOADS: [(&str, &str); 2] = [("train.sh", TRAIN), ("mine.sh", MINE)];

/// A training-like job: bursts of computation with a falling "loss", a cache and a
/// checkpoint written out.
pub const TRAIN: &str = r#"#!/bin/sh
# A training-like job: eight epochs of busy computation, a cache, a checkpoint in /output.
out="${GP4U_OUTPUT_DIR:-/output}"
mkdir -p "$HOME/.cache/demo" && echo cached > "$HOME/.cache/demo/weights.bin"
loss=1000
for epoch in 1 2 3 4 5 6 7 8; do
  timeout 1 sh -c 'while :; do :; done'
  loss=$((loss * 7 / 10))
  echo "epoch $epoch/8 loss 0.$loss"
done
echo "model after 8 epochs, loss 0.$loss" > "$out/model.txt"
echo "training complete: checkpoint written to $out/model.txt"
"#;

/// A miner-like job: it only burns CPU, steadily, and keeps a connection to a "pool" on the
/// miners' port 3333 — a listener of its own, inside its own network namespace.
pub const MINE: &str = r#"#!/bin/sh
# A miner-like job: steady full load and a pool connection on port 3333 (its own loopback).
sleep 3600 | nc -l -p 3333 > /dev/null &
sleep 0.5
while :; do :; done &
while :; do :; done &
while true; do
  (while true; do echo share; sleep 1; done | nc 127.0.0.1 3333)
  sleep 1
done
"#;

/// A built image: its blobs by digest, and the manifest's digest.
#[derive(Clone, Debug)]
pub struct Image {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    manifest: Vec<u8>,
    blobs: BTreeMap<String, Vec<u8>>,
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", gp4u_core::hex::sha256(bytes))
}

/// A statically linked busybox to build the image from: `$GP4U_DEMO_BUSYBOX`, else
/// `/bin/busybox` or `/usr/bin/busybox` when static (ELF without an interpreter).
pub fn static_busybox() -> Option<PathBuf> {
    let candidates = std::env::var_os("GP4U_DEMO_BUSYBOX")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/bin/busybox", "/usr/bin/busybox"].map(PathBuf::from));
    candidates.into_iter().find(|path| is_static_elf(path))
}

/// Whether `path` is an ELF executable without a program interpreter (statically linked).
fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let read_u64 = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|slice| slice.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let read_u16 = |at: usize| {
        bytes
            .get(at..at + 2)
            .and_then(|slice| slice.try_into().ok())
            .map(u16::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (read_u64(32), read_u16(54), read_u16(56))
    else {
        return false;
    };
    // PT_INTERP = 3: a dynamically linked program names its loader.
    (0..usize::from(phnum)).all(|index| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + index * usize::from(phentsize);
        bytes
            .get(at..at + 4)
            .and_then(|slice| slice.try_into().ok())
            .map(u32::from_le_bytes)
            != Some(3)
    })
}

/// The applets linked in `/bin` (what the workloads and a curious user need).
const APPLETS: [&str; 34] = [
    "sh",
    "ash",
    "cat",
    "echo",
    "sleep",
    "yes",
    "head",
    "tail",
    "dd",
    "seq",
    "mkdir",
    "touch",
    "ls",
    "rm",
    "cp",
    "mv",
    "grep",
    "wc",
    "env",
    "id",
    "nc",
    "timeout",
    "true",
    "false",
    "kill",
    "ps",
    "md5sum",
    "sha256sum",
    "tar",
    "gzip",
    "df",
    "date",
    "uname",
    "ip",
];

fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    builder
        .append_data(&mut header, path, bytes)
        .with_context(|| format!("adding {path} to the demo image"))
}

fn append_dir(builder: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    header.set_cksum();
    builder
        .append_data(&mut header, path, std::io::empty())
        .with_context(|| format!("adding {path}/ to the demo image"))
}

fn append_link(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    target: &str,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Symlink);
    builder
        .append_link(&mut header, path, target)
        .with_context(|| format!("adding the link {path} to the demo image"))
}

/// The Docker name of this machine's architecture.
fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Builds the demo image around `busybox` (a static binary).
pub fn build(busybox: &Path) -> anyhow::Result<Image> {
    let binary =
        std::fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    let mut builder = tar::Builder::new(Vec::new());
    for (dir, mode) in [
        ("bin", 0o755),
        ("demo", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("input", 0o755),
        ("output", 0o1777),
        ("scratch", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
    ] {
        append_dir(&mut builder, dir, mode)?;
    }
    append_file(&mut builder, "bin/busybox", &binary, 0o755)?;
    for applet in APPLETS {
        append_link(&mut builder, &format!("bin/{applet}"), "busybox")?;
    }
    for (name, script) in WORKLOADS {
        append_file(
            &mut builder,
            &format!("demo/{name}"),
            script.as_bytes(),
            0o755,
        )?;
    }
    append_file(
        &mut builder,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        0o644,
    )?;
    append_file(
        &mut builder,
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    let layer = builder.into_inner().context("finishing the demo image")?;
    let diff_id = sha256(&layer);
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gzip, &layer)?;
    let compressed = gzip.finish()?;
    let layer_digest = sha256(&compressed);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": architecture(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "gp4u demo"}],
    }))?;
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "size": config.len(), "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": compressed.len(), "digest": layer_digest}],
    }))?;
    let digest = sha256(&manifest);
    if compressed.is_empty() {
        bail!("the demo image came out empty");
    }
    Ok(Image {
        digest,
        manifest,
        blobs: BTreeMap::from([(config_digest, config), (layer_digest, compressed)]),
    })
}

const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

async fn registry_root() -> Response {
    ([("docker-distribution-api-version", "registry/2.0")], "{}").into_response()
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        [("content-type", "application/json")],
        format!(r#"{{"errors":[{{"code":"{what}_UNKNOWN","message":"unknown {what}"}}]}}"#),
    )
        .into_response()
}

/// `/v2/<repository>/manifests/<reference>` and `/v2/<repository>/blobs/<digest>`.
async fn registry_object(
    State(image): State<Arc<Image>>,
    UrlPath(rest): UrlPath<String>,
) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    if let Some(reference) = rest
        .strip_prefix(REPOSITORY)
        .and_then(|rest| rest.strip_prefix("/manifests/"))
    {
        if reference != image.digest && reference != "latest" {
            return not_found("MANIFEST");
        }
        headers.insert("content-type", HeaderValue::from_static(MANIFEST_TYPE));
        if let Ok(digest) = HeaderValue::from_str(&image.digest) {
            headers.insert("docker-content-digest", digest);
        }
        return (headers, image.manifest.clone()).into_response();
    }
    if let Some(digest) = rest
        .strip_prefix(REPOSITORY)
        .and_then(|rest| rest.strip_prefix("/blobs/"))
    {
        let Some(blob) = image.blobs.get(digest) else {
            return not_found("BLOB");
        };
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/octet-stream"),
        );
        if let Ok(digest) = HeaderValue::from_str(digest) {
            headers.insert("docker-content-digest", digest);
        }
        return (headers, blob.clone()).into_response();
    }
    not_found("NAME")
}

/// Serves `image` read-only on 127.0.0.1 (Docker trusts loopback registries over plain HTTP);
/// returns the address. The task ends with the runtime.
pub async fn serve(image: Image) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the demo's registry on 127.0.0.1")?;
    let address = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(registry_root))
        .route("/v2/{*rest}", axum::routing::get(registry_object))
        .with_state(Arc::new(image));
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the demo's registry stopped");
        }
    });
    Ok(address)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_image_is_content_addressed_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("busybox");
        std::fs::write(&fake, b"not really busybox").unwrap();
        let first = build(&fake).unwrap();
        let second = build(&fake).unwrap();
        assert_eq!(first.digest, second.digest, "same inputs, same digest");
        assert_eq!(first.digest, sha256(&first.manifest));
        for (digest, blob) in &first.blobs {
            assert_eq!(digest, &sha256(blob));
        }
        let manifest: serde_json::Value = serde_json::from_slice(&first.manifest).unwrap();
        assert_eq!(manifest["schemaVersion"], 2);
        assert!(
            first
                .blobs
                .contains_key(manifest["config"]["digest"].as_str().unwrap())
        );
        assert!(
            first
                .blobs
                .contains_key(manifest["layers"][0]["digest"].as_str().unwrap())
        );
        // The layer holds busybox, its links and the workloads.
        let layer = &first.blobs[manifest["layers"][0]["digest"].as_str().unwrap()];
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|entry| entry.unwrap().path().unwrap().display().to_string())
            .collect();
        for name in [
            "bin/busybox",
            "bin/sh",
            "bin/nc",
            "demo/train.sh",
            "demo/mine.sh",
        ] {
            assert!(
                names.iter().any(|entry| entry == name),
                "{name} in {names:?}"
            );
        }
    }

    #[test]
    fn only_static_executables_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("script");
        std::fs::write(&text, b"#!/bin/sh\n").unwrap();
        assert!(!is_static_elf(&text));
        // This test binary is dynamically linked (it names its loader).
        assert!(!is_static_elf(&std::env::current_exe().unwrap()));
    }
}
