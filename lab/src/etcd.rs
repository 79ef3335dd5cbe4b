//! A real etcd server for tests: its own data directory, free loopback
//! ports, killed and removed on drop (also when a test panics), and killed
//! by the kernel if the test process dies first (`PR_SET_PDEATHSIG`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A running etcd.
pub struct EtcdServer {
    child: Child,
    client_addr: SocketAddr,
    netns: Option<String>,
    _dir: tempfile::TempDir,
    log: PathBuf,
    tls: Option<TlsFiles>,
}

/// Certificates of a TLS etcd (made with the `openssl` command).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Where the etcd binary is: `$WEFT_ETCD_BIN`, else `etcd` on `PATH`.
pub fn etcd_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WEFT_ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/bin", "/usr/local/bin"]) {
        let p = PathBuf::from(dir).join("etcd");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("etcd is not installed: run `scripts/setup.sh` (installs Debian's etcd-server) or set WEFT_ETCD_BIN")
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl EtcdServer {
    /// Start etcd and wait until it answers `/health`.
    pub fn start() -> Result<EtcdServer> {
        Self::start_inner(false)
    }

    /// Start etcd serving clients over TLS only, requiring client
    /// certificates signed by a CA made for this server.
    pub fn start_tls() -> Result<EtcdServer> {
        Self::start_inner(true)
    }

    /// The client certificates, for a TLS server.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// Start etcd inside network namespace `ns`, serving clients on
    /// `ip:2379` and on that namespace's loopback.
    pub fn start_in_netns(ns: &str, ip: std::net::Ipv4Addr) -> Result<EtcdServer> {
        let bin = etcd_binary()?;
        Self::try_start_at(&bin, false, Some((ns.to_string(), ip)))
    }

    fn start_inner(tls: bool) -> Result<EtcdServer> {
        let bin = etcd_binary()?;
        let mut last_err = None;
        // Ports are picked by binding port 0 and releasing it; another
        // process may grab one in between, so a failed start is retried.
        for _ in 0..5 {
            match Self::try_start(&bin, tls) {
                Ok(s) => return Ok(s),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("etcd did not start")))
    }

    fn try_start(bin: &PathBuf, tls: bool) -> Result<EtcdServer> {
        Self::try_start_at(bin, tls, None)
    }

    fn try_start_at(bin: &PathBuf, tls: bool, netns: Option<(String, std::net::Ipv4Addr)>) -> Result<EtcdServer> {
        let dir = tempfile::Builder::new().prefix("weft-etcd-").tempdir()?;
        // In its own namespace etcd has the ports to itself.
        let (client_port, peer_port) = match netns {
            Some(_) => (2379, 2380),
            None => (free_port()?, free_port()?),
        };
        let scheme = if tls { "https" } else { "http" };
        let host = netns.as_ref().map(|(_, ip)| *ip).unwrap_or(std::net::Ipv4Addr::LOCALHOST);
        let client = format!("{scheme}://{host}:{client_port}");
        // In a lab namespace also on the IPv6 underlay address, for nodes
        // with an IPv6-only underlay.
        let listen = match netns {
            Some((_, ip)) => format!(
                "{client},{scheme}://[{}]:{client_port},{scheme}://127.0.0.1:{client_port}",
                crate::lab::underlay_ip6(ip)
            ),
            None => client.clone(),
        };
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = dir.path().join("etcd.log");
        let logfile = std::fs::File::create(&log)?;
        let mut cmd = match &netns {
            Some((ns, _)) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("--name=weft-test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=weft-test={peer}"))
            .arg("--initial-cluster-state=new")
            // Tests change thousands of leases in one transaction (default 128 ops).
            .arg("--max-txn-ops=20000");
        let tls_files = if tls { Some(make_certs(dir.path())?) } else { None };
        if let Some(t) = &tls_files {
            let d = dir.path();
            cmd.arg(format!("--cert-file={}", d.join("server.pem").display()))
                .arg(format!("--key-file={}", d.join("server.key").display()))
                .arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg("--client-cert-auth");
        }
        cmd.stdin(Stdio::null()).stdout(logfile.try_clone()?).stderr(logfile);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches
        // no memory of the parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let mut server = EtcdServer {
            child,
            client_addr: SocketAddr::from((host, client_port)),
            netns: netns.as_ref().map(|(ns, _)| ns.clone()),
            _dir: dir,
            log,
            tls: tls_files,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("etcd exited with {status}: {}", server.log_tail());
            }
            if server.healthy() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("etcd did not become healthy within 20 s: {}", server.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        if let Some(ns) = &self.netns {
            return Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "etcdctl",
                    "--endpoints=http://127.0.0.1:2379",
                    "--command-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        }
        if let Some(t) = &self.tls {
            return Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoint()))
                .arg(format!("--cacert={}", t.ca.display()))
                .arg(format!("--cert={}", t.client_cert.display()))
                .arg(format!("--key={}", t.client_key.display()))
                .args(["--command-timeout=1s", "endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        }
        let Ok(mut s) = TcpStream::connect_timeout(&self.client_addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n").is_err() {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.contains("\"health\":\"true\"")
    }

    /// The client URL, e.g. `http://127.0.0.1:40123` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr)
    }

    /// The client address.
    pub fn addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// The last lines etcd logged, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &std::path::Path) -> Result<TlsFiles> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (Debian package openssl)")?;
        if !out.status.success() {
            bail!("openssl {:?} failed: {}", args, String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec[..],
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=weft-test-ca"][..],
    ]
    .concat())?;
    for (name, usage) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let pem = format!("{name}.pem");
        let ext = format!("{name}.ext");
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )?;
        run(&[&["req"][..], &ec[..], &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN=weft-test-{name}")][..]]
            .concat())?;
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ])?;
    }
    Ok(TlsFiles { ca: dir.join("ca.pem"), client_cert: dir.join("client.pem"), client_key: dir.join("client.key") })
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
