//! The egress filter of `public` jobs (SPEC §10): a job reaches public addresses only — not
//! other jobs, not the host, not private, shared, link-local or multicast ranges.
//!
//! Every job network's bridge is named [`BRIDGE_PREFIX`]`…` (see [`crate::network`]), so one
//! set of node-wide rules covers every job, present and future, by interface wildcard
//! (`-i gp4u+`). They live in two chains of our own in the `filter` table:
//! - [`EGRESS_CHAIN`], jumped to from Docker's `DOCKER-USER` (the FORWARD path, which Docker
//!   evaluates before its own accept rules): rejects every destination in [`BLOCKED_V4`],
//!   returns otherwise (public egress then goes through Docker's NAT as usual);
//! - [`HOST_CHAIN`], jumped to from INPUT: rejects everything a job sends to the host itself
//!   (its gateway address, and every other address of the host), but replies on connections
//!   the host opened.
//!
//! IPv6: job networks have none (Docker's default), the container's IPv6 is switched off by
//! sysctl, and where `ip6tables` works every packet from a job bridge is dropped as well.
//!
//! The agent installs the rules at start and checks them, by reading them back, before every
//! `public` job; they stay while any job network exists on the host (several agents can
//! share one Docker host) and are removed by the agent that stops last. Changes are made
//! under a host-wide lock file, and with `iptables -w` (the xtables lock), so that agents
//! and Docker never interleave their edits.

use std::path::PathBuf;
use std::process::Command;

/// The first letters of every job bridge's name (an interface name has at most 15).
pub const BRIDGE_PREFIX: &str = "gp4u";
/// The chain that filters what jobs send through the host (FORWARD, via `DOCKER-USER`).
pub const EGRESS_CHAIN: &str = "GP4U-EGRESS";
/// The chain that refuses what jobs send to the host itself (INPUT).
pub const HOST_CHAIN: &str = "GP4U-HOST";
/// Docker's chain for user rules, evaluated first on the FORWARD path.
pub const DOCKER_USER_CHAIN: &str = "DOCKER-USER";

/// Destinations no job may reach (IPv4): "this" network, RFC 1918, shared address space
/// (RFC 6598), loopback, link-local (cloud metadata at 169.254.169.254), IETF protocol
/// assignments, the documentation and benchmarking ranges, the 6to4 relay anycast,
/// multicast, and the reserved range with the limited broadcast address.
pub const BLOCKED_V4: [&str; 15] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// How a refused packet is answered: at once, so that a job's connection fails fast instead
/// of hanging until its own timeout.
const REJECT: &str = "-j REJECT --reject-with icmp-admin-prohibited";

#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error(
        "`{command}` failed: {detail} (the egress filter needs root or CAP_NET_ADMIN and Docker's iptables integration)"
    )]
    Command { command: String, detail: String },
    #[error(
        "Docker's {DOCKER_USER_CHAIN} chain is missing (is Docker started with iptables disabled, or through another iptables backend?)"
    )]
    NoDockerUserChain,
    #[error("the egress filter's rules are not as installed: {0}")]
    Drifted(String),
    #[error("the firewall lock {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the filter covers, for the host posture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// IPv6 from job bridges is dropped by ip6tables too (else only the container's sysctl
    /// keeps it off).
    pub ipv6_filtered: bool,
}

fn iptables(program: &str, args: &[&str]) -> Result<String, FirewallError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .arg("-w")
        .args(args)
        .output()
        .map_err(|error| FirewallError::Command {
            command: command.clone(),
            detail: error.to_string(),
        })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    Err(FirewallError::Command {
        command,
        detail: String::from_utf8_lossy(&output.stderr)
            .lines()
            .filter(|line| !line.starts_with("# Warning"))
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// The rules of our chains as `iptables -S CHAIN` prints them, in order.
pub fn expected_egress_rules() -> Vec<String> {
    let mut rules = vec![format!("-N {EGRESS_CHAIN}")];
    rules.extend(
        BLOCKED_V4
            .iter()
            .map(|range| format!("-A {EGRESS_CHAIN} -d {range} {REJECT}")),
    );
    rules.push(format!("-A {EGRESS_CHAIN} -j RETURN"));
    rules
}

/// Everything a job sends to the host is refused, except replies on connections the host
/// opened (nothing on the host needs to, but a reply is no new reach into the host).
pub fn expected_host_rules() -> Vec<String> {
    vec![
        format!("-N {HOST_CHAIN}"),
        format!("-A {HOST_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"),
        format!("-A {HOST_CHAIN} {REJECT}"),
    ]
}

/// The jump rules, as `iptables -S` prints them: (chain jumped from, rule).
pub fn expected_jumps(from_forward: &str) -> [(String, String); 2] {
    [
        (
            from_forward.to_string(),
            format!("-A {from_forward} -i {BRIDGE_PREFIX}+ -j {EGRESS_CHAIN}"),
        ),
        (
            "INPUT".to_string(),
            format!("-A INPUT -i {BRIDGE_PREFIX}+ -j {HOST_CHAIN}"),
        ),
    ]
}

fn listed(program: &str, chain: &str) -> Result<Vec<String>, FirewallError> {
    Ok(iptables(program, &["-S", chain])?
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect())
}

fn chain_exists(program: &str, chain: &str) -> bool {
    iptables(program, &["-S", chain]).is_ok()
}

/// Makes `chain` hold exactly `rules` (given as `-A CHAIN …` lines after the `-N` line).
fn write_chain(program: &str, chain: &str, rules: &[String]) -> Result<(), FirewallError> {
    if !chain_exists(program, chain) {
        iptables(program, &["-N", chain])?;
    }
    if listed(program, chain)? == rules {
        return Ok(());
    }
    iptables(program, &["-F", chain])?;
    for rule in rules.iter().skip(1) {
        let args: Vec<&str> = rule.split_whitespace().collect();
        iptables(program, &args)?;
    }
    Ok(())
}

/// Puts `rule` (`-A CHAIN …`) first in its chain unless it is there already.
fn ensure_first(program: &str, chain: &str, rule: &str) -> Result<(), FirewallError> {
    let rules = listed(program, chain)?;
    let position = rules
        .iter()
        .filter(|line| line.starts_with("-A "))
        .position(|line| line == rule);
    if position == Some(0) {
        return Ok(());
    }
    if position.is_some() {
        // Present but not first: something was put before it. Move it back to the top.
        let mut args: Vec<&str> = rule.split_whitespace().collect();
        args[0] = "-D";
        iptables(program, &args)?;
    }
    let mut args: Vec<&str> = rule.split_whitespace().collect();
    args[0] = "-I";
    args.insert(2, "1");
    iptables(program, &args)?;
    Ok(())
}

fn delete_all(program: &str, rule: &str) {
    let mut args: Vec<&str> = rule.split_whitespace().collect();
    args[0] = "-D";
    // A rule can be there more than once (an older agent's): delete until it is gone.
    for _ in 0..16 {
        if iptables(program, &args).is_err() {
            break;
        }
    }
}

fn ipv6_rules() -> [(String, Vec<String>); 2] {
    [
        (
            EGRESS_CHAIN.to_string(),
            vec![
                format!("-N {EGRESS_CHAIN}"),
                format!("-A {EGRESS_CHAIN} -j DROP"),
            ],
        ),
        (
            HOST_CHAIN.to_string(),
            vec![
                format!("-N {HOST_CHAIN}"),
                format!("-A {HOST_CHAIN} -j DROP"),
            ],
        ),
    ]
}

/// A host-wide lock held while rules are changed or checked.
struct HostLock {
    _file: std::fs::File,
}

fn lock_path() -> PathBuf {
    let run = PathBuf::from("/run/lock");
    if run.is_dir() {
        run.join("gp4u-firewall.lock")
    } else {
        std::env::temp_dir().join("gp4u-firewall.lock")
    }
}

impl HostLock {
    fn take() -> Result<HostLock, FirewallError> {
        let path = lock_path();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| FirewallError::Lock {
                path: path.clone(),
                source,
            })?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive).map_err(|errno| {
            FirewallError::Lock {
                path,
                source: errno.into(),
            }
        })?;
        Ok(HostLock { _file: file })
    }
}

/// Installs the rules (idempotent: rewrites only what differs) and checks them.
pub fn install() -> Result<Coverage, FirewallError> {
    let _lock = HostLock::take()?;
    if !chain_exists("iptables", DOCKER_USER_CHAIN) {
        return Err(FirewallError::NoDockerUserChain);
    }
    write_chain("iptables", EGRESS_CHAIN, &expected_egress_rules())?;
    write_chain("iptables", HOST_CHAIN, &expected_host_rules())?;
    for (chain, rule) in expected_jumps(DOCKER_USER_CHAIN) {
        ensure_first("iptables", &chain, &rule)?;
    }
    let ipv6_filtered = install_ipv6().is_ok();
    check_locked()?;
    Ok(Coverage { ipv6_filtered })
}

fn install_ipv6() -> Result<(), FirewallError> {
    for (chain, rules) in ipv6_rules() {
        write_chain("ip6tables", &chain, &rules)?;
    }
    for (chain, rule) in expected_jumps("FORWARD") {
        ensure_first("ip6tables", &chain, &rule)?;
    }
    Ok(())
}

/// Reads the rules back and compares them with what [`install`] writes: both chains exactly,
/// and the jumps first in `DOCKER-USER` and INPUT.
pub fn check() -> Result<(), FirewallError> {
    let _lock = HostLock::take()?;
    check_locked()
}

fn check_locked() -> Result<(), FirewallError> {
    for (chain, expected) in [
        (EGRESS_CHAIN, expected_egress_rules()),
        (HOST_CHAIN, expected_host_rules()),
    ] {
        let found = listed("iptables", chain)
            .map_err(|_| FirewallError::Drifted(format!("chain {chain} is missing")))?;
        if found != expected {
            return Err(FirewallError::Drifted(format!(
                "chain {chain} holds {found:?}"
            )));
        }
    }
    for (chain, rule) in expected_jumps(DOCKER_USER_CHAIN) {
        let first = listed("iptables", &chain)?
            .into_iter()
            .find(|line| line.starts_with("-A "));
        if first.as_deref() != Some(rule.as_str()) {
            return Err(FirewallError::Drifted(format!(
                "the first rule of {chain} is {first:?}, not `{rule}`"
            )));
        }
    }
    Ok(())
}

/// Removes the rules. The caller makes sure no job network is left on the host.
pub fn remove() {
    let Ok(_lock) = HostLock::take() else {
        return;
    };
    for program in ["iptables", "ip6tables"] {
        let forward = if program == "iptables" {
            DOCKER_USER_CHAIN
        } else {
            "FORWARD"
        };
        for (_, rule) in expected_jumps(forward) {
            delete_all(program, &rule);
        }
        for chain in [EGRESS_CHAIN, HOST_CHAIN] {
            if chain_exists(program, chain) {
                let _ = iptables(program, &["-F", chain]);
                let _ = iptables(program, &["-X", chain]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_of_the_spec_is_refused() {
        let rules = expected_egress_rules().join("\n");
        // SPEC §10: RFC 1918, 100.64/10, 169.254/16 (cloud metadata), 224/4 — and loopback.
        for range in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "127.0.0.0/8",
        ] {
            assert!(
                rules.contains(&format!("-d {range} -j REJECT")),
                "{range} is not refused:\n{rules}"
            );
        }
        // Everything else returns to Docker's rules, last.
        assert_eq!(
            expected_egress_rules().last().map(String::as_str),
            Some("-A GP4U-EGRESS -j RETURN")
        );
        assert_eq!(
            expected_jumps("DOCKER-USER")[0].1,
            "-A DOCKER-USER -i gp4u+ -j GP4U-EGRESS"
        );
    }
}
