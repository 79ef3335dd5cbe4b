use super::*;

fn ok(json: &str) -> NetworkConfig {
    NetworkConfig::parse(json).unwrap_or_else(|e| panic!("{json} should be valid: {e}"))
}

fn err(json: &str) -> String {
    match NetworkConfig::parse(json) {
        Ok(c) => panic!("{json} should be invalid, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_follow_flanneld() {
    // (Network, expected SubnetLen, expected SubnetMin, expected SubnetMax)
    let table = [
        ("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0"),
        ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
        ("10.244.0.0/22", 24, "10.244.1.0", "10.244.3.0"),
        ("10.244.0.0/23", 25, "10.244.0.128", "10.244.1.128"),
        ("10.244.0.0/28", 30, "10.244.0.4", "10.244.0.12"),
    ];
    for (net, len, min, max) in table {
        let c = ok(&format!(r#"{{"Network":"{net}"}}"#));
        assert_eq!(c.ipv4.as_ref().unwrap().subnet_len, len, "{net}");
        assert_eq!(c.ipv4.as_ref().unwrap().subnet_min.to_string(), min, "{net}");
        assert_eq!(c.ipv4.as_ref().unwrap().subnet_max.to_string(), max, "{net}");
        assert_eq!(
            c.backend,
            BackendConfig::Udp(UdpOptions {
                port: 8285,
                mtu: None,
                offload: true,
                queues: None,
                realtime_threads: false,
                latency_lane: true
            })
        );
        assert!(c.ipv6.is_none());
    }
}

#[test]
fn explicit_values_are_kept() {
    let c = ok(r#"{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMin":"10.244.1.64","SubnetMax":"10.244.2.0",
                  "Backend":{"Type":"vxlan","VNI":42,"Port":4789,"GBP":true,"DirectRouting":true,"MTU":1400}}"#);
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_len, 26);
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_min, Ipv4Addr::new(10, 244, 1, 64));
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_max, Ipv4Addr::new(10, 244, 2, 0));
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_count(), 4);
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanOptions {
            vni: 42,
            port: 4789,
            gbp: true,
            direct_routing: true,
            learning: false,
            mtu: Some(1400)
        })
    );
}

#[test]
fn backend_defaults() {
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
    assert_eq!(
        c.backend,
        BackendConfig::Vxlan(VxlanOptions {
            vni: 1,
            port: 8472,
            gbp: false,
            direct_routing: false,
            learning: false,
            mtu: None
        })
    );
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#);
    assert_eq!(c.backend.type_name(), "host-gw");
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{}}"#);
    assert_eq!(c.backend.type_name(), "udp");
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000,"Offload":false,"Queues":2}}"#);
    assert_eq!(
        c.backend,
        BackendConfig::Udp(UdpOptions {
            port: 9000,
            mtu: None,
            offload: false,
            queues: Some(2),
            realtime_threads: false,
            latency_lane: true
        })
    );
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","RealtimeThreads":true}}"#);
    assert!(matches!(c.backend, BackendConfig::Udp(UdpOptions { realtime_threads: true, .. })));
    let e = err(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","RealtimeThreads":"yes"}}"#);
    assert!(e.contains("RealtimeThreads"), "the error names the field: {e}");
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","LatencyLane":false}}"#);
    assert!(matches!(c.backend, BackendConfig::Udp(UdpOptions { latency_lane: false, .. })));
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#);
    assert!(matches!(c.backend, BackendConfig::Wireguard(WireguardOptions { latency_lane: true, .. })));
    let c = ok(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","LatencyLane":false}}"#);
    assert!(matches!(c.backend, BackendConfig::Wireguard(WireguardOptions { latency_lane: false, .. })));
    let e = err(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","LatencyLane":"no"}}"#);
    assert!(e.contains("LatencyLane"), "the error names the field: {e}");
    let e = err(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","LatencyLane":1}}"#);
    assert!(e.contains("LatencyLane"), "the error names the field: {e}");
}

#[test]
fn host_bits_are_masked_like_flanneld() {
    let c = ok(r#"{"Network":"10.244.7.9/16"}"#);
    assert_eq!(c.network().unwrap().to_string(), "10.244.0.0/16");
}

#[test]
fn ipv6_is_parsed_and_defaulted() {
    let c = ok(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}"#);
    let v6 = c.ipv6.expect("ipv6 settings");
    assert_eq!(v6.subnet_len, 64);
    assert_eq!(v6.subnet_min.to_string(), "fd00:10:244:1::");
    assert_eq!(v6.subnet_max.to_string(), "fd00:10:244:ff::");
}

#[test]
fn ipv6_only_networks_have_no_ipv4_part() {
    let c = ok(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"vxlan"}}"#);
    assert!(c.ipv6_only());
    assert_eq!((c.ipv4.as_ref(), c.network()), (None, None));
    assert_eq!(c.network6().unwrap().to_string(), "fd10:244::/56");
    assert!(c.ipv4_fits(None) && !c.ipv4_fits(Some(&"10.244.1.0/24".parse().unwrap())));
    assert!(c.ipv6_fits(Some(&"fd10:244:0:1::/64".parse().unwrap())) && !c.ipv6_fits(None));
    let e = err(r#"{"EnableIPv4":false,"EnableIPv6":true}"#);
    assert!(e.contains("field IPv6Network is required"), "{e}");
    let e =
        err(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{"Type":"wireguard"}}"#);
    assert!(e.contains("does not run IPv6-only networks"), "{e}");
}

#[test]
fn bad_configs_name_the_field_and_rule() {
    // (config, a fragment the message must contain)
    let table = [
        ("not json", "not valid JSON"),
        ("[1,2]", "must be a JSON object"),
        ("{}", "field Network is required"),
        (r#"{"Network":"10.244.0.0"}"#, "field Network: \"10.244.0.0\" is not a valid IPv4 CIDR"),
        (r#"{"Network":"banana"}"#, "field Network"),
        (r#"{"Network":16}"#, "field Network: expected a string, found number 16"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":33}"#, "field SubnetLen: 33 is too long"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#, "field SubnetLen: 31 is too long"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#, "field SubnetLen: 17 is too short"),
        (r#"{"Network":"10.244.0.0/16","SubnetLen":-1}"#, "field SubnetLen: expected a non-negative integer"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
            "field SubnetLen: expected a non-negative integer, found string",
        ),
        (r#"{"Network":"10.244.0.0/30"}"#, "field Network: 10.244.0.0/30 is too small"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#,
            "field SubnetMin: 10.245.0.0 is outside Network 10.244.0.0/16",
        ),
        (r#"{"Network":"10.244.0.0/16","SubnetMax":"192.168.0.0"}"#, "field SubnetMax: 192.168.0.0 is outside Network"),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.5"}"#,
            "field SubnetMin: 10.244.1.5 is not on a /24 boundary",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.x.0"}"#,
            "field SubnetMin: \"10.244.x.0\" is not a valid IPv4 address",
        ),
        (
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
            "SubnetMin 10.244.9.0 is above SubnetMax 10.244.3.0",
        ),
        (r#"{"Network":"10.244.0.0/16","EnableIPv4":"yes"}"#, "field EnableIPv4: expected true or false"),
        (r#"{"Network":"10.244.0.0/16","EnableIPv4":false,"EnableIPv6":false}"#, "enable at least one"),
        (r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#, "field IPv6Network is required"),
        (r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#, "field IPv6Network"),
        (
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#,
            "field IPv6SubnetLen: 127",
        ),
        (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"gre"}}"#, "field Backend.Type: unknown backend type \"gre\""),
        (r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#, "field Backend: expected an object"),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
            "field Backend.VNI: 16777216 does not fit in 24 bits",
        ),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
            "field Backend.Port: 70000 is not a UDP port",
        ),
        (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","MTU":100}}"#, "field Backend.MTU: 100 is outside"),
        (
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Queues":64}}"#,
            "field Backend.Queues: 64 is more than 16",
        ),
        (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","GBP":"on"}}"#, "field GBP: expected true or false"),
    ];
    for (json, want) in table {
        let msg = err(json);
        assert!(msg.contains(want), "config {json}\n  message {msg:?}\n  should contain {want:?}");
    }
}

#[test]
fn leasable_and_nth_subnet() {
    let c = ok(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.16.0"}"#);
    assert_eq!(c.ipv4.as_ref().unwrap().subnet_count(), 16);
    assert_eq!(c.ipv4.as_ref().unwrap().nth_subnet(0).unwrap().to_string(), "10.244.1.0/24");
    assert_eq!(c.ipv4.as_ref().unwrap().nth_subnet(15).unwrap().to_string(), "10.244.16.0/24");
    assert_eq!(c.ipv4.as_ref().unwrap().nth_subnet(16), None);
    assert!(c.ipv4.as_ref().unwrap().is_leasable(&"10.244.5.0/24".parse().unwrap()));
    assert!(!c.ipv4.as_ref().unwrap().is_leasable(&"10.244.17.0/24".parse().unwrap()), "above SubnetMax");
    assert!(!c.ipv4.as_ref().unwrap().is_leasable(&"10.244.0.0/24".parse().unwrap()), "below SubnetMin");
    assert!(!c.ipv4.as_ref().unwrap().is_leasable(&"10.244.5.0/25".parse().unwrap()), "wrong length");
    assert!(!c.ipv4.as_ref().unwrap().is_leasable(&"10.245.5.0/24".parse().unwrap()), "outside network");
}

#[test]
fn wireguard_options_have_flanneld_defaults_and_clear_errors() {
    use super::{parse_wireguard_options, WireguardMode};
    let backend = |json: &str| parse_wireguard_options(&serde_json::from_str(json).unwrap());
    let d = backend(r#"{"Type":"wireguard"}"#).unwrap();
    assert_eq!((d.listen_port, d.listen_port_v6, d.persistent_keepalive), (51820, 51821, 0));
    assert_eq!((d.mode, d.psk, d.mtu), (WireguardMode::Separate, None, None));
    let psk = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let set = backend(&format!(
        r#"{{"Type":"wireguard","ListenPort":4000,"ListenPortV6":4001,"PSK":"{psk}","PersistentKeepaliveInterval":25,"Mode":"auto","MTU":1400}}"#
    ))
    .unwrap();
    assert_eq!((set.listen_port, set.listen_port_v6, set.persistent_keepalive), (4000, 4001, 25));
    assert_eq!((set.mode, set.mtu), (WireguardMode::Auto, Some(1400)));
    assert_eq!(set.psk.map(|k| k.len()), Some(32));
    assert_eq!(set.psk.unwrap()[31], 31);
    assert!(!format!("{set:?}").contains(&psk[..20]), "the PSK is never printed: {set:?}");
    for (json, want) in [
        (r#"{"Mode":"x"}"#, "field Backend.Mode: \"x\" is not a wireguard mode (separate, auto, ipv4 or ipv6)"),
        (r#"{"PSK":"AAAA"}"#, "field Backend.PSK: 3 bytes; it must be 32 bytes in base64"),
        (r#"{"PSK":"not base64!"}"#, "field Backend.PSK: not base64"),
        (r#"{"ListenPort":70000}"#, "field Backend.ListenPort: 70000 is not a UDP port"),
        (r#"{"PersistentKeepaliveInterval":-1}"#, "field PersistentKeepaliveInterval: expected a non-negative integer"),
        (r#"{"PersistentKeepaliveInterval":100000}"#, "is more than 65535"),
        (r#"{"MTU":10}"#, "field Backend.MTU: 10 is outside"),
        (r#""wireguard""#, "field Backend: expected an object"),
    ] {
        let msg = backend(json).unwrap_err().to_string();
        assert!(msg.contains(want), "backend {json}\n  message {msg:?}\n  should contain {want:?}");
    }
}

#[test]
fn wireguard_mode_ipv6_needs_a_dual_stack_network() {
    let dual = |mode: &str| {
        format!(
            r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#
        )
    };
    for mode in ["separate", "auto", "ipv4", "ipv6"] {
        assert!(NetworkConfig::parse(&dual(mode)).is_ok(), "{mode}");
    }
    let v4 = |mode: &str| format!(r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard","Mode":"{mode}"}}}}"#);
    assert!(NetworkConfig::parse(&v4("auto")).is_ok());
    let err = NetworkConfig::parse(&v4("ipv6")).unwrap_err().to_string();
    assert!(err.contains("field Backend.Mode") && err.contains("needs EnableIPv6"), "{err}");
}

#[test]
fn enable_nftables_is_flannel_s_switch() {
    assert!(!ok(r#"{"Network":"10.244.0.0/16"}"#).enable_nftables);
    assert!(ok(r#"{"Network":"10.244.0.0/16","EnableNFTables":true}"#).enable_nftables);
    let e = err(r#"{"Network":"10.244.0.0/16","EnableNFTables":"yes"}"#);
    assert!(e.contains("EnableNFTables"), "{e}");
}
