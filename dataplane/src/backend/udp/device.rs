//! The TUN device `flannel0`: created or re-attached (persistent, one file
//! descriptor per queue, non-blocking), and kept as it should be (up, MTU,
//! address, the network's route, `accept_local`), repairs counted.

use std::sync::Arc;

use ipnet::Ipv4Net;
use tracing::warn;

use super::UdpBackend;
use crate::error::{Error, Result};
use crate::model::TUN_NAME;
use crate::report::{ObjectKind, Report};
use crate::sync::device;

// The pure coalescing code writes virtio-net headers of its own length.
const _: () = assert!(crate::forward::coalesce::VNET_HDR_LEN == tun_rs::VIRTIO_NET_HDR_LEN);

impl UdpBackend {
    /// Create the TUN device (or attach to it), persistent, one file
    /// descriptor per queue, non-blocking.
    pub(super) fn open_queues(&mut self) -> Result<()> {
        let n = self.sockets.len();
        let first = tun_rs::DeviceBuilder::new()
            .name(TUN_NAME)
            .mtu(self.mtu().min(u32::from(u16::MAX)) as u16)
            .offload(self.opts.offload)
            .multi_queue(n > 1)
            .build_sync()
            .map_err(|e| Error::tun(format!("creating or attaching {TUN_NAME}"), e))?;
        first.persist().map_err(|e| Error::tun(format!("making {TUN_NAME} persistent"), e))?;
        self.vnet_hdr = self.opts.offload && (first.tcp_gso() || first.udp_gso());
        let mut devices = vec![Arc::new(first)];
        for _ in 1..n {
            let q =
                devices[0].try_clone().map_err(|e| Error::tun(format!("opening another queue of {TUN_NAME}"), e))?;
            devices.push(Arc::new(q));
        }
        for d in &devices {
            d.set_nonblocking(true).map_err(|e| Error::tun(format!("making {TUN_NAME} non-blocking"), e))?;
        }
        // The steering program outlives the descriptors of a persistent
        // device: set it, or take away one an earlier run left.
        let steered = match &self.lane {
            Some(lane) => lane.steer_tun(&*devices[0]),
            None => super::lane::set_tun_steering(&*devices[0], -1),
        };
        if let Err(e) = steered {
            warn!("cannot set the steering program of {TUN_NAME} ({e}); the kernel spreads packets over its queues");
        }
        self.tun = devices;
        Ok(())
    }

    /// Make `flannel0` exist and be attached, up, with its MTU, address and
    /// the route of the whole network; returns its index.
    pub(super) async fn ensure_device(&mut self, report: &mut Report) -> Result<u32> {
        let known = self.index.is_some();
        let link = self.nl.link_by_name(TUN_NAME).await?;
        if let Some(l) = &link {
            if l.kind.as_deref() != Some("tun") {
                return Err(Error::Unsupported {
                    backend: "udp",
                    reason: format!("{TUN_NAME} exists but is not a TUN device; remove it"),
                });
            }
        }
        let replaced = device::replaced(link.as_ref(), self.index);
        if replaced {
            if known {
                warn!(device = TUN_NAME, "TUN device is missing or was replaced; recreating it");
                report.repaired(ObjectKind::Device, 1);
                // Threads still running lost their device before they could
                // notice it themselves (the link event won the race): they
                // are restarted on the new device and counted the same way.
                if self.workers.is_some() {
                    self.count_restarts(0..self.tun.len(), report);
                }
            }
            self.detach();
        }
        let fresh = self.tun.is_empty();
        if fresh {
            self.open_queues()?;
        }
        let link = self.nl.link_by_name(TUN_NAME).await?.ok_or(Error::Vanished { device: TUN_NAME.into() })?;
        let same = known && !replaced;
        let mut addrs: Vec<ipnet::IpNet> = Vec::new();
        if let (Some(n4), Some(s4)) = (self.network, self.subnet) {
            addrs.push(Ipv4Net::new(s4.network(), n4.prefix_len()).expect("network prefix is valid").into());
        }
        if let (Some(n6), Some(s6)) = (self.network6, self.subnet6) {
            addrs.push(ipnet::Ipv6Net::new(s6.network(), n6.prefix_len()).expect("network prefix is valid").into());
        }
        device::configure(&self.nl, &link, self.mtu(), &addrs, same, "TUN device", report).await?;
        for addr in addrs {
            let network = addr.trunc();
            if self.nl.has_route(network, link.index).await? {
                continue;
            }
            // The kernel adds the network's route for the address; adding
            // the address again brings it back as flanneld has it.
            if same {
                warn!(device = TUN_NAME, %network, "the route of the network was removed; restoring it");
                report.repaired(ObjectKind::Route, 1);
            }
            self.nl.delete_address(link.index, addr).await?;
            self.nl.replace_address(link.index, addr).await?;
        }
        if fresh || replaced {
            // The ICMP errors weft writes into the device come from the
            // device's own address; without accept_local the kernel drops
            // them as martians.
            let sysctl = format!("/proc/sys/net/ipv4/conf/{TUN_NAME}/accept_local");
            std::fs::write(&sysctl, "1").map_err(|e| Error::tun(format!("setting {sysctl}"), e))?;
        }
        self.index = Some(link.index);
        Ok(link.index)
    }
}
