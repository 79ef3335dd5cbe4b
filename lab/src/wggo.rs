//! Debian's `wireguard-go` (or `boringtun-cli`, which speaks the same
//! control protocol) on a lab node, configured with `wg` and `ip` as
//! flanneld configures its kernel WireGuard device: the independent
//! WireGuard implementations the wireguard backend is tested and measured
//! against. Killed on drop.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ipnet::Ipv4Net;

use crate::netns;
use crate::wait::wait_until;

/// The port wireguard-go listens on (flanneld's default `ListenPort`).
pub const PORT: u16 = 51820;

/// A `wireguard-go` (or `boringtun-cli`) process with its device in a
/// namespace.
pub struct WireguardGo {
    ns: String,
    pub dev: String,
    pub public_key: String,
    child: Child,
    log: PathBuf,
    key_file: PathBuf,
    /// The wireguard-go binary (`wireguard-go` on the PATH: Debian's).
    program: PathBuf,
}

fn wg_output(args: &[&str], input: Option<&str>) -> Result<String> {
    let mut c = Command::new("wg")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running wg (Debian's wireguard-tools)")?;
    if let Some(text) = input {
        c.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    }
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!("wg {args:?} failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl WireguardGo {
    /// Start `wireguard-go <dev>` in `ns` with a new key (kept in `dir`),
    /// listening on [`PORT`].
    pub fn start(ns: &str, dev: &str, dir: &Path) -> Result<WireguardGo> {
        Self::start_program(Path::new("wireguard-go"), ns, dev, dir)
    }

    /// The same with the wireguard-go binary at `program` (another build,
    /// such as bookworm-backports' unpacked under `target/`).
    pub fn start_program(program: &Path, ns: &str, dev: &str, dir: &Path) -> Result<WireguardGo> {
        let mut cmd = netns::exec(ns, program.to_str().context("wireguard-go path")?);
        cmd.env("WG_PROCESS_FOREGROUND", "1").arg(dev);
        let mut w = Self::start_with(cmd, ns, dev, dir)?;
        w.program = program.to_path_buf();
        Ok(w)
    }

    /// The same with `boringtun-cli` at `program` (cloudflare's userspace
    /// WireGuard, built from crates.io), in the foreground, keeping root.
    pub fn start_boringtun(program: &Path, ns: &str, dev: &str, dir: &Path) -> Result<WireguardGo> {
        let mut cmd = netns::exec(ns, program.to_str().context("boringtun-cli path")?);
        cmd.args(["--foreground", "--disable-drop-privileges", "--log"])
            .arg(dir.join(format!("{dev}.boringtun.log")))
            .arg(dev);
        Self::start_with(cmd, ns, dev, dir)
    }

    fn start_with(cmd: Command, ns: &str, dev: &str, dir: &Path) -> Result<WireguardGo> {
        let private = wg_output(&["genkey"], None)?;
        let public_key = wg_output(&["pubkey"], Some(&private))?;
        let key_file = dir.join(format!("{dev}.key"));
        std::fs::write(&key_file, &private)?;
        let log = dir.join(format!("{dev}.log"));
        let child = Self::spawn(cmd, &log)?;
        let program = PathBuf::from("wireguard-go");
        let w = WireguardGo { ns: ns.into(), dev: dev.into(), public_key, child, log, key_file, program };
        w.configure()?;
        Ok(w)
    }

    fn spawn(mut cmd: Command, log: &Path) -> Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdout(out.try_clone()?).stderr(out).spawn().with_context(|| format!("starting {:?}", cmd.get_program()))
    }

    /// Wait for the control socket, then set the key and the port.
    fn configure(&self) -> Result<()> {
        let sock = format!("/var/run/wireguard/{}.sock", self.dev);
        wait_until("the WireGuard process to open its control socket", Duration::from_secs(10), || {
            Path::new(&sock).exists().then_some(())
        })
        .with_context(|| self.log())?;
        let key = self.key_file.to_str().context("key path")?;
        self.wg(&["set", &self.dev, "private-key", key, "listen-port", &PORT.to_string()]).map(|_| ())
    }

    /// Kill `wireguard-go` (its device goes with it) and start it again
    /// with the same key, as a node restarts: peers and the device's
    /// address are to be set again.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.dev));
        let mut cmd = netns::exec(&self.ns, self.program.to_str().context("wireguard-go path")?);
        cmd.env("WG_PROCESS_FOREGROUND", "1").arg(&self.dev);
        self.child = Self::spawn(cmd, &self.log)?;
        self.configure()
    }

    fn wg(&self, args: &[&str]) -> Result<String> {
        let out = netns::run(netns::exec(&self.ns, "wg").args(args)).with_context(|| self.log())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A peer as flanneld adds one from a lease: its key, `PublicIP:Port`,
    /// its subnet as AllowedIPs.
    pub fn add_peer(&self, public_key: &str, endpoint: SocketAddr, allowed: Ipv4Net) -> Result<()> {
        self.wg(&[
            "set",
            &self.dev,
            "peer",
            public_key,
            "endpoint",
            &endpoint.to_string(),
            "allowed-ips",
            &allowed.to_string(),
        ])
        .map(|_| ())
    }

    /// The device as flanneld sets up `flannel-wg`: `<subnet>/32`, up with
    /// `mtu`, and a scope-link route for the whole network.
    pub fn set_up(&self, subnet: Ipv4Net, mtu: u32, network: Ipv4Net) -> Result<()> {
        let ip = |args: &[&str]| netns::run(netns::exec(&self.ns, "ip").args(args)).map(|_| ());
        ip(&["addr", "add", &format!("{}/32", subnet.network()), "dev", &self.dev])?;
        ip(&["link", "set", &self.dev, "mtu", &mtu.to_string(), "up"])?;
        ip(&["route", "add", &network.to_string(), "dev", &self.dev, "scope", "link"])
    }

    /// `wg show <dev> latest-handshakes`: `<peer key>\t<unix time>` lines.
    pub fn latest_handshakes(&self) -> Result<String> {
        self.wg(&["show", &self.dev, "latest-handshakes"])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WireguardGo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.dev));
    }
}
