//! The one test kit of GP4U, shared by the server's, the agent's and the CLI's tests and by the
//! benches (instead of a harness per crate):
//!
//! - [`app`]: the real router over a fresh database on either engine (SQLite, or PostgreSQL
//!   when `GP4U_TEST_DATABASE_URL` is set), with a manual clock and fixed token keys; called in
//!   process, or [`app::TestApp::serve`]d on loopback and spoken to through `gp4u-client`
//!   ([`app::Served::client`]).
//! - [`skip`]: a missing service said loudly on a marker line, and a failure in CI.
//! - [`image`]: the digest-pinned test images of `scripts/test-images.sh`.
//! - [`wait`]: polling until a condition holds, with a limit.
//! - [`journey`]: a user's way through a running GP4U with `gp4u-client` (people, a
//!   registration, waiting for an agent's GPU, a job's end, its proofs).
//! - [`bench`]: the benches' runtimes and percentiles.
//! - [`sha256_hex`], [`free_port`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod app;
pub mod bench;
pub mod image;
pub mod journey;
pub mod skip;
pub mod wait;

pub use image::{TestImage, test_image};
pub use skip::skip_unless_ci;
pub use wait::{eventually, eventually_async};

/// The hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// A free port on 127.0.0.1 (bound and released: the process given it binds it at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
