//! Keeping the node's own lease alive.
//!
//! The lease is renewed `margin` before it expires. A failed request is
//! retried with capped exponential backoff until it succeeds or the lease
//! turns out to be lost; a lost lease ends the loop with the reason, so the
//! daemon never keeps using a subnet it no longer owns.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::lease::{Lease, LeaseAttrs};
use crate::registry::{LostReason, Registry, RenewOutcome};

/// Renews one lease for as long as it is ours.
pub struct Renewer {
    registry: Registry,
    lease: Lease,
    attrs: LeaseAttrs,
    ttl: Duration,
    margin: Duration,
    /// When the current lease was written (and so when it expires: + ttl).
    written_at: Instant,
}

impl Renewer {
    /// `lease` was just acquired or renewed with `ttl`.
    pub fn new(registry: Registry, lease: Lease, ttl: Duration, margin: Duration) -> Renewer {
        let attrs = lease.attrs.clone();
        Renewer { registry, lease, attrs, ttl, margin, written_at: Instant::now() }
    }

    /// The lease as last written.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// When the next renewal is due: `margin` before expiry (at least 1 s
    /// after the last write, so a margin close to the TTL cannot spin).
    pub fn due(&self) -> Instant {
        let wait = self.ttl.saturating_sub(self.margin).max(Duration::from_secs(1));
        self.written_at + wait
    }

    /// Renew until the lease is lost; returns why. Cancel-safe: dropping the
    /// future at any await leaves the lease as it was in etcd.
    pub async fn run(&mut self) -> LostReason {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut failing = false;
        loop {
            tokio::time::sleep_until(self.due()).await;
            loop {
                match self.registry.renew_lease(&self.lease, &self.attrs, self.ttl).await {
                    Ok(RenewOutcome::Renewed(lease)) => {
                        if failing {
                            info!(subnet = %lease.id(), "lease renewed again after errors");
                        } else {
                            info!(subnet = %lease.id(), ttl_s = self.ttl.as_secs(), "lease renewed");
                        }
                        failing = false;
                        backoff.reset();
                        self.registry.metrics().lease_written(lease.id(), self.ttl, true);
                        self.lease = lease;
                        self.written_at = Instant::now();
                        break;
                    }
                    Ok(RenewOutcome::Lost(why)) => return why,
                    Err(e) => {
                        if !failing {
                            warn!(subnet = %self.lease.id(), "lease renewal failed, retrying: {e}");
                        }
                        failing = true;
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
            }
        }
    }
}
