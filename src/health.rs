//! `/healthz` (the process is alive), `/readyz` (the dataplane and
//! subnet.env are in place) and `/metrics` (forwarding counters of the udp
//! backend, Prometheus text format) over plain HTTP/1.x.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use weft_dataplane::udp::stats::Stats;

/// What the endpoints report.
#[derive(Default)]
pub struct HealthState {
    pub ready: AtomicBool,
    pub udp: OnceLock<Arc<Stats>>,
}

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Bind and serve until the task is dropped.
pub async fn serve(addr: SocketAddr, state: Arc<HealthState>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    info!(%addr, "serving /healthz and /readyz");
    Ok(tokio::spawn(async move {
        loop {
            let (mut conn, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!("health endpoint accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let state = state.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(std::time::Duration::from_secs(2), conn.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("");
                let metrics;
                let (status, body) = match path {
                    "/healthz" => ("200 OK", "ok\n"),
                    "/readyz" if state.ready.load(Ordering::SeqCst) => ("200 OK", "ready\n"),
                    "/readyz" => ("503 Service Unavailable", "not ready\n"),
                    "/metrics" => {
                        metrics = state.udp.get().map(|s| s.render()).unwrap_or_default();
                        ("200 OK", metrics.as_str())
                    }
                    _ => ("404 Not Found", "try /healthz, /readyz or /metrics\n"),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            });
        }
    }))
}
