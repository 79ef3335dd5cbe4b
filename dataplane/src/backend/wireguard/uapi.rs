//! WireGuard's cross-platform userspace API on
//! `/var/run/wireguard/<device>.sock`: what `wg show`, `wg showconf` and
//! wgctrl-based tools read from wireguard-go and boringtun, read here from
//! weft's peers. `get=1` answers with the device and every peer (its
//! current endpoint, latest handshake, bytes each way, AllowedIPs); `set=1`
//! is refused with EPERM and logged, as the peers are the leases' to set.
//!
//! The socket is 0600 (the private key is in the answer), made afresh at
//! start (a stale one left by a crash is replaced, a live one of another
//! process is left alone and said) and removed at shutdown. Each client
//! gets 5 s and at most 64 KiB of request; at most 8 are served at once.

use std::fmt::Write as _;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::state::{lock, WgShared};

/// Clients served at once; more wait.
const CLIENTS: usize = 8;
/// One client's time, all of its operations together.
const CLIENT_TIME: Duration = Duration::from_secs(5);
/// The most a client may send.
const MAX_REQUEST: u64 = 64 * 1024;
/// What `set=1` gets: -EPERM (the protocol's errno is negated; `wg` says
/// "Operation not permitted").
const EPERM: i32 = -1;
/// -EINVAL: a `get=1` followed by something else than its empty line.
const EINVAL: i32 = -22;

/// What a `get=1` answer is made from, beyond the shared state.
#[derive(Clone)]
pub(crate) struct Device {
    pub(crate) name: &'static str,
    pub(crate) shared: Arc<WgShared>,
    pub(crate) port: u16,
    pub(crate) psk: Option<[u8; 32]>,
    pub(crate) keepalive: u16,
}

fn hex(key: &[u8; 32]) -> String {
    key.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A private key as the kernel and wireguard-go keep and show it: clamped
/// as X25519 uses it (the same key; `wg showconf` then matches theirs).
fn clamped(mut key: [u8; 32]) -> [u8; 32] {
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    key
}

/// The answer to `get=1`, without its `errno` line: device lines, then
/// each peer's, in the order of their subnets.
pub(crate) fn render(dev: &Device, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "private_key={}", hex(&clamped(dev.shared.private.to_bytes())));
    let _ = writeln!(out, "listen_port={}", dev.port);
    let set = dev.shared.peers.load();
    let mut peers: Vec<_> = set.states.values().collect();
    peers.sort_by_key(|p| p.subnet);
    for p in peers {
        let (age, endpoint, tx, rx) = {
            let s = lock(&p.session);
            let (age, tx, rx) = s.stats();
            (age, s.endpoint, tx, rx)
        };
        let _ = writeln!(out, "public_key={}", hex(&p.peer.public_key.0));
        let _ = writeln!(out, "preshared_key={}", hex(&dev.psk.unwrap_or([0; 32])));
        let _ = writeln!(out, "protocol_version=1");
        let _ = writeln!(out, "endpoint={endpoint}");
        let at = age.and_then(|a| now.checked_sub(a)).and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok());
        let at = at.unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", at.as_secs());
        let _ = writeln!(out, "last_handshake_time_nsec={}", at.subsec_nanos());
        let _ = writeln!(out, "tx_bytes={tx}");
        let _ = writeln!(out, "rx_bytes={rx}");
        let _ = writeln!(out, "persistent_keepalive_interval={}", dev.keepalive);
        for net in &p.peer.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
    }
    out
}

/// The socket of one device, served until dropped.
pub(crate) struct Uapi {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl Uapi {
    /// Serve `dev` on `<dir>/<name>.sock`. An error names the path and
    /// why; the caller says it (the device forwards regardless).
    pub(crate) fn serve(dir: &Path, dev: Device) -> io::Result<Uapi> {
        let path = dir.join(format!("{}.sock", dev.name));
        std::fs::create_dir_all(dir)?;
        clear_stale(&path)?;
        // The answer holds the private key: only root may connect. The
        // socket is bound in a directory only root can enter, made 0600,
        // and only then moved to where clients look.
        let private = dir.join(format!(".{}.{}", dev.name, std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let staged = private.join("sock");
        let bound = UnixListener::bind(&staged).and_then(|l| {
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, &path)?;
            Ok(l)
        });
        let _ = std::fs::remove_dir_all(&private);
        let listener = bound?;
        info!(socket = %path.display(), "serving the WireGuard userspace API (wg show {})", dev.name);
        let task = tokio::spawn(accept(listener, dev));
        Ok(Uapi { path, task })
    }
}

impl Drop for Uapi {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A socket file at `path` nobody answers on is removed (left by a crash);
/// one somebody answers on is another process's device: an error.
fn clear_stale(path: &Path) -> io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a file that is not a socket is in the way"));
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process serves this device's socket (a wireguard-go device of the same name?)",
        ));
    }
    std::fs::remove_file(path)
}

async fn accept(listener: UnixListener, dev: Device) {
    let slots = Arc::new(Semaphore::new(CLIENTS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(device = dev.name, "accepting a userspace API client failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dev = dev.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CLIENT_TIME, client(stream, &dev)).await;
            drop(permit);
        });
    }
}

/// One client's operations, as `wg` and wgctrl send them: `get=1` and
/// `set=1`, each ended by an empty line, each answered with `errno=N`.
async fn client(stream: UnixStream, dev: &Device) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read.take(MAX_REQUEST));
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let answer = match line.as_str() {
            "get=1\n" => {
                line.clear();
                read.read_line(&mut line).await?;
                if line == "\n" {
                    format!("{}errno=0\n\n", render(dev, SystemTime::now()))
                } else {
                    format!("errno={EINVAL}\n\n")
                }
            }
            "set=1\n" => {
                // Read the whole request, so the answer comes after it.
                let mut keys = Vec::new();
                loop {
                    line.clear();
                    if read.read_line(&mut line).await? == 0 || line == "\n" {
                        break;
                    }
                    let key = line.split('=').next().unwrap_or("").trim().to_string();
                    if !keys.contains(&key) && keys.len() < 8 {
                        keys.push(key);
                    }
                }
                warn!(
                    device = dev.name,
                    keys = %keys.join(","),
                    "refused a WireGuard configuration change (wg set, wg setconf): weft sets the peers from the leases in etcd"
                );
                format!("errno={EPERM}\n\n")
            }
            _ => return Ok(()),
        };
        write.write_all(answer.as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_and_whole() {
        let mut k = [0u8; 32];
        k[0] = 0xab;
        k[31] = 0x01;
        let h = hex(&k);
        assert_eq!(h.len(), 64);
        assert!(h.starts_with("ab00") && h.ends_with("0001"), "{h}");
    }
}
