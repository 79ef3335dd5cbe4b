//! The back-off of a crash loop under the unit. systemd restarts weft
//! 100 ms after it dies (a crash of a userspace backend must cost pods
//! little) and, with `StartLimitIntervalSec=0`, never gives up on it; the
//! systemd of Debian 12 (252) has no growing restart delay of its own
//! (`RestartSteps=` came in 254). So weft keeps the times of its recent
//! starts in the unit's `RuntimeDirectory` and, from the sixth start within
//! a minute, waits before starting, twice as long each time up to 10 s:
//! the first restarts stay immediate, and a process that dies at once on
//! every start is started about a dozen times a minute, not 600.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Starts within this long count toward a crash loop.
const WINDOW: Duration = Duration::from_secs(60);
/// Starts within the window that wait for nothing.
const FREE_STARTS: usize = 5;
/// The first wait, doubled with each further start.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(10);

/// The file of start times (milliseconds since the epoch, one a line).
const STARTS_FILE: &str = "weft-starts";

/// How long to wait before a start that follows `recent` starts within
/// [`WINDOW`]. Pure.
pub(crate) fn delay_after(recent: usize) -> Duration {
    if recent < FREE_STARTS {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(recent - FREE_STARTS).unwrap_or(u32::MAX).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// The start times in `text` within [`WINDOW`] before `now`. Pure.
fn recent_starts(text: &str, now: u64) -> Vec<u64> {
    let window = WINDOW.as_millis() as u64;
    text.lines().filter_map(|l| l.trim().parse::<u64>().ok()).filter(|&t| t <= now && now - t < window).collect()
}

/// Where the unit's runtime directory keeps the start times; `None`
/// outside the unit (no `$RUNTIME_DIRECTORY`): no back-off there.
fn starts_file() -> Option<PathBuf> {
    let dirs = std::env::var_os("RUNTIME_DIRECTORY")?;
    let first = dirs.to_string_lossy().split(':').next().map(str::to_owned)?;
    (!first.is_empty()).then(|| Path::new(&first).join(STARTS_FILE))
}

/// Record this start and, in a crash loop, wait as [`delay_after`] says,
/// saying so.
pub(crate) fn back_off() {
    let Some(path) = starts_file() else { return };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut starts = recent_starts(&std::fs::read_to_string(&path).unwrap_or_default(), now);
    let delay = delay_after(starts.len());
    starts.push(now);
    let text: String = starts.iter().map(|t| format!("{t}\n")).collect();
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("weft: cannot record this start in {} ({e}); a crash loop is not slowed down", path.display());
    }
    if !delay.is_zero() {
        eprintln!(
            "weft: started {} times in the last {} s (a crash loop?); waiting {:.2} s before starting",
            starts.len(),
            WINDOW.as_secs(),
            delay.as_secs_f64()
        );
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_starts_wait_for_nothing_then_twice_as_long_each_up_to_the_cap() {
        let table =
            [(0, 0), (4, 0), (5, 250), (6, 500), (7, 1000), (9, 4000), (10, 8000), (11, 10_000), (1000, 10_000)];
        for (recent, ms) in table {
            assert_eq!(delay_after(recent), Duration::from_millis(ms), "after {recent} starts");
        }
    }

    #[test]
    fn only_starts_within_the_window_count_and_junk_is_ignored() {
        let now = 1_000_000;
        let text = "999999\n940001\n940000\nnot a time\n\n2000000\n";
        assert_eq!(recent_starts(text, now), vec![999_999, 940_001]);
    }
}
