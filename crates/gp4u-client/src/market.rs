//! The marketplace (the GPU listing) and job inputs (artifacts).

use std::path::Path;

use futures::StreamExt as _;
use gp4u_proto::{ArtifactCreated, GpuList};

use crate::error::io_error;
use crate::{Client, ClientResult};
use gp4u_proto::paths;

impl Client {
    pub async fn gpus(&self) -> ClientResult<GpuList> {
        self.get("the GPU listing", paths::GPUS).await
    }

    /// Uploads a job input (`POST /api/artifacts`), streaming the file; `progress` hears the
    /// bytes sent so far and the total.
    pub async fn upload_artifact(
        &self,
        path: &Path,
        progress: impl Fn(u64, u64) + Send + Sync + 'static,
    ) -> ClientResult<ArtifactCreated> {
        let file = tokio::fs::File::open(path).await.map_err(io_error(path))?;
        let total = file.metadata().await.map_err(io_error(path))?.len();
        let progress = std::sync::Arc::new(progress);
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stream = tokio_util_free_stream(file).map(move |chunk| {
            if let Ok(bytes) = &chunk {
                let now = sent.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::SeqCst)
                    + bytes.len() as u64;
                progress(now, total);
            }
            chunk
        });
        let request = self
            .http
            .post(self.url(paths::ARTIFACTS))
            .header("content-length", total)
            .body(reqwest::Body::wrap_stream(stream));
        self.send_once(&format!("uploading {}", path.display()), request)
            .await
    }
}

/// The file as a stream of byte chunks (64 KiB), without pulling in tokio-util.
fn tokio_util_free_stream(
    file: tokio::fs::File,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut file = file?;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(buffer), Some(file)))
            }
            Err(error) => Some((Err(error), None)),
        }
    })
}
