//! TLS and user/password access to etcd, against real servers.

use std::process::{Command, Output};

use weft_lab::EtcdServer;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn weft(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args)
        .env_remove("WEFT_ETCD_USERNAME")
        .env_remove("WEFT_ETCD_PASSWORD")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

const CONFIG: &str = r#"{"Network":"10.244.0.0/16"}"#;

#[test]
fn tls_etcd_works_with_certificates_and_never_over_http() {
    let etcd = EtcdServer::start_tls().unwrap_or_else(|e| panic!("cannot start TLS etcd: {e:#}"));
    let tls = etcd.tls_files().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("net.json");
    std::fs::write(&file, CONFIG).unwrap();
    let (ca, cert, key) =
        (tls.ca.to_str().unwrap(), tls.client_cert.to_str().unwrap(), tls.client_key.to_str().unwrap());
    let ep = etcd.endpoint();
    assert!(ep.starts_with("https://"));
    let flags = ["--etcd-endpoints", &ep, "--etcd-cafile", ca, "--etcd-certfile", cert, "--etcd-keyfile", key];

    let out = weft(&[&flags[..], &["config", "put", file.to_str().unwrap()]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = weft(&[&flags[..], &["config", "get"]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), CONFIG);

    // TLS files given but an http:// endpoint: refused before any connection.
    let http_ep = ep.replace("https://", "http://");
    let out = weft(&["--etcd-endpoints", &http_ep, "--etcd-cafile", ca, "config", "get"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("plain HTTP but TLS files are given"), "{}", text(&out.stderr));

    // The server requires a client certificate: without one, no access.
    let out = weft(&["--etcd-endpoints", &ep, "--etcd-cafile", ca, "config", "get"], &[]);
    assert!(!out.status.success(), "access without a client certificate");

    // https:// without --etcd-cafile verifies the server with the system's
    // roots (here pointed at the test CA by SSL_CERT_FILE, which the system
    // store honours) ...
    let no_ca = ["--etcd-endpoints", &ep, "--etcd-certfile", cert, "--etcd-keyfile", key, "config", "get"];
    let out = weft(&no_ca, &[("SSL_CERT_FILE", ca)]);
    assert!(out.status.success(), "system roots: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), CONFIG);
    // ... and a server the system's store (Debian's ca-certificates) does
    // not trust is refused, saying why.
    let out = weft(&no_ca, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach etcd") && err.contains("invalid peer certificate"), "{err}");
}

fn etcdctl(ep: &str, args: &[&str]) {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ep}"))
        .args(args)
        .output()
        .expect("etcdctl (Debian package etcd-client)");
    assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out.stderr));
}

#[test]
fn username_and_password_from_flags_or_flanneld_environment() {
    let etcd = EtcdServer::start().unwrap_or_else(|e| panic!("cannot start the test etcd: {e:#}"));
    let ep = etcd.endpoint();
    etcdctl(&ep, &["user", "add", "root:s3cret"]);
    etcdctl(&ep, &["user", "grant-role", "root", "root"]);
    etcdctl(&ep, &["auth", "enable"]);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("net.json");
    std::fs::write(&file, CONFIG).unwrap();
    let put = ["--etcd-endpoints", &ep, "config", "put", file.to_str().unwrap()];

    let out = weft(&put, &[]);
    assert!(!out.status.success(), "auth is enabled, anonymous writes must fail");

    let out = weft(&[&put[..], &["--etcd-username", "root", "--etcd-password", "s3cret"]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // flanneld's environment variables work unchanged.
    let out = weft(
        &["--etcd-endpoints", &ep, "config", "get"],
        &[("FLANNELD_ETCD_USERNAME", "root"), ("FLANNELD_ETCD_PASSWORD", "s3cret")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), CONFIG);

    let out =
        weft(&["--etcd-endpoints", &ep, "--etcd-username", "root", "--etcd-password", "wrong", "config", "get"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("authentication failed"), "{}", text(&out.stderr));

    // From a file (its first line; a systemd credential ends with a newline).
    let secret = dir.path().join("etcd-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let get = ["--etcd-endpoints", &ep, "--etcd-username", "root", "config", "get"];
    let out = weft(&[&get[..], &["--etcd-password-file", secret.to_str().unwrap()]].concat(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), CONFIG);
    let out = weft(&get, &[("WEFT_ETCD_PASSWORD_FILE", secret.to_str().unwrap())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A missing or empty file, or both ways at once: a clear error.
    let missing = dir.path().join("missing");
    let out = weft(&[&get[..], &["--etcd-password-file", missing.to_str().unwrap()]].concat(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read the etcd password from"), "{}", text(&out.stderr));
    std::fs::write(&secret, "\n").unwrap();
    let out = weft(&[&get[..], &["--etcd-password-file", secret.to_str().unwrap()]].concat(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("holds no password"), "{}", text(&out.stderr));
    let both = [&get[..], &["--etcd-password", "s3cret", "--etcd-password-file", "/dev/null"]].concat();
    let out = weft(&both, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot be used with"), "{}", text(&out.stderr));
}
