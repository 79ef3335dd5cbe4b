//! What a reconcile pass found and did, and the counters kept across passes:
//! the data behind `/readyz` and the dataplane's metrics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use weft_types::metrics::{Histogram, Kind, Writer};
use weft_types::BackendKind;

/// The kinds of objects weft owns and repairs, as metrics label them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum ObjectKind {
    Device = 0,
    Address,
    Route,
    Fdb,
    Neighbour,
    Rules,
    Thread,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Device,
        ObjectKind::Address,
        ObjectKind::Route,
        ObjectKind::Fdb,
        ObjectKind::Neighbour,
        ObjectKind::Rules,
        ObjectKind::Thread,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Device => "device",
            ObjectKind::Address => "address",
            ObjectKind::Route => "route",
            ObjectKind::Fdb => "fdb",
            ObjectKind::Neighbour => "neighbour",
            ObjectKind::Rules => "rules",
            ObjectKind::Thread => "thread",
        }
    }
}

/// One reconcile pass.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub peers_desired: usize,
    /// Peers whose every entry is in place.
    pub peers_programmed: usize,
    /// Entries added, removed or changed.
    pub changes: usize,
    /// Objects put back after they went missing or changed, by kind.
    pub repairs: [u64; ObjectKind::ALL.len()],
    /// What does not match the desired state. Empty: all is in place.
    pub problems: Vec<Problem>,
    /// The pass read the kernel (a full pass) rather than trusting what
    /// the last pass left in place.
    pub full: bool,
}

/// Something that does not match the desired state; each renders as one
/// short line of `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A pass ran before the backend was started.
    NotStarted { backend: BackendKind },
    /// A device weft owns is missing or wrong and could not be put right.
    Device { name: String, error: String },
    /// Peers whose entries could not all be installed; `first` is the
    /// first failure (`subnet: why`).
    Peers { failed: usize, of: usize, first: String },
    /// The iptables rules could not be put back.
    Rules { error: String },
    /// A userspace backend's forwarding threads stopped and wait out a
    /// restart backoff.
    ThreadsBackingOff { backend: BackendKind },
    /// A userspace backend's forwarding threads could not be started.
    ThreadsCannotStart { backend: BackendKind, error: String },
    /// A forwarding thread of a userspace backend ended since the last pass.
    ThreadEnded { backend: BackendKind },
    /// WireGuard peers without a completed handshake after a grace period,
    /// or whose last one is older than a session lives; `first` names one
    /// (`subnet at endpoint (why)`).
    NoHandshake { peers: usize, of: usize, first: String },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::NotStarted { backend } => write!(f, "{backend} backend not started"),
            Problem::Device { name, error } => write!(f, "{name} missing or wrong, repairing: {error}"),
            Problem::Peers { failed, of, first } => {
                write!(f, "{failed} of {of} peers not programmed, retrying (first: {first})")
            }
            Problem::Rules { error } => write!(f, "iptables rules not in place, retrying: {error}"),
            Problem::ThreadsBackingOff { backend } => {
                write!(f, "{backend} forwarding threads stopped, restarting after a backoff")
            }
            Problem::ThreadsCannotStart { backend, error } => {
                write!(f, "cannot start the {backend} forwarding threads: {error}")
            }
            Problem::ThreadEnded { backend } => write!(f, "a {backend} forwarding thread ended, restarting"),
            Problem::NoHandshake { peers, of, first } => {
                write!(f, "{peers} of {of} wireguard peers without a completed handshake (first: {first})")
            }
        }
    }
}

impl Problem {
    /// Whether the fault lies with other nodes rather than this one: a
    /// peer that does not answer, or some peers (not all) that cannot be
    /// programmed (their leases name what this host cannot reach). Such a
    /// problem is reported but does not make the node not ready: a
    /// powered-off node keeps its lease for the TTL, and its neighbours
    /// are no less able to carry their pods' traffic.
    pub fn is_remote(&self) -> bool {
        match self {
            Problem::NoHandshake { .. } => true,
            Problem::Peers { failed, of, .. } => failed < of,
            _ => false,
        }
    }
}

impl Report {
    pub(crate) fn repaired(&mut self, kind: ObjectKind, n: usize) {
        self.repairs[kind as usize] += n as u64;
    }

    pub(crate) fn problem(&mut self, p: Problem) {
        self.problems.push(p);
    }

    pub fn total_repairs(&self) -> u64 {
        self.repairs.iter().sum()
    }
}

/// Counters across passes (rendered on `/metrics`).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    repairs: [AtomicU64; ObjectKind::ALL.len()],
    failed_passes: AtomicU64,
    duration: Histogram,
    peers_desired: AtomicU64,
    peers_programmed: AtomicU64,
    ready: AtomicBool,
}

impl Counters {
    pub(crate) fn record(&self, r: &Report, took: std::time::Duration) {
        for (i, n) in r.repairs.iter().enumerate() {
            self.repairs[i].fetch_add(*n, Ordering::Relaxed);
        }
        if !r.problems.is_empty() {
            self.failed_passes.fetch_add(1, Ordering::Relaxed);
        }
        self.duration.observe(took);
        self.peers_desired.store(r.peers_desired as u64, Ordering::Relaxed);
        self.peers_programmed.store(r.peers_programmed as u64, Ordering::Relaxed);
        self.ready.store(!r.problems.iter().any(|p| !p.is_remote()), Ordering::Relaxed);
    }

    fn render(&self, w: &mut Writer<'_>, backend: BackendKind) {
        let backend = backend.as_str();
        let ready = self.ready.load(Ordering::Relaxed);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let b = [("backend", backend)];
        w.family("weft_dataplane_peers_desired", Kind::Gauge, "Peers the dataplane should reach.")
            .sample("weft_dataplane_peers_desired", &b, g(&self.peers_desired))
            .family("weft_dataplane_peers_programmed", Kind::Gauge, "Peers whose routes and entries are all in place.")
            .sample("weft_dataplane_peers_programmed", &b, g(&self.peers_programmed))
            .family(
                "weft_dataplane_ready",
                Kind::Gauge,
                "1 while the host's own objects match the desired state (peers at fault aside).",
            )
            .sample("weft_dataplane_ready", &b, if ready { 1.0 } else { 0.0 })
            .family(
                "weft_dataplane_reconcile_duration_seconds",
                Kind::Histogram,
                "Time of one reconcile pass (check and repair everything weft owns).",
            )
            .histogram("weft_dataplane_reconcile_duration_seconds", &b, &self.duration)
            .family(
                "weft_dataplane_reconcile_failures_total",
                Kind::Counter,
                "Reconcile passes that left something not as desired.",
            )
            .sample("weft_dataplane_reconcile_failures_total", &b, g(&self.failed_passes))
            .family(
                "weft_dataplane_repairs_total",
                Kind::Counter,
                "Objects weft put back after they were removed or changed, by kind.",
            );
        for k in ObjectKind::ALL {
            w.sample(
                "weft_dataplane_repairs_total",
                &[("backend", backend), ("kind", k.name())],
                g(&self.repairs[k as usize]),
            );
        }
    }
}

/// A backend's own metric families (the userspace backends' counters),
/// rendered after the common ones.
pub(crate) trait BackendMetrics: Send + Sync + std::fmt::Debug {
    fn render(&self, w: &mut Writer<'_>);
}

/// A handle on the dataplane's counters that renders them at any time
/// (the health server holds one while the daemon owns the dataplane).
#[derive(Debug, Clone)]
pub struct DataplaneMetrics {
    pub(crate) backend: BackendKind,
    pub(crate) counters: Arc<Counters>,
    pub(crate) backend_metrics: Option<Arc<dyn BackendMetrics>>,
}

impl DataplaneMetrics {
    /// The dataplane's metric families, in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut w = Writer::new(out);
        self.counters.render(&mut w, self.backend);
        if let Some(b) = &self.backend_metrics {
            b.render(&mut w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_render_as_readyz_lines() {
        let cases = [
            (Problem::NotStarted { backend: BackendKind::Vxlan }, "vxlan backend not started"),
            (
                Problem::Device { name: "flannel.1".into(), error: "ip link add: File exists".into() },
                "flannel.1 missing or wrong, repairing: ip link add: File exists",
            ),
            (
                Problem::Peers { failed: 1, of: 2, first: "10.244.2.0/24: Network is unreachable".into() },
                "1 of 2 peers not programmed, retrying (first: 10.244.2.0/24: Network is unreachable)",
            ),
            (Problem::Rules { error: "x".into() }, "iptables rules not in place, retrying: x"),
            (
                Problem::ThreadsBackingOff { backend: BackendKind::Udp },
                "udp forwarding threads stopped, restarting after a backoff",
            ),
            (
                Problem::ThreadsCannotStart { backend: BackendKind::Udp, error: "y".into() },
                "cannot start the udp forwarding threads: y",
            ),
            (Problem::ThreadEnded { backend: BackendKind::Udp }, "a udp forwarding thread ended, restarting"),
            (
                Problem::ThreadEnded { backend: BackendKind::Wireguard },
                "a wireguard forwarding thread ended, restarting",
            ),
        ];
        for (p, text) in cases {
            assert_eq!(p.to_string(), text);
        }
    }
}
