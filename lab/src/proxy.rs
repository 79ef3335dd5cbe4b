//! A TCP proxy on loopback whose connections a test can cut and restore,
//! to put a real network outage between a client and etcd, or mute (the
//! server's replies are swallowed while requests still reach it: a request
//! that commits but whose reply is lost).
//!
//! Started in a lab namespace ([`TcpProxy::start_in_netns`]), it reads the
//! server's side as HTTP/2 frames (etcd's gRPC over plain http) and can
//! stall the streams already open (a watch) while new ones (unary
//! requests) still get their answers: a watch that goes silent without
//! any error.

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
    /// The server's side is read as HTTP/2 frames.
    h2: bool,
    /// Bumped by [`TcpProxy::stall_open_streams`]: each connection then
    /// drops DATA frames of the streams it had seen before.
    stall_epoch: std::sync::atomic::AtomicU64,
}

/// Forwards `127.0.0.1:<port>` to a target address.
pub struct TcpProxy {
    addr: SocketAddr,
    state: Arc<State>,
    accept: AbortHandle,
    /// With [`TcpProxy::start_in_netns`]: ends the proxy's own thread.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TcpProxy {
    /// Start forwarding to `target`. Needs a tokio runtime.
    pub async fn start(target: SocketAddr) -> std::io::Result<TcpProxy> {
        Self::start_on("127.0.0.1:0".parse().expect("address"), target, false).await
    }

    /// Start a proxy in namespace `ns`, listening on `listen` (port 0: any)
    /// and forwarding to `target` as seen from `ns`, on a thread and
    /// runtime of its own; the server's side is read as HTTP/2 frames.
    pub fn start_in_netns(ns: &str, listen: SocketAddr, target: SocketAddr) -> anyhow::Result<TcpProxy> {
        let (tx, rx) = std::sync::mpsc::channel();
        let ns = ns.to_string();
        std::thread::spawn(move || {
            let started = (|| -> anyhow::Result<_> {
                crate::netns::enter(&ns)?;
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                let proxy = rt.block_on(Self::start_on(listen, target, true))?;
                Ok((rt, proxy))
            })();
            match started {
                Ok((rt, mut proxy)) => {
                    let (stop, stopped) = tokio::sync::oneshot::channel();
                    proxy.stop = Some(stop);
                    let _ = tx.send(Ok(proxy));
                    let _ = rt.block_on(stopped);
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        rx.recv()?
    }

    async fn start_on(listen: SocketAddr, target: SocketAddr, h2: bool) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            mute: AtomicBool::new(false),
            trigger: Mutex::new(None),
            conns: Mutex::new(Vec::new()),
            h2,
            stall_epoch: std::sync::atomic::AtomicU64::new(0),
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
                        if conn_state.h2 {
                            let down = pump_frames(out_r, in_w, &conn_state);
                            tokio::select! { _ = up => {}, _ = down => {} }
                        } else {
                            let down = pump(out_r, in_w, &conn_state, true);
                            tokio::select! { _ = up => {}, _ = down => {} }
                        }
                    }
                });
                st.conns.lock().unwrap_or_else(|p| p.into_inner()).push(task.abort_handle());
            }
        })
        .abort_handle();
        Ok(TcpProxy { addr, state, accept, stop: None })
    }

    /// From now on, the server's DATA frames on every stream already open
    /// are dropped (a watch goes silent); streams opened later are served.
    /// Only for a proxy started with [`start_in_netns`](Self::start_in_netns).
    pub fn stall_open_streams(&self) {
        assert!(self.state.h2, "stalling streams needs an HTTP/2-aware proxy");
        self.state.stall_epoch.fetch_add(1, Ordering::SeqCst);
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

/// Copy the server's HTTP/2 frames to the client, whole frames at a time.
/// Once a stall is asked for, DATA frames of the streams seen before it are
/// dropped; everything else (settings, pings, new streams) passes.
async fn pump_frames(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, state: &State) {
    const HEADER: usize = 9;
    const DATA: u8 = 0;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut highest_stream = 0u32;
    let mut stalled_up_to = 0u32;
    let mut epoch = 0u64;
    loop {
        let n = match from.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.mute.load(Ordering::SeqCst) {
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        let now = state.stall_epoch.load(Ordering::SeqCst);
        if now != epoch {
            epoch = now;
            stalled_up_to = highest_stream;
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut at = 0;
        while buf.len() - at >= HEADER {
            let h = &buf[at..at + HEADER];
            let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
            if buf.len() - at < HEADER + len {
                break;
            }
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            highest_stream = highest_stream.max(stream);
            let stalled = h[3] == DATA && stream != 0 && stream <= stalled_up_to;
            if !stalled {
                out.extend_from_slice(&buf[at..at + HEADER + len]);
            }
            at += HEADER + len;
        }
        buf.drain(..at);
        if to.write_all(&out).await.is_err() {
            return;
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
