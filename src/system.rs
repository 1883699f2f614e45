//! What the operating system allows this process: the memory it may use (for sizing the
//! request-body budget) and the open-files limit (raised to the hard limit at start-up, and
//! checked against `--max-connections`).

use std::path::Path;

/// The memory this process may use: its cgroup's limit (v2 or v1) where one is set, else the
/// machine's memory; `None` where neither can be read.
pub fn memory_limit() -> Option<u64> {
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        .iter()
        .filter_map(|path| read_number(Path::new(path)))
        // cgroup v1 reports "no limit" as a huge page-aligned number.
        .find(|&limit| limit < (1 << 60));
    let machine = std::fs::read_to_string("/proc/meminfo").ok().and_then(|text| mem_total(&text));
    match (cgroup, machine) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

fn read_number(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemTotal:")
}

/// The `field` line of a `/proc` file that gives sizes in kB (`meminfo`, `status`), in bytes.
fn kib_field(text: &str, field: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// File descriptors one client connection may cost: its own socket and, at worst, one
/// backend connection.
const FDS_PER_CONNECTION: u64 = 2;
/// File descriptors kept for everything else (listener, probes, discovery, logs).
const FDS_RESERVED: u64 = 256;

/// Raises the soft open-files limit to the hard limit, and warns when it still cannot hold
/// `max_connections` clients. Returns the soft limit in force.
pub fn raise_open_files(max_connections: u32) -> Option<u64> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-files limit");
            return None;
        }
    };
    let needed = u64::from(max_connections) * FDS_PER_CONNECTION + FDS_RESERVED;
    if limit < needed {
        tracing::warn!(
            open_files_limit = limit,
            max_connections,
            needed,
            "the open-files limit is too low for --max-connections; clients beyond it wait until \
             descriptors free up (raise `ulimit -n`, or LimitNOFILE in systemd)"
        );
    }
    Some(limit)
}

/// The process's own figures, as Prometheus's client libraries export them
/// (`process_*`), read from `/proc` at each scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    /// User and system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory, in bytes.
    pub resident_bytes: u64,
    /// Virtual memory, in bytes.
    pub virtual_bytes: u64,
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: f64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on them.
    pub max_fds: u64,
}

/// Clock ticks per second of `/proc/self/stat`'s times (the kernel's `USER_HZ`, 100 on every
/// Linux architecture mpp builds for).
const USER_HZ: f64 = 100.0;

impl ProcessStats {
    /// This process's figures; `None` where `/proc` cannot be read.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot_time = std::fs::read_to_string("/proc/stat").ok()?;
        let boot_time: f64 = boot_time.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
        let mut stats = parse_stat(&stat, boot_time)?;
        // In bytes whatever the page size (4 KiB on x86-64, 16 or 64 KiB on some arm64
        // kernels), where `stat` counts pages.
        stats.resident_bytes = kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS:")?;
        stats.open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        stats.max_fds = rlimit::Resource::NOFILE.get().ok()?.0;
        Some(stats)
    }
}

/// The figures of a `/proc/<pid>/stat` line (resident size and fds left at 0), the system
/// booted at `boot_time`.
fn parse_stat(stat: &str, boot_time: f64) -> Option<ProcessStats> {
    // The command name is in parentheses and may hold spaces: fields count from after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name, field 3 of proc(5) (state) is index 0.
    let number = |field: usize| -> Option<u64> { fields.get(field - 3)?.parse().ok() };
    let (utime, stime) = (number(14)?, number(15)?);
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_bytes: 0,
        virtual_bytes: number(23)?,
        start_time_seconds: boot_time + number(22)? as f64 / USER_HZ,
        open_fds: 0,
        max_fds: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_process_figures_of_a_stat_line_whose_name_has_spaces() {
        let stat = "4242 (mpp (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 250 50 0 0 20 0 3 0 12345 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stats = parse_stat(stat, 1_700_000_000.0).unwrap();
        assert_eq!(stats.cpu_seconds, 3.0, "250 + 50 ticks");
        assert_eq!(stats.start_time_seconds, 1_700_000_000.0 + 123.45);
        assert_eq!(stats.virtual_bytes, 104_857_600);
        assert_eq!(parse_stat("garbage", 0.0), None);
        let ours = ProcessStats::read().expect("/proc is readable here");
        assert!(ours.open_fds > 0 && ours.max_fds >= ours.open_fds && ours.resident_bytes > 0, "{ours:?}");
    }

    #[test]
    fn reads_mem_total_in_bytes() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(mem_total("nothing here"), None);
        assert_eq!(kib_field("Name:\tmpp\nVmRSS:\t   75324 kB\n", "VmRSS:"), Some(75_324 * 1024));
    }

    #[test]
    fn the_memory_limit_of_this_machine_is_known() {
        assert!(memory_limit().is_some_and(|m| m > 0));
    }
}
