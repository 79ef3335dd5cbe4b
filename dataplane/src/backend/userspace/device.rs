//! The persistent multi-queue TUN device of a userspace backend
//! (`flannel0`, `flannel-wg`, `flannel-wg-v6`): created or re-attached (one
//! non-blocking file descriptor per queue), and kept as it should be (up,
//! MTU, addresses, the network's routes), repairs counted. One function
//! for both backends; what differs between them is data (`DeviceSpec`).

use std::os::fd::AsFd;
use std::sync::Arc;

use ipnet::IpNet;
use tracing::warn;

use super::forwarder::{Forwarder, RouteBy};
use super::{handover, lane, socket};
use crate::error::{Error, Result};
use crate::kernel::Netlink;
use crate::report::{ObjectKind, Report};
use crate::sync::device;

impl Forwarder {
    /// Create the TUN device (or attach to it), persistent, one file
    /// descriptor per queue, non-blocking; set (or clear) its steering
    /// program.
    pub(super) fn open_device(&mut self) -> Result<()> {
        let name = self.spec.name;
        let n = self.sockets.len();
        let backlog = handover::drain_tun(name);
        let first = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(self.spec.mtu.min(u32::from(u16::MAX)) as u16)
            .offload(self.spec.offload)
            .multi_queue(n > 1)
            .build_sync()
            .map_err(|e| Error::tun(format!("creating or attaching {name}"), e))?;
        first.persist().map_err(|e| Error::tun(format!("making {name} persistent"), e))?;
        self.vnet_hdr = self.spec.offload && (first.tcp_gso() || first.udp_gso());
        for sock in &self.sockets {
            socket::set_gro(sock, self.vnet_hdr).map_err(|e| Error::tun(format!("setting UDP GRO for {name}"), e))?;
        }
        let mut devices = vec![Arc::new(first)];
        for _ in 1..n {
            let q = devices[0].try_clone().map_err(|e| Error::tun(format!("opening another queue of {name}"), e))?;
            devices.push(Arc::new(q));
        }
        for d in &devices {
            d.set_nonblocking(true).map_err(|e| Error::tun(format!("making {name} non-blocking"), e))?;
        }
        // The steering program outlives the descriptors of a persistent
        // device: set it, or take away one an earlier run left.
        let steered = match &self.lane {
            Some(lane) => lane.steer_tun(&*devices[0]),
            None => lane::set_tun_steering(&*devices[0], -1),
        };
        if let Err(e) = steered {
            warn!("cannot set the steering program of {name} ({e}); the kernel spreads packets over its queues");
        }
        handover::pass_on(name, &devices[0], backlog, self.vnet_hdr);
        handover::store(devices.iter().enumerate().map(|(i, d)| (handover::name(name, "tun", i), d.as_fd())));
        self.tun = devices;
        Ok(())
    }

    /// Make the device exist and be attached, up, with its MTU, `addrs`
    /// (one per family) and a route to each of `networks` through it;
    /// returns its index. A device that went missing or was replaced is
    /// made anew, and threads still running on it are stopped and counted
    /// as restarted.
    pub(crate) async fn ensure_device(
        &mut self,
        nl: &Netlink,
        addrs: &[IpNet],
        networks: &[IpNet],
        report: &mut Report,
    ) -> Result<u32> {
        let name = self.spec.name;
        let known = self.index.is_some();
        let link = nl.link_by_name(name).await?;
        if let Some(l) = &link {
            if l.kind.as_deref() != Some("tun") {
                return Err(Error::Unsupported {
                    backend: self.spec.backend.as_str(),
                    reason: format!("{name} exists but is not a TUN device{}; remove it", self.spec.not_tun_hint),
                });
            }
        }
        let replaced = device::replaced(link.as_ref(), self.index);
        if replaced {
            if known {
                warn!(device = name, "TUN device is missing or was replaced; recreating it");
                report.repaired(ObjectKind::Device, 1);
                // Threads still running lost their device before they could
                // notice it themselves (the link event won the race): they
                // are restarted on the new device and counted the same way.
                if self.threads.is_some() {
                    self.count_restarts(0..self.tun.len(), report);
                }
            }
            self.detach();
        }
        let fresh = self.tun.is_empty();
        if fresh {
            if let Err(e) = self.open_device() {
                // An existing device made with other flags (one queue, now
                // several; offloads switched) cannot be attached with
                // these: the kernel says EINVAL. Make it anew.
                let Some(l) = link.as_ref().filter(|_| e.errno() == Some(libc::EINVAL)) else { return Err(e) };
                warn!(device = name, "{name} was made with other settings (queues, offloads); recreating it");
                nl.delete_link(l.index).await?;
                report.repaired(ObjectKind::Device, 1);
                self.open_device()?;
            }
        }
        let link = nl.link_by_name(name).await?.ok_or(Error::Vanished { device: name.into() })?;
        let same = known && !replaced;
        device::configure(nl, &link, self.spec.mtu, addrs, same, "TUN device", report).await?;
        for network in networks {
            if nl.has_route(*network, link.index).await? {
                continue;
            }
            if same {
                warn!(device = name, %network, "the route of the network was removed; restoring it");
                report.repaired(ObjectKind::Route, 1);
            }
            match self.spec.route_by {
                RouteBy::DeviceRoute => nl.replace_device_route(*network, link.index).await?,
                RouteBy::AddressPrefix => {
                    // The kernel adds the network's route for the address;
                    // adding the address again brings it back.
                    for addr in addrs.iter().filter(|a| a.trunc() == *network) {
                        nl.delete_address(link.index, *addr).await?;
                        nl.replace_address(link.index, *addr).await?;
                    }
                }
            }
        }
        if self.spec.accept_local && (fresh || replaced) {
            let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/accept_local");
            std::fs::write(&sysctl, "1").map_err(|e| Error::tun(format!("setting {sysctl}"), e))?;
        }
        self.index = Some(link.index);
        Ok(link.index)
    }
}
