//! Network telemetry of a container's own network namespace (SPEC §6 watchdog, §7 rules),
//! read from the host through `/proc/<pid>/net/` of the container's init process (the agent
//! runs as root on the host, so it can read any process's view).
//!
//! - `net/dev`: bytes transmitted on every interface but `lo`; the outbound rate is the delta
//!   between two ticks over the time between them ([`OutboundMeter`]).
//! - `net/{tcp,tcp6,udp,udp6}`: the remote address of every socket whose remote address is not
//!   all-zero (listeners and unconnected sockets are skipped). IPv4-mapped IPv6 addresses count
//!   as the IPv4 address. Loopback destinations count: the container's loopback is its own.
//!
//! Short-lived connections vanish between telemetry ticks, so a [`NetSampler`] reads the socket
//! tables every ~1 s and keeps the union ([`Destinations`]) until the next tick takes it.
//!
//! The process is held by an open handle on its `/proc/<pid>` directory and every file is read
//! through that handle (`/proc/self/fd/<fd>/net/…`): once the process is gone the reads fail,
//! even if the kernel hands its pid to another process, so another namespace is never read
//! in its place.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gp4u_core::tutela::MINER_PORTS;

/// At most this many distinct destination ports are reported per period (the wire's cap).
pub const MAX_DEST_PORTS: usize = 64;
/// Distinct destination IPs remembered per period; beyond it the count stays at the cap (a
/// scan that large is far past every threshold already).
pub const MAX_TRACKED_IPS: usize = 100_000;
/// The socket tables read, in order.
pub const SOCKET_TABLES: [&str; 4] = ["tcp", "tcp6", "udp", "udp6"];

// ---------------------------------------------------------------------------------------------
// Parsers (pure)

/// Bytes transmitted over every interface except `lo`, from the text of `/proc/<pid>/net/dev`.
/// Lines that do not parse are skipped.
pub fn parse_dev_tx_bytes(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name.is_empty() || name == "lo" || name.contains('|') {
                return None;
            }
            // Receive: bytes packets errs drop fifo frame compressed multicast (8),
            // then Transmit: bytes …
            counters.split_whitespace().nth(8)?.parse::<u64>().ok()
        })
        .fold(0u64, u64::saturating_add)
}

/// Parses one `ADDR:PORT` of a socket table: IPv4 is 8 hex digits (one native-endian `u32`,
/// as the kernel prints it: little-endian on x86 and ARM), IPv6 is 32 (four such words). An
/// IPv4-mapped IPv6 address is returned as the IPv4 address.
pub fn parse_socket_address(text: &str) -> Option<(IpAddr, u16)> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |hex: &str| u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes);
    let ip = match address.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(address)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for (chunk, out) in bytes.chunks_exact_mut(4).enumerate() {
                let hex = address.get(chunk * 8..chunk * 8 + 8)?;
                out.copy_from_slice(&word(hex)?);
            }
            let v6 = Ipv6Addr::from(bytes);
            match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }
        }
        _ => return None,
    };
    Some((ip, port))
}

/// The remote `(ip, port)` of every row of a socket table (`/proc/<pid>/net/tcp` and the
/// like) whose remote address is not all-zero. The header and malformed rows are skipped.
pub fn parse_socket_remotes(text: &str) -> Vec<(IpAddr, u16)> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let slot = fields.next()?;
            if !slot.ends_with(':') {
                return None; // the header
            }
            let _local = fields.next()?;
            let (ip, port) = parse_socket_address(fields.next()?)?;
            (!ip.is_unspecified()).then_some((ip, port))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The union over a period

/// Destinations seen over one telemetry period.
#[derive(Clone)]
pub struct Destinations {
    ips: HashSet<IpAddr>,
    /// One bit per port.
    ports: Box<[u64; 1024]>,
    /// More IPs were seen than [`MAX_TRACKED_IPS`].
    saturated: bool,
}

impl Default for Destinations {
    fn default() -> Self {
        Destinations {
            ips: HashSet::new(),
            ports: Box::new([0; 1024]),
            saturated: false,
        }
    }
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations")
            .field("unique_ips", &self.unique_ips())
            .field("ports", &self.ports())
            .finish()
    }
}

impl Destinations {
    pub fn add(&mut self, ip: IpAddr, port: u16) {
        if self.ips.len() < MAX_TRACKED_IPS || self.ips.contains(&ip) {
            self.ips.insert(ip);
        } else {
            self.saturated = true;
        }
        let port = usize::from(port);
        if let Some(word) = self.ports.get_mut(port / 64) {
            *word |= 1 << (port % 64);
        }
    }

    pub fn extend(&mut self, remotes: impl IntoIterator<Item = (IpAddr, u16)>) {
        for (ip, port) in remotes {
            self.add(ip, port);
        }
    }

    /// Adds everything `other` saw.
    pub fn merge(&mut self, other: &Destinations) {
        for ip in &other.ips {
            if self.ips.len() < MAX_TRACKED_IPS || self.ips.contains(ip) {
                self.ips.insert(*ip);
            } else {
                self.saturated = true;
            }
        }
        for (word, bits) in self.ports.iter_mut().zip(other.ports.iter()) {
            *word |= bits;
        }
        self.saturated |= other.saturated;
    }

    fn has_port(&self, port: u16) -> bool {
        let port = usize::from(port);
        self.ports
            .get(port / 64)
            .is_some_and(|word| word & (1 << (port % 64)) != 0)
    }

    /// Distinct remote IPs (saturating at [`MAX_TRACKED_IPS`]).
    pub fn unique_ips(&self) -> u32 {
        u32::try_from(self.ips.len()).unwrap_or(u32::MAX)
    }

    /// Whether the IP count hit its cap.
    pub fn saturated(&self) -> bool {
        self.saturated
    }

    /// Distinct remote ports, at most [`MAX_DEST_PORTS`]: the known miner ports first (so the
    /// cap never hides them), then the others in ascending order.
    pub fn ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = MINER_PORTS
            .iter()
            .copied()
            .filter(|port| self.has_port(*port))
            .collect();
        for port in 0..=u16::MAX {
            if ports.len() >= MAX_DEST_PORTS {
                break;
            }
            if self.has_port(port) && !MINER_PORTS.contains(&port) {
                ports.push(port);
            }
        }
        ports
    }

    pub fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }
}

/// Outbound bytes per second from successive transmit counters.
#[derive(Debug, Default, Clone)]
pub struct OutboundMeter {
    last: Option<(u64, Instant)>,
}

impl OutboundMeter {
    /// The rate since the previous call (0 on the first, or when the counter went backwards,
    /// e.g. an interface recreated).
    pub fn rate(&mut self, tx_bytes: u64, now: Instant) -> f64 {
        let rate = match self.last {
            Some((before, at)) => {
                let seconds = now.saturating_duration_since(at).as_secs_f64();
                if seconds > 0.0 {
                    tx_bytes.saturating_sub(before) as f64 / seconds
                } else {
                    0.0
                }
            }
            None => 0.0,
        };
        self.last = Some((tx_bytes, now));
        rate
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a process's namespace

/// A handle on one process's `/proc/<pid>` directory: reads through it fail once that process
/// is gone, whatever now has its pid.
#[derive(Debug)]
pub struct ProcHandle {
    pid: u32,
    dir: File,
}

impl ProcHandle {
    pub fn open(pid: u32) -> io::Result<ProcHandle> {
        Ok(ProcHandle {
            pid,
            dir: File::open(format!("/proc/{pid}"))?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The path of `relative` (e.g. `net/tcp`) inside this process's `/proc` directory.
    pub fn path(&self, relative: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{relative}", self.dir.as_raw_fd()))
    }

    pub fn read(&self, relative: &str) -> io::Result<String> {
        std::fs::read_to_string(self.path(relative))
    }

    /// Bytes transmitted by the namespace, all interfaces but `lo`.
    pub fn tx_bytes(&self) -> io::Result<u64> {
        self.read("net/dev").map(|text| parse_dev_tx_bytes(&text))
    }

    /// Adds the remote addresses of the namespace's sockets to `into`. Fails only when no
    /// table could be read (the process is gone); a missing table (no IPv6) is skipped.
    pub fn sample_destinations(&self, into: &mut Destinations) -> io::Result<()> {
        let mut last_error = None;
        let mut read_any = false;
        for table in SOCKET_TABLES {
            match self.read(&format!("net/{table}")) {
                Ok(text) => {
                    read_any = true;
                    into.extend(parse_socket_remotes(&text));
                }
                Err(error) => last_error = Some(error),
            }
        }
        match (read_any, last_error) {
            (false, Some(error)) => Err(error),
            _ => Ok(()),
        }
    }
}

/// One period's network telemetry.
#[derive(Debug, Clone, PartialEq)]
pub struct NetPeriod {
    pub outbound_bytes_per_sec: f64,
    pub unique_dest_ips: u32,
    pub dest_ports: Vec<u16>,
}

/// Samples a namespace's socket tables in the background every `every` and keeps the union
/// until [`NetSampler::take_period`] takes it. Dropping the sampler stops it.
pub struct NetSampler {
    proc: Arc<ProcHandle>,
    union: Arc<Mutex<Destinations>>,
    meter: OutboundMeter,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for NetSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn sample_into(proc: &ProcHandle, union: &Mutex<Destinations>) -> io::Result<()> {
    let mut seen = Destinations::default();
    proc.sample_destinations(&mut seen)?;
    if let Ok(mut union) = union.lock() {
        union.merge(&seen);
    }
    Ok(())
}

impl NetSampler {
    /// Starts sampling the namespace of `pid` (the outbound meter starts now). Must be called
    /// within a tokio runtime.
    pub fn start(pid: u32, every: Duration) -> io::Result<NetSampler> {
        let proc = Arc::new(ProcHandle::open(pid)?);
        let mut meter = OutboundMeter::default();
        meter.rate(proc.tx_bytes()?, Instant::now());
        let union = Arc::new(Mutex::new(Destinations::default()));
        let task = {
            let (proc, union) = (proc.clone(), union.clone());
            let every = every.max(Duration::from_millis(50));
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(every);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let (proc, union) = (proc.clone(), union.clone());
                    let sampled =
                        tokio::task::spawn_blocking(move || sample_into(&proc, &union)).await;
                    if !matches!(sampled, Ok(Ok(()))) {
                        return; // the process is gone: nothing more to see
                    }
                }
            })
        };
        Ok(NetSampler {
            proc,
            union,
            meter,
            task,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The period since the last call: the outbound rate, and the union of destinations
    /// (including one last look now). Blocking reads of procfs; cheap.
    pub fn take_period(&mut self) -> io::Result<NetPeriod> {
        let tx = self.proc.tx_bytes()?;
        // A failed last look (the process just ended) still leaves the period's union.
        let _ = sample_into(&self.proc, &self.union);
        let union = self
            .union
            .lock()
            .map(|mut union| std::mem::take(&mut *union))
            .unwrap_or_default();
        Ok(NetPeriod {
            outbound_bytes_per_sec: self.meter.rate(tx, Instant::now()),
            unique_dest_ips: union.unique_ips(),
            dest_ports: union.ports(),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DEV: &str = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  123456     100    0    0    0     0          0         0   123456     100    0    0    0     0       0          0
  eth0:  200000    2000    0    0    0     0          0         0    54321     321    0    0    0     0       0          0
  eth1:12345678     9    0    0    0     0          0         0 1000    10    0    0    0     0       0          0
";

    // Real rows (kernel 5.x/6.x): a listener, an established connection to 10.0.0.7:3333, a
    // TIME_WAIT to 127.0.0.5:9001.
    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 21815 1 0000000000000000 100 0 0 10 0
   1: 0200A8C0:C350 0700000A:0D05 01 00000000:00000000 02:000AFE2F 00000000     0        0 31337 2 0000000000000000 20 4 30 10 -1
   2: 0100007F:A1B2 0500007F:2329 06 00000000:00000000 03:00001726 00000000     0        0 0 3 0000000000000000
";

    // A v6 listener on [::]:9001, a v4-mapped peer 127.0.0.1, a real v6 peer 2001:db8::1 port
    // 443, and ::1 port 80.
    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:2329 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 0000000000000000FFFF00000500007F:2329 0000000000000000FFFF00000100007F:D7EC 01 00000000:00000000 03:00001726 00000000     0        0 0 3 000000006a5c3bfc
   2: 00000000000000000000000001000000:C001 B80D0120000000000000000001000000:01BB 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1
   3: 00000000000000000000000001000000:C002 00000000000000000000000001000000:0050 01 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 20 4 30 10 -1
";

    // An unconnected UDP socket and a connected one to 8.8.4.4:53.
    const UDP: &str = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1000 2 0000000000000000 0
  101: 0200A8C0:D431 04040808:0035 01 00000000:00000000 00:00000000 00000000     0        0 1001 2 0000000000000000 0
";

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn transmit_bytes_skip_loopback() {
        assert_eq!(parse_dev_tx_bytes(DEV), 54_321 + 1_000);
        assert_eq!(parse_dev_tx_bytes(""), 0);
        assert_eq!(parse_dev_tx_bytes("garbage\n  eth0: 1 2\n"), 0);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_rows_listeners_skipped() {
        assert_eq!(
            parse_socket_remotes(TCP),
            vec![(v4(10, 0, 0, 7), 3333), (v4(127, 0, 0, 5), 9001)]
        );
        assert_eq!(parse_socket_remotes(UDP), vec![(v4(8, 8, 4, 4), 53)]);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_rows_and_mapped_addresses() {
        assert_eq!(
            parse_socket_remotes(TCP6),
            vec![
                (v4(127, 0, 0, 1), 0xD7EC),
                ("2001:db8::1".parse().unwrap(), 443),
                (IpAddr::V6(Ipv6Addr::LOCALHOST), 80),
            ]
        );
    }

    #[test]
    fn malformed_addresses_are_none() {
        for bad in [
            "",
            "0100007F",
            "0100007F:",
            "0100007F:XYZ",
            "0100007:0050",
            "0100007G:0050",
            "0000000000000000FFFF00000100007:0050",
            "0100007F:10000",
        ] {
            assert_eq!(parse_socket_address(bad), None, "{bad}");
        }
        assert!(parse_socket_remotes("   0: 0100007F\n   1:\n").is_empty());
    }

    #[test]
    fn the_union_counts_ips_and_caps_ports_with_miner_ports_first() {
        let mut union = Destinations::default();
        assert!(union.is_empty());
        for n in 1..=60u8 {
            union.add(v4(127, 0, 0, n), 10_000 + u16::from(n));
        }
        union.add(v4(127, 0, 0, 1), 10_001); // again: no change
        union.add(v4(10, 0, 0, 1), 14444);
        union.add(v4(10, 0, 0, 1), 3333);
        assert_eq!(union.unique_ips(), 61);
        let ports = union.ports();
        assert_eq!(ports.len(), MAX_DEST_PORTS.min(62));
        assert_eq!(&ports[..2], &[3333, 14444]);
        assert_eq!(ports[2], 10_001);
        assert!(ports[2..].windows(2).all(|pair| pair[0] < pair[1]));
        // Over the cap: still 64, miner ports kept.
        for port in 20_000..20_100 {
            union.add(v4(10, 0, 0, 1), port);
        }
        let ports = union.ports();
        assert_eq!(ports.len(), MAX_DEST_PORTS);
        assert_eq!(&ports[..2], &[3333, 14444]);
        assert_eq!(
            ports.iter().collect::<HashSet<_>>().len(),
            MAX_DEST_PORTS,
            "distinct"
        );
        // Merging is a union.
        let mut other = Destinations::default();
        other.add(v4(127, 0, 0, 1), 7777);
        other.add(v4(192, 168, 0, 1), 80);
        union.merge(&other);
        assert_eq!(union.unique_ips(), 62);
        assert_eq!(&union.ports()[..3], &[3333, 7777, 14444]);
        // Port 0 and 65535 are representable.
        let mut edges = Destinations::default();
        edges.add(v4(1, 1, 1, 1), 0);
        edges.add(v4(1, 1, 1, 1), u16::MAX);
        assert_eq!(edges.ports(), vec![0, u16::MAX]);
    }

    #[test]
    fn the_ip_set_saturates() {
        let mut union = Destinations::default();
        for n in 0..(MAX_TRACKED_IPS as u32 + 10) {
            union.add(IpAddr::V4(Ipv4Addr::from(n)), 1);
        }
        assert_eq!(union.unique_ips() as usize, MAX_TRACKED_IPS);
        assert!(union.saturated());
    }

    #[test]
    fn the_outbound_rate_is_a_delta_over_time() {
        let mut meter = OutboundMeter::default();
        let start = Instant::now();
        assert_eq!(meter.rate(1_000, start), 0.0);
        assert_eq!(meter.rate(21_000, start + Duration::from_secs(2)), 10_000.0);
        // A counter that went backwards is no traffic, not a huge number.
        assert_eq!(meter.rate(10, start + Duration::from_secs(3)), 0.0);
        assert_eq!(meter.rate(10, start + Duration::from_secs(3)), 0.0);
    }

    #[test]
    fn the_agents_own_namespace_is_readable() {
        let proc = ProcHandle::open(std::process::id()).unwrap();
        proc.tx_bytes().unwrap();
        let mut union = Destinations::default();
        proc.sample_destinations(&mut union).unwrap();
        assert!(ProcHandle::open(u32::MAX).is_err());
    }
}
