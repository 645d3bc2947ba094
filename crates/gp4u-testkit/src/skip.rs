//! Tests that need a service (PostgreSQL, Docker, a browser, Prometheus) skip where it is
//! absent, saying so loudly on a line starting with a marker that `.ci/run` looks for; in CI
//! (`CI=true`) a skip is a failure.

/// Whether this run is CI (`CI=true`), where every service suite must run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// A service `test` needs is missing (`why`): in CI that fails the test; elsewhere it is said
/// on stderr as `{marker}: {test}: {why}` and the caller skips.
pub fn skip_unless_ci(marker: &str, test: &str, why: &str) {
    use std::io::Write as _;
    if in_ci() {
        panic!("{why} in CI: {test} must run there");
    }
    let _ = writeln!(std::io::stderr(), "{marker}: {test}: {why}");
}
