//! The plugin's network config and the delegate config built from it, as
//! flannel's CNI plugin builds it:
//!
//! - `delegate` (optional) is the base; it may set `type` (default
//!   `bridge`) and any of the delegate's options, but not `name` or `ipam`;
//! - `name` and `cniVersion` come from the network config, and
//!   `runtimeConfig` when given;
//! - `ipMasq` defaults to the opposite of `FLANNEL_IPMASQ` (when the daemon
//!   masquerades, the bridge must not), `mtu` to `FLANNEL_MTU`, and for
//!   `bridge` `isGateway` to true;
//! - `ipam` is the network config's `ipam` (default type `host-local`) with
//!   `ranges` set to the node's subnet(s) and `routes` extended by one route
//!   to each overlay network.
//!
//! Pure: JSON in, JSON out.

use serde_json::{json, Map, Value};

use crate::error::{code, CniError};
use crate::subnet_file::SubnetFile;

/// The fields of the plugin's own config that matter before the subnet file
/// is read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NetConf {
    pub(crate) raw: Map<String, Value>,
    pub(crate) cni_version: String,
    pub(crate) subnet_file: String,
    pub(crate) data_dir: String,
}

pub(crate) const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub(crate) const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// The CNI spec versions this plugin speaks.
pub(crate) const SUPPORTED: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

impl NetConf {
    /// Parse the config from stdin.
    pub(crate) fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(code::DECODE, format!("the network config on stdin is not JSON: {e}")))?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(code::DECODE, "the network config on stdin is not a JSON object"));
        };
        let text = |key: &str, default: &str| -> Result<String, CniError> {
            match raw.get(key) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(CniError::new(code::INVALID_CONFIG, format!("{key} must be a string, not {other}"))),
            }
        };
        let conf = NetConf {
            cni_version: text("cniVersion", "")?,
            subnet_file: text("subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: text("dataDir", DEFAULT_DATA_DIR)?,
            raw: raw.clone(),
        };
        if !SUPPORTED.contains(&conf.cni_version.as_str()) {
            return Err(CniError::with_details(
                code::INCOMPATIBLE_VERSION,
                format!("cniVersion {:?} is not supported", conf.cni_version),
                format!("supported: {}", SUPPORTED.join(", ")),
            ));
        }
        Ok(conf)
    }

    /// The config handed to the delegate for ADD.
    pub(crate) fn delegate(&self, subnet: &SubnetFile) -> Result<Value, CniError> {
        let invalid = |msg: &str| CniError::new(code::INVALID_CONFIG, msg);
        let mut d = match self.raw.get("delegate") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(invalid("'delegate', if present, must be an object")),
        };
        if d.get("type").is_some_and(|t| !t.is_string()) {
            return Err(invalid("'delegate' dictionary, if present, must have a (string) 'type' field"));
        }
        if d.contains_key("name") {
            return Err(invalid(
                "'delegate' dictionary must not have a 'name' field: it is set from the network's name",
            ));
        }
        if d.contains_key("ipam") {
            return Err(invalid(
                "'delegate' dictionary must not have an 'ipam' field: it is built from the subnet file",
            ));
        }
        if let Some(rc) = self.raw.get("runtimeConfig").filter(|v| !v.is_null()) {
            d.insert("runtimeConfig".into(), rc.clone());
        }
        d.insert("name".into(), self.raw.get("name").cloned().unwrap_or(Value::Null));
        d.entry("type").or_insert_with(|| json!("bridge"));
        d.entry("ipMasq").or_insert_with(|| json!(!subnet.ip_masq));
        d.entry("mtu").or_insert_with(|| json!(subnet.mtu));
        if d.get("type") == Some(&json!("bridge")) {
            d.entry("isGateway").or_insert_with(|| json!(true));
        }
        if !self.cni_version.is_empty() {
            d.insert("cniVersion".into(), json!(self.cni_version));
        }
        d.insert("ipam".into(), self.ipam(subnet)?);
        Ok(Value::Object(d))
    }

    fn ipam(&self, subnet: &SubnetFile) -> Result<Value, CniError> {
        let mut ipam = match self.raw.get("ipam") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(CniError::new(code::INVALID_CONFIG, "'ipam', if present, must be an object")),
        };
        ipam.entry("type").or_insert_with(|| json!("host-local"));
        let ranges: Vec<Value> = subnet.subnets.iter().map(|s| json!([{"subnet": s.to_string()}])).collect();
        ipam.insert("ranges".into(), Value::Array(ranges));
        let mut routes = match ipam.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(r)) => r.clone(),
            Some(_) => return Err(CniError::new(code::INVALID_CONFIG, "failed to parse ipam.routes: not a list")),
        };
        routes.extend(subnet.networks.iter().map(|n| json!({"dst": n.to_string()})));
        ipam.insert("routes".into(), Value::Array(routes));
        Ok(Value::Object(ipam))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet(masq: bool) -> SubnetFile {
        let text = format!(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ={masq}\n"
        );
        crate::subnet_file::parse("s", &text).unwrap()
    }

    #[test]
    fn the_delegate_is_what_flannels_plugin_builds() {
        let conf =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"cbr0","type":"flannel","delegate":{"hairpinMode":true}}"#)
                .unwrap();
        assert_eq!((conf.subnet_file.as_str(), conf.data_dir.as_str()), (DEFAULT_SUBNET_FILE, DEFAULT_DATA_DIR));
        let d = conf.delegate(&subnet(true)).unwrap();
        assert_eq!(
            d,
            json!({
                "cniVersion": "1.0.0",
                "name": "cbr0",
                "type": "bridge",
                "hairpinMode": true,
                "ipMasq": false,
                "mtu": 1450,
                "isGateway": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.244.3.0/24"}]],
                    "routes": [{"dst": "10.244.0.0/16"}]
                }
            })
        );
        // Without masquerading in the daemon, the bridge masquerades.
        assert_eq!(conf.delegate(&subnet(false)).unwrap()["ipMasq"], json!(true));
    }

    #[test]
    fn given_values_win_and_ipam_routes_are_extended() {
        let conf = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","type":"flannel","subnetFile":"/tmp/s.env","dataDir":"/tmp/d",
                 "runtimeConfig":{"portMappings":[]},
                 "delegate":{"type":"bridge","mtu":1400,"ipMasq":true,"isGateway":false},
                 "ipam":{"routes":[{"dst":"192.0.2.0/24"}]}}"#,
        )
        .unwrap();
        assert_eq!((conf.subnet_file.as_str(), conf.data_dir.as_str()), ("/tmp/s.env", "/tmp/d"));
        let d = conf.delegate(&subnet(true)).unwrap();
        assert_eq!((&d["mtu"], &d["ipMasq"], &d["isGateway"]), (&json!(1400), &json!(true), &json!(false)));
        assert_eq!(d["runtimeConfig"], json!({"portMappings": []}));
        assert_eq!(d["ipam"]["routes"], json!([{"dst": "192.0.2.0/24"}, {"dst": "10.244.0.0/16"}]));
        // Another delegate type gets no isGateway.
        let c = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","delegate":{"type":"ipvlan"}}"#).unwrap();
        assert!(c.delegate(&subnet(true)).unwrap().get("isGateway").is_none());
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        let code_of = |e: CniError| match e {
            CniError::Own { code, msg, .. } => (code, msg),
            CniError::Delegate(_) => unreachable!(),
        };
        assert_eq!(code_of(NetConf::parse(b"{oops").unwrap_err()).0, code::DECODE);
        assert_eq!(code_of(NetConf::parse(b"[1]").unwrap_err()).0, code::DECODE);
        assert_eq!(code_of(NetConf::parse(br#"{"cniVersion":"9.9.9"}"#).unwrap_err()).0, code::INCOMPATIBLE_VERSION);
        for (delegate, says) in [
            (r#"{"name":"x"}"#, "must not have a 'name'"),
            (r#"{"ipam":{}}"#, "must not have an 'ipam'"),
            (r#"{"type":7}"#, "(string) 'type'"),
        ] {
            let text = format!(r#"{{"cniVersion":"1.0.0","name":"n","delegate":{delegate}}}"#);
            let (code, msg) = code_of(NetConf::parse(text.as_bytes()).unwrap().delegate(&subnet(true)).unwrap_err());
            assert_eq!(code, code::INVALID_CONFIG);
            assert!(msg.contains(says), "{msg}");
        }
    }
}
