//! A replica following its primary's change feed into the local cache.
//!
//! Resumes from the highest sequence the cache holds (which is the primary's numbering, see
//! [`SqliteStore::mirror`]): every page is applied in one transaction, so a kill between pages
//! resumes exactly after the last one committed, and applying a page twice changes nothing.
//! A feed silent for three heartbeats is treated as broken (a partition shows no TCP error),
//! and the follower reconnects with backoff until the primary answers again.

use super::cache::Upstream;
use super::feed::HEARTBEAT;
use crate::relay::Relay;
use crate::store::{Change, Seq, SqliteStore, Store, StoreError};
use crate::telemetry::Metrics;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use zbase_proto::pb;
use zbase_proto::wire::ResourceId;

/// A feed silent this long is considered broken.
const SILENCE: Duration = Duration::from_secs(3);
/// How long opening the feed may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between attempts to reach the primary: from the first to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// How far behind the primary the cache is; pure, so its rules are tested without a feed.
#[derive(Debug, Default)]
pub(crate) struct Lag {
    /// Since when the cache has lacked something the primary committed; `None` while it holds
    /// everything the primary last said it had.
    behind_since: Option<Instant>,
}

impl Lag {
    /// Takes what the feed said (`primary_last`) and what the cache holds (`applied`) at
    /// `now`; returns the lag in changes and in seconds.
    pub(crate) fn observe(&mut self, applied: Seq, primary_last: Seq, now: Instant) -> (u64, f64) {
        let behind = primary_last.saturating_sub(applied);
        if behind == 0 {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(now);
        }
        (behind, self.seconds(now))
    }

    /// The feed is down at `now`: the cache may be missing anything committed since.
    pub(crate) fn lost(&mut self, now: Instant) -> f64 {
        self.behind_since.get_or_insert(now);
        self.seconds(now)
    }

    fn seconds(&self, now: Instant) -> f64 {
        self.behind_since.map_or(0.0, |since| {
            now.saturating_duration_since(since).as_secs_f64()
        })
    }
}

/// Why one session with the feed ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("the primary did not answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("the primary refused the feed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the feed was silent for {} s", SILENCE.as_secs())]
    Silent,
    #[error("the primary ended the feed")]
    Closed,
    #[error("the primary sent a change for a malformed identifier {0:?}")]
    BadChange(String),
    #[error("the local cache failed: {0}")]
    Cache(#[from] StoreError),
    #[error("this station shuts down")]
    Shutdown,
}

/// Follows the primary until `stop`: applies every change to `cache`, tells `relay` which
/// resources changed (so their tasks serve the new snapshot), and keeps `upstream` told of
/// what is applied and whether the feed is live.
pub async fn follow(
    upstream: Upstream,
    cache: Arc<SqliteStore>,
    relay: Relay,
    stop: CancellationToken,
) {
    let metrics = relay.metrics().clone();
    let mut lag = Lag::default();
    let mut backoff = BACKOFF.0;
    loop {
        let started = Instant::now();
        let ended = session(&upstream, &cache, &relay, &metrics, &mut lag, &stop).await;
        upstream.set_live(false);
        if let Ended::Shutdown = ended {
            return;
        }
        let seconds = lag.lost(Instant::now());
        metrics.replication_lag_seconds.set(seconds);
        if started.elapsed() > SILENCE {
            // The feed worked for a while: start over with short waits.
            backoff = BACKOFF.0;
            tracing::warn!(error = %ended, "lost the change feed from the primary; reconnecting");
        } else {
            tracing::debug!(error = %ended, "the primary is not reachable yet");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF.1);
    }
}

/// One connection to the feed, from the cache's position until it breaks.
async fn session(
    upstream: &Upstream,
    cache: &SqliteStore,
    relay: &Relay,
    metrics: &Metrics,
    lag: &mut Lag,
    stop: &CancellationToken,
) -> Ended {
    let after = match cache.last_seq().await {
        Ok(after) => after,
        Err(error) => return Ended::Cache(error),
    };
    upstream.applied(after);
    let mut client = upstream.client();
    let request = pb::FollowRequest { after };
    let opened = tokio::select! {
        opened = tokio::time::timeout(CONNECT_TIMEOUT, client.follow(request)) => opened,
        _ = stop.cancelled() => return Ended::Shutdown,
    };
    let mut feed = match opened {
        Err(_) => return Ended::ConnectTimeout,
        Ok(Err(status)) => return Ended::Status(status),
        Ok(Ok(feed)) => feed.into_inner(),
    };
    tracing::info!(after, "following the primary's change feed");
    upstream.set_live(true);
    let mut applied = after;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(SILENCE, feed.message()) => message,
            _ = stop.cancelled() => return Ended::Shutdown,
        };
        let page = match message {
            Err(_) => return Ended::Silent,
            Ok(Err(status)) => return Ended::Status(status),
            Ok(Ok(None)) => return Ended::Closed,
            Ok(Ok(Some(page))) => page,
        };
        if !page.changes.is_empty() {
            let changes = match decode(page.changes) {
                Ok(changes) => changes,
                Err(ended) => return ended,
            };
            let ids: Vec<ResourceId> = changes.iter().map(|change| change.id).collect();
            applied = match cache.mirror(changes).await {
                Ok(applied) => applied,
                Err(error) => return Ended::Cache(error),
            };
            metrics.replication_applied.inc_by(ids.len() as u64);
            upstream.applied(applied);
            for id in &ids {
                relay.reload(id);
            }
        }
        let (changes, seconds) = lag.observe(applied, page.primary_last, Instant::now());
        if changes == 0 {
            upstream.set_synced();
        }
        metrics
            .replication_lag_changes
            .set(i64::try_from(changes).unwrap_or(i64::MAX));
        metrics.replication_lag_seconds.set(seconds);
    }
}

fn decode(changes: Vec<pb::Change>) -> Result<Vec<Change>, Ended> {
    changes
        .into_iter()
        .map(|change| {
            let id = ResourceId::parse(&change.id).map_err(|_| Ended::BadChange(change.id))?;
            Ok(Change {
                seq: change.seq,
                id,
                jwk: change.jwk,
                snapshot: change.snapshot,
            })
        })
        .collect()
}

// A silent window must span several heartbeats, or an idle feed would look broken.
const _: () = assert!(SILENCE.as_millis() >= 3 * HEARTBEAT.as_millis());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_when_the_cache_first_fell_behind() {
        let t0 = Instant::now();
        let mut lag = Lag::default();
        assert_eq!(lag.observe(10, 10, t0), (0, 0.0));
        assert_eq!(lag.observe(10, 15, t0 + Duration::from_secs(1)), (5, 0.0));
        let (changes, seconds) = lag.observe(12, 15, t0 + Duration::from_secs(3));
        assert_eq!(changes, 3);
        assert!((seconds - 2.0).abs() < 1e-9);
        assert_eq!(lag.observe(15, 15, t0 + Duration::from_secs(4)), (0, 0.0));
    }

    #[test]
    fn a_lost_feed_counts_as_lag_from_the_loss_unless_already_behind() {
        let t0 = Instant::now();
        let mut lag = Lag::default();
        lag.observe(5, 5, t0);
        assert_eq!(lag.lost(t0 + Duration::from_secs(1)), 0.0);
        assert!((lag.lost(t0 + Duration::from_secs(4)) - 3.0).abs() < 1e-9);
        let mut behind = Lag::default();
        behind.observe(5, 9, t0);
        assert!((behind.lost(t0 + Duration::from_secs(2)) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn a_malformed_identifier_in_the_feed_ends_the_session() {
        let bad = pb::Change {
            seq: 1,
            id: "not-an-id".into(),
            jwk: String::new(),
            snapshot: None,
        };
        assert!(matches!(decode(vec![bad]), Err(Ended::BadChange(_))));
    }
}
