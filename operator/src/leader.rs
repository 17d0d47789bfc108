//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! reconcile at once. The decision is pure ([`decide`]); [`Elector`] does the reads and
//! writes, each conditional on the Lease's resourceVersion, so of two replicas that both see
//! an expired Lease exactly one takes it.
//!
//! A leader that cannot renew within [`LeaseConfig::renew_deadline`] stops acting (the
//! process exits and Kubernetes restarts it as a candidate), well before another replica
//! may take the Lease at `lease_duration`.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// Timing of the Lease.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long a leader keeps trying to renew before it gives up leading.
    pub renew_deadline: Duration,
    /// How often a candidate or leader acts.
    pub retry_period: Duration,
}

impl Default for LeaseConfig {
    /// The values Kubernetes' own controllers use.
    fn default() -> Self {
        LeaseConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a replica does with the Lease as it finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it, or the holder let it lapse: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and it is live.
    Follow {
        /// Who holds it.
        holder: String,
    },
}

/// What to do with `lease` (as read) as `me` at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .map(|t| t.0)
        .or(spec.acquire_time.as_ref().map(|t| t.0));
    match renewed {
        Some(at) if now.duration_since(at) < duration => Decision::Follow { holder },
        _ => Decision::Acquire,
    }
}

/// The Lease as `me` writes it when taking or renewing.
pub fn claimed(
    previous: Option<&LeaseSpec>,
    me: &str,
    config: &LeaseConfig,
    now: Timestamp,
) -> LeaseSpec {
    let ours = previous.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    LeaseSpec {
        holder_identity: Some(me.to_owned()),
        lease_duration_seconds: Some(i32::try_from(config.lease_duration.as_secs()).unwrap_or(15)),
        acquire_time: if ours {
            previous.and_then(|p| p.acquire_time.clone())
        } else {
            Some(MicroTime(now))
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(
            previous.and_then(|p| p.lease_transitions).unwrap_or(0)
                + if ours || previous.is_none() { 0 } else { 1 },
        ),
        ..Default::default()
    }
}

/// One replica's side of the election.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    me: String,
    config: LeaseConfig,
}

impl Elector {
    /// An elector for Lease `name` in `namespace`, as `me` (the pod name).
    pub fn new(client: Client, namespace: &str, name: &str, me: &str, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            me: me.into(),
            config,
        }
    }

    /// Tries once to take or renew the Lease: `Ok(true)` when we hold it afterwards.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let spec = current.as_ref().and_then(|l| l.spec.as_ref());
        match decide(spec, &self.me, Timestamp::now()) {
            Decision::Follow { .. } => Ok(false),
            Decision::Acquire | Decision::Renew => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        // The resourceVersion makes this write fail if anyone wrote since our read.
                        resource_version: current
                            .as_ref()
                            .and_then(|l| l.metadata.resource_version.clone()),
                        ..Default::default()
                    },
                    spec: Some(claimed(spec, &self.me, &self.config, Timestamp::now())),
                };
                let written = match current {
                    None => self.api.create(&PostParams::default(), &lease).await,
                    Some(_) => {
                        self.api
                            .replace(&self.name, &PostParams::default(), &lease)
                            .await
                    }
                };
                match written {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) {
        let mut last_holder_logged = false;
        loop {
            match self.try_lead().await {
                Ok(true) => return,
                Ok(false) => {
                    if !last_holder_logged {
                        tracing::info!(lease = %self.name, "another replica leads; standing by");
                        last_holder_logged = true;
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "cannot read or write the leader lease")
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Keeps renewing; returns when leadership is lost (not renewed within the deadline, or
    /// taken by another replica).
    pub async fn hold(&self) {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_lead().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %self.name, "another replica took the leader lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "renewing the leader lease failed")
                }
            }
            if last_renewal.elapsed() > self.config.renew_deadline {
                tracing::error!(lease = %self.name, "the leader lease was not renewed in time");
                return;
            }
        }
    }

    /// Gives the Lease up at shutdown so a standby takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.me)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            spec.acquire_time = None;
            if let Err(e) = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                tracing::warn!(lease = %self.name, error = %e, "could not release the leader lease");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn held(by: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..Default::default()
        }
    }

    #[test]
    fn a_live_lease_of_another_is_followed_and_a_lapsed_one_taken() {
        assert_eq!(decide(None, "a", at(0)), Decision::Acquire);
        assert_eq!(
            decide(Some(&held("b", 0)), "a", at(14)),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(decide(Some(&held("b", 0)), "a", at(15)), Decision::Acquire);
        assert_eq!(decide(Some(&held("a", 0)), "a", at(100)), Decision::Renew);
        let released = LeaseSpec {
            holder_identity: None,
            ..held("b", 0)
        };
        assert_eq!(decide(Some(&released), "a", at(1)), Decision::Acquire);
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let config = LeaseConfig::default();
        let first = claimed(None, "a", &config, at(0));
        assert_eq!(first.lease_transitions, Some(0));
        let renewed = claimed(Some(&first), "a", &config, at(5));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        let taken = claimed(Some(&renewed), "b", &config, at(30));
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
    }
}
