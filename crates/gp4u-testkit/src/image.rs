//! The busybox test images `scripts/test-images.sh start` builds and serves from a local
//! registry, pinned by digest.

use crate::skip::skip_unless_ci;

pub struct TestImage {
    /// `127.0.0.1:PORT/gp4u/busybox`
    pub image: String,
    /// The image's digest (`sha256:…`).
    pub digest: String,
    /// The digest of another image in the same repository (a mismatch to refuse).
    pub other_digest: String,
}

impl TestImage {
    /// `image@digest`, as a job names it.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.image, self.digest)
    }
}

/// The test images, or `None` after saying loudly that `test` is skipped (a failure in CI).
pub fn test_image(test: &str) -> Option<TestImage> {
    match (
        std::env::var("GP4U_TEST_IMAGE"),
        std::env::var("GP4U_TEST_IMAGE_DIGEST"),
        std::env::var("GP4U_TEST_OTHER_DIGEST"),
    ) {
        (Ok(image), Ok(digest), Ok(other_digest)) => Some(TestImage {
            image,
            digest,
            other_digest,
        }),
        _ => {
            skip_unless_ci(
                "GP4U-DOCKER-SKIPPED",
                test,
                "GP4U_TEST_IMAGE is unset (scripts/test-images.sh start builds the test images)",
            );
            None
        }
    }
}
