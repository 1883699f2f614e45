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
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_total_in_bytes() {
        let meminfo = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n";
        assert_eq!(mem_total(meminfo), Some(24_576_000 * 1024));
        assert_eq!(mem_total("nothing here"), None);
    }

    #[test]
    fn the_memory_limit_of_this_machine_is_known() {
        assert!(memory_limit().is_some_and(|m| m > 0));
    }
}
