//! A TCP proxy on loopback whose connections a test can cut and restore,
//! to put a real network outage between a client and etcd.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

struct State {
    open: AtomicBool,
    conns: Mutex<Vec<AbortHandle>>,
}

/// Forwards `127.0.0.1:<port>` to a target address.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
}

impl TcpProxy {
    /// Start forwarding to `target`. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State { open: AtomicBool::new(true), conns: Mutex::new(Vec::new()) });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !st.open.load(Ordering::SeqCst) {
                    drop(inbound); // refused while cut
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                st.conns.lock().unwrap_or_else(|p| p.into_inner()).push(task.abort_handle());
            }
        })
        .abort_handle();
        Ok(TcpProxy { addr, state, accept })
    }

    /// The proxy's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for use as an etcd endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Close every connection and refuse new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.state.open.store(false, Ordering::SeqCst);
        for c in self.state.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            c.abort();
        }
    }

    /// Accept connections again.
    pub fn restore(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
