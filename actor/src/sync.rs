//! A device: one identity, its local store, and the station sync that brings them together.
//!
//! Every change is made locally first (offline-first) and signed; [`Device::sync`] then
//! reads the station's snapshot, merges it in, carries out a pending key rotation, writes a
//! snapshot holding everything this device knows (so the station's one snapshot folds in
//! every delta: that is the compaction), relays the new operations as a delta to the devices
//! online, and delivers keys to the members who need them through their mailboxes.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::OsRng;
use zbase_proto::wire::{Code, ResourceId};

use crate::access::AccessKey;
use crate::acl::Role;
use crate::bundle::{self, BundleError};
use crate::envelope::{self, ContentKey, EnvelopeError};
use crate::identity::{ActorId, Identity, PublicIdentity};
use crate::local::{Held, Local, LocalError};
use crate::mailbox::{EpochKey, KEYRING_VERSION, Keyring, Mailbox, MailboxError};
use crate::merge::{Change, Merged, merge};
use crate::operation::{OpId, Operation, OperationError, SignedOperation};
use crate::station::{Close, Session, Station, StationError};

/// How long the station has to confirm a snapshot written (its `forward-response`): less than
/// its pending-request window (30 s by default), after which it would not confirm at all.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(25);
/// How many times (2 s apart) a watching device cut off by a rotation looks for new keys
/// before concluding it was revoked.
const KEY_WAIT_TRIES: u32 = 15;
/// How many read-merge-write rounds one sync tries before leaving the rest to the next one.
const ROUNDS: usize = 4;

/// Why a device operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The local store.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The station.
    #[error(transparent)]
    Station(#[from] StationError),
    /// The station refuses this device's key and no member has sent a newer one.
    #[error(
        "access to {0} was taken away: the station refuses this device's key and no owner or \
         manager has sent a new one (revoked?)"
    )]
    AccessLost(String),
    /// The content is under a key epoch this device never received.
    #[error(
        "cannot read {resource}: it is encrypted under key epoch {epoch}, which this device \
         was never given (revoked?)"
    )]
    NoKey {
        /// The resource.
        resource: String,
        /// The epoch.
        epoch: u32,
    },
    /// This device's role does not allow the change.
    #[error("{0}")]
    NotAllowed(String),
    /// A member named is not in the access list.
    #[error("{0} is not a member of this resource")]
    NotAMember(String),
    /// The sharer is not the owner, and the user has not confirmed who the owner is.
    #[error(
        "{from} shared this resource and names {owner} as its owner{}: the owner is who every \
         member's view of the access list rests on, so confirm it (ask the owner for its actor \
         id) and join again with --owner {owner}",
        given.as_ref().map(|g| format!(", not {g}")).unwrap_or_default()
    )]
    OwnerUnconfirmed {
        /// The owner the keyring names.
        owner: String,
        /// The sharer.
        from: String,
        /// The owner the user gave, if any.
        given: Option<String>,
    },
    /// A rotation asked for did not happen.
    #[error(
        "the keys of {0} were not rotated: another member rotated them at the same moment; \
         the next sync rotates them again"
    )]
    NotRotated(String),
    /// Nothing was shared with this device.
    #[error("nothing shared with you: no keys from {from} for {resource} on {station}")]
    NothingShared {
        /// The sharer.
        from: String,
        /// The resource.
        resource: String,
        /// The station.
        station: String,
    },
    /// A snapshot or delta did not open.
    #[error("unreadable data from the station: {0}")]
    Envelope(#[from] EnvelopeError),
    /// A snapshot or delta opened but is not a bundle.
    #[error("malformed data from the station: {0}")]
    Bundle(#[from] BundleError),
    /// A mailbox.
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    /// An operation could not be made.
    #[error("operation: {0}")]
    Operation(#[from] OperationError),
}

/// What one sync did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncReport {
    /// Operations new to this device.
    pub received: usize,
    /// Operations the station's snapshot did not have, now written there.
    pub sent: usize,
    /// The keys were rotated.
    pub rotated: bool,
    /// Members sent the keys.
    pub delivered: usize,
    /// Members whose keys could not be sent (retried at the next sync), and why.
    pub undelivered: Vec<String>,
    /// The station confirmed a snapshot holding every operation this device has.
    pub confirmed: bool,
}

/// A value change seen while watching.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueChange {
    /// The key.
    pub key: String,
    /// The new value (`None`: deleted).
    pub value: Option<String>,
}

/// An identity with its store.
pub struct Device {
    local: Local,
    identity: Identity,
    ca: Option<String>,
}

impl Device {
    /// Opens the device in `home`; `ca` is the PEM trusted for `wss://` and `grpcs://`
    /// stations (else the system's roots).
    pub async fn open(home: &Path, ca: Option<String>) -> Result<Device, SyncError> {
        let local = Local::open(home).await?;
        let identity = local.identity()?;
        Ok(Device {
            local,
            identity,
            ca,
        })
    }

    /// Creates the identity in `home`.
    pub async fn init(home: &Path) -> Result<PublicIdentity, SyncError> {
        let local = Local::open(home).await?;
        Ok(local.create_identity()?.public())
    }

    /// This device's public identity.
    pub fn public(&self) -> PublicIdentity {
        self.identity.public()
    }

    /// The store.
    pub fn local(&self) -> &Local {
        &self.local
    }

    fn station(&self, url: &str) -> Result<Station, SyncError> {
        Ok(Station::parse(url, self.ca.as_deref())?)
    }

    /// Every resource on this device.
    pub async fn resources(&self) -> Result<Vec<ResourceId>, SyncError> {
        Ok(self.local.resources().await?)
    }

    /// The merged state of a resource, from what this device holds.
    pub async fn state(&self, id: &ResourceId) -> Result<Merged, SyncError> {
        let held = self.local.resource(id).await?;
        let ops = self.local.operations(id).await?;
        Ok(merge(id, held.owner, &ops))
    }

    /// The operations held for a resource.
    pub async fn operations(&self, id: &ResourceId) -> Result<Vec<SignedOperation>, SyncError> {
        Ok(self.local.operations(id).await?)
    }

    /// Creates a resource on the station at `url`, owned by this device.
    pub async fn create(&self, url: &str) -> Result<ResourceId, SyncError> {
        let station = self.station(url)?;
        let access = AccessKey::generate(&mut OsRng);
        let mut proposed = [0u8; 32];
        rand::RngCore::fill_bytes(&mut OsRng, &mut proposed);
        let id = station
            .create(&ResourceId::from_bytes(proposed), &access)
            .await?;
        self.local
            .add_resource(&id, station.url(), &self.public(), &access)
            .await?;
        self.local
            .add_keys(&id, &[ContentKey::generate(1, &mut OsRng)])
            .await?;
        self.sync(&id).await?;
        Ok(id)
    }

    /// Records a change made by this device; it reaches the station at the next sync.
    pub async fn record(&self, id: &ResourceId, change: Change) -> Result<OpId, SyncError> {
        let state = self.state(id).await?;
        let me = self.identity.id();
        let role = state.acl.role(&me);
        let allowed = match &change {
            Change::Put { .. } | Change::Delete { .. } => role.is_some_and(Role::writes),
            Change::Grant {
                actor, role: to, ..
            } => {
                if change.granted().is_none() {
                    return Err(SyncError::NotAllowed(format!(
                        "the grant to {actor} names a sealing key that actor did not sign; \
                         use the public identity `zbase whoami` prints on its device"
                    )));
                }
                let target = ActorId::parse(actor).and_then(|a| state.acl.role(&a));
                role.is_some_and(|r| r.may_set(target, *to))
            }
            Change::Ack { .. } => role.is_some(),
        };
        if !allowed {
            let role = role.map_or("not a member", Role::name);
            return Err(SyncError::NotAllowed(format!(
                "this device's role on {} ({role}) does not allow that",
                id.as_str()
            )));
        }
        let op = Operation {
            resource: *id,
            actor: me,
            clock: state.clock + 1,
            deps: state.heads.clone(),
            payload: change.encode(),
        }
        .sign(&self.identity)?;
        self.local
            .add_operations(id, std::slice::from_ref(&op))
            .await?;
        Ok(op.id())
    }

    /// Gives `member` a role; it gets the keys at the next sync.
    pub async fn share(
        &self,
        id: &ResourceId,
        member: &PublicIdentity,
        role: Role,
    ) -> Result<OpId, SyncError> {
        let op = self.record(id, Change::grant(member, role)).await?;
        if role == Role::Revoked {
            // A delivery still queued from before must not hand it the keys after all.
            self.local.drop_delivery(id, &member.id).await?;
            self.local.set_rotation_due(id).await?;
        } else {
            // To the key the access list keeps for it (its first), which every rotation uses.
            let to = self
                .state(id)
                .await?
                .acl
                .public(&member.id)
                .unwrap_or(*member);
            self.local.add_delivery(id, &to).await?;
        }
        Ok(op)
    }

    /// Takes `actor`'s role away; the keys rotate at the next sync.
    pub async fn revoke(&self, id: &ResourceId, actor: &ActorId) -> Result<OpId, SyncError> {
        let member = self
            .state(id)
            .await?
            .acl
            .public(actor)
            .ok_or_else(|| SyncError::NotAMember(actor.to_string()))?;
        self.share(id, &member, Role::Revoked).await
    }

    /// Replaces the resource's access key and content key now and sends the new keys to every
    /// member who still reads (an Owner or a Manager only). A revocation asks for this by
    /// itself at the revoking device's next sync; this is for when that device is gone, or
    /// the keys may have leaked.
    pub async fn rotate_keys(&self, id: &ResourceId) -> Result<SyncReport, SyncError> {
        let role = self.state(id).await?.acl.role(&self.identity.id());
        if !matches!(role, Some(Role::Owner | Role::Manager)) {
            let role = role.map_or("not a member", Role::name);
            return Err(SyncError::NotAllowed(format!(
                "only an owner or a manager rotates the keys of {}; this device is {role}",
                id.as_str()
            )));
        }
        self.local.set_rotation_due(id).await?;
        let report = self.sync(id).await?;
        if !report.rotated {
            return Err(SyncError::NotRotated(id.as_str().to_owned()));
        }
        Ok(report)
    }

    /// Takes up a resource `from` shared with this device, from the mailbox on `url`.
    ///
    /// The resource's owner is the root of trust of its access list, so it is taken from the
    /// user, not from the sharer: a sharer other than the owner (a Manager) could otherwise
    /// name itself owner. If the keyring names someone other than `from`, `owner` must be
    /// that actor.
    pub async fn join(
        &self,
        url: &str,
        id: &ResourceId,
        from: &PublicIdentity,
        owner: Option<&ActorId>,
    ) -> Result<SyncReport, SyncError> {
        let station = self.station(url)?;
        let nothing = || SyncError::NothingShared {
            from: from.id.to_string(),
            resource: id.as_str().to_owned(),
            station: url.to_owned(),
        };
        let keyring = self
            .read_mailbox(&station, id, from)
            .await?
            .ok_or_else(nothing)?;
        let named = keyring.owner()?;
        if named.id != from.id && owner != Some(&named.id) {
            return Err(SyncError::OwnerUnconfirmed {
                owner: named.id.to_string(),
                from: from.id.to_string(),
                given: owner.map(ActorId::to_string),
            });
        }
        self.local
            .add_resource(id, url, &named, &keyring.access_key()?)
            .await?;
        self.local.add_keys(id, &keyring.content_keys()?).await?;
        self.sync(id).await
    }

    /// The keyring `from` left for this device about `id`, if any.
    async fn read_mailbox(
        &self,
        station: &Station,
        id: &ResourceId,
        from: &PublicIdentity,
    ) -> Result<Option<Keyring>, SyncError> {
        if from.id == self.identity.id() {
            return Ok(None);
        }
        let mailbox = Mailbox::incoming(&self.identity, from, id)?;
        if !station.exists(&mailbox.id).await? {
            return Ok(None);
        }
        let (session, snapshot) = match station.open(&mailbox.id, &mailbox.access).await {
            Ok(opened) => opened,
            Err(StationError::Closed(Close::Refused)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        session.close().await;
        match snapshot {
            Some(snapshot) => Ok(Some(mailbox.open(&snapshot, id)?)),
            None => Ok(None),
        }
    }

    /// Looks for newer keys in the mailboxes of every owner and manager; returns whether any
    /// arrived. `probe`, when given, is the envelope that needs a key: a key offered for its
    /// epoch counts only if it opens it.
    ///
    /// A keyring counts only if its access key is the one the station holds now. A member
    /// revoked since cannot know that key, so it cannot plant keys for epochs to come in the
    /// mailbox it shares with a member who has not heard of the revocation yet.
    ///
    /// `refused` is a key the station just refused: a keyring offering it is stale, known
    /// without proving it again (each refusal counts against this device's IP address).
    async fn refresh(
        &self,
        held: &Held,
        probe: Option<&[u8]>,
        refused: Option<&AccessKey>,
    ) -> Result<bool, SyncError> {
        let station = self.station(&held.station)?;
        let state = self.state(&held.id).await?;
        let mut senders = vec![held.owner];
        for (actor, member) in state.acl.members() {
            if matches!(member.role, Role::Owner | Role::Manager) && *actor != held.owner.id {
                senders.push(member.public);
            }
        }
        let had: HashSet<u32> = self
            .local
            .keys(&held.id)
            .await?
            .iter()
            .map(ContentKey::epoch)
            .collect();
        let probe_epoch = probe.and_then(|bytes| envelope::epoch_of(bytes).ok());
        let mut checked: Vec<(AccessKey, bool)> = refused
            .map(|key| (key.clone(), false))
            .into_iter()
            .collect();
        let mut learned = false;
        for sender in senders {
            let Some(keyring) = self.read_mailbox(&station, &held.id, &sender).await? else {
                continue;
            };
            // Another member's malformed keyring is skipped, not fatal.
            let (Ok(keys), Ok(access)) = (keyring.content_keys(), keyring.access_key()) else {
                continue;
            };
            let current = match checked.iter().find(|(key, _)| *key == access) {
                Some((_, current)) => *current,
                None => {
                    let current = match station.open(&held.id, &access).await {
                        Ok((session, _)) => {
                            session.close().await;
                            true
                        }
                        Err(StationError::Closed(Close::Refused)) => false,
                        Err(e) => return Err(e.into()),
                    };
                    checked.push((access.clone(), current));
                    current
                }
            };
            if !current {
                continue;
            }
            let mut fresh = Vec::new();
            for key in keys {
                if Some(key.epoch()) == probe_epoch {
                    let opens = probe.is_some_and(|bytes| {
                        envelope::decrypt(std::slice::from_ref(&key), &held.id, bytes).is_ok()
                    });
                    if opens {
                        // It opens what needs opening: it replaces a key planted for this epoch.
                        self.local.replace_key(&held.id, &key).await?;
                        learned = true;
                    }
                } else if !had.contains(&key.epoch()) {
                    fresh.push(key);
                }
            }
            if !fresh.is_empty() {
                self.local.add_keys(&held.id, &fresh).await?;
                learned = true;
            }
            if access != held.access {
                self.local.set_access(&held.id, &access).await?;
                learned = true;
            }
        }
        if learned {
            // A rotation of this device's that lost to another member's will never be taken:
            // do not try its key again at every sync.
            self.local.drop_stale_rotation(&held.id).await?;
        }
        Ok(learned)
    }

    /// Opens a verified session on the resource, finishing a rotation whose confirmation was
    /// lost and fetching new keys from mailboxes when the station refuses the held one.
    async fn open_resource(&self, held: &Held) -> Result<(Session, Option<Bytes>), SyncError> {
        let station = self.station(&held.station)?;
        let refused = held.access.clone();
        match station.open(&held.id, &refused).await {
            Err(StationError::Closed(Close::Refused)) => {}
            other => return Ok(other?),
        }
        // Read the store again: this home's other process may have rotated, or learned new
        // keys, since `held` was read.
        let held = self.local.resource(&held.id).await?;
        if held.access != refused {
            match station.open(&held.id, &held.access).await {
                Err(StationError::Closed(Close::Refused)) => {}
                other => return Ok(other?),
            }
        }
        if let Some((next, _)) = &held.rotating
            && let Ok(opened) = station.open(&held.id, next).await
        {
            // The station took the rotation but its answer was lost, or this home's other
            // process has not installed it yet.
            self.finish_rotation(&held.id, next).await?;
            return Ok(opened);
        }
        if self.refresh(&held, None, Some(&held.access)).await? {
            let held = self.local.resource(&held.id).await?;
            match station.open(&held.id, &held.access).await {
                Err(StationError::Closed(Close::Refused)) => {}
                other => return Ok(other?),
            }
        }
        Err(SyncError::AccessLost(held.id.as_str().to_owned()))
    }

    /// Opens a snapshot or delta of `held`, fetching keys from mailboxes if its epoch is new.
    async fn open_envelope(
        &self,
        held: &Held,
        bytes: &[u8],
    ) -> Result<(Vec<SignedOperation>, u32), SyncError> {
        let epoch = envelope::epoch_of(bytes)?;
        let mut keys = self.local.keys(&held.id).await?;
        if !keys.iter().any(|k| k.epoch() == epoch) {
            self.refresh(held, Some(bytes), None).await?;
            keys = self.local.keys(&held.id).await?;
            if !keys.iter().any(|k| k.epoch() == epoch) {
                return Err(SyncError::NoKey {
                    resource: held.id.as_str().to_owned(),
                    epoch,
                });
            }
        }
        let plain = envelope::decrypt(&keys, &held.id, bytes)?;
        let mut operations = bundle::decode(&plain)?.operations;
        // Operations of another resource never count here; do not keep or pass them on.
        operations.retain(|op| op.operation().resource == held.id);
        Ok((operations, epoch))
    }

    /// Brings the device and the station's snapshot of `id` together (module docs).
    pub async fn sync(&self, id: &ResourceId) -> Result<SyncReport, SyncError> {
        let mut report = SyncReport::default();
        for _ in 0..ROUNDS {
            if self.round(id, &mut report).await? {
                report.confirmed = true;
                break;
            }
        }
        Ok(report)
    }

    /// One read-merge-write round; returns whether the station now holds everything.
    async fn round(&self, id: &ResourceId, report: &mut SyncReport) -> Result<bool, SyncError> {
        let mut held = self.local.resource(id).await?;
        let (mut session, offered) = self.open_resource(&held).await?;
        held = self.local.resource(id).await?;
        let mut known: HashSet<OpId> = HashSet::new();
        let mut offered_epoch = None;
        if let Some(bytes) = offered {
            match self.open_envelope(&held, &bytes).await {
                Ok((ops, epoch)) => {
                    known.extend(ops.iter().map(SignedOperation::id));
                    report.received += self.local.add_operations(id, &ops).await?;
                    offered_epoch = Some(epoch);
                }
                // Junk written by a member with the access key (not an envelope, not opening
                // under the key of its epoch, not a bundle): written over below, or no device
                // could ever sync the resource again. An epoch this device has no key for is
                // not junk: it may be a rotation not delivered yet.
                Err(SyncError::Envelope(e)) if !matches!(e, EnvelopeError::NoKey(_)) => {}
                Err(SyncError::Bundle(_)) => {}
                Err(e) => return Err(e),
            }
        }

        if held.rotation_due {
            let me = self.identity.id();
            let role = self.state(id).await?.acl.role(&me);
            if matches!(role, Some(Role::Owner | Role::Manager)) {
                match self.rotate(&mut session, &held).await {
                    Ok(()) => report.rotated = true,
                    // Someone rotated first: this device's other process with the same keys
                    // (the next round finds them installed), or another member (the next
                    // round takes its keys from the mailboxes, then rotates again).
                    Err(SyncError::Station(StationError::Closed(Close::Refused))) => {
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                }
                held = self.local.resource(id).await?;
            }
        }

        let keys = self.local.keys(id).await?;
        let current = keys
            .iter()
            .max_by_key(|k| k.epoch())
            .ok_or_else(|| LocalError::Corrupt("a resource without a content key".into()))?
            .clone();
        let ops = self.local.operations(id).await?;
        let fresh: Vec<&SignedOperation> =
            ops.iter().filter(|op| !known.contains(&op.id())).collect();
        let mut done = true;
        if !fresh.is_empty() || offered_epoch != Some(current.epoch()) {
            let snapshot = envelope::encrypt(&current, id, &bundle::encode(&ops), &mut OsRng);
            if !fresh.is_empty() {
                let delta = envelope::encrypt(
                    &current,
                    id,
                    &bundle::encode(fresh.iter().copied()),
                    &mut OsRng,
                );
                session.send(Code::SubmitDelta, &delta).await?;
            }
            let written = self.write_snapshot(&mut session, &held, &snapshot).await?;
            report.received += written.received;
            if written.confirmed {
                report.sent += fresh.len();
            }
            done = written.confirmed && written.received == 0;
        }
        session.close().await;

        let acl = self.state(id).await?.acl;
        for member in self.local.deliveries(id).await? {
            // Whoever lost read access since the delivery was queued gets nothing.
            if !acl.role(&member.id).is_some_and(Role::reads) {
                self.local.drop_delivery(id, &member.id).await?;
                continue;
            }
            // One member's mailbox failing (its owner may have squatted it) must not keep
            // the keys from the others; it stays queued for the next sync.
            match self.deliver(id, &member).await {
                Ok(access) => {
                    self.local.delivered(id, &member.id, &access).await?;
                    report.delivered += 1;
                }
                Err(SyncError::Station(e)) => {
                    report.undelivered.push(format!("{}: {e}", member.id))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Rotates the resource's access key and content key on `session` (docs/KEY-ROTATION.md),
    /// then queues the new keys for every member who still reads.
    async fn rotate(&self, session: &mut Session, held: &Held) -> Result<(), SyncError> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut OsRng, key.as_mut());
        let (next_access, _) = self
            .local
            .begin_rotation(&held.id, &AccessKey::generate(&mut OsRng), &key)
            .await?;
        session.rotate(&held.access, &next_access).await?;
        self.finish_rotation(&held.id, &next_access).await
    }

    /// Installs the keys of a rotation the station took and, in the same transaction, queues
    /// them for every other member who still reads.
    async fn finish_rotation(&self, id: &ResourceId, sent: &AccessKey) -> Result<(), SyncError> {
        let me = self.identity.id();
        let readers: Vec<PublicIdentity> = self
            .state(id)
            .await?
            .acl
            .members()
            .filter(|(actor, member)| member.role.reads() && **actor != me)
            .map(|(_, member)| member.public)
            .collect();
        self.local.finish_rotation(id, sent, &readers).await?;
        Ok(())
    }

    /// Writes `snapshot` and waits for the station to confirm it durable; operations that
    /// arrived meanwhile (other devices' deltas and snapshots) are taken in.
    async fn write_snapshot(
        &self,
        session: &mut Session,
        held: &Held,
        snapshot: &[u8],
    ) -> Result<Written, SyncError> {
        let write = session.write_confirmed(snapshot, CONFIRM_TIMEOUT).await?;
        let mut written = Written {
            confirmed: write.confirmed,
            received: 0,
        };
        for payload in &write.seen {
            written.received += self.take_in(held, payload).await?;
        }
        Ok(written)
    }

    /// Stores the operations of a snapshot or delta; returns how many were new.
    async fn take_in(&self, held: &Held, bytes: &[u8]) -> Result<usize, SyncError> {
        let (ops, _) = self.open_envelope(held, bytes).await?;
        Ok(self.local.add_operations(&held.id, &ops).await?)
    }

    /// Writes `member`'s mailbox with every key of the resource.
    /// Returns the access key it sent: the one held when the keyring was made, read afresh
    /// since this home's other process may have rotated since this sync began.
    async fn deliver(
        &self,
        id: &ResourceId,
        member: &PublicIdentity,
    ) -> Result<AccessKey, SyncError> {
        let held = self.local.resource(id).await?;
        let station = self.station(&held.station)?;
        let mailbox = Mailbox::outgoing(&self.identity, member, &held.id)?;
        let keyring = Keyring {
            version: KEYRING_VERSION,
            resource: held.id.as_str().to_owned(),
            station: held.station.clone(),
            owner: held.owner.id.to_string(),
            owner_sealing: crate::b64(&held.owner.sealing),
            owner_proof: crate::b64(&held.owner.proof),
            access: held.access.to_text().to_string(),
            keys: self
                .local
                .keys(&held.id)
                .await?
                .iter()
                .map(|k| EpochKey {
                    epoch: k.epoch(),
                    key: crate::b64(k.bytes()),
                })
                .collect(),
        };
        if !station.exists(&mailbox.id).await? {
            let assigned = station.create(&mailbox.id, &mailbox.access).await?;
            if assigned != mailbox.id {
                return Err(StationError::Unexpected(
                    "the station moved a mailbox to another identifier".into(),
                )
                .into());
            }
        }
        let (mut session, _) = station.open(&mailbox.id, &mailbox.access).await?;
        let snapshot = mailbox.seal(&keyring, &mut OsRng);
        let write = session.write_confirmed(&snapshot, CONFIRM_TIMEOUT).await?;
        session.close().await;
        if !write.confirmed {
            // Only the two parties can write there: this home's other process delivering
            // too, or the recipient. The delivery stays queued for the next sync.
            return Err(StationError::Unexpected(
                "another snapshot landed first in the mailbox".into(),
            )
            .into());
        }
        Ok(held.access)
    }

    /// Syncs, then follows live changes of `id`, calling `seen` with each value that changes,
    /// until the connection fails in a way a reconnect cannot fix.
    pub async fn watch(
        &self,
        id: &ResourceId,
        mut seen: impl FnMut(ValueChange),
    ) -> Result<(), SyncError> {
        let mut values = self.state(id).await?.values;
        let mut waited_for_keys = 0;
        loop {
            match self.sync(id).await {
                Ok(_) => waited_for_keys = 0,
                Err(SyncError::Station(
                    StationError::Unreachable { .. } | StationError::Closed(_),
                )) => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // Cut off by a rotation: the rotating member sends the new keys only after
                // the rotation and a snapshot, so they may not be in a mailbox yet. Look in
                // the mailboxes only, without proving the refused key again.
                Err(SyncError::AccessLost(_)) if waited_for_keys < KEY_WAIT_TRIES => {
                    let held = self.local.resource(id).await?;
                    while waited_for_keys < KEY_WAIT_TRIES {
                        waited_for_keys += 1;
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        if self.refresh(&held, None, Some(&held.access)).await? {
                            break;
                        }
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            values = self.report_changes(id, values, &mut seen).await?;
            let held = self.local.resource(id).await?;
            let (mut session, offered) = match self.open_resource(&held).await {
                Ok(opened) => opened,
                Err(SyncError::Station(_)) => continue,
                Err(e) => return Err(e),
            };
            // Changes may have landed between the sync and this session: they are in the
            // snapshot offered now, and no delta will bring them again.
            if let Some(bytes) = offered {
                self.take_in(&held, &bytes).await?;
                values = self.report_changes(id, values, &mut seen).await?;
            }
            loop {
                match session.recv().await {
                    Ok((
                        Code::ForwardDelta | Code::OfferSnapshot | Code::ForwardResponse,
                        payload,
                    )) => {
                        let held = self.local.resource(id).await?;
                        match self.take_in(&held, &payload).await {
                            Ok(_) => {}
                            // A member's junk, or an envelope under a key no mailbox had:
                            // skip it; the next snapshot brings what was real.
                            Err(
                                SyncError::Envelope(_)
                                | SyncError::Bundle(_)
                                | SyncError::NoKey { .. },
                            ) => continue,
                            Err(e) => return Err(e),
                        }
                        values = self.report_changes(id, values, &mut seen).await?;
                    }
                    Ok(_) => {}
                    // Cut off (a rotation, a restart): resync from the snapshot.
                    Err(_) => break,
                }
            }
        }
    }

    async fn report_changes(
        &self,
        id: &ResourceId,
        before: BTreeMap<String, Vec<u8>>,
        seen: &mut impl FnMut(ValueChange),
    ) -> Result<BTreeMap<String, Vec<u8>>, SyncError> {
        let after = self.state(id).await?.values;
        for (key, value) in &after {
            if before.get(key) != Some(value) {
                seen(ValueChange {
                    key: key.clone(),
                    value: Some(String::from_utf8_lossy(value).into_owned()),
                });
            }
        }
        for key in before.keys().filter(|k| !after.contains_key(*k)) {
            seen(ValueChange {
                key: key.clone(),
                value: None,
            });
        }
        Ok(after)
    }
}

/// What writing a snapshot came to.
#[derive(Default)]
struct Written {
    /// The station confirmed it durable.
    confirmed: bool,
    /// Operations new to this device that arrived meanwhile.
    received: usize,
}
