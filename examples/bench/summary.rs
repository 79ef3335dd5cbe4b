//! Ratios of the udp backend against vxlan within one round of cases, and
//! medians over rounds (`--repeat N` runs every case N times, interleaved,
//! so that a noisy machine's drift falls on all cases alike).

use crate::Figures;

/// udp against vxlan (and the underlay's wake-up floor) in one round.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ratios {
    pub(crate) tcp1: f64,
    pub(crate) tcp2: f64,
    pub(crate) rtt_over_us: f64,
    pub(crate) udp64: f64,
    /// Twice the underlay echo's overhead over ping: four wake-ups.
    pub(crate) floor_us: Option<f64>,
    /// The machine's CPU-seconds per GB in the 1-stream run, udp over vxlan.
    pub(crate) cpu_per_gb: f64,
    /// Busy CPUs that 0.9 x vxlan's 1-stream rate would take at udp's CPU
    /// cost per GB: above the machine's CPU count, the target cannot be met
    /// without making the path cheaper.
    pub(crate) cpus_for_target: f64,
    /// The same for the 2-stream target.
    pub(crate) cpus_for_target2: f64,
}

impl Ratios {
    pub(crate) fn of(results: &[(&str, Figures)]) -> Option<Ratios> {
        let get = |n| find(results, n);
        let (u, v) = (get("udp")?, get("vxlan")?);
        Some(Ratios {
            tcp1: u.tcp1_gbps / v.tcp1_gbps,
            tcp2: u.tcp2_gbps / v.tcp2_gbps,
            rtt_over_us: u.rtt_avg_us - v.rtt_avg_us,
            udp64: u.udp64_kpps / v.udp64_kpps,
            floor_us: get("underlay").and_then(|b| Some(2.0 * (b.echo_avg_us? - b.rtt_avg_us))),
            cpu_per_gb: u.cpu_s_per_gb() / v.cpu_s_per_gb(),
            cpus_for_target: u.cpu_s_per_gb() * 0.9 * v.tcp1_gbps / 8.0,
            cpus_for_target2: u.cpu_s_per_gb_tcp2() * 0.9 * v.tcp2_gbps / 8.0,
        })
    }

    pub(crate) fn print(&self, label: &str) {
        println!(
            "{label}: udp vs vxlan: tcp1 {:.2}x, tcp2 {:.2}x, rtt {:+.0} us, udp64 {:.2}x",
            self.tcp1, self.tcp2, self.rtt_over_us, self.udp64
        );
        if let Some(floor) = self.floor_us {
            println!(
                "{label}: udp rtt over vxlan {:+.0} us; its four wake-ups at the underlay echo's cost {floor:+.0} us",
                self.rtt_over_us
            );
        }
        let cpus = crate::procfs::cpus();
        println!(
            "{label}: machine CPU per GB during tcp1, udp over vxlan {:.2}x; 0.9x vxlan at udp's cost per GB would keep {:.2} CPUs busy (tcp1), {:.2} (tcp2); the machine has {cpus}",
            self.cpu_per_gb, self.cpus_for_target, self.cpus_for_target2
        );
    }

    /// Each ratio's median over the rounds.
    pub(crate) fn median(all: &[Ratios]) -> Option<Ratios> {
        let m = |f: fn(&Ratios) -> Option<f64>| median(&all.iter().filter_map(f).collect::<Vec<_>>());
        Some(Ratios {
            tcp1: m(|r| Some(r.tcp1))?,
            tcp2: m(|r| Some(r.tcp2))?,
            rtt_over_us: m(|r| Some(r.rtt_over_us))?,
            udp64: m(|r| Some(r.udp64))?,
            floor_us: m(|r| r.floor_us),
            cpu_per_gb: m(|r| Some(r.cpu_per_gb))?,
            cpus_for_target: m(|r| Some(r.cpus_for_target))?,
            cpus_for_target2: m(|r| Some(r.cpus_for_target2))?,
        })
    }
}

/// The figures of case `name` in `results`.
pub(crate) fn find<'a>(results: &'a [(&str, Figures)], name: &str) -> Option<&'a Figures> {
    results.iter().find(|(c, _)| *c == name).map(|(_, f)| f)
}

/// The median of `v` (the mean of the middle two for an even count).
pub(crate) fn median(v: &[f64]) -> Option<f64> {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some((s[n / 2 - 1] + s[n / 2]) / 2.0),
    }
}

/// One case's figures over the rounds: each figure's median (the threads'
/// busy fractions are those of the first round).
pub(crate) fn median_figures(runs: &[Figures]) -> Option<Figures> {
    let m = |f: fn(&Figures) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0);
    let mo = |f: fn(&Figures) -> Option<f64>| median(&runs.iter().filter_map(f).collect::<Vec<_>>());
    Some(Figures {
        tcp1_gbps: m(|f| f.tcp1_gbps),
        tcp2_gbps: m(|f| f.tcp2_gbps),
        rtt_avg_us: m(|f| f.rtt_avg_us),
        rtt_p99_us: m(|f| f.rtt_p99_us),
        loaded_p50_us: m(|f| f.loaded_p50_us),
        loaded_p99_us: m(|f| f.loaded_p99_us),
        udp64_kpps: m(|f| f.udp64_kpps),
        cpu_s_per_gbit: mo(|f| f.cpu_s_per_gbit),
        threads: runs.first()?.threads.clone(),
        echo_avg_us: mo(|f| f.echo_avg_us),
        busy_cpus: m(|f| f.busy_cpus),
        busy_cpus_tcp2: m(|f| f.busy_cpus_tcp2),
        sleeps_per_ping: mo(|f| f.sleeps_per_ping),
        sleeps_per_gb: mo(|f| f.sleeps_per_gb),
        busy_p50_us: m(|f| f.busy_p50_us),
        busy_p99_us: m(|f| f.busy_p99_us),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }
}
