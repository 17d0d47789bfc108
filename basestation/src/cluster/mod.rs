//! Several station pods on one PostgreSQL database: who is a member, which pod is home to
//! each resource, and the loop that keeps both current.
//!
//! Promise: a resource has at most one live home. Each pod routes by its latest [`View`]; a
//! pod serves a resource it is home to only once every member has acknowledged that view
//! ([`Route::Settling`] until then), and a member acknowledges a view only after it has let
//! go of every resource it is no longer home to (peers closed with 1013, writes committed).
//! A pod that cannot renew its lease stops serving as a home before its lease can lapse in the
//! database, and its writes are fenced in the database itself (`store::Fence`). Timing decides
//! only how fast things move, never whether two homes can overlap.

mod membership;
mod view;

pub use membership::{Identity, Membership, MembershipError};
pub use view::{Member, Route, View};

use crate::telemetry::Metrics;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zbase_proto::wire::ResourceId;

/// The current view and lease of this pod, shared by every connection that needs a route.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Shared>,
}

struct Shared {
    view: watch::Sender<Arc<View>>,
    /// Until when this pod may act as a home; `None` before joining and after losing the lease.
    valid_until: Mutex<Option<Instant>>,
    /// How long a new connection waits for a settling view before it is told to retry.
    settle_wait: Duration,
}

impl std::fmt::Debug for Directory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Directory")
            .field("view", &*self.current())
            .finish()
    }
}

impl Directory {
    /// An empty directory for pod `me`: no route is local until the first view arrives.
    pub fn new(me: &str, settle_wait: Duration) -> Directory {
        let empty = View {
            generation: 0,
            members: Vec::new(),
            me: me.to_owned(),
        };
        Directory {
            inner: Arc::new(Shared {
                view: watch::Sender::new(Arc::new(empty)),
                valid_until: Mutex::new(None),
                settle_wait,
            }),
        }
    }

    /// The latest view.
    pub fn current(&self) -> Arc<View> {
        self.inner.view.borrow().clone()
    }

    /// Installs `view`, with this pod's lease good until `valid_until`.
    pub fn publish(&self, view: View, valid_until: Instant) {
        *self.lock() = Some(valid_until);
        self.inner.view.send_replace(Arc::new(view));
    }

    /// Forgets the lease: nothing is local until the next successful renewal.
    pub fn invalidate(&self) {
        *self.lock() = None;
        self.inner.view.send_modify(|_| {});
    }

    /// True while this pod's lease holds.
    pub fn lease_valid(&self) -> bool {
        self.lock().is_some_and(|until| Instant::now() < until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.inner
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a new connection for `id` goes, waiting (a bounded time) while the view settles.
    pub async fn route(&self, id: &ResourceId) -> Route {
        let mut changes = self.inner.view.subscribe();
        let deadline = Instant::now() + self.inner.settle_wait;
        loop {
            if !self.lease_valid() {
                return Route::Unavailable;
            }
            let route = changes.borrow_and_update().route(id);
            if route != Route::Settling {
                return route;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return Route::Unavailable,
            }
        }
    }

    /// True if this pod is home to `id` now: the check a resource task makes before acting.
    pub fn is_home(&self, id: &ResourceId) -> bool {
        self.lease_valid() && self.current().is_home(id)
    }
}

/// What the membership loop asks of the relay when the view changes.
pub trait Homes: Send + Sync + 'static {
    /// Lets go of every active resource this pod is not home to under `directory`'s current
    /// view (or of all of them once the lease is gone): peers closed, writes committed.
    /// Returns how many were let go.
    fn release(&self, directory: &Directory) -> BoxFuture<'_, usize>;
}

/// Keeps this pod's lease and view current until `stop`, letting go of resources as homes
/// move. Runs through the station's drain, so the lease holds while the last writes commit.
pub async fn maintain(
    membership: Arc<Membership>,
    directory: Directory,
    homes: Arc<dyn Homes>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let lease = membership.identity().lease;
    let every = lease / 5;
    let mut applied = directory.current().generation;
    let mut deadline: Option<Instant> = None;
    loop {
        let sent = Instant::now();
        let renewed = tokio::select! {
            _ = stop.cancelled() => return,
            renewed = tokio::time::timeout(every, membership.renew(applied)) => renewed,
        };
        match renewed {
            Ok(Ok(mut view)) => {
                deadline = Some(membership.local_deadline(sent));
                if let Some(own) = view.members.iter_mut().find(|m| m.pod == view.me) {
                    own.acked = own.acked.max(applied);
                }
                let generation = view.generation;
                let members = view.members.len();
                metrics.cluster_members.set(members as i64);
                directory.publish(view.clone(), membership.local_deadline(sent));
                if generation > applied {
                    let released = homes.release(&directory).await;
                    applied = generation;
                    // Acknowledge at once rather than at the next renewal: other pods are
                    // waiting for it before they serve what moved.
                    if let Ok(Ok(mut view)) =
                        tokio::time::timeout(every, membership.renew(applied)).await
                    {
                        if let Some(own) = view.members.iter_mut().find(|m| m.pod == view.me) {
                            own.acked = own.acked.max(applied);
                        }
                        directory.publish(view, membership.local_deadline(sent));
                    }
                    tracing::info!(generation, members, released, "membership changed");
                }
            }
            Ok(Err(MembershipError::Expelled(pod))) => {
                tracing::error!(%pod, "this pod lost its membership lease; letting go of every resource and joining again");
                directory.invalidate();
                let released = homes.release(&directory).await;
                tracing::info!(released, "let go of every resource");
                metrics.cluster_members.set(0);
                match membership.join().await {
                    Ok(view) => {
                        applied = 0;
                        directory.publish(view, membership.local_deadline(Instant::now()));
                        // Renewing at once acknowledges the new view.
                        continue;
                    }
                    Err(error) => tracing::warn!(%error, "joining again failed"),
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "membership lease renewal failed");
            }
            Err(_) => tracing::warn!("membership lease renewal timed out"),
        }
        if deadline.is_some_and(|until| Instant::now() >= until) {
            deadline = None;
            tracing::error!(
                "membership lease lapsed; this pod stops serving as a home until it renews"
            );
            directory.invalidate();
            let released = homes.release(&directory).await;
            tracing::info!(released, "let go of every resource");
            metrics.cluster_members.set(0);
        }
        let next = sent + every;
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn view(generation: u64, acked_by_other: u64) -> View {
        View {
            generation,
            members: vec![
                Member {
                    pod: "a".into(),
                    address: "a:1".into(),
                    leaving: false,
                    acked: generation,
                },
                Member {
                    pod: "b".into(),
                    address: "b:1".into(),
                    leaving: false,
                    acked: acked_by_other,
                },
            ],
            me: "a".into(),
        }
    }

    /// An identifier whose home is pod "a" among "a" and "b".
    fn homed_here() -> ResourceId {
        (0u8..=255)
            .map(|n| ResourceId::from_bytes([n; 32]))
            .find(|id| view(1, 1).home(id).is_some_and(|home| home.pod == "a"))
            .expect("some identifier hashes to a")
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_connection_waits_for_the_view_to_settle() {
        let directory = Directory::new("a", Duration::from_secs(5));
        let id = homed_here();
        assert_eq!(
            directory.route(&id).await,
            Route::Unavailable,
            "no lease yet"
        );

        let far = Instant::now() + Duration::from_secs(3600);
        directory.publish(view(2, 1), far);
        let waiting = {
            let directory = directory.clone();
            tokio::spawn(async move { directory.route(&id).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "served before b let go");
        directory.publish(view(2, 2), far);
        assert_eq!(waiting.await.unwrap(), Route::Local);
    }

    #[tokio::test(start_paused = true)]
    async fn a_view_that_never_settles_turns_into_a_retry() {
        let directory = Directory::new("a", Duration::from_secs(5));
        let id = homed_here();
        directory.publish(view(2, 1), Instant::now() + Duration::from_secs(3600));
        let started = Instant::now();
        assert_eq!(directory.route(&id).await, Route::Unavailable);
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_home_once_the_lease_runs_out() {
        let directory = Directory::new("a", Duration::from_secs(5));
        let id = homed_here();
        directory.publish(view(1, 1), Instant::now() + Duration::from_secs(2));
        assert_eq!(directory.route(&id).await, Route::Local);
        assert!(directory.is_home(&id));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!directory.lease_valid());
        assert!(!directory.is_home(&id));
        assert_eq!(directory.route(&id).await, Route::Unavailable);
    }
}
