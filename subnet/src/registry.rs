//! The etcd adapter: the only module that turns leases into etcd requests.
//!
//! Keys (flanneld's etcd v3 layout):
//! - `<prefix>/config`: the network config JSON;
//! - `<prefix>/subnets/<subnet key>`: one lease, attached to an etcd lease
//!   so that it disappears when its holder stops renewing.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::warn;

use crate::config::NetworkConfig;
use crate::error::{Error, Result};
use crate::etcd::EtcdOptions;
use crate::lease::{lease_id, parse_subnet_key, subnet_key, Lease, LeaseAttrs, LeaseParseError};
use crate::metrics::Metrics;

/// A connection to etcd plus the key prefix of one network.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    opts: EtcdOptions,
    metrics: Arc<Metrics>,
}

/// All entries under `<prefix>/subnets/` at one revision.
#[derive(Debug, Default)]
pub struct Listing {
    /// Entries that are valid leases of this network.
    pub leases: Vec<Lease>,
    /// Entries that are not, with the reason (to be skipped with a warning).
    pub skipped: Vec<(String, LeaseParseError)>,
    /// The skipped entries that are well-formed leases of the other key
    /// form (IPv6-only keys on a network with IPv4, or the reverse): what
    /// a node's own key is after `EnableIPv4` was turned off or on. The
    /// node replaces its own at start.
    pub other_family: Vec<Lease>,
    /// Every subnet that has a key, valid or not: none of them is free.
    pub taken: BTreeSet<Ipv4Net>,
    /// Every IPv6 subnet that has a key.
    pub taken6: BTreeSet<Ipv6Net>,
    /// The store revision of the listing; a watch continues at `revision + 1`.
    pub revision: i64,
}

/// The result of renewing the node's own lease.
#[derive(Debug, Clone, PartialEq)]
pub enum RenewOutcome {
    /// Renewed: the lease as it now is in etcd.
    Renewed(Lease),
    /// The key is gone or belongs to someone else: the subnet is no longer ours.
    Lost(LostReason),
}

/// Why the node's own lease is no longer its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LostReason {
    #[error("the lease of {subnet} expired or was deleted from etcd")]
    Removed { subnet: IpNet },
    #[error("the lease of {subnet} now belongs to {holder}")]
    TakenOver { subnet: IpNet, holder: String },
}

/// Keys per page when listing the leases.
const LIST_PAGE: i64 = 2000;
/// The largest listing reply taken (gRPC's default is 4 MiB): more than
/// one value of etcd's largest (1.5 MiB). A page whose reply is larger
/// still (a few huge values among 2,000 keys) is asked for again in
/// halves.
const MAX_REPLY: usize = 16 << 20;

/// The first key after every key that starts with `prefix` (etcd's range
/// end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

/// What [`Registry::check_node`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCheck {
    /// Why the own lease is no longer the node's; `None`: it is.
    pub lost: Option<LostReason>,
    /// The config text as stored; `None`: deleted.
    pub config: Option<String>,
}

impl Registry {
    /// Connect to etcd (within the options' time limit).
    pub async fn connect(opts: EtcdOptions) -> Result<Registry> {
        let client = opts.connect().await?;
        Ok(Registry { client, opts, metrics: Arc::default() })
    }

    /// The counters of this registry's requests (shared by its clones).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Run one etcd request of `op` within the options' time limit, timed.
    async fn timed<T>(&self, op: &'static str, fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let began = std::time::Instant::now();
        let r = self.opts.limit(fut).await;
        self.metrics.request(op, began.elapsed(), r.is_err());
        r
    }

    /// The options this registry was made with.
    pub fn options(&self) -> &EtcdOptions {
        &self.opts
    }

    /// A handle on the raw client, for tests and tools.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn prefix(&self) -> &str {
        self.opts.prefix.trim_end_matches('/')
    }

    /// `<prefix>/config`
    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix())
    }

    /// `<prefix>/subnets/`
    pub fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix())
    }

    /// The full key of the lease named `id` in its shortest form: the
    /// IPv4-only key of an IPv4 subnet, the key of an IPv6-only network's
    /// lease for an IPv6 one.
    pub fn lease_key(&self, id: &IpNet) -> String {
        match id {
            IpNet::V4(v4) => self.full_key(Some(v4), None),
            IpNet::V6(v6) => self.full_key(None, Some(v6)),
        }
    }

    /// The full key of the lease of `subnet` and, on dual-stack networks,
    /// `subnet6`: `<prefix>/subnets/10.244.3.0-24&fd10:244:0:3::-64`
    /// (`<prefix>/subnets/fd10:244:0:3::-64` on IPv6-only networks).
    pub fn full_key(&self, subnet: Option<&Ipv4Net>, subnet6: Option<&Ipv6Net>) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet, subnet6))
    }

    /// A compare that holds while no key, of any form, leases `id`: every
    /// key of an IPv4 subnet starts with its IPv4-only key, and no other
    /// key does (all subnets of a network have one length); an IPv6-only
    /// network's key is the IPv6 subnet's alone.
    fn nobody_holds(&self, id: &IpNet) -> Compare {
        let key = self.lease_key(id);
        let end = prefix_end(key.as_bytes());
        Compare::create_revision(key, CompareOp::Equal, 0).with_range(end)
    }

    /// For a key taking the IPv6 subnet `subnet6` that the writer does not
    /// hold yet (`held` is what it holds): a compare that holds while no key
    /// under `<prefix>/subnets/` was created after revision `listed_at`, so
    /// the subnet chosen from a listing at that revision is still free. An
    /// IPv6 part is not a key prefix (`10.244.3.0-24&fd10:244:0:3::-64`), so
    /// no range over keys can say that nobody holds it.
    fn ipv6_still_free(&self, subnet6: Option<Ipv6Net>, held: Option<Ipv6Net>, listed_at: i64) -> Option<Compare> {
        if subnet6.is_none() || subnet6 == held {
            return None;
        }
        let dir = self.subnets_prefix();
        let end = prefix_end(dir.as_bytes());
        Some(Compare::create_revision(dir, CompareOp::Less, listed_at + 1).with_range(end))
    }

    /// The config as stored, or `None` when there is none.
    pub async fn get_config_text(&self) -> Result<Option<String>> {
        let key = self.config_key();
        let mut c = self.client.clone();
        let resp =
            self.timed("get_config", async { c.get(key, None).await.map_err(Error::etcd("get config")) }).await?;
        Ok(resp.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The validated config; an error when it is missing or invalid.
    pub async fn get_config(&self) -> Result<NetworkConfig> {
        match self.get_config_text().await? {
            None => Err(Error::ConfigNotFound { key: self.config_key() }),
            Some(text) => Ok(NetworkConfig::parse(&text)?),
        }
    }

    /// Validate `text` and store it as the config. Nothing is written when it
    /// is invalid.
    pub async fn put_config(&self, text: &str) -> Result<NetworkConfig> {
        let config = NetworkConfig::parse(text)?;
        let key = self.config_key();
        let mut c = self.client.clone();
        self.timed("put_config", async { c.put(key, text, None).await.map_err(Error::etcd("put config")) }).await?;
        Ok(config)
    }

    /// List every entry under `<prefix>/subnets/`.
    pub async fn list(&self, config: &NetworkConfig) -> Result<Listing> {
        let prefix = self.subnets_prefix();
        let end = prefix_end(prefix.as_bytes());
        let mut listing = Listing::default();
        let mut from = prefix.clone().into_bytes();
        // Pages of LIST_PAGE keys, all at the revision of the first page: one
        // consistent picture, and no reply near gRPC's 4 MiB limit (65,534
        // leases are about 11 MB).
        let mut page = LIST_PAGE;
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(page);
            if listing.revision > 0 {
                opts = opts.with_revision(listing.revision);
            }
            let mut kv = self.client.kv_client().max_decoding_message_size(MAX_REPLY);
            let key = from.clone();
            let resp = self
                .timed("list_leases", async {
                    match kv.get(key, Some(opts)).await {
                        Ok(r) => Ok(Some(r)),
                        Err(e) if page > 1 && reply_too_large(&e) => Ok(None),
                        Err(e) => Err(Error::etcd("list leases")(e)),
                    }
                })
                .await?;
            let Some(resp) = resp else {
                page = (page / 2).max(1);
                tracing::debug!(page, "a listing reply was too large; asking for fewer keys");
                continue;
            };
            if listing.revision == 0 {
                listing.revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            for kv in resp.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                let name = key.strip_prefix(&prefix).unwrap_or(&key).to_string();
                if let Ok((subnet, subnet6)) = parse_subnet_key(&name) {
                    listing.taken.extend(subnet);
                    listing.taken6.extend(subnet6);
                }
                match lease_from_kv(&name, kv, config) {
                    Ok(lease) => listing.leases.push(lease),
                    Err(e) => {
                        if matches!(e, LeaseParseError::WrongFamily { .. }) {
                            let read = Lease::read_entry(&name, kv.value(), kv.lease(), kv.mod_revision());
                            listing.other_family.extend(read.ok());
                        }
                        listing.skipped.push((name, e));
                    }
                }
            }
            match resp.kvs().last() {
                Some(last) if resp.more() => {
                    // The next page starts just after the last key.
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }

    /// Fill in the time left on each lease (one request per lease).
    pub async fn fill_ttls(&self, leases: &mut [Lease]) -> Result<()> {
        for lease in leases.iter_mut() {
            lease.ttl = self.ttl_of(lease.etcd_lease).await?;
        }
        Ok(())
    }

    async fn ttl_of(&self, etcd_lease: i64) -> Result<Option<Duration>> {
        if etcd_lease == 0 {
            return Ok(None);
        }
        let mut c = self.client.clone();
        let resp = self
            .timed("lease_ttl", async {
                c.lease_time_to_live(etcd_lease, None).await.map_err(Error::etcd("lease time-to-live"))
            })
            .await?;
        Ok(u64::try_from(resp.ttl()).ok().map(Duration::from_secs))
    }

    async fn grant(&self, ttl: Duration) -> Result<i64> {
        let mut c = self.client.clone();
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .timed("lease_grant", async { c.lease_grant(secs, None).await.map_err(Error::etcd("lease grant")) })
            .await?;
        Ok(resp.id())
    }

    /// Revoke an etcd lease we no longer need. A failure only delays its
    /// expiry, so it is logged, not returned.
    async fn revoke(&self, id: i64) {
        let mut c = self.client.clone();
        let res =
            self.timed("lease_revoke", async { c.lease_revoke(id).await.map_err(Error::etcd("lease revoke")) }).await;
        if let Err(e) = res {
            warn!(lease_id = id, "could not revoke unused etcd lease (it will expire on its own): {e}");
        }
    }

    async fn txn(&self, txn: Txn, op: &'static str) -> Result<etcd_client::TxnResponse> {
        let mut c = self.client.clone();
        self.timed(op, async { c.txn(txn).await.map_err(Error::etcd(op)) }).await
    }

    /// Create the lease of `subnet` and/or `subnet6` (at least one) if, and
    /// only if, no key leases the subnet that names it yet, in any key form,
    /// and, with an IPv6 part, no key was created since the listing at
    /// revision `listed_at` that found `subnet6` free (two nodes choosing
    /// one IPv6 subnet with different IPv4 ones write different keys).
    /// `Ok(None)` means someone else holds it or may: list again.
    pub async fn create_lease(
        &self,
        subnet: Option<Ipv4Net>,
        subnet6: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        ttl: Duration,
        listed_at: i64,
    ) -> Result<Option<Lease>> {
        let name = lease_id(subnet, subnet6).ok_or(Error::NoSubnet)?;
        let key = self.full_key(subnet.as_ref(), subnet6.as_ref());
        let value = serde_json::to_string(attrs).map_err(|source| Error::Encode { subnet: name, source })?;
        let id = self.grant(ttl).await?;
        let free: Vec<Compare> =
            std::iter::once(self.nobody_holds(&name)).chain(self.ipv6_still_free(subnet6, None, listed_at)).collect();
        let txn =
            Txn::new().when(free).and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(id)))]);
        let Some(mod_revision) = self.put_if(txn, &key, id).await? else { return Ok(None) };
        Ok(Some(Lease {
            subnet,
            ipv6_subnet: subnet6,
            attrs: attrs.clone(),
            etcd_lease: id,
            mod_revision,
            create_revision: mod_revision,
            ttl: Some(ttl),
        }))
    }

    /// Replace the node's own lease `old` by one of `subnet` and
    /// `subnet6`, in one transaction: only if `old` is as last read and no
    /// key holds the new lease's subnets yet (the new key, when it keeps
    /// the subnet that names `old`; any key of the new name otherwise).
    /// What flanneld does, as a delete and a create, when IPv6 is turned on
    /// or off under a node; weft does the same when IPv4 is. A new IPv6
    /// subnet is taken only if no key was created since `listed_at`, as in
    /// [`Registry::create_lease`].
    /// `Ok(None)`: someone wrote either key meanwhile.
    pub async fn replace_lease(
        &self,
        old: &Lease,
        subnet: Option<Ipv4Net>,
        subnet6: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        ttl: Duration,
        listed_at: i64,
    ) -> Result<Option<Lease>> {
        let name = lease_id(subnet, subnet6).ok_or(Error::NoSubnet)?;
        let old_key = old_key_of(self, old);
        let key = self.full_key(subnet.as_ref(), subnet6.as_ref());
        let value = serde_json::to_string(attrs).map_err(|source| Error::Encode { subnet: name, source })?;
        let free = if name == old.id() {
            Compare::create_revision(key.clone(), CompareOp::Equal, 0)
        } else {
            self.nobody_holds(&name)
        };
        let mut compares = vec![Compare::mod_revision(old_key.clone(), CompareOp::Equal, old.mod_revision), free];
        compares.extend(self.ipv6_still_free(subnet6, old.ipv6_subnet, listed_at));
        let id = self.grant(ttl).await?;
        let txn = Txn::new().when(compares).and_then([
            TxnOp::delete(old_key, None),
            TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(id))),
        ]);
        let Some(mod_revision) = self.put_if(txn, &key, id).await? else { return Ok(None) };
        if old.etcd_lease != 0 {
            self.revoke(old.etcd_lease).await;
        }
        Ok(Some(Lease {
            subnet,
            ipv6_subnet: subnet6,
            attrs: attrs.clone(),
            etcd_lease: id,
            mod_revision,
            create_revision: mod_revision,
            ttl: Some(ttl),
        }))
    }

    /// Run `txn`, which puts `key` with etcd lease `id` when its compares
    /// hold: the key's mod revision, or `None` when they did not (then `id`
    /// is revoked). An error whose outcome is unknown is settled by
    /// [`Registry::committed_with`].
    async fn put_if(&self, txn: Txn, key: &str, id: i64) -> Result<Option<i64>> {
        match self.txn(txn, "create_lease").await {
            Ok(resp) if resp.succeeded() => Ok(Some(resp.header().map(|h| h.revision()).unwrap_or(0))),
            Ok(_) => {
                self.revoke(id).await;
                Ok(None)
            }
            Err(e) => self.committed_with(key, id, e).await.map(Some),
        }
    }

    /// After a transaction that put `key` with etcd lease `id` failed with
    /// `err`, its outcome is unknown (the reply may have been lost after it
    /// committed). Read the key back: its mod revision when it carries `id`
    /// (the write took effect); otherwise `id` is revoked and `err`
    /// returned. When even the read fails, `id` is left to expire on its
    /// own (revoking it could delete a key we did write) and `err` returned.
    async fn committed_with(&self, key: &str, id: i64, err: Error) -> Result<i64> {
        let mut c = self.client.clone();
        let k = key.to_string();
        let read =
            self.timed("get_lease", async { c.get(k, None).await.map_err(Error::etcd("read back lease")) }).await;
        match read {
            Ok(resp) => match resp.kvs().first() {
                Some(kv) if kv.lease() == id => {
                    warn!(key, "a lease write reported an error ({err}) but took effect; keeping it");
                    Ok(kv.mod_revision())
                }
                _ => {
                    self.revoke(id).await;
                    Err(err)
                }
            },
            Err(_) => Err(err),
        }
    }

    /// Renew `lease` with `attrs` and a fresh TTL, as a compare-and-swap on
    /// the key's revision: if anyone else wrote or deleted the key since we
    /// last did, nothing is written and the outcome says what happened.
    pub async fn renew_lease(&self, lease: &Lease, attrs: &LeaseAttrs, ttl: Duration) -> Result<RenewOutcome> {
        let subnet = lease.id();
        let key = old_key_of(self, lease);
        let value = serde_json::to_string(attrs).map_err(|source| Error::Encode { subnet, source })?;
        let mut expected_rev = lease.mod_revision;
        // Two rounds at most: the second only when the key was rewritten by
        // this same node (same PublicIP), e.g. a renewal whose reply was lost.
        for _ in 0..2 {
            let id = self.grant(ttl).await?;
            let txn = Txn::new()
                .when([Compare::mod_revision(key.clone(), CompareOp::Equal, expected_rev)])
                .and_then([TxnOp::put(key.clone(), value.clone(), Some(PutOptions::new().with_lease(id)))])
                .or_else([TxnOp::get(key.clone(), None)]);
            let resp = match self.txn(txn, "renew_lease").await {
                Ok(r) => r,
                Err(e) => {
                    let mod_revision = self.committed_with(&key, id, e).await?;
                    return Ok(self.renewed(lease, attrs, ttl, id, mod_revision).await);
                }
            };
            if resp.succeeded() {
                let mod_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(self.renewed(lease, attrs, ttl, id, mod_revision).await);
            }
            self.revoke(id).await;
            let current = resp.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let Some(kv) = current else {
                return Ok(RenewOutcome::Lost(LostReason::Removed { subnet }));
            };
            let holder: Option<IpAddr> = serde_json::from_slice::<LeaseAttrs>(kv.value()).ok().and_then(|a| a.holder());
            if holder.is_some() && holder == attrs.holder() {
                expected_rev = kv.mod_revision();
                continue;
            }
            return Ok(RenewOutcome::Lost(LostReason::TakenOver {
                subnet,
                holder: holder.map(|ip| ip.to_string()).unwrap_or_else(|| "an unreadable entry".into()),
            }));
        }
        Ok(RenewOutcome::Lost(LostReason::TakenOver { subnet, holder: "a concurrent writer".into() }))
    }

    /// The lease after a renewal that wrote etcd lease `id`: the old etcd
    /// lease is revoked (it holds nothing any more).
    async fn renewed(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
        id: i64,
        mod_revision: i64,
    ) -> RenewOutcome {
        if lease.etcd_lease != 0 && lease.etcd_lease != id {
            self.revoke(lease.etcd_lease).await;
        }
        RenewOutcome::Renewed(Lease {
            subnet: lease.subnet,
            ipv6_subnet: lease.ipv6_subnet,
            attrs: attrs.clone(),
            etcd_lease: id,
            mod_revision,
            create_revision: lease.create_revision,
            ttl: Some(ttl),
        })
    }

    /// Read the own key and the config in one request: whether the key of
    /// `subnet` and/or `subnet6` still names `holder` (the node's `PublicIP`,
    /// or `PublicIPv6` on IPv6-only networks) as its holder, and
    /// the config text as stored. Done on every resync, so a lost lease or
    /// a changed config is noticed even when the watch has stalled.
    pub async fn check_node(
        &self,
        subnet: Option<Ipv4Net>,
        subnet6: Option<Ipv6Net>,
        holder: IpAddr,
    ) -> Result<NodeCheck> {
        let key = self.full_key(subnet.as_ref(), subnet6.as_ref());
        let subnet = lease_id(subnet, subnet6).ok_or(Error::NoSubnet)?;
        let txn = Txn::new().and_then([TxnOp::get(key, None), TxnOp::get(self.config_key(), None)]);
        let resp = self.txn(txn, "check_node").await?;
        let mut gets = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        let (own, config) = (gets.next().flatten(), gets.next().flatten());
        let lost = match own {
            None => Some(LostReason::Removed { subnet }),
            Some(kv) => match serde_json::from_slice::<LeaseAttrs>(kv.value()).ok().and_then(|a| a.holder()) {
                Some(ip) if ip == holder => None,
                other => Some(LostReason::TakenOver {
                    subnet,
                    holder: other.map(|ip| ip.to_string()).unwrap_or_else(|| "an unreadable entry".into()),
                }),
            },
        };
        Ok(NodeCheck { lost, config: config.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()) })
    }

    /// Delete the lease named `subnet` (its IPv4 subnet, or its IPv6
    /// subnet on IPv6-only networks), whichever key form holds it (used by
    /// tests and by tools).
    pub async fn delete_lease(&self, subnet: &IpNet) -> Result<()> {
        let key = self.lease_key(subnet);
        let opts = etcd_client::DeleteOptions::new().with_range(prefix_end(key.as_bytes()));
        let mut c = self.client.clone();
        self.timed("delete_lease", async { c.delete(key, Some(opts)).await.map_err(Error::etcd("delete lease")) })
            .await?;
        Ok(())
    }

    /// Start a watch of `<prefix>/subnets/` from revision `from`.
    pub async fn watch_subnets(&self, from: i64) -> Result<WatchStream> {
        let prefix = self.subnets_prefix();
        // Events of several huge values may come in one message.
        let mut c = self.client.watch_client().max_decoding_message_size(MAX_REPLY);
        self.timed("watch_leases", async {
            c.watch(prefix, Some(WatchOptions::new().with_prefix().with_start_revision(from).with_progress_notify()))
                .await
                .map_err(Error::etcd("watch leases"))
        })
        .await
    }
}

/// Whether `e` says a reply was larger than the client takes.
fn reply_too_large(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::OutOfRange || s.message().contains("message length too large")
        }
        _ => false,
    }
}

/// Parse one etcd entry (key name without prefix) as a lease.
pub(crate) fn lease_from_kv(
    name: &str,
    kv: &KeyValue,
    config: &NetworkConfig,
) -> std::result::Result<Lease, LeaseParseError> {
    let mut lease = Lease::from_entry(name, kv.value(), config, kv.lease(), kv.mod_revision())?;
    lease.create_revision = kv.create_revision();
    Ok(lease)
}

/// The full key `lease` was read or written as.
fn old_key_of(registry: &Registry, lease: &Lease) -> String {
    registry.full_key(lease.subnet.as_ref(), lease.ipv6_subnet.as_ref())
}
