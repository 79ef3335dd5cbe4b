//! The health endpoints over plain HTTP/1.x on `--healthz-port`:
//! - `/healthz`: the process is alive (always 200);
//! - `/readyz`: 200 `ready` only while the lease is held, the dataplane
//!   matches the desired state and the config in etcd is the one running;
//!   otherwise 503 with one line per reason (e.g. `flannel.1 missing,
//!   repairing: ...`);
//! - `/metrics`: Prometheus text format: the lease, etcd, the dataplane and,
//!   with the udp backend, forwarding counters (documented in
//!   docs/operations.md).
//!
//! [`Readiness`] is the daemon's side: it sets the reasons after every
//! reconcile and logs once when they change, not on every pass.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};
use weft_dataplane::DataplaneMetrics;
use weft_subnet::Metrics as ControlMetrics;

/// What the endpoints report.
#[derive(Default)]
pub(crate) struct HealthState {
    /// Why the node is not ready; empty: ready.
    reasons: Mutex<Vec<String>>,
    ready: std::sync::atomic::AtomicBool,
    control: OnceLock<Arc<ControlMetrics>>,
    dataplane: OnceLock<DataplaneMetrics>,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    refused: AtomicU64,
    /// Faults of other nodes: said, not a reason to be not ready.
    remote: Mutex<Vec<String>>,
    /// Leases left out now.
    ignored: AtomicU64,
}

/// What a reconcile pass found wrong, split by whose fault it is.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    /// This node's own objects, rules or threads: not ready.
    pub(crate) own: Vec<String>,
    /// Other nodes' (a silent peer, a lease that cannot be programmed):
    /// reported, still ready.
    pub(crate) remote: Vec<String>,
    /// Leases left out, with why: said once per lease, counted.
    pub(crate) ignored: Vec<(ipnet::IpNet, String)>,
}

/// Connections served at once; more are closed as soon as accepted (and
/// counted), so a flood of them costs a bounded number of descriptors
/// and tasks, never the forwarding or the lease.
const MAX_CONNECTIONS: usize = 32;

/// The longest a connection lives: reading the request and writing the
/// answer, however slowly the other side reads.
const CONNECTION_TIME: Duration = Duration::from_secs(5);

/// The longest the request's head may take to arrive.
const HEAD_TIME: Duration = Duration::from_secs(2);

impl HealthState {
    pub(crate) fn set_control(&self, m: Arc<ControlMetrics>) {
        let _ = self.control.set(m);
    }

    pub(crate) fn set_dataplane(&self, m: DataplaneMetrics) {
        let _ = self.dataplane.set(m);
    }

    fn readyz(&self) -> (bool, String) {
        let ready = self.ready.load(std::sync::atomic::Ordering::SeqCst);
        let reasons = self.reasons.lock().map(|r| r.clone()).unwrap_or_default();
        // etcd being unreachable alone does not make a node not ready: its
        // dataplane still matches the last known leases and carries traffic
        // (every node would turn not ready at once otherwise). It is said.
        let etcd_down = self.control.get().is_some_and(|c| !c.available());
        let mut note =
            String::from(if etcd_down { "etcd unavailable: forwarding with the last known leases\n" } else { "" });
        let remote = self.remote.lock().map(|r| r.clone()).unwrap_or_default();
        if !remote.is_empty() {
            note.push_str(&format!("other nodes at fault (not a readiness problem):\n{}\n", remote.join("\n")));
        }
        if ready {
            (true, format!("ready\n{note}"))
        } else if reasons.is_empty() {
            (false, format!("not ready: starting\n{note}"))
        } else {
            (false, format!("not ready:\n{}\n{note}", reasons.join("\n")))
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        if let Some(c) = self.control.get() {
            c.render(&mut weft_types::metrics::Writer::new(&mut out));
        }
        if let Some(d) = self.dataplane.get() {
            d.render(&mut out);
        }
        use weft_types::metrics::{Kind, Writer};
        let remote = self.remote.lock().map(|r| r.len()).unwrap_or(0);
        Writer::new(&mut out)
            .family(
                "weft_remote_problems",
                Kind::Gauge,
                "Faults of other nodes this node reports without being not ready (silent peers, leases it cannot program).",
            )
            .sample("weft_remote_problems", &[], remote as f64)
            .family(
                "weft_leases_ignored",
                Kind::Gauge,
                "Leases of other nodes left out now (another backend type, no usable address or backend data); the log says why, once each.",
            )
            .sample("weft_leases_ignored", &[], self.ignored.load(Ordering::Relaxed) as f64)
            .family(
                "weft_health_connections_refused_total",
                Kind::Counter,
                "Connections to the health port closed unanswered because as many as the cap were open.",
            )
            .sample("weft_health_connections_refused_total", &[], self.refused.load(Ordering::Relaxed) as f64);
        out
    }
}

/// The daemon's view of readiness: reasons in (from the dataplane after
/// every reconcile, and from the config check), one log line per change out.
pub(crate) struct Readiness {
    state: Arc<HealthState>,
    last: Option<Vec<String>>,
    dataplane: Vec<String>,
    config: Option<String>,
    /// Why the own lease keeps the node from being ready (expired).
    lease: Option<String>,
    /// The other nodes' faults last said.
    remote: Vec<String>,
    /// The leases left out, with why, as last said.
    ignored: std::collections::HashMap<ipnet::IpNet, String>,
}

impl Readiness {
    pub(crate) fn new(state: Arc<HealthState>) -> Readiness {
        Readiness {
            state,
            last: None,
            dataplane: Vec::new(),
            config: None,
            lease: None,
            remote: Vec::new(),
            ignored: std::collections::HashMap::new(),
        }
    }

    /// Set what the dataplane found wrong: its own faults make the node not
    /// ready (none: it is), the other nodes' are said once per change.
    pub(crate) fn set(&mut self, health: Health) {
        self.note_ignored(health.ignored);
        self.dataplane = health.own;
        if health.remote != self.remote {
            if health.remote.is_empty() {
                info!("other nodes at fault: none any more");
            } else {
                warn!("other nodes at fault (this node stays ready): {}", health.remote.join("; "));
            }
            if let Ok(mut r) = self.state.remote.lock() {
                r.clone_from(&health.remote);
            }
            self.remote = health.remote;
        }
        self.publish();
    }

    /// Say each lease left out once (and again only when why changes).
    fn note_ignored(&mut self, now: Vec<(ipnet::IpNet, String)>) {
        let now: std::collections::HashMap<_, _> = now.into_iter().collect();
        for (subnet, why) in &now {
            if self.ignored.get(subnet) != Some(why) {
                warn!(%subnet, "ignoring the lease of {subnet}: {why}");
            }
        }
        for subnet in self.ignored.keys().filter(|s| !now.contains_key(s)) {
            info!(%subnet, "the lease of {subnet} is no longer ignored");
        }
        self.state.ignored.store(now.len() as u64, Ordering::Relaxed);
        self.ignored = now;
    }

    /// Set why the config in etcd keeps the node from being ready (`None`:
    /// it does not). Takes effect with the next [`set`](Self::set) before
    /// the node was first ready.
    pub(crate) fn set_config(&mut self, reason: Option<String>) {
        self.config = reason;
        if self.last.is_some() {
            self.publish();
        }
    }

    /// Set why the own lease keeps the node from being ready (`None`: it
    /// does not).
    pub(crate) fn set_lease(&mut self, reason: Option<String>) {
        self.lease = reason;
        if self.last.is_some() {
            self.publish();
        }
    }

    fn publish(&mut self) {
        let mut reasons = self.dataplane.clone();
        reasons.extend(self.config.clone());
        reasons.extend(self.lease.clone());
        if self.last.as_ref() == Some(&reasons) {
            return;
        }
        if reasons.is_empty() {
            if self.last.is_some() {
                info!("ready again: the dataplane matches the desired state");
            }
        } else {
            warn!("not ready: {}", reasons.join("; "));
        }
        if let Ok(mut r) = self.state.reasons.lock() {
            r.clone_from(&reasons);
        }
        self.state.ready.store(reasons.is_empty(), std::sync::atomic::Ordering::SeqCst);
        self.last = Some(reasons);
    }

    /// Not ready any more (stopping).
    pub(crate) fn stopping(&mut self) {
        self.state.ready.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut r) = self.state.reasons.lock() {
            *r = vec!["stopping".into()];
        }
    }
}

/// Read a request's head (up to the blank line, at most 8 KiB, within
/// [`HEAD_TIME`]):
/// answering before the whole request has arrived would make the kernel
/// reset the connection.
async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    };
    tokio::time::timeout(HEAD_TIME, read).await.ok()??;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Bind and serve until the task is dropped: at most [`MAX_CONNECTIONS`]
/// at once, each for at most [`CONNECTION_TIME`].
pub(crate) async fn serve(addr: SocketAddr, state: Arc<HealthState>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "serving /healthz, /readyz and /metrics");
    let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    Ok(tokio::spawn(async move {
        loop {
            let conn = match listener.accept().await {
                Ok((c, _)) => c,
                Err(e) => {
                    warn!("health endpoint accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                state.refused.fetch_add(1, Ordering::Relaxed);
                drop(conn);
                continue;
            };
            let state = state.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CONNECTION_TIME, answer(conn, &state)).await;
                drop(permit);
            });
        }
    }))
}

/// Read one request and write its answer.
async fn answer(mut conn: tokio::net::TcpStream, state: &HealthState) {
    let Some(request) = read_head(&mut conn).await else { return };
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let (status, content_type, body) = match path {
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        "/readyz" => match state.readyz() {
            (true, body) => ("200 OK", "text/plain", body),
            (false, body) => ("503 Service Unavailable", "text/plain", body),
        },
        "/metrics" => ("200 OK", "text/plain; version=0.0.4", state.metrics()),
        _ => ("404 Not Found", "text/plain", "try /healthz, /readyz or /metrics\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes()).await;
}
