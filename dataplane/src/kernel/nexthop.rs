//! Nexthop objects (`ip nexthop`, Linux 5.3 and later) over netlink.
//!
//! Why weft uses them: the kernel keeps one `fib_info` per distinct route
//! target and finds an existing one through a hash that covers the output
//! device but not the gateway. Every `<subnet> via <VTEP> dev flannel.1
//! onlink` route shares the device, so all of them land in one hash bucket
//! and each insert walks every earlier one: programming N peers costs
//! O(N^2) in the kernel (20,000 routes: 5.4 s of kernel time, measured with
//! `ip -batch`). A route that names a nexthop object (`nhid`) is hashed by
//! that id instead, and the same 20,000 routes take 0.45 s. So each peer
//! gets a nexthop (`ip nexthop replace id ID via GW dev DEV [onlink] proto
//! 87`) and its route points at it (`ip route replace SUBNET nhid ID proto
//! 87`). The id is the peer subnet's network address as a number, so a
//! restarted weft finds its own nexthops again without keeping state.
//!
//! netlink-packet-route has no nexthop messages (only the route attribute
//! `RTA_NH_ID`), so this module carries its own: the 8-byte `struct nhmsg`
//! header and the attributes weft uses, on a netlink-proto connection of
//! their own.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::StreamExt;
use rtnetlink::packet_core::{
    DecodeError, DefaultNla, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, Nla, NlaBuffer, NlasIterator, Parseable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::proto::{new_connection, ConnectionHandle};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, SocketAddr};

use crate::error::{Error, Result};
use crate::model::NexthopSpec;
use crate::WEFT_ROUTE_PROTO;

const RTM_NEWNEXTHOP: u16 = 104;
pub(crate) const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
/// `RTNH_F_ONLINK`: the gateway is reachable on the device without a route to it.
const RTNH_F_ONLINK: u32 = 4;
/// The multicast group of nexthop changes (`ip monitor nexthop`).
pub(crate) const RTNLGRP_NEXTHOP: u32 = 32;
const AF_INET: u8 = 2;
/// `struct nhmsg`: family, scope, protocol, reserved, flags (u32).
const HEADER_LEN: usize = 8;

/// A nexthop object as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Nexthop {
    /// `None` for objects without a single IPv4 gateway (groups, blackholes, IPv6).
    pub(crate) spec: Option<NexthopSpec>,
    pub(crate) protocol: u8,
}

/// One `RTM_*NEXTHOP` message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NexthopMessage {
    kind: u16,
    family: u8,
    pub(crate) protocol: u8,
    flags: u32,
    nlas: Vec<DefaultNla>,
}

impl NexthopMessage {
    fn u32_nla(&self, kind: u16) -> Option<u32> {
        self.nlas.iter().find(|n| n.kind() == kind).and_then(|n| {
            let mut b = [0u8; 4];
            (n.value_len() == 4).then(|| {
                n.emit_value(&mut b);
                u32::from_ne_bytes(b)
            })
        })
    }

    pub(crate) fn id(&self) -> Option<u32> {
        self.u32_nla(NHA_ID)
    }

    pub(crate) fn nexthop(&self) -> Nexthop {
        let gateway = self.nlas.iter().find(|n| n.kind() == NHA_GATEWAY && n.value_len() == 4).map(|n| {
            let mut b = [0u8; 4];
            n.emit_value(&mut b);
            Ipv4Addr::from(b)
        });
        let spec = match (self.family, gateway, self.u32_nla(NHA_OIF)) {
            (AF_INET, Some(gateway), Some(oif)) => {
                Some(NexthopSpec { gateway, oif, onlink: self.flags & RTNH_F_ONLINK != 0 })
            }
            _ => None,
        };
        Nexthop { spec, protocol: self.protocol }
    }
}

impl NetlinkSerializable for NexthopMessage {
    fn message_type(&self) -> u16 {
        self.kind
    }

    fn buffer_len(&self) -> usize {
        HEADER_LEN + self.nlas.iter().map(Emitable::buffer_len).sum::<usize>()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[..HEADER_LEN].fill(0);
        buffer[0] = self.family;
        buffer[2] = self.protocol;
        buffer[4..8].copy_from_slice(&self.flags.to_ne_bytes());
        let mut at = HEADER_LEN;
        for nla in &self.nlas {
            let len = nla.buffer_len();
            nla.emit(&mut buffer[at..at + len]);
            at += len;
        }
    }
}

impl NetlinkDeserializable for NexthopMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() < HEADER_LEN {
            return Err(DecodeError::from(format!("nexthop message of {} bytes", payload.len())));
        }
        let mut nlas = Vec::new();
        for nla in NlasIterator::new(&payload[HEADER_LEN..]) {
            let nla: NlaBuffer<&[u8]> = nla?;
            nlas.push(DefaultNla::parse(&nla)?);
        }
        Ok(NexthopMessage {
            kind: header.message_type,
            family: payload[0],
            protocol: payload[2],
            flags: u32::from_ne_bytes([payload[4], payload[5], payload[6], payload[7]]),
            nlas,
        })
    }
}

fn request(kind: u16, flags: u16, mut inner: NexthopMessage) -> NetlinkMessage<NexthopMessage> {
    inner.kind = kind;
    let mut msg = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(inner));
    msg.header.message_type = kind;
    msg.header.flags = flags;
    msg.finalize();
    msg
}

/// The nexthop half of weft's netlink connection.
#[derive(Clone)]
pub(crate) struct Nexthops {
    handle: ConnectionHandle<NexthopMessage>,
}

impl Nexthops {
    /// Open the socket; must run inside a tokio runtime.
    pub(crate) fn connect() -> Result<Nexthops> {
        let (conn, handle, _) = new_connection::<NexthopMessage>(NETLINK_ROUTE).map_err(Error::NetlinkSocket)?;
        tokio::spawn(conn);
        Ok(Nexthops { handle })
    }

    /// Send one request and collect its answers, the kernel's error as an `Err`.
    async fn call(&self, op: impl Fn() -> String, msg: NetlinkMessage<NexthopMessage>) -> Result<Vec<NexthopMessage>> {
        let mut answers = self
            .handle
            .request(msg, SocketAddr::new(0, 0))
            .map_err(|_| Error::netlink(op(), rtnetlink::Error::RequestFailed))?;
        let mut out = Vec::new();
        while let Some(m) = answers.next().await {
            match m.payload {
                NetlinkPayload::InnerMessage(inner) => out.push(inner),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(Error::netlink(op(), rtnetlink::Error::NetlinkError(e)))
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// `ip nexthop show`: every nexthop object, by id. Fails with
    /// `EOPNOTSUPP`/`EINVAL` on kernels without nexthop objects.
    pub(crate) async fn dump(&self) -> Result<BTreeMap<u32, Nexthop>> {
        let msg = request(RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP, NexthopMessage::default());
        let answers = self.call(|| "ip nexthop show".to_string(), msg).await?;
        Ok(answers.iter().filter_map(|m| Some((m.id()?, m.nexthop()))).collect())
    }

    /// Whether this kernel has nexthop objects (a dump succeeds).
    pub(crate) async fn supported(&self) -> Result<bool> {
        match self.dump().await {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.errno(), Some(libc::EOPNOTSUPP | libc::EINVAL | libc::EAFNOSUPPORT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `ip nexthop replace id ID via GW dev OIF [onlink] proto 87`, or with
    /// `existing` false `ip nexthop add ...`, which fails with `EEXIST`
    /// rather than take over a nexthop someone else made.
    pub(crate) async fn replace(&self, id: u32, spec: NexthopSpec, existing: bool) -> Result<()> {
        let inner = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            family: AF_INET,
            protocol: WEFT_ROUTE_PROTO,
            flags: if spec.onlink { RTNH_F_ONLINK } else { 0 },
            nlas: vec![
                DefaultNla::new(NHA_ID, id.to_ne_bytes().to_vec()),
                DefaultNla::new(NHA_OIF, spec.oif.to_ne_bytes().to_vec()),
                DefaultNla::new(NHA_GATEWAY, spec.gateway.octets().to_vec()),
            ],
        };
        let (how, verb) = if existing { (NLM_F_REPLACE, "replace") } else { (NLM_F_EXCL, "add") };
        let msg = request(RTM_NEWNEXTHOP, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | how, inner);
        let op = || {
            let onlink = if spec.onlink { " onlink" } else { "" };
            format!("ip nexthop {verb} id {id} via {} dev #{}{onlink}", spec.gateway, spec.oif)
        };
        self.call(op, msg).await.map(|_| ())
    }

    /// `ip nexthop del id ID` (absent is fine). The kernel removes the
    /// routes that use it along with it.
    pub(crate) async fn delete(&self, id: u32) -> Result<()> {
        let inner = NexthopMessage {
            kind: RTM_DELNEXTHOP,
            nlas: vec![DefaultNla::new(NHA_ID, id.to_ne_bytes().to_vec())],
            ..NexthopMessage::default()
        };
        let msg = request(RTM_DELNEXTHOP, NLM_F_REQUEST | NLM_F_ACK, inner);
        match self.call(|| format!("ip nexthop del id {id}"), msg).await {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replace_request_round_trips() {
        let inner = NexthopMessage {
            kind: RTM_NEWNEXTHOP,
            family: AF_INET,
            protocol: WEFT_ROUTE_PROTO,
            flags: RTNH_F_ONLINK,
            nlas: vec![
                DefaultNla::new(NHA_ID, 7u32.to_ne_bytes().to_vec()),
                DefaultNla::new(NHA_OIF, 3u32.to_ne_bytes().to_vec()),
                DefaultNla::new(NHA_GATEWAY, vec![10, 244, 5, 0]),
            ],
        };
        let mut buf = vec![0u8; inner.buffer_len()];
        inner.serialize(&mut buf);
        assert_eq!(buf.len(), 8 + 8 + 8 + 8);
        assert_eq!(&buf[..8], &[2, 0, 87, 0, 4, 0, 0, 0]);
        let mut header = NetlinkHeader::default();
        header.message_type = RTM_NEWNEXTHOP;
        let back = NexthopMessage::deserialize(&header, &buf).unwrap();
        assert_eq!(back, inner);
        assert_eq!(back.id(), Some(7));
        assert_eq!(
            back.nexthop(),
            Nexthop {
                spec: Some(NexthopSpec { gateway: Ipv4Addr::new(10, 244, 5, 0), oif: 3, onlink: true }),
                protocol: 87
            }
        );
    }

    #[test]
    fn short_or_truncated_messages_are_errors_not_panics() {
        let header = NetlinkHeader::default();
        assert!(NexthopMessage::deserialize(&header, &[2, 0, 87]).is_err());
        // An attribute claiming 12 bytes with 4 present.
        assert!(NexthopMessage::deserialize(&header, &[2, 0, 87, 0, 0, 0, 0, 0, 12, 0, 1, 0]).is_err());
    }
}
