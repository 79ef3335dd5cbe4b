//! Following the lease table: list the prefix, then watch from the next
//! revision, as a stream of [`LeaseEvent`]s.
//!
//! A broken connection is retried with capped exponential backoff and the
//! watch resumes at the revision after the last one seen, so etcd replays
//! what happened meanwhile. If that revision was compacted, the table is
//! listed again and exactly the differences are emitted (removals included).
//! Entries that are not valid leases are skipped with one warning each.
//!
//! A watch can also stall without an error (a member cut off from its
//! peers serves nothing new). Three things bound that: every request
//! requires a leader (see `etcd.rs`), so such a member cancels the watch;
//! the watch asks for progress notifications; and the table is listed
//! again every relist interval (5 min by default), emitting exactly the
//! differences, after which the watch restarts from the listing.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use etcd_client::{EventType, WatchStream};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::config::NetworkConfig;
use crate::error::Result;
use crate::lease::{lease_id, parse_subnet_key, Lease};
use crate::registry::{lease_from_kv, Listing, Registry};

/// A change in the lease table.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseEvent {
    /// A subnet was leased, or its lease's attributes changed.
    Added(Lease),
    /// A lease was deleted or expired.
    Removed(Lease),
}

impl LeaseEvent {
    pub fn lease(&self) -> &Lease {
        match self {
            LeaseEvent::Added(l) | LeaseEvent::Removed(l) => l,
        }
    }
}

/// The events that turn `known` into `fresh`: `Removed` for subnets gone,
/// `Added` for subnets new or whose attributes or IPv6 subnet changed (a
/// renewal that only moves the expiry is not an event). Pure.
pub(crate) fn diff_leases(known: &BTreeMap<IpNet, Lease>, fresh: &BTreeMap<IpNet, Lease>) -> Vec<LeaseEvent> {
    let mut events = Vec::new();
    for (subnet, lease) in known {
        if !fresh.contains_key(subnet) {
            events.push(LeaseEvent::Removed(lease.clone()));
        }
    }
    for (subnet, lease) in fresh {
        match known.get(subnet) {
            Some(old) if old.attrs == lease.attrs && old.ipv6_subnet == lease.ipv6_subnet => {}
            _ => events.push(LeaseEvent::Added(lease.clone())),
        }
    }
    events
}

/// A live view of the lease table.
pub struct LeaseWatch {
    registry: Registry,
    config: NetworkConfig,
    known: BTreeMap<IpNet, Lease>,
    /// Leases at a key of another form for a subnet whose older key is in
    /// `known` (two key forms for one subnet): not used, kept so that the
    /// deletion of the older one brings them in.
    shadowed: BTreeMap<String, Lease>,
    next_rev: i64,
    stream: Option<WatchStream>,
    backoff: Backoff,
    warned: HashSet<String>,
    disconnected: bool,
    relists: u64,
    relist_every: Duration,
    next_relist: tokio::time::Instant,
}

/// How often the table is listed again when nothing else forces it.
pub(crate) const DEFAULT_RELIST_INTERVAL: Duration = Duration::from_secs(300);

impl LeaseWatch {
    /// List the current leases; `leases()` then holds them and `next()`
    /// yields the changes from there on.
    pub async fn start(registry: Registry, config: NetworkConfig) -> Result<LeaseWatch> {
        let mut watch = LeaseWatch {
            registry,
            config,
            known: BTreeMap::new(),
            shadowed: BTreeMap::new(),
            next_rev: 0,
            stream: None,
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            warned: HashSet::new(),
            disconnected: false,
            relists: 0,
            relist_every: DEFAULT_RELIST_INTERVAL,
            next_relist: tokio::time::Instant::now() + DEFAULT_RELIST_INTERVAL,
        };
        let listing = watch.registry.list(&watch.config).await?;
        let _ = watch.absorb_listing(listing);
        Ok(watch)
    }

    /// List the table again every `every` (the safety net against a watch
    /// that stalls silently).
    pub fn set_relist_interval(&mut self, every: Duration) {
        self.relist_every = every.max(Duration::from_secs(1));
        self.next_relist = tokio::time::Instant::now() + self.relist_every;
    }

    /// The current lease table.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.known.values()
    }

    /// How many times the table was listed again because the watch fell
    /// behind compaction.
    pub fn relists(&self) -> u64 {
        self.relists
    }

    /// The revision the watch continues from.
    pub fn next_revision(&self) -> i64 {
        self.next_rev
    }

    fn warn_once(&mut self, key: &str, why: &dyn std::fmt::Display) {
        if self.warned.insert(key.to_string()) {
            warn!("skipping entry subnets/{key} in etcd: {why}");
        }
    }

    fn warn_shadowed(&mut self, lease: &Lease, kept: String) {
        let key = lease.key();
        if self.warned.insert(key.clone()) {
            warn!(
                "two keys for subnet {} in etcd: using subnets/{kept} (the older), ignoring subnets/{key}; delete the one that is stale",
                lease.id()
            );
        }
    }

    /// Take `lease` (at its key) into the table; the events it makes.
    fn put(&mut self, lease: Lease) -> Vec<LeaseEvent> {
        let key = lease.key();
        self.shadowed.remove(&key);
        let id = lease.id();
        match self.known.get(&id) {
            Some(cur) if cur.key() != key => {
                if (lease.create_revision, &key) < (cur.create_revision, &cur.key()) {
                    let old = self.known.insert(id, lease.clone()).expect("present");
                    self.warn_shadowed(&old, key);
                    self.shadowed.insert(old.key(), old);
                    vec![LeaseEvent::Added(lease)]
                } else {
                    let kept = cur.key();
                    self.warn_shadowed(&lease, kept);
                    self.shadowed.insert(key, lease);
                    Vec::new()
                }
            }
            cur => {
                let changed = cur.map(|o| (&o.attrs, o.ipv6_subnet)) != Some((&lease.attrs, lease.ipv6_subnet));
                self.known.insert(id, lease.clone());
                if changed {
                    vec![LeaseEvent::Added(lease)]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// The key `name` no longer holds a usable lease (deleted, or
    /// overwritten with garbage): only the lease at that very key goes, and
    /// a shadowed one of the same subnet takes its place.
    fn gone(&mut self, name: &str) -> Vec<LeaseEvent> {
        self.shadowed.remove(name);
        let Some(id) = id_of_key(name) else { return Vec::new() };
        if self.known.get(&id).is_none_or(|l| l.key() != name) {
            return Vec::new();
        }
        let old = self.known.remove(&id).expect("present");
        let next = self
            .shadowed
            .values()
            .filter(|l| l.id() == id)
            .min_by_key(|l| (l.create_revision, l.key()))
            .map(Lease::key);
        match next.and_then(|k| self.shadowed.remove(&k)) {
            Some(lease) => {
                self.known.insert(id, lease.clone());
                vec![LeaseEvent::Added(lease)]
            }
            None => vec![LeaseEvent::Removed(old)],
        }
    }

    fn absorb_listing(&mut self, listing: Listing) -> Vec<LeaseEvent> {
        for (key, why) in &listing.skipped {
            self.warn_once(key, why);
        }
        let mut leases = listing.leases;
        // Of two keys for one subnet, the older (by create revision) wins.
        leases.sort_by_key(|l| (l.create_revision, l.key()));
        let mut fresh: BTreeMap<IpNet, Lease> = BTreeMap::new();
        self.shadowed.clear();
        for lease in leases {
            match fresh.get(&lease.id()) {
                Some(kept) => {
                    self.warn_shadowed(&lease, kept.key());
                    self.shadowed.insert(lease.key(), lease);
                }
                None => {
                    fresh.insert(lease.id(), lease);
                }
            }
        }
        let events = diff_leases(&self.known, &fresh);
        // Collected again from its sorted entries, the map's nodes are
        // full (inserted one by one in order, about half full): at
        // 65,000 leases that is several MB for as long as the daemon runs.
        self.known = fresh.into_iter().collect();
        self.next_rev = listing.revision + 1;
        events
    }

    /// Wait for the next changes. Never fails: connection problems are
    /// retried (and logged once per outage). Cancel-safe.
    pub async fn next(&mut self) -> Vec<LeaseEvent> {
        loop {
            if self.stream.is_none() {
                match self.registry.watch_subnets(self.next_rev).await {
                    Ok(s) => {
                        if self.disconnected {
                            self.registry.metrics().watch_restarted();
                        }
                        self.stream = Some(s);
                    }
                    Err(e) => {
                        self.note_failure(&e);
                        tokio::time::sleep(self.backoff.next_delay()).await;
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let relist_due = self.next_relist;
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = tokio::time::sleep_until(relist_due) => {
                    if let Some(events) = self.relist("relist interval").await {
                        return events;
                    }
                    continue;
                }
            };
            match msg {
                Ok(Some(resp)) => {
                    if resp.compact_revision() > 0 {
                        warn!(
                            from = self.next_rev,
                            compacted = resp.compact_revision(),
                            "watch fell behind etcd compaction; listing leases again"
                        );
                        if let Some(events) = self.relist("compaction").await {
                            return events;
                        }
                        continue;
                    }
                    if resp.canceled() {
                        self.note_failure(&format!("watch canceled by etcd: {}", resp.cancel_reason()));
                        self.stream = None;
                        tokio::time::sleep(self.backoff.next_delay()).await;
                        continue;
                    }
                    self.note_success();
                    let events = self.apply(&resp);
                    if !events.is_empty() {
                        return events;
                    }
                }
                Ok(None) => {
                    self.note_failure(&"etcd closed the watch stream");
                    self.stream = None;
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
                Err(e) => {
                    self.note_failure(&e);
                    self.stream = None;
                    tokio::time::sleep(self.backoff.next_delay()).await;
                }
            }
        }
    }

    /// List the table again and restart the watch from there. Returns the
    /// differences, if any (`None` also when the listing failed: retried).
    async fn relist(&mut self, why: &'static str) -> Option<Vec<LeaseEvent>> {
        self.stream = None;
        self.next_relist = tokio::time::Instant::now() + self.relist_every;
        match self.registry.list(&self.config).await {
            Ok(listing) => {
                self.note_success();
                self.relists += 1;
                self.registry.metrics().relisted(why);
                let events = self.absorb_listing(listing);
                if !events.is_empty() {
                    info!(why, changes = events.len(), "listing leases again found changes the watch had missed");
                    return Some(events);
                }
                None
            }
            Err(e) => {
                self.note_failure(&e);
                tokio::time::sleep(self.backoff.next_delay()).await;
                None
            }
        }
    }

    fn note_failure(&mut self, e: &dyn std::fmt::Display) {
        self.registry.metrics().set_available(false);
        if !self.disconnected {
            warn!("lost the etcd watch of leases ({e}); reconnecting with backoff");
            self.disconnected = true;
        }
    }

    fn note_success(&mut self) {
        self.registry.metrics().set_available(true);
        if self.disconnected {
            info!(from = self.next_rev, "etcd watch of leases restored");
            self.disconnected = false;
        }
        self.backoff.reset();
    }

    fn apply(&mut self, resp: &etcd_client::WatchResponse) -> Vec<LeaseEvent> {
        let prefix = self.registry.subnets_prefix();
        let mut events = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            self.next_rev = self.next_rev.max(kv.mod_revision() + 1);
            let key = String::from_utf8_lossy(kv.key());
            let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
            match ev.event_type() {
                EventType::Delete => {
                    events.extend(self.gone(&name));
                    self.warned.remove(&name);
                }
                EventType::Put => match lease_from_kv(&name, kv, &self.config) {
                    Ok(lease) => events.extend(self.put(lease)),
                    Err(why) => {
                        self.warn_once(&name, &why);
                        events.extend(self.gone(&name));
                    }
                },
            }
        }
        events
    }
}

/// The subnet that names the lease of key `name`, if it is a subnet key.
fn id_of_key(name: &str) -> Option<IpNet> {
    let (subnet, subnet6) = parse_subnet_key(name).ok()?;
    lease_id(subnet, subnet6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease {
            subnet: Some(subnet.parse().unwrap()),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: Some(ip.parse().unwrap()),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
                node_id: None,
            },
            etcd_lease: 1,
            mod_revision: 1,
            create_revision: 0,
            ttl: None,
        }
    }

    fn table(leases: &[Lease]) -> BTreeMap<IpNet, Lease> {
        leases.iter().map(|l| (l.id(), l.clone())).collect()
    }

    #[test]
    fn diff_table() {
        let a = lease("10.244.1.0/24", "198.18.0.1");
        let b = lease("10.244.2.0/24", "198.18.0.2");
        let c = lease("10.244.3.0/24", "198.18.0.3");
        let mut b_renewed = b.clone();
        b_renewed.mod_revision = 99;
        b_renewed.etcd_lease = 42;
        let b_moved = lease("10.244.2.0/24", "198.18.0.9");
        // (known, fresh, expected events)
        let cases: Vec<(Vec<Lease>, Vec<Lease>, Vec<LeaseEvent>)> = vec![
            (vec![], vec![], vec![]),
            (vec![], vec![a.clone()], vec![LeaseEvent::Added(a.clone())]),
            (vec![a.clone()], vec![], vec![LeaseEvent::Removed(a.clone())]),
            (vec![a.clone(), b.clone()], vec![a.clone(), b_renewed.clone()], vec![]),
            (vec![b.clone()], vec![b_moved.clone()], vec![LeaseEvent::Added(b_moved.clone())]),
            (
                vec![a.clone(), b.clone()],
                vec![b.clone(), c.clone()],
                vec![LeaseEvent::Removed(a.clone()), LeaseEvent::Added(c.clone())],
            ),
        ];
        for (known, fresh, want) in cases {
            assert_eq!(diff_leases(&table(&known), &table(&fresh)), want);
        }
    }
}
