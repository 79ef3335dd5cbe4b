//! The control plane's counters: every etcd request timed by operation,
//! watch restarts, re-lists, whether etcd answers, and the node's own lease
//! (subnet, time to expiry, renewals, losses). Shared by the registry, the
//! watch and the renewer through one `Arc`; rendered on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;
use weft_types::metrics::{Histogram, Kind, Writer};

/// The etcd operations weft makes, as the `op` label names them.
pub(crate) const OPS: [&str; 12] = [
    "get_config",
    "put_config",
    "list_leases",
    "lease_ttl",
    "lease_grant",
    "lease_revoke",
    "create_lease",
    "renew_lease",
    "delete_lease",
    "get_lease",
    "check_node",
    "watch_leases",
];

#[derive(Debug, Default)]
pub struct Metrics {
    durations: [Histogram; OPS.len()],
    failures: [AtomicU64; OPS.len()],
    watch_restarts: AtomicU64,
    /// Re-lists by reason: [compaction, interval].
    relists: [AtomicU64; 2],
    /// Whether the last etcd request or watch message succeeded.
    unavailable: std::sync::atomic::AtomicBool,
    /// Whether the stored config differs from the one the node runs with
    /// (deleted, invalid or changed).
    config_differs: std::sync::atomic::AtomicBool,
    renewals: AtomicU64,
    losses: AtomicU64,
    /// Unix time (s) the own lease expires; 0: no lease.
    expires_at: AtomicU64,
    subnet: Mutex<Option<IpNet>>,
}

fn op_index(op: &str) -> usize {
    OPS.iter().position(|o| *o == op).unwrap_or(0)
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Metrics {
    /// One etcd request of `op` took `d` (and failed, if `failed`).
    pub fn request(&self, op: &str, d: Duration, failed: bool) {
        let i = op_index(op);
        self.durations[i].observe(d);
        if failed {
            self.failures[i].fetch_add(1, Ordering::Relaxed);
        }
        self.set_available(!failed);
    }

    /// Whether etcd answered the last request or watch message.
    pub fn set_available(&self, ok: bool) {
        self.unavailable.store(!ok, Ordering::Relaxed);
    }

    /// Whether etcd answered the last request or watch message.
    pub fn available(&self) -> bool {
        !self.unavailable.load(Ordering::Relaxed)
    }

    /// Whether the config stored in etcd is the one the node runs with.
    pub fn set_config_current(&self, current: bool) {
        self.config_differs.store(!current, Ordering::Relaxed);
    }

    pub fn request_count(&self, op: &str) -> u64 {
        self.durations[op_index(op)].count()
    }

    pub fn watch_restarted(&self) {
        self.watch_restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// The leases were listed again: `why` is `compaction` or anything
    /// else (the relist interval).
    pub fn relisted(&self, why: &str) {
        let i = if why == "compaction" { 0 } else { 1 };
        self.relists[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The own lease of `subnet` was written (acquired or renewed) with `ttl`.
    pub fn lease_written(&self, subnet: IpNet, ttl: Duration, renewal: bool) {
        if renewal {
            self.renewals.fetch_add(1, Ordering::Relaxed);
        }
        self.expires_at.store((unix_now() + ttl.as_secs_f64()) as u64, Ordering::Relaxed);
        if let Ok(mut s) = self.subnet.lock() {
            *s = Some(subnet);
        }
    }

    /// Time left on the own lease as of its last write or renewal, by
    /// this host's clock, less a second for the request that wrote it
    /// (`None`: no lease held).
    pub fn expires_in(&self) -> Option<Duration> {
        let at = self.expires_at.load(Ordering::Relaxed);
        (at > 0).then(|| Duration::from_secs_f64((at as f64 - unix_now() - 1.0).max(0.0)))
    }

    pub fn lease_lost(&self) {
        self.losses.fetch_add(1, Ordering::Relaxed);
        self.expires_at.store(0, Ordering::Relaxed);
    }

    pub fn render(&self, w: &mut Writer<'_>) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let subnet = self.subnet.lock().ok().and_then(|s| *s);
        w.family("weft_lease_info", Kind::Gauge, "The subnet this node holds (1 while held).");
        if let Some(s) = subnet {
            let held = if g(&self.expires_at) > 0.0 { 1.0 } else { 0.0 };
            w.sample("weft_lease_info", &[("subnet", &s.to_string())], held);
        }
        let expires = g(&self.expires_at);
        let left = if expires > 0.0 { (expires - unix_now()).max(0.0) } else { 0.0 };
        w.family("weft_lease_expiry_seconds", Kind::Gauge, "Seconds until the own lease expires (0: none held).")
            .sample("weft_lease_expiry_seconds", &[], left.round())
            .family("weft_lease_renewals_total", Kind::Counter, "Successful renewals of the own lease.")
            .sample("weft_lease_renewals_total", &[], g(&self.renewals))
            .family(
                "weft_lease_losses_total",
                Kind::Counter,
                "Times the own lease was found expired, deleted or taken.",
            )
            .sample("weft_lease_losses_total", &[], g(&self.losses))
            .family("weft_etcd_request_duration_seconds", Kind::Histogram, "etcd requests, by operation.");
        for (i, op) in OPS.iter().enumerate() {
            w.histogram("weft_etcd_request_duration_seconds", &[("op", op)], &self.durations[i]);
        }
        w.family("weft_etcd_request_failures_total", Kind::Counter, "etcd requests that failed, by operation.");
        for (i, op) in OPS.iter().enumerate() {
            w.sample("weft_etcd_request_failures_total", &[("op", op)], g(&self.failures[i]));
        }
        w.family(
            "weft_etcd_watch_restarts_total",
            Kind::Counter,
            "Times the lease watch was re-established after it broke.",
        )
        .sample("weft_etcd_watch_restarts_total", &[], g(&self.watch_restarts))
        .family(
            "weft_etcd_relists_total",
            Kind::Counter,
            "Times the leases were listed again: the watch fell behind compaction, or the relist interval.",
        )
        .sample("weft_etcd_relists_total", &[("reason", "compaction")], g(&self.relists[0]))
        .sample("weft_etcd_relists_total", &[("reason", "interval")], g(&self.relists[1]))
        .family("weft_etcd_available", Kind::Gauge, "1 while etcd answers weft's requests and watch, 0 otherwise.")
        .sample("weft_etcd_available", &[], if self.available() { 1.0 } else { 0.0 })
        .family(
            "weft_config_current",
            Kind::Gauge,
            "1 while the network config in etcd is the one this node runs with; 0 when it was deleted, made invalid or changed.",
        )
        .sample("weft_config_current", &[], if self.config_differs.load(Ordering::Relaxed) { 0.0 } else { 1.0 });
    }
}
