//! The primary's side of replication: `zbase.v1.Replication` on the replication port.
//!
//! The change feed pages through [`Store::changes_since`] from the position the replica
//! gives, so it is resumable and has no gaps by the store's own promise (a change is numbered
//! above everything committed before it). It wakes on this process's commits, and polls once a
//! heartbeat for commits of other pods sharing a PostgreSQL store. Writes from a replica go
//! through the resource's task here, exactly like a local client's, so this site's peers and
//! requesters see them and the replica is answered only once they are durable. Bridges of
//! deltas and requests are in [`super::bridge`].

use super::site::{EPOCH_METADATA, Peer, SiteStore, Token, with_epoch};
use crate::relay::Relay;
use crate::session::CloseReason;
use crate::store::{Change, Claim, Seq, Site, Store, StoreError};
use futures::SinkExt;
use futures::channel::mpsc;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use zbase_proto::pb;
use zbase_proto::pb::replication_client::ReplicationClient;
use zbase_proto::pb::replication_server::{Replication, ReplicationServer};
use zbase_proto::wire::{ResourceId, VerificationKey};

/// Changes read from the store at once.
const PAGE: usize = 256;
/// A feed message carries changes up to this many bytes (at least one change, however large),
/// so a page of large snapshots becomes several messages rather than one huge one.
const MESSAGE_BYTES: usize = 1 << 20;
/// How often an idle feed says where the primary is, which is also how a replica tells a
/// silent primary from a quiet one, and how often it looks for other pods' commits.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Messages buffered towards one replica; HTTP/2 flow control is the real buffer.
const FEED_BUFFER: usize = 8;
/// The largest message either side accepts: a change holds one snapshot, bounded by the
/// frame limit, and the peer is an authenticated site of the same owner.
pub const MESSAGE_MAX: usize = 1 << 30;

/// The Replication service over this station's relay and store.
pub fn service(relay: Relay, site: Arc<SiteStore>) -> ReplicationServer<Feed> {
    ReplicationServer::new(Feed { relay, site })
        .max_decoding_message_size(MESSAGE_MAX)
        .max_encoding_message_size(MESSAGE_MAX)
}

/// The replication endpoints (served by every station with a replication port).
pub struct Feed {
    relay: Relay,
    site: Arc<SiteStore>,
}

impl Feed {
    /// Reads the caller's epoch and fences this station if it is later than its own.
    async fn caller<T>(&self, request: &Request<T>) -> u64 {
        let epoch = request
            .metadata()
            .get(EPOCH_METADATA)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0);
        if let Err(error) = self.site.fence(epoch, "a site that called this one").await {
            tracing::error!(%error, "could not record the fence");
        }
        epoch
    }
}

/// The site's epochs as the protocol carries them.
fn epochs(site: &Site) -> Vec<pb::Epoch> {
    site.epochs
        .iter()
        .map(|epoch| pb::Epoch {
            epoch: epoch.epoch,
            first_seq: epoch.first_seq,
        })
        .collect()
}

type ChangeStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Changes, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for Feed {
    type FollowStream = ChangeStream;
    type BridgeStream = super::bridge::FrameStream;

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::SiteStatus>, Status> {
        self.caller(&request).await;
        let site = self.site.site();
        let last_seq =
            self.site.last_seq().await.map_err(|error| {
                Status::unavailable(format!("this site's store failed: {error}"))
            })?;
        let metrics = self.relay.metrics();
        let following = self
            .site
            .upstream()
            .and_then(|upstream| upstream.following());
        let replica = site.role == crate::store::Role::Replica;
        Ok(Response::new(pb::SiteStatus {
            role: site.role.name().to_owned(),
            epochs: epochs(&site),
            last_seq,
            following: following.map(|peer| peer.url).unwrap_or_default(),
            lag_changes: if replica {
                u64::try_from(metrics.replication_lag_changes.get()).unwrap_or(0)
            } else {
                0
            },
            lag_seconds: if replica {
                metrics.replication_lag_seconds.get()
            } else {
                0.0
            },
            handed_over: site.role == crate::store::Role::Fenced && self.site.handed_over(),
        }))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::PromoteReply>, Status> {
        self.caller(&request).await;
        let token = request.into_inner().token.map(|token| Token {
            epoch: token.epoch,
            seq: token.seq,
        });
        let promoted = self
            .site
            .promote(token)
            .await
            .map_err(|error| Status::failed_precondition(error.to_string()))?;
        if promoted.failover {
            tracing::warn!(
                epoch = promoted.epoch,
                first_seq = promoted.first_seq,
                "promoted to primary WITHOUT a handover token (a failover): writes the old primary took after this site's last change are not here; rebuild the old primary as a replica"
            );
        } else {
            tracing::info!(
                epoch = promoted.epoch,
                first_seq = promoted.first_seq,
                "promoted to primary after a planned handover: nothing was lost"
            );
        }
        Ok(Response::new(pb::PromoteReply {
            epoch: promoted.epoch,
            first_seq: promoted.first_seq,
            failover: promoted.failover,
        }))
    }

    async fn demote(
        &self,
        request: Request<pb::DemoteRequest>,
    ) -> Result<Response<pb::HandoverToken>, Status> {
        self.caller(&request).await;
        let token = self
            .site
            .demote()
            .await
            .map_err(|error| Status::failed_precondition(error.to_string()))?;
        tracing::warn!(%token, "demoted: this station accepts no write from now on; promote the next primary with this token");
        Ok(Response::new(pb::HandoverToken {
            epoch: token.epoch,
            seq: token.seq,
        }))
    }

    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        let caller = self.caller(&request).await;
        let own = self.site.site().epoch();
        if caller > own {
            return Err(Status::failed_precondition(format!(
                "this site is at epoch {own}, behind the caller's {caller}: follow the primary of the latest epoch"
            )));
        }
        let after = request.into_inner().after;
        let (tx, rx) = mpsc::channel(FEED_BUFFER);
        let site = Arc::clone(&self.site);
        let relay = self.relay.clone();
        tokio::spawn(async move {
            let followers = &relay.metrics().replication_followers;
            followers.inc();
            tracing::info!(after, "a replica site follows the change feed");
            let ended = tokio::select! {
                ended = feed(&site, after, tx) => ended,
                _ = relay.shutdown().cancelled() => "this station shuts down",
            };
            followers.dec();
            tracing::info!(reason = ended, "a replica site stopped following");
        });
        Ok(Response::new(Box::pin(rx)))
    }

    async fn claim(
        &self,
        request: Request<pb::ClaimRequest>,
    ) -> Result<Response<pb::ClaimReply>, Status> {
        let epoch = self.caller(&request).await;
        let passed = passed_on(&request);
        let request = request.into_inner();
        let id = parse_id(&request.id)?;
        if let Some(mut home) = self.home(&id, passed).await? {
            return home.claim(pass_on(request, epoch)).await;
        }
        let key = VerificationKey::from_jwk_json(&request.jwk)
            .map_err(|error| Status::invalid_argument(format!("jwk: {error}")))?;
        match self.relay.claim(id, key).await.map_err(refused)? {
            Claim::Claimed { seq } => Ok(Response::new(pb::ClaimReply { seq })),
            Claim::Taken => Err(Status::already_exists("the identifier is taken")),
        }
    }

    async fn put_snapshot(
        &self,
        request: Request<pb::PutSnapshotRequest>,
    ) -> Result<Response<pb::PutSnapshotReply>, Status> {
        let epoch = self.caller(&request).await;
        let passed = passed_on(&request);
        let request = request.into_inner();
        let id = parse_id(&request.id)?;
        if let Some(mut home) = self.home(&id, passed).await? {
            return home.put_snapshot(pass_on(request, epoch)).await;
        }
        match self
            .relay
            .write(id, request.snapshot, request.jwk)
            .await
            .map_err(refused)?
        {
            Some(seq) => Ok(Response::new(pb::PutSnapshotReply { seq })),
            None => Err(Status::failed_precondition(
                "the writing session's key is no longer the resource's key",
            )),
        }
    }

    async fn replace_key(
        &self,
        request: Request<pb::ReplaceKeyRequest>,
    ) -> Result<Response<pb::ReplaceKeyReply>, Status> {
        let epoch = self.caller(&request).await;
        let passed = passed_on(&request);
        let request = request.into_inner();
        let id = parse_id(&request.id)?;
        if let Some(mut home) = self.home(&id, passed).await? {
            return home.replace_key(pass_on(request, epoch)).await;
        }
        let key = |jwk: &str, member: &str| {
            VerificationKey::from_jwk_json(jwk)
                .map_err(|error| Status::invalid_argument(format!("{member}: {error}")))
        };
        let current = key(&request.expected_jwk, "expected_jwk")?;
        let new = key(&request.jwk, "jwk")?;
        match self.relay.rotate(id, current, new).await {
            Ok(seq) => Ok(Response::new(pb::ReplaceKeyReply { seq })),
            Err(CloseReason::KeyReplaced) => Err(Status::failed_precondition(
                "the resource's key is not the expected one",
            )),
            Err(reason) => Err(refused(reason)),
        }
    }

    async fn bridge(
        &self,
        request: Request<tonic::Streaming<pb::Frame>>,
    ) -> Result<Response<super::bridge::FrameStream>, Status> {
        let epoch = self.caller(&request).await;
        let id = pb::resource_id(request.metadata())?;
        if let Some(mut home) = self.home(&id, passed_on(&request)).await? {
            use futures::StreamExt as _;
            // The replica's frames as they come, until its stream ends or fails.
            let frames = request
                .into_inner()
                .take_while(|frame| std::future::ready(frame.is_ok()))
                .filter_map(|frame| std::future::ready(frame.ok()));
            let mut request = pass_on(frames, epoch);
            request.metadata_mut().insert(
                pb::RESOURCE_ID_METADATA,
                tonic::metadata::MetadataValue::try_from(id.as_str()).map_err(|_| {
                    Status::invalid_argument("the identifier is not a header value")
                })?,
            );
            let frames = home.bridge(request).await?.into_inner();
            return Ok(Response::new(Box::pin(frames)));
        }
        super::bridge::serve(&self.relay, request).await
    }
}

/// Metadata on a call one pod of a site passed on to another, the resource's home: the home
/// answers it itself, so two pods that disagree about the home for a moment cannot pass a
/// call back and forth.
const PASSED_ON_METADATA: &str = "zbase-passed-on";

/// Whether `request` was passed on by another pod of this site.
fn passed_on<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(PASSED_ON_METADATA)
}

/// `message` as a call passed on to the home pod, with the replica's epoch.
fn pass_on<T>(message: T, epoch: u64) -> Request<T> {
    let mut request = with_epoch(message, epoch);
    request.metadata_mut().insert(
        PASSED_ON_METADATA,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    request
}

impl Feed {
    /// A client of `id`'s home pod when another pod of this site is home (writes and bridges
    /// must run in the home's resource task, like a client's); `None` when this pod is.
    async fn home(
        &self,
        id: &ResourceId,
        passed: bool,
    ) -> Result<Option<ReplicationClient<Channel>>, Status> {
        match self.relay.home_elsewhere(id).await {
            Ok(None) => Ok(None),
            Ok(Some(_)) if passed => Err(Status::unavailable(
                "the pods of the primary site disagree about this resource's home for a moment: try again",
            )),
            Ok(Some(channel)) => Ok(Some(Peer::new(String::new(), channel).client)),
            Err(reason) => Err(refused(reason)),
        }
    }
}

fn parse_id(text: &str) -> Result<ResourceId, Status> {
    ResourceId::parse(text).map_err(|error| Status::invalid_argument(format!("id: {error}")))
}

/// The status a replica reads for a write the resource's task refused.
fn refused(reason: CloseReason) -> Status {
    match reason {
        // A write for a resource that has no key here: it does not exist on the primary.
        CloseReason::VerificationFailed => Status::not_found("no resource has this identifier"),
        reason => Status::unavailable(format!("the primary could not write: {}", reason.label())),
    }
}

/// Sends every change above `after`, then each later commit, with heartbeats while idle, until
/// the replica goes away or the store fails; returns why it ended.
async fn feed(
    site: &SiteStore,
    after: Seq,
    mut tx: mpsc::Sender<Result<pb::Changes, Status>>,
) -> &'static str {
    let store: &dyn Store = site;
    let mut commits = store.commits();
    let mut position = after;
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        // Marked seen before reading, so a commit that lands during the read wakes the wait.
        commits.borrow_and_update();
        let page = match read(store, position).await {
            Ok(page) => page,
            Err(error) => {
                tracing::warn!(%error, "the change feed cannot read the store");
                let status = Status::unavailable(format!("the primary's store failed: {error}"));
                let _ = tx.send(Err(status)).await;
                return "the store failed";
            }
        };
        let (changes, primary_last) = page;
        if changes.is_empty() {
            if quiet_since.elapsed() >= HEARTBEAT {
                let heartbeat = stamped(
                    pb::Changes {
                        changes: Vec::new(),
                        primary_last,
                        ..pb::Changes::default()
                    },
                    &site.site(),
                );
                if tx.send(Ok(heartbeat)).await.is_err() {
                    return "the replica went away";
                }
                quiet_since = tokio::time::Instant::now();
            }
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep_until(quiet_since + HEARTBEAT) => {}
            }
            continue;
        }
        let full = changes.len() == PAGE;
        if let Some(last) = changes.last() {
            position = last.seq;
        }
        for message in messages(changes, primary_last) {
            if tx.send(Ok(stamped(message, &site.site()))).await.is_err() {
                return "the replica went away";
            }
        }
        quiet_since = tokio::time::Instant::now();
        if !full {
            // A short page read everything committed then; wait for the next commit.
            tokio::select! {
                _ = commits.changed() => {}
                _ = tokio::time::sleep_until(quiet_since + HEARTBEAT) => {}
            }
        }
    }
}

/// `message` with this site's role and epochs, which tell a follower whether it still follows
/// the primary.
fn stamped(mut message: pb::Changes, site: &Site) -> pb::Changes {
    message.role = site.role.name().to_owned();
    message.epochs = epochs(site);
    message
}

/// One page above `position` and the highest committed sequence (read first, so it is never
/// below the page).
async fn read(store: &dyn Store, position: Seq) -> Result<(Vec<Change>, Seq), StoreError> {
    let changes = store.changes_since(position, PAGE).await?;
    let last = store.last_seq().await?;
    let last = changes.last().map_or(last, |change| change.seq.max(last));
    Ok((changes, last))
}

/// Splits a page into messages of at most [`MESSAGE_BYTES`] (or one change).
fn messages(changes: Vec<Change>, primary_last: Seq) -> Vec<pb::Changes> {
    let mut messages = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for change in changes {
        let size = change.weight();
        if !current.is_empty() && bytes + size > MESSAGE_BYTES {
            messages.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(pb::Change {
            seq: change.seq,
            id: change.id.as_str().to_owned(),
            jwk: change.jwk,
            snapshot: change.snapshot,
        });
    }
    if !current.is_empty() {
        messages.push(current);
    }
    messages
        .into_iter()
        .map(|changes| pb::Changes {
            changes,
            primary_last,
            ..pb::Changes::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn change(seq: Seq, size: usize) -> Change {
        Change {
            seq,
            id: ResourceId::from_bytes([seq as u8; 32]),
            jwk: String::new(),
            snapshot: Some(Bytes::from(vec![0u8; size])),
        }
    }

    #[test]
    fn a_page_is_split_into_messages_of_bounded_size_in_order() {
        let page = vec![
            change(1, 600 << 10),
            change(2, 600 << 10),
            change(3, 10),
            change(4, 3 << 20),
            change(5, 1),
        ];
        let messages = messages(page, 9);
        let seqs: Vec<Vec<Seq>> = messages
            .iter()
            .map(|m| m.changes.iter().map(|c| c.seq).collect())
            .collect();
        assert_eq!(seqs, vec![vec![1], vec![2, 3], vec![4], vec![5]]);
        assert!(messages.iter().all(|m| m.primary_last == 9));
    }

    #[test]
    fn an_empty_page_is_no_message() {
        assert!(messages(Vec::new(), 3).is_empty());
    }
}
