//! A TCP proxy on loopback whose connections a test can cut and restore,
//! to put a real network outage between a client and etcd, or mute (the
//! server's replies are swallowed while requests still reach it: a request
//! that commits but whose reply is lost).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

struct State {
    open: AtomicBool,
    mute: AtomicBool,
    /// Mute as soon as a request carrying these bytes passes.
    trigger: Mutex<Option<Vec<u8>>>,
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
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            mute: AtomicBool::new(false),
            trigger: Mutex::new(None),
            conns: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !st.open.load(Ordering::SeqCst) {
                    drop(inbound); // refused while cut
                    continue;
                }
                let conn_state = st.clone();
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(target).await {
                        let (in_r, in_w) = inbound.split();
                        let (out_r, out_w) = outbound.into_split();
                        let up = pump(in_r, out_w, &conn_state, false);
                        let down = pump(out_r, in_w, &conn_state, true);
                        tokio::select! { _ = up => {}, _ = down => {} }
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

    /// Accept connections again (and stop muting).
    pub fn restore(&self) {
        self.state.mute.store(false, Ordering::SeqCst);
        *self.state.trigger.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.state.open.store(true, Ordering::SeqCst);
    }

    /// Swallow everything the server sends until [`cut`](Self::cut) (the
    /// muted connections are broken: bytes are missing from their streams).
    pub fn mute(&self) {
        self.state.mute.store(true, Ordering::SeqCst);
    }

    /// [`mute`](Self::mute) from the first request that carries `bytes`
    /// (e.g. a key name): that request reaches the server, its reply and
    /// everything after it are swallowed.
    pub fn mute_from_request_with(&self, bytes: &[u8]) {
        *self.state.trigger.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes.to_vec());
    }
}

/// Copy `from` to `to` until either side closes. Replies (`down`) are
/// dropped while muted; a request matching the trigger turns muting on.
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, state: &State, down: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if down && state.mute.load(Ordering::SeqCst) {
            continue;
        }
        if !down {
            let mut trigger = state.trigger.lock().unwrap_or_else(|p| p.into_inner());
            if trigger.as_ref().is_some_and(|t| buf[..n].windows(t.len()).any(|w| w == t.as_slice())) {
                state.mute.store(true, Ordering::SeqCst);
                *trigger = None;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
