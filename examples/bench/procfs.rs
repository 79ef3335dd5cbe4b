//! What the benchmark reads from `/proc`: CPU time of the daemons, of their
//! threads and of the whole machine, and how often the forwarding threads
//! went to sleep (each voluntary context switch is one later wake-up).

use std::path::Path;

/// utime + stime, in clock ticks, from a `/proc/.../stat` file (0 if unreadable).
fn stat_ticks(path: &Path) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name: utime is the 14th, stime the 15th field.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// CPU ticks (1/100 s) a process has used.
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat")))
}

/// The names of `pid`'s threads with their task directories.
fn tasks(pid: u32) -> Vec<(String, std::path::PathBuf)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    dir.flatten()
        .map(|t| {
            let path = t.path();
            (std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string(), path)
        })
        .collect()
}

/// CPU ticks per named thread of `pid` (e.g. weft-tx-0, weft-rx-0).
pub(crate) fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    tasks(pid).into_iter().map(|(name, path)| (name, stat_ticks(&path.join("stat")))).collect()
}

/// Voluntary context switches of the forwarding threads (`weft-tx-*`,
/// `weft-rx-*`, and the wireguard backend's `weft-wg-tx`, `weft-wg-rx`) of
/// `pids`, summed: each is a sleep, so a wake-up follows.
pub(crate) fn forwarding_sleeps(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|p| tasks(*p))
        .filter(|(name, _)| ["weft-tx-", "weft-rx-", "weft-wg-tx", "weft-wg-rx"].iter().any(|p| name.starts_with(p)))
        .map(|(_, path)| {
            let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

/// The machine's CPU time so far, from the first line of `/proc/stat`:
/// (busy ticks, all ticks) over every CPU; idle and iowait are not busy.
pub(crate) fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    let all: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (all - idle, all)
}

/// How many CPUs this machine has (1 if it cannot tell).
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Busy CPUs (0..=cpus) between two `machine_ticks` readings.
pub(crate) fn busy_cpus(before: (u64, u64), after: (u64, u64), cpus: usize) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / all as f64 * cpus as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_fraction_of_the_machine() {
        assert_eq!(busy_cpus((100, 1000), (400, 1600), 2), 1.0);
        assert_eq!(busy_cpus((100, 1000), (100, 1000), 2), 0.0);
        let (busy, all) = machine_ticks();
        assert!(all > 0 && busy <= all, "reads /proc/stat: {busy} of {all}");
    }
}
