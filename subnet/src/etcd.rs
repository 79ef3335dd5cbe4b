//! Connecting to etcd: endpoints, prefix, TLS and credentials, and the
//! time limit every request runs under.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::error::{Error, Result};

/// flanneld's default key prefix.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// flanneld's default endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// How to reach etcd, as given by the `--etcd-*` flags.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Limit for connecting and for each request.
    pub timeout: Duration,
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
            timeout: Duration::from_secs(5),
        }
    }

    fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Check the options and build the client's connect options. With any TLS
    /// file given, every endpoint must be `https://`: plain HTTP is never used.
    fn connect_options(&self) -> Result<(Vec<String>, ConnectOptions)> {
        if self.endpoints.is_empty() {
            return Err(Error::EtcdOptions("no etcd endpoint given (--etcd-endpoints)".into()));
        }
        let mut endpoints = Vec::new();
        for ep in &self.endpoints {
            let ep = ep.trim();
            let lower = ep.to_ascii_lowercase();
            if !(lower.starts_with("http://") || lower.starts_with("https://")) {
                return Err(Error::EtcdOptions(format!("endpoint {ep:?} must start with http:// or https://")));
            }
            if self.uses_tls() && lower.starts_with("http://") {
                return Err(Error::EtcdOptions(format!(
                    "endpoint {ep} is plain HTTP but TLS files are given; use https://"
                )));
            }
            endpoints.push(ep.to_string());
        }
        // Require a leader on every request and watch (etcd's Go clients:
        // WithRequireLeader): a member cut off from the others fails them at
        // once instead of serving a stale read or a watch that never fires.
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let https = endpoints.iter().any(|e| e.to_ascii_lowercase().starts_with("https://"));
        if self.uses_tls() || https {
            // Without --etcd-cafile the system's roots verify the server
            // (/etc/ssl/certs, or SSL_CERT_FILE / SSL_CERT_DIR).
            let mut tls = TlsOptions::new();
            if self.ca_file.is_none() {
                tls = tls.with_native_roots();
            }
            if let Some(ca) = &self.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca, "CA file")?));
            }
            match (&self.cert_file, &self.key_file) {
                (Some(cert), Some(key)) => {
                    tls = tls.identity(Identity::from_pem(read(cert, "certificate file")?, read(key, "key file")?));
                }
                (None, None) => {}
                _ => {
                    return Err(Error::EtcdOptions("--etcd-certfile and --etcd-keyfile must be given together".into()))
                }
            }
            opts = opts.with_tls(tls);
        }
        match (&self.username, &self.password) {
            // etcd's auth tokens expire (--auth-token-ttl, 300 s by
            // default): log in again whenever a request finds it stale.
            (Some(u), Some(p)) => opts = opts.with_user(u.clone(), p.clone()).with_auto_token_refresh(true),
            (Some(_), None) | (None, Some(_)) => {
                return Err(Error::EtcdOptions("--etcd-username and --etcd-password must be given together".into()))
            }
            (None, None) => {}
        }
        Ok((endpoints, opts))
    }

    /// The endpoints over which a password would travel in clear text
    /// (plain `http://` with `--etcd-password` set).
    pub fn cleartext_password_endpoints(&self) -> Vec<&str> {
        if self.password.is_none() {
            return Vec::new();
        }
        self.endpoints.iter().map(|e| e.trim()).filter(|e| e.to_ascii_lowercase().starts_with("http://")).collect()
    }

    /// Connect, failing with [`Error::Unreachable`] after `timeout`.
    pub async fn connect(&self) -> Result<Client> {
        let (endpoints, opts) = self.connect_options()?;
        self.limit(async { Client::connect(&endpoints, Some(opts)).await.map_err(Error::etcd("connect")) }).await
    }

    /// Run one etcd request under the time limit.
    pub async fn limit<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Err(Error::Etcd { op, source })) => Err(self.classify(op, source)),
            Ok(r) => r,
            Err(_) => {
                Err(Error::Unreachable { endpoints: self.endpoints.join(","), secs: self.timeout.as_secs().max(1) })
            }
        }
    }
}

impl EtcdOptions {
    /// Connection failures become [`Error::Unavailable`], which names the
    /// endpoints; anything else stays an error of the request.
    fn classify(&self, op: &'static str, source: etcd_client::Error) -> Error {
        let detail = match &source {
            etcd_client::Error::TransportError(e) => Some(chain(e)),
            etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::Unavailable => Some(s.message().to_string()),
            _ => None,
        };
        match detail {
            Some(detail) => Error::Unavailable { endpoints: self.endpoints.join(","), detail },
            None => Error::Etcd { op, source },
        }
    }
}

/// An error and its causes, `: `-separated (a transport error alone says
/// only "transport error"; its causes say e.g. which certificate failed).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

fn read(path: &PathBuf, what: &'static str) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::ReadFile { what, path: path.display().to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_never_falls_back_to_http() {
        let mut o = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()]);
        o.ca_file = Some("/nonexistent/ca.pem".into());
        let e = o.connect_options().unwrap_err().to_string();
        assert!(e.contains("plain HTTP but TLS files are given"), "{e}");
    }

    #[test]
    fn missing_tls_file_is_named() {
        let mut o = EtcdOptions::new(vec!["https://127.0.0.1:2379".into()]);
        o.ca_file = Some("/nonexistent/ca.pem".into());
        let e = o.connect_options().unwrap_err().to_string();
        assert!(e.contains("cannot read CA file /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn endpoints_need_a_scheme_and_credentials_come_in_pairs() {
        let o = EtcdOptions::new(vec!["127.0.0.1:2379".into()]);
        assert!(o.connect_options().unwrap_err().to_string().contains("must start with http://"));
        let mut o = EtcdOptions::new(vec!["http://127.0.0.1:2379".into()]);
        o.username = Some("root".into());
        assert!(o.connect_options().unwrap_err().to_string().contains("given together"));
        assert!(EtcdOptions::new(vec![]).connect_options().is_err());
    }
}
