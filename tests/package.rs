//! The Debian package that `scripts/package.sh` builds (scripts/test.sh
//! builds it before the tests run): lintian finds no error or warning,
//! systemd accepts its unit, and the binaries it installs run a lab: two
//! nodes of `usr/bin/weft` whose pods are wired by `usr/lib/cni/flannel`.

mod lab_common;

use std::path::Path;
use std::process::Command;

use lab_common::*;
use weft_lab::Lab;

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn extract(deb: &Path) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("weft-deb-").tempdir().unwrap();
    let (ok, out) = run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dir.path()));
    assert!(ok, "dpkg-deb -x: {out}");
    dir
}

#[test]
fn lintian_finds_nothing_wrong() {
    let deb = package();
    let (ok, out) = run(Command::new("lintian").arg("--fail-on").arg("error,warning").arg(&deb));
    let findings: Vec<&str> = out.lines().filter(|l| l.starts_with("E:") || l.starts_with("W:")).collect();
    assert!(ok && findings.is_empty(), "lintian: {out}");
}

#[test]
fn the_package_holds_what_a_node_needs() {
    let root = extract(&package());
    for path in [
        "usr/bin/weft",
        "usr/lib/cni/flannel",
        "usr/lib/cni/weft-cni",
        "lib/systemd/system/weft.service",
        "etc/default/weft",
        "usr/share/man/man1/weft.1.gz",
        "usr/share/man/man1/weft-run.1.gz",
        "usr/share/doc/weft/operations.md",
    ] {
        assert!(root.path().join(path).exists(), "{path} is not in the package");
    }
    let (_, conffiles) = run(Command::new("dpkg-deb").arg("-I").arg(package()).arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/default/weft");
    // It is where WEFT_ETCD_PASSWORD goes: readable by root alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.path().join("etc/default/weft")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "/etc/default/weft is {:o}", mode & 0o777);
    let defaults = std::fs::read_to_string(root.path().join("etc/default/weft")).unwrap();
    assert!(defaults.contains("#WEFT_ETCD_ENDPOINTS=") && defaults.contains("#FLANNELD_ETCD_ENDPOINTS="));
    let unit = std::fs::read_to_string(root.path().join("lib/systemd/system/weft.service")).unwrap();
    for line in [
        "Type=notify",
        "Restart=always",
        "StartLimitIntervalSec=0",
        "LimitNOFILE=65536",
        "EnvironmentFile=-/etc/default/weft",
        "ExecStart=/usr/bin/weft run",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    assert!(
        unit.contains("CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SYS_NICE")
            && unit.contains("ProtectSystem=strict")
    );
}

/// `systemd-analyze verify` on the unit, with the package's /usr laid over
/// the host's in a mount namespace of its own (so that ExecStart's
/// /usr/bin/weft exists without installing anything on the host).
#[test]
fn systemd_accepts_the_unit() {
    let root = extract(&package());
    let usr = root.path().join("usr");
    let unit = root.path().join("lib/systemd/system/weft.service");
    let script = format!(
        "mount --make-rprivate / && mount -t overlay overlay -o lowerdir={}:/usr /usr && systemd-analyze verify --man=no {}",
        usr.display(),
        unit.display()
    );
    let (ok, out) = run(Command::new("unshare").args(["-m", "sh", "-c", &script]));
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
}

#[test]
fn the_packaged_binaries_run_a_lab() {
    let root = extract(&package());
    let mut lab = Lab::new(2, root.path().join("usr/bin/weft")).unwrap_or_else(|e| panic!("{e:#}"));
    lab.cni_plugin = Some(root.path().join("usr/lib/cni/flannel"));
    lab.put_config(&config("vxlan")).unwrap();
    for i in 1..=2 {
        lab.start_daemon(i, &[]).unwrap();
    }
    for i in 1..=2 {
        lab.wait_ready(i, READY).unwrap_or_else(|e| panic!("{e:#}"));
        lab.attach_pod(i).unwrap_or_else(|e| panic!("{e:#}"));
    }
    wait_converged(&lab);
    assert_ping_matrix(&lab);
}
