//! Helpers shared by the etcd integration tests.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_lab::EtcdServer;
use weft_subnet::{EtcdOptions, LeaseAttrs, NetworkConfig, Registry};

/// A fresh etcd. Panics loudly if etcd cannot run: these tests are never skipped.
pub(crate) fn etcd() -> EtcdServer {
    EtcdServer::start().unwrap_or_else(|e| panic!("cannot start the test etcd: {e:#}"))
}

pub(crate) async fn registry(endpoint: &str) -> Registry {
    Registry::connect(EtcdOptions::new(vec![endpoint.to_string()])).await.expect("connect to test etcd")
}

pub(crate) async fn put_config(reg: &Registry, json: &str) -> NetworkConfig {
    reg.put_config(json).await.expect("put config")
}

pub(crate) fn attrs(ip: Ipv4Addr) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Some(ip),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(serde_json::json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:01"}).into()),
        backend_v6_data: None,
        node_id: None,
    }
}

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
