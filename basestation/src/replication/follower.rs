//! What a station does about the other sites, whatever its role: a replica follows the primary
//! of the latest epoch among them; a primary watches them and fences itself when one is
//! primary in a later epoch.
//!
//! A replica asks every site it knows for its status and follows the primary with the latest
//! epoch, after checking that its cache is a prefix of that primary's history (else it wipes
//! the cache and syncs again from the start; a former primary's store is never wiped). It
//! resumes from the highest sequence the cache holds (which is the primary's numbering, see
//! [`SqliteStore::mirror`]): every page is applied in one transaction, so a kill between pages
//! resumes exactly after the last one committed, and applying a page twice changes nothing.
//! A feed silent for three heartbeats is treated as broken (a partition shows no TCP error),
//! and the replica looks for a primary again, with backoff, until one answers.

use super::feed::HEARTBEAT;
use super::site::{Peer, SiteStore, Upstream, with_epoch};
use crate::relay::Relay;
use crate::store::{Change, Epoch, Role, Seq, SqliteStore, Store, StoreError};
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
/// How long a site has to answer a status request.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// Snapshot bytes applied in one transaction at most, when pages arrive faster than they are
/// applied.
const APPLY_BYTES: usize = 32 << 20;
/// How often a primary asks the other sites whether one is primary in a later epoch.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Whether a cache at `position` with history `own` can follow a primary with history
/// `theirs` from where it is; pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// The cache is a prefix of the primary's history.
    Prefix,
    /// The cache holds changes from `from` on that the primary's history does not have (the
    /// primary's epoch began below them, or the histories differ).
    Diverged {
        /// The first sequence the two histories may disagree on.
        from: Seq,
    },
}

/// See [`Fit`].
pub(crate) fn fit(own: &[Epoch], position: Seq, theirs: &[Epoch]) -> Fit {
    let Some(last) = own.last() else {
        // A cache that never followed anyone holds nothing (or a restore of the same history).
        return Fit::Prefix;
    };
    for (mine, other) in own.iter().zip(theirs) {
        if mine != other {
            return Fit::Diverged {
                from: mine.first_seq.min(other.first_seq),
            };
        }
    }
    if theirs.len() < own.len() {
        // The other site is behind this one's epochs: not a primary to follow.
        return Fit::Diverged {
            from: last.first_seq,
        };
    }
    // Every epoch this cache never saw renumbers from its first sequence on: the cache must
    // hold nothing at or past the earliest of them (epochs normally start in order, but the
    // check does not rely on it).
    match theirs[own.len()..]
        .iter()
        .map(|epoch| epoch.first_seq)
        .min()
    {
        Some(first) if position >= first => Fit::Diverged { from: first },
        _ => Fit::Prefix,
    }
}

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
    #[error("no site answers as the primary")]
    NoPrimary,
    #[error("the primary did not answer within {} s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout,
    #[error("the primary refused the feed: {0}")]
    Status(#[from] tonic::Status),
    #[error("the feed was silent for {} s", SILENCE.as_secs())]
    Silent,
    #[error("the primary ended the feed")]
    Closed,
    #[error("the site followed is no longer the primary ({0})")]
    NotPrimary(String),
    #[error("this station was promoted")]
    Promoted,
    #[error("the primary sent a change for a malformed identifier {0:?}")]
    BadChange(String),
    #[error(
        "this store holds a former primary's changes from sequence {from} on that the primary at {url} does not have; it is not wiped: take a backup of it if those writes matter, then move its data directory aside and start this station again as a replica"
    )]
    Diverged { from: Seq, url: String },
    #[error("the local cache failed: {0}")]
    Cache(#[from] StoreError),
    #[error("this station shuts down")]
    Shutdown,
}

impl Ended {
    /// Whether this is how looking for a primary normally fails while none is reachable or
    /// the followed one hands over, rather than something an operator should look at.
    fn expected_while_looking(&self) -> bool {
        matches!(
            self,
            Ended::NoPrimary
                | Ended::ConnectTimeout
                | Ended::Silent
                | Ended::Closed
                | Ended::NotPrimary(_)
                | Ended::Promoted
        ) || matches!(self, Ended::Status(status) if status.code() == tonic::Code::Unavailable)
    }
}

/// Runs until `stop`: follows the primary while this station is a replica, watches the other
/// sites while it is the primary, and does nothing while it is fenced. A former primary's
/// cache that diverged from the primary is kept rather than wiped.
pub async fn run(site: Arc<SiteStore>, relay: Relay, stop: CancellationToken) {
    let upstream = site.upstream().cloned();
    let metrics = relay.metrics().clone();
    let mut lag = Lag::default();
    let mut backoff = BACKOFF.0;
    let mut last_reason: Option<String> = None;
    loop {
        let pause = match (site.site().role, &upstream) {
            (Role::Replica, Some(upstream)) => {
                let started = Instant::now();
                let ended = follow_once(&site, upstream, &relay, &metrics, &mut lag, &stop).await;
                upstream.set_following(None);
                if let Ended::Shutdown = ended {
                    return;
                }
                metrics
                    .replication_lag_seconds
                    .set(lag.lost(Instant::now()));
                let reason = ended.to_string();
                if started.elapsed() > SILENCE {
                    // The feed worked for a while: start over with short waits.
                    backoff = BACKOFF.0;
                    tracing::warn!(error = %ended, "lost the change feed from the primary; looking for it again");
                } else if ended.expected_while_looking() || last_reason.as_ref() == Some(&reason) {
                    tracing::debug!(error = %ended, "no primary to follow yet");
                } else {
                    // Something needs a look (a refusal, a diverged history, the cache): said
                    // once, not at every retry.
                    tracing::warn!(error = %ended, "cannot follow the primary; trying again");
                }
                last_reason = Some(reason);
                let pause = backoff;
                backoff = (backoff * 2).min(BACKOFF.1);
                pause
            }
            (Role::Primary, upstream) => {
                // Pods sharing a PostgreSQL store: one of them may have been demoted.
                if let Err(error) = site.refresh().await {
                    tracing::warn!(%error, "could not read this site's role from the store");
                }
                if let Some(upstream) = upstream {
                    watch_once(&site, upstream).await;
                }
                WATCH_EVERY
            }
            (Role::Replica | Role::Fenced, _) => WATCH_EVERY,
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Every candidate's status, asked at once, each bounded.
async fn statuses(upstream: &Upstream) -> Vec<(Peer, pb::SiteStatus)> {
    let epoch = upstream.epoch();
    let asks = upstream
        .candidates()
        .iter()
        .cloned()
        .map(|peer| async move {
            let mut client = peer.client.clone();
            let call = client.status(with_epoch(pb::StatusRequest {}, epoch));
            match tokio::time::timeout(STATUS_TIMEOUT, call).await {
                Ok(Ok(status)) => Some((peer, status.into_inner())),
                _ => None,
            }
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn epochs_of(status: &[pb::Epoch]) -> Vec<Epoch> {
    status
        .iter()
        .map(|epoch| Epoch {
            epoch: epoch.epoch,
            first_seq: epoch.first_seq,
        })
        .collect()
}

fn latest(epochs: &[pb::Epoch]) -> u64 {
    epochs.last().map_or(0, |epoch| epoch.epoch)
}

/// Which of `sites` to follow, for a cache at `position` in epoch `own`: the primary of the
/// latest epoch, not older than this site's; while there is none, a site of this very epoch
/// that handed over and holds changes the cache lacks. That is a demoted primary: following
/// it is how
/// a promotion with its token catches up even if the feed from it had dropped, and what it
/// sends is its own committed history, which the next primary continues.
pub(crate) fn choose<'a>(
    own: u64,
    position: Seq,
    sites: impl Iterator<Item = &'a pb::SiteStatus>,
) -> Option<usize> {
    let sites: Vec<&pb::SiteStatus> = sites.collect();
    let primary = sites
        .iter()
        .enumerate()
        .filter(|(_, status)| status.role == Role::Primary.name())
        .filter(|(_, status)| latest(&status.epochs) >= own)
        .max_by_key(|(_, status)| latest(&status.epochs))
        .map(|(index, _)| index);
    primary.or_else(|| {
        sites
            .iter()
            .enumerate()
            .filter(|(_, status)| status.role == Role::Fenced.name() && status.handed_over)
            .filter(|(_, status)| own > 0 && latest(&status.epochs) == own)
            .filter(|(_, status)| status.last_seq > position)
            .max_by_key(|(_, status)| status.last_seq)
            .map(|(index, _)| index)
    })
}

/// Before a primary with other sites serves anyone: asks them once whether one is primary in
/// a later epoch, so a primary restarted after it was replaced never takes a write.
pub async fn check_at_start(site: &SiteStore) {
    if let (Role::Primary, Some(upstream)) = (site.site().role, site.upstream()) {
        watch_once(site, upstream).await;
    }
}

/// A primary's look at the other sites: fences itself if one is at a later epoch.
async fn watch_once(site: &SiteStore, upstream: &Upstream) {
    for (peer, status) in statuses(upstream).await {
        let epoch = latest(&status.epochs);
        if epoch > site.site().epoch()
            && let Err(error) = site.fence(epoch, &peer.url).await
        {
            tracing::error!(%error, "could not record the fence; writes stay refused until restart");
        }
    }
}

/// Chooses the primary of the latest epoch, checks the cache fits its history, and follows
/// it until the feed breaks or it stops being the primary.
async fn follow_once(
    site: &SiteStore,
    upstream: &Upstream,
    relay: &Relay,
    metrics: &Metrics,
    lag: &mut Lag,
    stop: &CancellationToken,
) -> Ended {
    let Some((cache, _)) = site.replica_parts() else {
        return Ended::NoPrimary;
    };
    let own = site.site();
    let position = match cache.last_seq().await {
        Ok(position) => position,
        Err(error) => return Ended::Cache(error),
    };
    let mut sites = statuses(upstream).await;
    let Some(chosen) = choose(
        own.epoch(),
        position,
        sites.iter().map(|(_, status)| status),
    ) else {
        return Ended::NoPrimary;
    };
    let (peer, status) = sites.swap_remove(chosen);
    let theirs = epochs_of(&status.epochs);
    if let Fit::Diverged { from } = fit(&own.epochs, position, &theirs) {
        if site.former_primary() {
            return Ended::Diverged {
                from,
                url: peer.url,
            };
        }
        tracing::warn!(from, primary = %peer.url, "this cache holds changes the primary does not have (a failover happened after them); wiping it to sync again from the start");
        match site.wipe(cache).await {
            Ok(true) => {}
            Ok(false) => return Ended::Promoted,
            Err(error) => return Ended::Cache(error),
        }
        upstream.wiped();
        // Resource tasks hold keys and snapshots of the history just dropped (some of those
        // resources exist nowhere now): their peers reconnect and load what the new primary has.
        let evicted = relay.evict_all().await;
        tracing::info!(
            evicted,
            "closed the sessions of every active resource after the wipe"
        );
    }
    if let Err(error) = site.adopt(theirs).await {
        return Ended::Cache(error);
    }
    session(site, cache, upstream, &peer, relay, metrics, lag, stop).await
}

/// One connection to `peer`'s feed, from the cache's position until it breaks.
#[allow(clippy::too_many_arguments)]
async fn session(
    site: &SiteStore,
    cache: &SqliteStore,
    upstream: &Upstream,
    peer: &Peer,
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
    let mut client = peer.client.clone();
    let request = with_epoch(pb::FollowRequest { after }, upstream.epoch());
    let opened = tokio::select! {
        opened = tokio::time::timeout(CONNECT_TIMEOUT, client.follow(request)) => opened,
        _ = stop.cancelled() => return Ended::Shutdown,
    };
    let mut feed = match opened {
        Err(_) => return Ended::ConnectTimeout,
        Ok(Err(status)) => return Ended::Status(status),
        Ok(Ok(feed)) => feed.into_inner(),
    };
    tracing::info!(after, primary = %peer.url, epoch = upstream.epoch(), "following the primary's change feed");
    upstream.set_following(Some(peer.clone()));
    let mut applied = after;
    loop {
        let message = tokio::select! {
            message = tokio::time::timeout(SILENCE, feed.message()) => message,
            _ = stop.cancelled() => return Ended::Shutdown,
        };
        let first = match message {
            Err(_) => return Ended::Silent,
            Ok(Err(status)) => return Ended::Status(status),
            Ok(Ok(None)) => return Ended::Closed,
            Ok(Ok(Some(page))) => page,
        };
        if site.site().role != Role::Replica {
            // Promoted meanwhile: this station writes for itself now.
            return Ended::Promoted;
        }
        // Pages already received go into the same transaction: one commit (one fsync) for
        // many pages is what lets an initial sync run at the link's speed.
        let (pages, ended) = gather(first, &mut feed);
        let Some(page) = pages.last() else {
            return Ended::Closed;
        };
        let (primary_last, role) = (page.primary_last, page.role.clone());
        let changes = match decode(pages.into_iter().flat_map(|page| page.changes).collect()) {
            Ok(changes) => changes,
            Err(ended) => return ended,
        };
        if !changes.is_empty() {
            let ids: Vec<ResourceId> = changes.iter().map(|change| change.id).collect();
            applied = match site.mirror(cache, changes).await {
                Ok(Some(applied)) => applied,
                Ok(None) => return Ended::Promoted,
                Err(error) => return Ended::Cache(error),
            };
            metrics.replication_applied.inc_by(ids.len() as u64);
            upstream.applied(applied);
            for id in &ids {
                relay.reload(id);
            }
        }
        if let Some(ended) = ended {
            return ended;
        }
        let (changes, seconds) = lag.observe(applied, primary_last, Instant::now());
        metrics
            .replication_lag_changes
            .set(i64::try_from(changes).unwrap_or(i64::MAX));
        metrics.replication_lag_seconds.set(seconds);
        if changes == 0 {
            upstream.set_synced();
            if role != Role::Primary.name() {
                // It handed over (or was fenced) and this cache holds all it had: look for
                // the primary that follows it.
                return Ended::NotPrimary(role);
            }
        }
    }
}

/// `first` and every page already received after it, up to [`APPLY_BYTES`]; and how the feed
/// ended, if it ended meanwhile (after the pages it sent before).
fn gather(
    first: pb::Changes,
    feed: &mut tonic::Streaming<pb::Changes>,
) -> (Vec<pb::Changes>, Option<Ended>) {
    use futures::FutureExt as _;
    let size = |page: &pb::Changes| -> usize {
        page.changes
            .iter()
            .map(|change| change.jwk.len() + change.snapshot.as_ref().map_or(0, |s| s.len()))
            .sum()
    };
    let mut bytes = size(&first);
    let mut pages = vec![first];
    while bytes < APPLY_BYTES {
        match feed.message().now_or_never() {
            None => break,
            Some(Ok(Some(page))) => {
                bytes += size(&page);
                pages.push(page);
            }
            Some(Ok(None)) => return (pages, Some(Ended::Closed)),
            Some(Err(status)) => return (pages, Some(Ended::Status(status))),
        }
    }
    (pages, None)
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

    fn epochs(list: &[(u64, Seq)]) -> Vec<Epoch> {
        list.iter()
            .map(|&(epoch, first_seq)| Epoch { epoch, first_seq })
            .collect()
    }

    #[test]
    fn a_cache_fits_a_new_primary_when_it_holds_nothing_past_the_new_epochs_start() {
        let old = epochs(&[(1, 1)]);
        let new = epochs(&[(1, 1), (2, 101)]);
        assert_eq!(
            fit(&old, 100, &new),
            Fit::Prefix,
            "caught up to the handover"
        );
        assert_eq!(
            fit(&old, 60, &new),
            Fit::Prefix,
            "behind: the rest comes by the feed"
        );
        assert_eq!(
            fit(&old, 101, &new),
            Fit::Diverged { from: 101 },
            "ahead of the promotion"
        );
        assert_eq!(fit(&new, 150, &new), Fit::Prefix, "the same history");
        assert_eq!(fit(&[], 0, &new), Fit::Prefix, "a fresh cache");
    }

    #[test]
    fn every_epoch_the_cache_missed_counts_not_only_the_next() {
        let old = epochs(&[(1, 1)]);
        let later = epochs(&[(1, 1), (2, 101), (3, 50)]);
        assert_eq!(fit(&old, 60, &later), Fit::Diverged { from: 50 });
        assert_eq!(fit(&old, 49, &later), Fit::Prefix);
        let two_steps = epochs(&[(1, 1), (2, 101), (3, 120)]);
        assert_eq!(fit(&old, 100, &two_steps), Fit::Prefix);
        assert_eq!(fit(&old, 101, &two_steps), Fit::Diverged { from: 101 });
    }

    #[test]
    fn a_cache_does_not_fit_another_history_or_an_older_one() {
        let mine = epochs(&[(1, 1), (2, 101)]);
        let other = epochs(&[(1, 1), (2, 90)]);
        assert_eq!(fit(&mine, 120, &other), Fit::Diverged { from: 90 });
        assert_eq!(
            fit(&mine, 120, &epochs(&[(1, 1)])),
            Fit::Diverged { from: 101 }
        );
    }

    fn status(role: Role, epochs: &[(u64, Seq)], last_seq: Seq) -> pb::SiteStatus {
        pb::SiteStatus {
            role: role.name().into(),
            epochs: epochs
                .iter()
                .map(|&(epoch, first_seq)| pb::Epoch { epoch, first_seq })
                .collect(),
            last_seq,
            ..Default::default()
        }
    }

    #[test]
    fn the_primary_of_the_latest_epoch_is_followed() {
        let sites = [
            status(Role::Fenced, &[(1, 1)], 90),
            status(Role::Primary, &[(1, 1), (2, 91)], 120),
            status(Role::Replica, &[(1, 1), (2, 91)], 110),
        ];
        assert_eq!(choose(1, 50, sites.iter()), Some(1));
        assert_eq!(choose(2, 100, sites.iter()), Some(1));
        assert_eq!(
            choose(3, 100, sites.iter()),
            None,
            "a primary behind this site's epoch is not followed"
        );
    }

    #[test]
    fn without_a_primary_a_demoted_one_of_the_same_epoch_is_followed_while_it_has_more() {
        let mut handed_over = status(Role::Fenced, &[(1, 1)], 90);
        handed_over.handed_over = true;
        let demoted = [status(Role::Replica, &[(1, 1)], 40), handed_over];
        let fenced_by_a_later_epoch = [
            status(Role::Replica, &[(1, 1)], 40),
            status(Role::Fenced, &[(1, 1)], 90),
        ];
        assert_eq!(
            choose(1, 50, fenced_by_a_later_epoch.iter()),
            None,
            "a site fenced by a later epoch may hold writes the next primary never had"
        );
        assert_eq!(choose(1, 50, demoted.iter()), Some(1), "it holds 51..=90");
        assert_eq!(choose(1, 90, demoted.iter()), None, "nothing more to take");
        assert_eq!(
            choose(2, 50, demoted.iter()),
            None,
            "a fenced site of an older epoch was replaced: its extra writes are not history"
        );
        assert_eq!(
            choose(0, 0, demoted.iter()),
            None,
            "a cache that never followed anyone waits for a primary"
        );
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
