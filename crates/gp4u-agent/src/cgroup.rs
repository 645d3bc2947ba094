//! What a job's processes are and how much CPU they use, read from the host: for a container,
//! its cgroup (v1 `cpuacct.usage` or v2 `cpu.stat`, and `cgroup.procs`), found from
//! `/proc/<pid>/cgroup` of its init process and the agent's own cgroup mounts; for a plain
//! child process (`--runtime process`), its process tree from `/proc/*/stat`.
//!
//! The CPU use feeds emulated GPUs' telemetry (SPEC §6); the pids tell the container's GPU
//! processes from foreign ones.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
const USER_HZ: u64 = 100;
const NS_PER_TICK: u64 = 1_000_000_000 / USER_HZ;

/// One line of `/proc/<pid>/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupLine {
    pub hierarchy: u32,
    /// Empty for the v2 (unified) hierarchy.
    pub controllers: Vec<String>,
    pub path: String,
}

pub fn parse_proc_cgroup(text: &str) -> Vec<CgroupLine> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let hierarchy = parts.next()?.parse().ok()?;
            let controllers = parts.next()?;
            let path = parts.next()?.to_string();
            Some(CgroupLine {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path,
            })
        })
        .collect()
}

/// A cgroup filesystem mount, from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup path mounted (`/` unless the agent is itself inside a cgroup namespace).
    pub root: String,
    pub mount_point: PathBuf,
    /// `cgroup2`, or `cgroup` with its controllers.
    pub v2: bool,
    pub controllers: Vec<String>,
}

pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split_whitespace().collect();
            let root = (*fields.get(3)?).to_string();
            let mount_point = PathBuf::from(unescape_mount(fields.get(4)?));
            let mut after = after.split_whitespace();
            let fs_type = after.next()?;
            let _source = after.next();
            let super_options = after.next().unwrap_or("");
            match fs_type {
                "cgroup2" => Some(CgroupMount {
                    root,
                    mount_point,
                    v2: true,
                    controllers: Vec::new(),
                }),
                "cgroup" => Some(CgroupMount {
                    root,
                    mount_point,
                    v2: false,
                    controllers: super_options
                        .split(',')
                        .filter(|option| !option.contains('='))
                        .map(str::to_string)
                        .collect(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// Mount points escape spaces and the like as `\040`.
fn unescape_mount(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|code| u8::from_str_radix(code, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `usage_usec` of a v2 `cpu.stat`.
pub fn parse_cpu_stat_usage_usec(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == "usage_usec").then(|| value.trim().parse().ok())?
    })
}

fn join_cgroup(mount: &CgroupMount, path: &str) -> PathBuf {
    let root = mount.root.trim_end_matches('/');
    let relative = path.strip_prefix(root).unwrap_or(path);
    mount.mount_point.join(relative.trim_start_matches('/'))
}

/// Where a container's CPU counter and member list are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupFiles {
    /// v1 `cpuacct.usage` (nanoseconds).
    pub cpuacct_usage: Option<PathBuf>,
    /// v2 `cpu.stat` (`usage_usec`).
    pub cpu_stat: Option<PathBuf>,
    /// `cgroup.procs` files listing the container's processes (v1 `pids` or `cpuacct`, v2).
    pub procs: Vec<PathBuf>,
}

/// Finds the files of the cgroup(s) of a process, given its `/proc/<pid>/cgroup` and the
/// agent's mounts. v1 controllers are preferred where both exist (hybrid hosts).
pub fn locate(proc_cgroup: &str, mounts: &[CgroupMount]) -> CgroupFiles {
    let mut files = CgroupFiles::default();
    let lines = parse_proc_cgroup(proc_cgroup);
    let v1_mount = |controller: &str| {
        mounts
            .iter()
            .find(|mount| !mount.v2 && mount.controllers.iter().any(|c| c == controller))
    };
    for line in &lines {
        for controller in &line.controllers {
            let Some(mount) = v1_mount(controller) else {
                continue;
            };
            let dir = join_cgroup(mount, &line.path);
            match controller.as_str() {
                "cpuacct" if files.cpuacct_usage.is_none() => {
                    files.cpuacct_usage = Some(dir.join("cpuacct.usage"));
                    files.procs.push(dir.join("cgroup.procs"));
                }
                "pids" => files.procs.insert(0, dir.join("cgroup.procs")),
                _ => {}
            }
        }
    }
    if let Some(unified) = lines.iter().find(|line| line.hierarchy == 0)
        && let Some(mount) = mounts.iter().find(|mount| mount.v2)
    {
        let dir = join_cgroup(mount, &unified.path);
        files.cpu_stat = Some(dir.join("cpu.stat"));
        files.procs.push(dir.join("cgroup.procs"));
    }
    files.procs.dedup();
    files
}

impl CgroupFiles {
    /// Finds the cgroup files of `pid` on this host.
    pub fn of_pid(pid: u32) -> std::io::Result<CgroupFiles> {
        let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(locate(&proc_cgroup, &parse_mountinfo(&mountinfo)))
    }

    /// The CPU time used by the cgroup so far, nanoseconds.
    pub fn cpu_ns(&self) -> Option<u64> {
        if let Some(path) = &self.cpuacct_usage
            && let Ok(text) = std::fs::read_to_string(path)
            && let Ok(ns) = text.trim().parse::<u64>()
        {
            return Some(ns);
        }
        let text = std::fs::read_to_string(self.cpu_stat.as_ref()?).ok()?;
        parse_cpu_stat_usage_usec(&text).map(|usec| usec.saturating_mul(1000))
    }

    /// The processes in the cgroup (host pids), from the first member list that reads.
    pub fn pids(&self) -> Option<HashSet<u32>> {
        self.procs.iter().find_map(|path| {
            let text = std::fs::read_to_string(path).ok()?;
            Some(
                text.lines()
                    .filter_map(|line| line.trim().parse().ok())
                    .collect(),
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Process trees (`--runtime process`)

/// From the text of `/proc/<pid>/stat`: the parent pid and the CPU ticks of the process and
/// of its reaped children (`utime + stime + cutime + cstime`).
pub fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name (field 2) is in parentheses and may contain anything: split after
    // the last `)`. Then field 3 is at index 0.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = (11..=14)
        .map(|index| {
            fields
                .get(index)
                .and_then(|field| field.parse::<u64>().ok())
        })
        .sum::<Option<u64>>()?;
    Some((ppid, ticks))
}

/// From the text of `/proc/<pid>/stat`: when the process started (field 22, clock ticks
/// since boot). Fixed for the life of a process: a restarted job has another.
pub fn parse_start_ticks(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    // Field 3 (state) is at index 0, so field 22 is at index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Reads every process's parent and CPU ticks under `proc_root` (`/proc`).
fn process_table(proc_root: &Path) -> HashMap<u32, (u32, u64)> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return HashMap::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect()
}

/// `root` and its descendants in a table of `pid → (ppid, ticks)`.
pub fn tree_of(root: u32, table: &HashMap<u32, (u32, u64)>) -> HashSet<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, (ppid, _)) in table {
        children.entry(*ppid).or_default().push(*pid);
    }
    let mut tree = HashSet::new();
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        if table.contains_key(&pid) && tree.insert(pid) {
            stack.extend(children.get(&pid).into_iter().flatten());
        }
    }
    tree
}

/// A process tree's pids and CPU time (nanoseconds) now, or `None` when its root is gone.
pub fn process_tree(root: u32) -> Option<(HashSet<u32>, u64)> {
    let table = process_table(Path::new("/proc"));
    let tree = tree_of(root, &table);
    if tree.is_empty() {
        return None;
    }
    let ticks: u64 = tree
        .iter()
        .filter_map(|pid| table.get(pid))
        .map(|(_, ticks)| ticks)
        .sum();
    Some((tree, ticks.saturating_mul(NS_PER_TICK)))
}

/// `/proc/<pid>/task/<tid>/schedstat`: nanoseconds on a CPU, nanoseconds runnable but waiting
/// for one (on a run queue, or throttled by the container's CPU quota), timeslices. `None` for
/// anything else.
pub fn parse_schedstat(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_whitespace();
    let on_cpu = fields.next()?.parse().ok()?;
    let waiting = fields.next()?.parse().ok()?;
    fields.next()?.parse::<u64>().ok()?;
    Some((on_cpu, waiting))
}

/// How long each thread of `pids` has waited for a CPU so far (nanoseconds), by thread id.
/// Threads that end between the listing and the read are skipped.
pub fn run_queue_waits(pids: &HashSet<u32>) -> HashMap<u32, u64> {
    let mut waits = HashMap::new();
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|name| name.parse().ok()) else {
                continue;
            };
            if let Some((_, waiting)) = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .as_deref()
                .and_then(parse_schedstat)
            {
                waits.insert(tid, waiting);
            }
        }
    }
    waits
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schedstat_gives_time_on_cpu_and_time_waiting() {
        assert_eq!(
            parse_schedstat("1495558009 1509531733 346\n"),
            Some((1_495_558_009, 1_509_531_733))
        );
        assert_eq!(parse_schedstat("0 81562 1"), Some((0, 81_562)));
        assert_eq!(parse_schedstat("12 34"), None);
        assert_eq!(parse_schedstat("a b c"), None);
        assert_eq!(parse_schedstat(""), None);
    }

    /// A thread that only burns CPU is on a CPU or waiting for one the whole time, however
    /// busy the host: that sum, not the CPU time it got, is what an emulated GPU's utilization
    /// follows. (Not a speed threshold: on-CPU plus waiting can only fall short of the wall
    /// time by the moments the thread was not runnable, and a spinning thread has none but
    /// page faults.)
    #[test]
    fn a_busy_thread_runs_or_waits_all_the_time() {
        use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
        let pid = std::process::id();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let tid = std::sync::Arc::new(AtomicU32::new(0));
        let spinning = {
            let (stop, tid) = (stop.clone(), tid.clone());
            std::thread::spawn(move || {
                let own = std::fs::read_link("/proc/thread-self")
                    .ok()
                    .and_then(|link| link.file_name()?.to_str()?.parse::<u32>().ok())
                    .unwrap();
                tid.store(own, Ordering::SeqCst);
                let mut spins = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    spins = std::hint::black_box(spins.wrapping_add(1));
                }
            })
        };
        while tid.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let tid = tid.load(Ordering::SeqCst);
        let sample = || {
            let on_cpu = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
                .ok()
                .as_deref()
                .and_then(parse_schedstat)
                .unwrap()
                .0;
            let waiting = run_queue_waits(&HashSet::from([pid]))[&tid];
            (on_cpu + waiting, std::time::Instant::now())
        };
        let (before, started) = sample();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let (after, ended) = sample();
        stop.store(true, Ordering::Relaxed);
        spinning.join().unwrap();
        let wall = ended.duration_since(started).as_nanos() as f64;
        let demand = (after - before) as f64 / wall;
        assert!(
            (0.5..=1.05).contains(&demand),
            "a spinning thread ran or waited {demand:.2} of the time"
        );
        assert!(!run_queue_waits(&HashSet::from([pid])).contains_key(&tid));
    }

    // Docker 20.10 on cgroup v1 (this project's CI host), with the systemd and unified lines.
    const V1_PROC: &str = "\
12:hugetlb:/docker/0fc06a
9:name=systemd:/docker/0fc06a
8:pids:/docker/0fc06a
4:memory:/docker/0fc06a
2:cpu,cpuacct:/docker/0fc06a
0::/docker/0fc06a
";
    const V1_MOUNTS: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
34 25 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,pids
35 25 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:19 - cgroup cgroup rw,memory
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
";
    const V2_PROC: &str = "0::/system.slice/docker-0fc06a.scope\n";
    const V2_MOUNTS: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn cgroup_v1_files() {
        let mounts = parse_mountinfo(V1_MOUNTS);
        assert_eq!(mounts.len(), 4);
        let files = locate(V1_PROC, &mounts);
        assert_eq!(
            files.cpuacct_usage,
            Some(PathBuf::from(
                "/sys/fs/cgroup/cpu,cpuacct/docker/0fc06a/cpuacct.usage"
            ))
        );
        assert_eq!(
            files.procs.first(),
            Some(&PathBuf::from(
                "/sys/fs/cgroup/pids/docker/0fc06a/cgroup.procs"
            ))
        );
        // Hybrid: the unified hierarchy is there too, as a fallback.
        assert_eq!(
            files.cpu_stat,
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/docker/0fc06a/cpu.stat"
            ))
        );
    }

    #[test]
    fn cgroup_v2_files() {
        let files = locate(V2_PROC, &parse_mountinfo(V2_MOUNTS));
        assert_eq!(files.cpuacct_usage, None);
        assert_eq!(
            files.cpu_stat,
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-0fc06a.scope/cpu.stat"
            ))
        );
        assert_eq!(
            files.procs,
            vec![PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-0fc06a.scope/cgroup.procs"
            )]
        );
    }

    #[test]
    fn a_namespaced_mount_root_is_stripped() {
        let mounts =
            parse_mountinfo("40 30 0:26 /docker/agent /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        let files = locate("0::/docker/agent/job\n", &mounts);
        assert_eq!(
            files.cpu_stat,
            Some(PathBuf::from("/sys/fs/cgroup/job/cpu.stat"))
        );
        assert_eq!(unescape_mount("/a\\040b\\x"), "/a b\\x");
    }

    #[test]
    fn cpu_stat_usage() {
        let text = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n";
        assert_eq!(parse_cpu_stat_usage_usec(text), Some(1_234_567));
        assert_eq!(parse_cpu_stat_usage_usec("user_usec 1\n"), None);
    }

    #[test]
    fn stat_lines_and_trees() {
        let stat =
            "4242 (sh -c) (x)) S 4000 4242 4242 0 -1 4194560 100 0 0 0 7 3 2 1 20 0 1 0 100 0 0";
        assert_eq!(parse_stat(stat), Some((4000, 7 + 3 + 2 + 1)));
        assert_eq!(parse_stat("1 (init) S"), None);
        // Field 22, the start time, after a command name with parentheses and spaces.
        assert_eq!(parse_start_ticks(stat), Some(100));
        assert_eq!(parse_start_ticks("1 (init) S 0"), None);
        let table = HashMap::from([
            (1, (0, 0)),
            (10, (1, 5)),
            (11, (10, 1)),
            (12, (11, 1)),
            (20, (1, 9)),
        ]);
        assert_eq!(tree_of(10, &table), HashSet::from([10, 11, 12]));
        assert!(tree_of(99, &table).is_empty());
    }

    #[test]
    fn this_process_is_a_tree_with_cpu_time() {
        let (tree, ns) = process_tree(std::process::id()).unwrap();
        assert!(tree.contains(&std::process::id()));
        let _ = ns;
        if let Ok(files) = CgroupFiles::of_pid(std::process::id()) {
            // Whatever the host's cgroup layout, reading never panics.
            let _ = (files.cpu_ns(), files.pids());
        }
    }
}
