//! An in-memory [`Store`] for relay tests that need no disk. It keeps the trait's ordering
//! promises (one lock, sequence in commit order) but not durability, so it is test-only.

use super::{Change, Claim, KeyReplacement, Seq, Site, Store, StoreError, StoredResource};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;
use zbase_proto::wire::ResourceId;

#[derive(Default)]
struct State {
    site: Option<Site>,
    resources: HashMap<ResourceId, StoredResource>,
    seq: Seq,
    closed: bool,
}

/// Resources in a map behind one mutex.
#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    commits: watch::Sender<Seq>,
}

impl MemoryStore {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Closed)?;
        if state.closed {
            return Err(StoreError::Closed);
        }
        let result = f(&mut state);
        let seq = state.seq;
        self.commits
            .send_if_modified(|last| std::mem::replace(last, seq) != seq);
        result
    }
}

impl State {
    /// Every resource changed after `after`, at its latest change, in sequence order.
    fn changes_after(&self, after: Seq) -> Vec<Change> {
        let mut changes: Vec<Change> = self
            .resources
            .iter()
            .filter(|(_, r)| r.seq > after)
            .map(|(id, r)| Change {
                seq: r.seq,
                id: *id,
                jwk: r.jwk.clone(),
                snapshot: r.snapshot.clone(),
            })
            .collect();
        changes.sort_by_key(|change| change.seq);
        changes
    }
}

#[async_trait::async_trait]
impl Store for MemoryStore {
    async fn load(&self, id: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
        self.with(|state| Ok(state.resources.get(id).cloned()))
    }

    async fn claim(&self, id: &ResourceId, jwk: &str) -> Result<Claim, StoreError> {
        self.with(|state| {
            if state.resources.contains_key(id) {
                return Ok(Claim::Taken);
            }
            state.seq += 1;
            let seq = state.seq;
            state.resources.insert(
                *id,
                StoredResource {
                    jwk: jwk.to_string(),
                    snapshot: None,
                    seq,
                },
            );
            Ok(Claim::Claimed { seq })
        })
    }

    async fn put_snapshot(&self, id: &ResourceId, snapshot: Bytes) -> Result<Seq, StoreError> {
        self.with(|state| {
            let next = state.seq + 1;
            let resource = state.resources.get_mut(id).ok_or(StoreError::NotFound)?;
            resource.snapshot = Some(snapshot);
            resource.seq = next;
            state.seq = next;
            Ok(next)
        })
    }

    async fn replace_key(
        &self,
        id: &ResourceId,
        expected: &str,
        jwk: &str,
    ) -> Result<KeyReplacement, StoreError> {
        self.with(|state| {
            let next = state.seq + 1;
            match state.resources.get_mut(id) {
                Some(resource) if resource.jwk == expected => {
                    resource.jwk = jwk.to_owned();
                    resource.seq = next;
                    state.seq = next;
                    Ok(KeyReplacement::Replaced { seq: next })
                }
                _ => Ok(KeyReplacement::Stale),
            }
        })
    }

    async fn changes_since(&self, after: Seq, limit: usize) -> Result<Vec<Change>, StoreError> {
        self.with(|state| {
            let mut changes = state.changes_after(after);
            changes.truncate(limit);
            Ok(changes)
        })
    }

    async fn last_seq(&self) -> Result<Seq, StoreError> {
        self.with(|state| Ok(state.seq))
    }

    async fn site(&self) -> Result<Option<Site>, StoreError> {
        self.with(|state| Ok(state.site.clone()))
    }

    async fn set_site(&self, site: Site) -> Result<(), StoreError> {
        self.with(|state| {
            state.site = Some(site);
            Ok(())
        })
    }

    fn commits(&self) -> watch::Receiver<Seq> {
        self.commits.subscribe()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|_| Ok(()))
    }

    async fn export(&self, into: tokio::sync::mpsc::Sender<Change>) -> Result<Seq, StoreError> {
        // The double copies its state under the lock: that copy is the snapshot.
        let (last, all) = self.with(|state| Ok((state.seq, state.changes_after(0))))?;
        for change in all {
            if into.send(change).await.is_err() {
                break;
            }
        }
        Ok(last)
    }

    async fn close(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.closed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::MemoryStore;
    use crate::store::conformance::{self, Fixture};

    // The test double obeys the same contract as the real backends.
    async fn fresh() -> Fixture {
        Fixture::new(MemoryStore::default(), ())
    }

    conformance::conformance_tests!(fresh);
}
