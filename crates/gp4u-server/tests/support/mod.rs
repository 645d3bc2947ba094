//! The server's tests use the project's one test kit (`gp4u-testkit`).
#![allow(unused_imports)]

pub use gp4u_testkit::app::*;
pub use gp4u_testkit::on_both_engines;
pub use gp4u_testkit::{eventually, eventually_async, sha256_hex};
