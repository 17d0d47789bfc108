//! Whether the store answers, as readiness probes ask it: at most one ping at a time, and its
//! answer reused for [`FRESH_FOR`], so a crowd of load balancers probing every instant costs the
//! database one trivial query per second, not one per probe.

use super::registry::Relay;
use crate::store::Store;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long one ping's answer stands for every probe; short against any probe period, so an
/// outage or a recovery shows within a second.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long one ping may take before the answer is "not ready".
const PING_TIMEOUT: Duration = Duration::from_millis(800);

/// The last ping's answer and when it was taken.
#[derive(Default)]
pub(super) struct Readiness {
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    /// Held while one probe pings; the others wait for its answer instead of pinging too.
    pinging: tokio::sync::Mutex<()>,
}

impl Readiness {
    fn fresh(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        last.as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, answer)| answer.clone())
    }

    async fn check(&self, store: &dyn Store) -> Result<(), String> {
        if let Some(answer) = self.fresh() {
            return answer;
        }
        let _pinging = self.pinging.lock().await;
        // Whoever held the lock before us has just pinged.
        if let Some(answer) = self.fresh() {
            return answer;
        }
        // Bounded below a probe's usual timeout (Kubernetes: 1 s), so the prober reads a
        // 503 and its reason rather than timing out while the pool waits for a connection.
        let answer = match tokio::time::timeout(PING_TIMEOUT, store.ping()).await {
            Ok(answer) => answer.map_err(|error| error.to_string()),
            Err(_) => Err(format!(
                "the database did not answer within {} ms",
                PING_TIMEOUT.as_millis()
            )),
        };
        if let Err(error) = &answer {
            tracing::warn!(%error, "readiness: the store does not answer");
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), answer.clone()));
        answer
    }
}

impl Relay {
    /// Whether the store answers a trivial query (an answer at most a second old), or why not.
    /// The reason is the store's error message, which never holds a password.
    pub async fn store_ready(&self) -> Result<(), String> {
        self.inner.readiness.check(&*self.inner.store).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::{Change, Claim, Seq, StoreError, StoredResource};
    use bytes::Bytes;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use zbase_proto::wire::ResourceId;

    /// Counts pings and fails them while `down`; nothing else is called.
    #[derive(Default)]
    struct Pinged {
        pings: AtomicUsize,
        down: AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for Pinged {
        async fn load(&self, _: &ResourceId) -> Result<Option<StoredResource>, StoreError> {
            unreachable!()
        }
        async fn claim(&self, _: &ResourceId, _: &str) -> Result<Claim, StoreError> {
            unreachable!()
        }
        async fn put_snapshot(&self, _: &ResourceId, _: Bytes) -> Result<Seq, StoreError> {
            unreachable!()
        }
        async fn replace_key(
            &self,
            _: &ResourceId,
            _: &str,
            _: &str,
        ) -> Result<crate::store::KeyReplacement, StoreError> {
            unreachable!()
        }
        async fn changes_since(&self, _: Seq, _: usize) -> Result<Vec<Change>, StoreError> {
            unreachable!()
        }
        async fn last_seq(&self) -> Result<Seq, StoreError> {
            unreachable!()
        }
        async fn export(&self, _: tokio::sync::mpsc::Sender<Change>) -> Result<Seq, StoreError> {
            unreachable!()
        }
        fn commits(&self) -> tokio::sync::watch::Receiver<Seq> {
            unreachable!()
        }
        async fn site(&self) -> Result<Option<crate::store::Site>, StoreError> {
            unreachable!()
        }
        async fn set_site(&self, _: crate::store::Site) -> Result<(), StoreError> {
            unreachable!()
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.pings.fetch_add(1, Ordering::SeqCst);
            // Long enough that every concurrent probe arrives while this one is in flight.
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.down.load(Ordering::SeqCst) {
                Err(StoreError::Corrupt("down for the test".into()))
            } else {
                Ok(())
            }
        }
        async fn close(&self) {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_probes_at_once_cost_one_ping() {
        let store = Arc::new(Pinged::default());
        let readiness = Arc::new(Readiness::default());
        let probes: Vec<_> = (0..32)
            .map(|_| {
                let (store, readiness) = (Arc::clone(&store), Arc::clone(&readiness));
                tokio::spawn(async move { readiness.check(&*store).await })
            })
            .collect();
        for probe in probes {
            assert_eq!(probe.await.unwrap(), Ok(()));
        }
        assert_eq!(store.pings.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failure_is_reported_and_a_recovery_seen_once_the_answer_is_stale() {
        let store = Pinged::default();
        let readiness = Readiness::default();
        store.down.store(true, Ordering::SeqCst);
        let error = readiness.check(&store).await.unwrap_err();
        assert!(error.contains("down for the test"), "{error}");
        store.down.store(false, Ordering::SeqCst);
        // Still the cached answer: no second ping within FRESH_FOR.
        assert!(readiness.check(&store).await.is_err());
        assert_eq!(store.pings.load(Ordering::SeqCst), 1);
        // Ages the answer instead of waiting a second for it.
        if let Some((at, _)) = readiness.last.lock().unwrap().as_mut() {
            *at -= FRESH_FOR;
        }
        assert_eq!(readiness.check(&store).await, Ok(()));
        assert_eq!(store.pings.load(Ordering::SeqCst), 2);
    }
}
