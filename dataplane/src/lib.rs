//! weft-dataplane: the forwarding backends of weft (udp, vxlan, host-gw).
//!
//! Empty for now: the backends arrive with the daemon (`weft run`).
