//! A replica site's store: the local SQLite cache for every read, the primary for every write.
//!
//! The relay runs on a replica exactly as on a primary; only its store differs. A claim or a
//! snapshot goes to the primary, and returns only once the primary has committed it *and* the
//! change feed has brought that change into the local cache, so the resource task's usual
//! "durable before visible" rule means "committed on the primary, and here" on a replica.
//! While the feed is down, writes are refused at once, which the relay turns into 1013 /
//! UNAVAILABLE ("try again later").

use crate::store::{Change, Claim, Seq, SqliteStore, Store, StoreError, StoredResource};
use crate::telemetry::{Metrics, ResultLabel};
use bytes::Bytes;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;
use zbase_proto::pb;
use zbase_proto::pb::replication_client::ReplicationClient;
use zbase_proto::wire::ResourceId;

/// How long the primary has to answer a write.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a write committed on the primary may take to come back through the feed.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The replica's link to its primary, shared by the cache (writes) and the follower (feed).
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    client: ReplicationClient<Channel>,
    /// The highest primary sequence applied to the cache.
    applied: watch::Sender<Seq>,
    /// True while the feed is live (connected and heard from within its heartbeat window).
    live: AtomicBool,
    /// True once the cache held everything the primary had, in this process's life.
    synced: AtomicBool,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// A link over `channel` to the primary's replication port.
    pub fn new(channel: Channel, metrics: Arc<Metrics>) -> Upstream {
        let client = ReplicationClient::new(channel)
            .max_decoding_message_size(super::MESSAGE_MAX)
            .max_encoding_message_size(super::MESSAGE_MAX);
        Upstream {
            inner: Arc::new(UpstreamInner {
                client,
                applied: watch::Sender::new(0),
                live: AtomicBool::new(false),
                synced: AtomicBool::new(false),
                metrics,
            }),
        }
    }

    /// The client, for the follower.
    pub(super) fn client(&self) -> ReplicationClient<Channel> {
        self.inner.client.clone()
    }

    /// Records that the cache now holds every change up to `seq`.
    pub(super) fn applied(&self, seq: Seq) {
        self.inner.applied.send_if_modified(|applied| {
            let newer = seq > *applied;
            if newer {
                *applied = seq;
            }
            newer
        });
    }

    /// Records whether the feed is live now.
    pub(super) fn set_live(&self, live: bool) {
        self.inner.live.store(live, Ordering::Relaxed);
        self.inner
            .metrics
            .replication_connected
            .set(i64::from(live));
    }

    /// Records that the cache caught up with the primary.
    pub(super) fn set_synced(&self) {
        self.inner.synced.store(true, Ordering::Relaxed);
    }

    fn live(&self) -> bool {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Fails at once while the feed is down: a write the feed cannot bring back could not be
    /// acknowledged anyway.
    fn check_live(&self) -> Result<(), StoreError> {
        if self.live() {
            Ok(())
        } else {
            Err(StoreError::PrimaryUnavailable(
                "no live change feed from it".into(),
            ))
        }
    }

    /// Waits until the cache holds the primary's change `seq`.
    async fn until_applied(&self, seq: Seq) -> Result<(), StoreError> {
        let mut applied = self.inner.applied.subscribe();
        match tokio::time::timeout(APPLY_TIMEOUT, applied.wait_for(|applied| *applied >= seq)).await
        {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::PrimaryUnavailable(format!(
                "the primary committed change {seq} but it did not reach this replica within {} s",
                APPLY_TIMEOUT.as_secs()
            ))),
        }
    }

    fn count(&self, result: &'static str) {
        self.inner
            .metrics
            .replication_writes
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Runs one write RPC against the primary, bounded, and waits for its change to come back.
    async fn write<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
        seq_of: impl FnOnce(&T) -> Seq,
    ) -> Result<Result<Seq, tonic::Status>, StoreError> {
        self.check_live()?;
        let answer = match tokio::time::timeout(WRITE_TIMEOUT, call).await {
            Err(_) => {
                self.count("refused");
                return Err(StoreError::PrimaryUnavailable(format!(
                    "no answer within {} s",
                    WRITE_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(status)) => {
                self.count("refused");
                return Ok(Err(status));
            }
            Ok(Ok(reply)) => seq_of(reply.get_ref()),
        };
        self.count("committed");
        self.until_applied(answer).await?;
        Ok(Ok(answer))
    }
}

/// Turns a status the primary answered a write with into the store's error.
fn unavailable(status: &tonic::Status) -> StoreError {
    StoreError::PrimaryUnavailable(format!(
        "{}: {}",
        status.code().description(),
        status.message()
    ))
}

/// The replica's store: reads from the local cache, writes through the primary.
pub struct Cache {
    local: Arc<SqliteStore>,
    upstream: Upstream,
}

impl Cache {
    /// A cache over `local`, writing through `upstream`.
    pub fn new(local: Arc<SqliteStore>, upstream: Upstream) -> Cache {
        Cache { local, upstream }
    }
}

#[async_trait::async_trait]
impl Store for Cache {
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
        self.local.load(id).await
    }

    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        let mut client = self.upstream.client();
        let request = pb::ClaimRequest {
            id: id.as_str().to_owned(),
            jwk: jwk.to_owned(),
        };
        match self
            .upstream
            .write(client.claim(request), |reply| reply.seq)
            .await?
        {
            Ok(seq) => Ok(Claim::Claimed { seq }),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(Claim::Taken),
            Err(status) => Err(unavailable(&status)),
        }
    }

    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError> {
        let mut client = self.upstream.client();
        let request = pb::PutSnapshotRequest {
            id: id.as_str().to_owned(),
            snapshot,
        };
        match self
            .upstream
            .write(client.put_snapshot(request), |reply| reply.seq)
            .await?
        {
            Ok(seq) => Ok(seq),
            Err(status) if status.code() == tonic::Code::NotFound => Err(StoreError::NotFound),
            Err(status) => Err(unavailable(&status)),
        }
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.local.changes_since(after, limit).await
    }

    async fn last_seq(&self) -> Result<Seq, StoreError> {
        self.local.last_seq().await
    }

    async fn export(&self, into: mpsc::Sender<Change>) -> Result<Seq, StoreError> {
        self.local.export(into).await
    }

    fn commits(&self) -> watch::Receiver<Seq> {
        self.local.commits()
    }

    /// Ready once the cache is worth serving: it caught up with the primary in this process's
    /// life, or it holds an earlier sync (a replica restarted while the primary is away still
    /// serves what it has). A new, empty replica would otherwise ask clients of existing
    /// resources to configure them anew.
    async fn ping(&self) -> Result<(), StoreError> {
        self.local.ping().await?;
        if self.upstream.inner.synced.load(Ordering::Relaxed) || self.local.last_seq().await? > 0 {
            Ok(())
        } else {
            Err(StoreError::PrimaryUnavailable(
                "this replica has not completed its first sync with the primary".into(),
            ))
        }
    }

    async fn close(&self) {
        self.local.close().await;
    }
}
