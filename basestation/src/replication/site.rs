//! The store every station's relay runs over: its local store for every read, and for writes
//! whatever its role says. A primary writes locally. A replica sends a claim or a snapshot to
//! the primary, and returns only once the primary has committed it *and* the change feed has
//! brought that change into the local cache, so the resource task's usual "durable before
//! visible" rule means "committed on the primary, and here"; while the feed is down, writes are
//! refused at once. A fenced former primary refuses every write. The relay turns each refusal
//! into 1013 / UNAVAILABLE ("try again later").
//!
//! The role changes at run time (promotion, demotion, fencing), under a lock that every write
//! holds while it runs: a demotion waits for the writes in flight, so its handover token names
//! the true last sequence, and no write is accepted after it.

use crate::store::{
    Change, Claim, Epoch, KeyReplacement, Role, Seq, Site, SqliteStore, Store, StoreError,
    StoredResource,
};
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

/// Metadata carrying the caller's epoch on every replication call.
pub const EPOCH_METADATA: &str = "zbase-epoch";

/// `message` as a request that tells the other site this site's `epoch`.
pub fn with_epoch<T>(message: T, epoch: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert(EPOCH_METADATA, tonic::metadata::MetadataValue::from(epoch));
    request
}

/// Another site this station can reach on its replication port.
#[derive(Clone)]
pub struct Peer {
    /// Its URL, for logs.
    pub url: String,
    /// A lazily connected client.
    pub client: ReplicationClient<Channel>,
}

impl Peer {
    /// A peer site at `url`, reached over `channel`.
    pub fn new(url: String, channel: Channel) -> Peer {
        let client = ReplicationClient::new(channel)
            .max_decoding_message_size(super::MESSAGE_MAX)
            .max_encoding_message_size(super::MESSAGE_MAX);
        Peer { url, client }
    }
}

/// A replica's link to whichever site is its primary now, shared by the store (writes), the
/// follower (feed) and the bridges.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    /// The sites this replica may follow (`--replica-of`), in the order given.
    candidates: Vec<Peer>,
    /// The one it follows now, while the feed is live.
    following: watch::Sender<Option<Peer>>,
    /// Whether this station is a replica now (only a replica writes through and bridges).
    replica: AtomicBool,
    /// The highest primary sequence applied to the cache.
    applied: watch::Sender<Seq>,
    /// True once the cache held everything the primary had, in this process's life.
    synced: AtomicBool,
    /// This site's epoch, sent on every call.
    epoch: std::sync::atomic::AtomicU64,
    metrics: Arc<Metrics>,
}

impl Upstream {
    /// A link to whichever of `candidates` is the primary.
    pub fn new(candidates: Vec<Peer>, metrics: Arc<Metrics>) -> Upstream {
        Upstream {
            inner: Arc::new(UpstreamInner {
                candidates,
                following: watch::Sender::new(None),
                replica: AtomicBool::new(false),
                applied: watch::Sender::new(0),
                synced: AtomicBool::new(false),
                epoch: std::sync::atomic::AtomicU64::new(0),
                metrics,
            }),
        }
    }

    /// The sites this replica may follow.
    pub(super) fn candidates(&self) -> &[Peer] {
        &self.inner.candidates
    }

    /// The site followed now, while the feed is live.
    pub(super) fn following(&self) -> Option<Peer> {
        self.inner.following.borrow().clone()
    }

    /// Told whenever the site followed changes.
    pub(super) fn watch_following(&self) -> watch::Receiver<Option<Peer>> {
        self.inner.following.subscribe()
    }

    /// Records which site the live feed comes from (`None`: the feed is down).
    pub(super) fn set_following(&self, peer: Option<Peer>) {
        self.inner
            .metrics
            .replication_connected
            .set(i64::from(peer.is_some()));
        self.inner.following.send_replace(peer);
    }

    /// This site's epoch, as sent on calls.
    pub(super) fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Relaxed)
    }

    /// Records this site's epoch and role.
    pub(super) fn set_site(&self, site: &Site) {
        self.inner.epoch.store(site.epoch(), Ordering::Relaxed);
        self.inner
            .replica
            .store(site.role == Role::Replica, Ordering::Relaxed);
    }

    /// Whether this station is a replica now.
    pub(super) fn replica(&self) -> bool {
        self.inner.replica.load(Ordering::Relaxed)
    }

    /// Records that the cache now holds every change up to `seq` (a wiped cache starts over).
    pub(super) fn applied(&self, seq: Seq) {
        self.inner.applied.send_replace(seq);
    }

    /// Records that the cache was emptied to sync again from the start: it holds nothing, and
    /// is not worth serving until it caught up again.
    pub(super) fn wiped(&self) {
        self.inner.applied.send_replace(0);
        self.inner.synced.store(false, Ordering::Relaxed);
    }

    /// Records that the cache caught up with the primary.
    pub(super) fn set_synced(&self) {
        self.inner.synced.store(true, Ordering::Relaxed);
    }

    pub(super) fn synced(&self) -> bool {
        self.inner.synced.load(Ordering::Relaxed)
    }

    /// The followed site, or why a write cannot go anywhere: a write the feed cannot bring back
    /// could not be acknowledged anyway.
    fn primary(&self) -> Result<Peer, StoreError> {
        self.following()
            .ok_or_else(|| StoreError::PrimaryUnavailable("no live change feed from it".into()))
    }

    /// Waits at most `within` until the cache holds the primary's change `seq`.
    pub(super) async fn until_applied_within(
        &self,
        seq: Seq,
        within: Duration,
    ) -> Result<(), StoreError> {
        let mut applied = self.inner.applied.subscribe();
        match tokio::time::timeout(within, applied.wait_for(|applied| *applied >= seq)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(StoreError::PrimaryUnavailable(format!(
                "the primary committed change {seq}, but the change feed did not bring it here within {} s; it is kept and shows here once the feed catches up",
                within.as_secs()
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
        self.until_applied_within(answer, APPLY_TIMEOUT).await?;
        Ok(Ok(answer))
    }

    /// Claims `id` for `jwk` on the primary.
    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        let mut client = self.primary()?.client;
        let request = pb::ClaimRequest {
            id: id.as_str().to_owned(),
            jwk: jwk.to_owned(),
        };
        let call = client.claim(with_epoch(request, self.epoch()));
        match self.write(call, |reply| reply.seq).await? {
            Ok(seq) => Ok(Claim::Claimed { seq }),
            Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(Claim::Taken),
            Err(status) => Err(unavailable(&status)),
        }
    }

    /// Replaces `id`'s key on the primary if it is still `expected`.
    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError> {
        let mut client = self.primary()?.client;
        let request = pb::ReplaceKeyRequest {
            id: id.as_str().to_owned(),
            expected_jwk: expected.to_owned(),
            jwk: jwk.to_owned(),
        };
        let call = client.replace_key(with_epoch(request, self.epoch()));
        match self.write(call, |reply| reply.seq).await? {
            Ok(seq) => Ok(KeyReplacement::Replaced { seq }),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Ok(KeyReplacement::Stale)
            }
            Err(status) => Err(unavailable(&status)),
        }
    }

    /// Writes `id`'s snapshot on the primary, if given only while `jwk` is its key there.
    async fn put_snapshot(
        &self,
        id: &ResourceId,
        snapshot: Bytes,
        jwk: Option<&str>,
    ) -> Result<Seq, StoreError> {
        let mut client = self.primary()?.client;
        let request = pb::PutSnapshotRequest {
            id: id.as_str().to_owned(),
            snapshot,
            jwk: jwk.map(str::to_owned),
        };
        let call = client.put_snapshot(with_epoch(request, self.epoch()));
        match self.write(call, |reply| reply.seq).await? {
            Ok(seq) => Ok(seq),
            Err(status) if status.code() == tonic::Code::NotFound => Err(StoreError::NotFound),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                Err(StoreError::KeyReplaced)
            }
            Err(status) => Err(unavailable(&status)),
        }
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

/// A handover token: the demoted primary's epoch and last sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// The epoch the demoted primary wrote in.
    pub epoch: u64,
    /// The last sequence it committed.
    pub seq: Seq,
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.epoch, self.seq)
    }
}

impl std::str::FromStr for Token {
    type Err = String;

    fn from_str(text: &str) -> Result<Token, String> {
        let bad = || {
            format!(
                "{text:?} is not a handover token: expected EPOCH:SEQUENCE, as `zbase-station demote` prints it"
            )
        };
        let (epoch, seq) = text.split_once(':').ok_or_else(bad)?;
        Ok(Token {
            epoch: epoch.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// A promotion done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The new epoch.
    pub epoch: u64,
    /// The first sequence it numbers.
    pub first_seq: Seq,
    /// True without a token: the old primary may hold writes this site never received.
    pub failover: bool,
}

/// Why a role change was refused.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// Only a replica can be promoted, only a primary demoted.
    #[error("this station is {0}: {1}")]
    WrongRole(&'static str, &'static str),
    /// The token is of another epoch than the one this replica follows.
    #[error(
        "the token is of epoch {token}, but this replica is at epoch {own}: it was demoted from another history; promote without a token (a failover) if you mean it"
    )]
    OtherEpoch {
        /// The token's epoch.
        token: u64,
        /// This site's.
        own: u64,
    },
    /// The replica did not reach the token's sequence in time.
    #[error("this replica holds changes up to {have} but the demoted primary had {need}; it did not catch up within {} s: check that it follows the demoted primary, then try again", CATCH_UP_TIMEOUT.as_secs())]
    Behind {
        /// What the cache holds.
        have: Seq,
        /// What the token says.
        need: Seq,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long a promotion with a token waits for the cache to reach the token's sequence.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// The store a station's relay runs over, whatever its role.
pub struct SiteStore {
    local: Arc<dyn Store>,
    /// The local store again, when it is SQLite: a replica's cache.
    cache: Option<Arc<SqliteStore>>,
    /// The link to the other sites, when any are configured.
    upstream: Option<Upstream>,
    /// Held for reading by every write while it runs, for writing by a role change.
    role: tokio::sync::RwLock<Role>,
    /// The role as of now, for the follower, bridges and status (no waiting).
    current: watch::Sender<Site>,
    /// The store holds a fenced former primary's writes that other sites may lack: a history
    /// that diverged from the primary's is kept, not wiped, and the role stays recorded as
    /// fenced until the cache is found to fit the primary's history.
    former_primary: AtomicBool,
    /// Demoted with a token in this process's life (not fenced by a later epoch): its history
    /// is the one the next primary continues, so replicas may catch up from it and a repeated
    /// demotion hands the same token out. Not kept across a restart, which is the cautious side.
    handed_over: AtomicBool,
}

impl SiteStore {
    /// The store over `local` in the role and epochs `site` says. `cache` is `local` itself
    /// when it is SQLite (only then can this station follow a primary); `upstream` reaches the
    /// other sites, if any are configured; `former_primary` when the store is a fenced
    /// primary's, whatever role it runs in now.
    pub fn new(
        local: Arc<dyn Store>,
        cache: Option<Arc<SqliteStore>>,
        upstream: Option<Upstream>,
        site: Site,
        former_primary: bool,
    ) -> SiteStore {
        if let Some(upstream) = &upstream {
            upstream.set_site(&site);
        }
        SiteStore {
            local,
            cache,
            upstream,
            role: tokio::sync::RwLock::new(site.role),
            current: watch::Sender::new(site),
            former_primary: AtomicBool::new(former_primary),
            handed_over: AtomicBool::new(false),
        }
    }

    /// Whether this site handed over with a token in this process's life.
    pub(super) fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Relaxed)
    }

    /// Whether the store holds a former primary's writes that no check has cleared yet: a
    /// diverged history must then be kept for its owner to look at, never wiped.
    pub(super) fn former_primary(&self) -> bool {
        self.former_primary.load(Ordering::Relaxed)
    }

    /// The link to the other sites, if any are configured.
    pub fn upstream(&self) -> Option<&Upstream> {
        self.upstream.as_ref()
    }

    /// The role and epochs now.
    pub fn site(&self) -> Site {
        self.current.borrow().clone()
    }

    /// Told of every change of role or epochs.
    pub fn watch(&self) -> watch::Receiver<Site> {
        self.current.subscribe()
    }

    /// The SQLite cache and the link to the other sites, if this station can follow one.
    pub(super) fn replica_parts(&self) -> Option<(&Arc<SqliteStore>, &Upstream)> {
        self.cache.as_ref().zip(self.upstream.as_ref())
    }

    /// Records and persists `site` (the role lock is held by the caller).
    async fn record(&self, site: Site) -> Result<(), StoreError> {
        self.local.set_site(site.clone()).await?;
        if let Some(upstream) = &self.upstream {
            upstream.set_site(&site);
        }
        self.current.send_replace(site);
        Ok(())
    }

    /// Takes the primary's epochs as this replica's history (it follows that primary now, its
    /// cache found to fit that history).
    pub(super) async fn adopt(&self, epochs: Vec<Epoch>) -> Result<(), StoreError> {
        let current = self.site();
        if current.epochs == epochs && !self.former_primary() {
            return Ok(());
        }
        let role = self.role.write().await;
        if *role != Role::Replica {
            // Promoted meanwhile: its own epochs stand.
            return Ok(());
        }
        self.record(Site {
            role: Role::Replica,
            epochs,
        })
        .await?;
        self.former_primary.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Applies a page of the primary's feed to the cache, unless this station stopped being a
    /// replica (`None`). A promotion waits for the page being applied, so its epoch begins
    /// above every change the cache holds, and nothing from the old primary lands after it.
    pub(super) async fn mirror(
        &self,
        cache: &SqliteStore,
        changes: Vec<Change>,
    ) -> Result<Option<Seq>, StoreError> {
        let role = self.role.read().await;
        if *role != Role::Replica {
            return Ok(None);
        }
        cache.mirror(changes).await.map(Some)
    }

    /// Empties the cache to sync again from the start, unless this station stopped being a
    /// plain replica meanwhile (`false`): under the role lock, so a promotion cannot happen
    /// between the history check and the wipe and lose what the new primary accepted.
    pub(super) async fn wipe(&self, cache: &SqliteStore) -> Result<bool, StoreError> {
        let role = self.role.write().await;
        if *role != Role::Replica || self.former_primary() {
            return Ok(false);
        }
        cache.wipe().await?;
        Ok(true)
    }

    /// Promotes this replica to primary in the next epoch. With `token`, first waits until the
    /// cache holds the demoted primary's last sequence.
    pub async fn promote(&self, token: Option<Token>) -> Result<Promotion, RoleError> {
        let own = self.site().epoch();
        if let (Some(token), Some((_, upstream))) = (token, self.replica_parts()) {
            if token.epoch != own {
                return Err(RoleError::OtherEpoch {
                    token: token.epoch,
                    own,
                });
            }
            if upstream
                .until_applied_within(token.seq, CATCH_UP_TIMEOUT)
                .await
                .is_err()
            {
                let have = self.local.last_seq().await?;
                return Err(RoleError::Behind {
                    have,
                    need: token.seq,
                });
            }
        }
        let mut role = self.role.write().await;
        match *role {
            Role::Replica if self.former_primary() => {
                return Err(RoleError::WrongRole(
                    "a former primary not yet found to fit the current primary's history",
                    "it may hold writes no other site has; let it follow the current primary first, or rebuild it as a replica",
                ));
            }
            Role::Replica => {}
            Role::Primary => {
                return Err(RoleError::WrongRole("already the primary", "nothing to do"));
            }
            Role::Fenced => {
                return Err(RoleError::WrongRole(
                    "a fenced former primary",
                    "it may hold writes no other site has; rebuild it as a replica of the current primary first",
                ));
            }
        }
        let last = self.local.last_seq().await?;
        let mut site = self.site();
        let epoch = site.epoch() + 1;
        let first_seq = last + 1;
        site.epochs.push(Epoch { epoch, first_seq });
        site.role = Role::Primary;
        self.record(site).await?;
        *role = Role::Primary;
        if let Some(upstream) = &self.upstream {
            upstream.set_following(None);
        }
        Ok(Promotion {
            epoch,
            first_seq,
            failover: token.is_none(),
        })
    }

    /// Demotes this primary: waits for every write in flight, then refuses writes for good
    /// and returns the token its successor must replay up to. Asked again, a fenced site
    /// answers with the same token (it writes nothing any more), so a demotion whose answer
    /// was lost can simply be repeated.
    pub async fn demote(&self) -> Result<Token, RoleError> {
        let mut role = self.role.write().await;
        match *role {
            Role::Primary => {
                let mut site = self.site();
                site.role = Role::Fenced;
                self.record(site).await?;
                *role = Role::Fenced;
                self.handed_over.store(true, Ordering::Relaxed);
            }
            Role::Fenced if self.handed_over() => {}
            Role::Fenced => {
                return Err(RoleError::WrongRole(
                    "fenced because another site is primary in a later epoch (or restarted since it handed over)",
                    "its history is no prefix for a promotion: promote without a token (a failover), or use the token it printed when it was demoted",
                ));
            }
            Role::Replica => {
                return Err(RoleError::WrongRole(
                    "a replica",
                    "only the primary hands over",
                ));
            }
        }
        let site = self.site();
        Ok(Token {
            epoch: site.epoch(),
            seq: self.local.last_seq().await?,
        })
    }

    /// Takes the role another process sharing this store recorded (another pod of this site
    /// demoted it, or learned of a later epoch), so this one stops accepting writes too. The
    /// store already refuses them; this keeps what the pod reports true.
    pub(super) async fn refresh(&self) -> Result<(), StoreError> {
        let Some(stored) = self.local.site().await? else {
            return Ok(());
        };
        let own = self.site();
        if own.role != Role::Primary || (stored.role == Role::Primary && stored == own) {
            return Ok(());
        }
        let mut role = self.role.write().await;
        if *role != Role::Primary {
            return Ok(());
        }
        tracing::warn!(
            role = stored.role.name(),
            epoch = stored.epoch(),
            "another pod of this site recorded a new role: taking it"
        );
        *role = stored.role;
        if let Some(upstream) = &self.upstream {
            upstream.set_site(&stored);
        }
        self.current.send_replace(stored);
        Ok(())
    }

    /// Fences this primary because another site is at `epoch`, later than its own: it accepts
    /// no write from now on. Does nothing on a replica or below its own epoch.
    pub async fn fence(&self, epoch: u64, seen_at: &str) -> Result<(), StoreError> {
        if epoch <= self.site().epoch() || self.site().role != Role::Primary {
            return Ok(());
        }
        let mut role = self.role.write().await;
        if *role != Role::Primary {
            return Ok(());
        }
        let mut site = self.site();
        site.role = Role::Fenced;
        self.record(site.clone()).await?;
        *role = Role::Fenced;
        tracing::error!(
            own_epoch = site.epoch(),
            later_epoch = epoch,
            at = seen_at,
            "another site is primary in a later epoch: this station was replaced and accepts no write from now on; rebuild it as a replica of the current primary"
        );
        Ok(())
    }

    fn refused(&self, role: Role) -> StoreError {
        match role {
            Role::Fenced => StoreError::Fenced(self.site().epoch()),
            _ => StoreError::PrimaryUnavailable("this station has no primary to write to".into()),
        }
    }
}

#[async_trait::async_trait]
impl Store for SiteStore {
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
        self.local.load(id).await
    }

    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        let role = self.role.read().await;
        match (*role, &self.upstream) {
            (Role::Primary, _) => self.local.claim(id, jwk).await,
            (Role::Replica, Some(upstream)) => upstream.claim(id, jwk).await,
            (role, _) => Err(self.refused(role)),
        }
    }

    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError> {
        let role = self.role.read().await;
        match (*role, &self.upstream) {
            (Role::Primary, _) => self.local.put_snapshot(id, snapshot).await,
            (Role::Replica, Some(upstream)) => upstream.put_snapshot(id, snapshot, None).await,
            (role, _) => Err(self.refused(role)),
        }
    }

    async fn put_snapshot_as(
        &self,
        id: &ResourceId,
        snapshot: Bytes,
        jwk: &str,
    ) -> Result<Seq, StoreError> {
        let role = self.role.read().await;
        match (*role, &self.upstream) {
            (Role::Primary, _) => self.local.put_snapshot(id, snapshot).await,
            (Role::Replica, Some(upstream)) => upstream.put_snapshot(id, snapshot, Some(jwk)).await,
            (role, _) => Err(self.refused(role)),
        }
    }

    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError> {
        let role = self.role.read().await;
        match (*role, &self.upstream) {
            (Role::Primary, _) => self.local.replace_key(id, expected, jwk).await,
            (Role::Replica, Some(upstream)) => upstream.replace_key(id, expected, jwk).await,
            (role, _) => Err(self.refused(role)),
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

    async fn site(&self) -> Result<Option<Site>, StoreError> {
        Ok(Some(SiteStore::site(self)))
    }

    async fn set_site(&self, site: Site) -> Result<(), StoreError> {
        let mut role = self.role.write().await;
        self.record(site.clone()).await?;
        *role = site.role;
        Ok(())
    }

    fn commits(&self) -> watch::Receiver<Seq> {
        self.local.commits()
    }

    fn keeps_write_order(&self) -> bool {
        self.site().role != Role::Replica && self.local.keeps_write_order()
    }

    /// On a replica, ready once the cache is worth serving: it caught up with the primary in
    /// this process's life, or it holds an earlier sync (a replica restarted while the primary
    /// is away still serves what it has). A new, empty replica would otherwise ask clients of
    /// existing resources to configure them anew.
    async fn ping(&self) -> Result<(), StoreError> {
        self.local.ping().await?;
        match &self.upstream {
            Some(upstream)
                if self.site().role == Role::Replica
                    && !upstream.synced()
                    && self.local.last_seq().await? == 0 =>
            {
                Err(StoreError::PrimaryUnavailable(
                    "this replica has not completed its first sync with the primary".into(),
                ))
            }
            _ => Ok(()),
        }
    }

    async fn close(&self) {
        self.local.close().await;
    }
}
