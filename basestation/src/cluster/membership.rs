//! Membership leases in PostgreSQL: join, renew, acknowledge, leave, and the removal of pods
//! whose lease lapsed.
//!
//! Time is the database's (`now()` in every statement), so pods' clocks never need to agree.
//! A pod considers its own lease lapsed earlier than the database does (see
//! [`Membership::local_deadline`]), so by the time another pod may remove it, it has already
//! stopped acting as a home. Removal is a `DELETE`, which waits for the row lock each write
//! transaction of the removed pod holds (`store::Fence`): its last write commits before, or
//! not at all.

use super::view::{Member, View};
use crate::store::{PostgresOptions, StoreError, connect_options};
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;
use tokio::time::Instant;

/// Why a membership call failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The database could not be reached or refused a statement.
    #[error("membership database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The URL or options could not be turned into a connection.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// This process's row is gone or belongs to a newer incarnation: its lease lapsed and
    /// another pod removed it, or the same pod name started elsewhere.
    #[error(
        "pod {0} lost its membership (its lease lapsed or it was replaced); it must join again"
    )]
    Expelled(String),
}

/// This pod's identity and lease settings.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The pod's stable name.
    pub pod: String,
    /// Random per process start.
    pub incarnation: String,
    /// Where other pods reach its internal port.
    pub address: String,
    /// How long a lease lasts without renewal.
    pub lease: Duration,
}

/// One pod's handle on the membership table.
pub struct Membership {
    pool: PgPool,
    me: Identity,
}

const ADD_MEMBER: &str = "INSERT INTO zbase_members (pod, incarnation, address, expires_at) \
                          VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond') \
                          ON CONFLICT (pod) DO NOTHING";

const RENEW: &str = "UPDATE zbase_members \
                     SET expires_at = now() + $3 * interval '1 millisecond', \
                         acked = GREATEST(acked, $4) \
                     WHERE pod = $1 AND incarnation = $2";

/// Removes every member whose lease lapsed. Waits on each one's in-flight write (its fence).
const EXPIRE: &str = "DELETE FROM zbase_members WHERE expires_at <= now()";

const BUMP: &str = "UPDATE zbase_membership SET generation = generation + 1";

/// Every row, lapsed or not: the rows change only with the generation (join, leave and
/// expiry bump it), so two views of one generation always list the same pods. A lapsed
/// member stays listed until some pod removes it, which bumps the generation; until then its
/// resources are unavailable rather than possibly served twice.
const MEMBERS: &str = "SELECT pod, address, leaving, acked FROM zbase_members ORDER BY pod";

impl Membership {
    /// Connects with the store's URL and options (its own two connections, so a busy writer
    /// never delays a renewal). The store has already migrated the schema.
    pub async fn connect(
        url: &str,
        options: &PostgresOptions,
        me: Identity,
    ) -> Result<Membership, MembershipError> {
        let mut options = options.clone();
        // A renewal stuck behind a lock for longer than a lease is worthless anyway.
        options.statement_timeout = options.statement_timeout.min(me.lease);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(options.acquire_timeout.min(me.lease))
            .connect_lazy_with(connect_options(url, &options)?);
        Ok(Membership { pool, me })
    }

    /// This pod's identity.
    pub fn identity(&self) -> &Identity {
        &self.me
    }

    /// The instant after which this pod must consider its lease lapsed, for a renewal sent at
    /// `sent`: three quarters of the lease, measured from before the database saw the request,
    /// so the pod gives up well before any other pod may remove it.
    pub fn local_deadline(&self, sent: Instant) -> Instant {
        sent + self.me.lease * 3 / 4
    }

    /// Registers this pod. If a live lease holds the name (a previous process of the same pod
    /// that was killed), waits for it to lapse first, so two processes never share a name.
    pub async fn join(&self) -> Result<View, MembershipError> {
        let mut warned = false;
        loop {
            let mut tx = self.pool.begin().await?;
            let expired = sqlx::query(EXPIRE).execute(&mut *tx).await?.rows_affected();
            let added = sqlx::query(ADD_MEMBER)
                .bind(&self.me.pod)
                .bind(&self.me.incarnation)
                .bind(&self.me.address)
                .bind(self.lease_millis())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if added == 1 || expired > 0 {
                sqlx::query(BUMP).execute(&mut *tx).await?;
            }
            if added == 1 {
                let view = self.read(&mut tx).await?;
                tx.commit().await?;
                return Ok(view);
            }
            tx.commit().await?;
            if !warned {
                tracing::warn!(pod = %self.me.pod, "another process holds this pod's membership lease; waiting for it to lapse (set a unique --pod-id if two pods share a name)");
                warned = true;
            }
            tokio::time::sleep(self.me.lease / 5).await;
        }
    }

    /// Renews this pod's lease, records that it has applied generation `acked`, removes pods
    /// whose lease lapsed, and returns the membership as it now stands.
    pub async fn renew(&self, acked: u64) -> Result<View, MembershipError> {
        let mut tx = self.pool.begin().await?;
        let renewed = sqlx::query(RENEW)
            .bind(&self.me.pod)
            .bind(&self.me.incarnation)
            .bind(self.lease_millis())
            .bind(i64::try_from(acked).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if renewed == 0 {
            return Err(MembershipError::Expelled(self.me.pod.clone()));
        }
        if sqlx::query(EXPIRE).execute(&mut *tx).await?.rows_affected() > 0 {
            sqlx::query(BUMP).execute(&mut *tx).await?;
        }
        let view = self.read(&mut tx).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Starts a graceful exit: this pod stops being anyone's home, and the others start
    /// waiting for it to let go (which [`Membership::leave`] completes).
    pub async fn start_leaving(&self) -> Result<View, MembershipError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query(
            "UPDATE zbase_members SET leaving = TRUE WHERE pod = $1 AND incarnation = $2",
        )
        .bind(&self.me.pod)
        .bind(&self.me.incarnation)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if marked == 0 {
            return Err(MembershipError::Expelled(self.me.pod.clone()));
        }
        sqlx::query(BUMP).execute(&mut *tx).await?;
        let view = self.read(&mut tx).await?;
        tx.commit().await?;
        Ok(view)
    }

    /// Removes this pod once it has let go of everything and its last write committed.
    pub async fn leave(&self) -> Result<(), MembershipError> {
        let mut tx = self.pool.begin().await?;
        let removed = sqlx::query("DELETE FROM zbase_members WHERE pod = $1 AND incarnation = $2")
            .bind(&self.me.pod)
            .bind(&self.me.incarnation)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed > 0 {
            sqlx::query(BUMP).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.pool.close().await;
        Ok(())
    }

    fn lease_millis(&self) -> f64 {
        self.me.lease.as_secs_f64() * 1000.0
    }

    async fn read(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    ) -> Result<View, MembershipError> {
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM zbase_membership")
            .fetch_one(&mut **tx)
            .await?;
        let rows: Vec<(String, String, bool, i64)> =
            sqlx::query_as(MEMBERS).fetch_all(&mut **tx).await?;
        Ok(View {
            generation: u64::try_from(generation).unwrap_or_default(),
            members: rows
                .into_iter()
                .map(|(pod, address, leaving, acked)| Member {
                    pod,
                    address,
                    leaving,
                    acked: u64::try_from(acked).unwrap_or_default(),
                })
                .collect(),
            me: self.me.pod.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    //! Against a real PostgreSQL server (the test process's throwaway cluster).

    use super::*;
    use crate::store::{Fence, PostgresStore, Store as _};
    use sqlx::Connection as _;
    use zbase_proto::wire::ResourceId;

    const SHORT: Duration = Duration::from_millis(500);

    fn identity(pod: &str, lease: Duration) -> Identity {
        Identity {
            pod: pod.into(),
            incarnation: format!("{:016x}", rand::random::<u64>()),
            address: format!("{pod}:7201"),
            lease,
        }
    }

    /// A store fenced by `me`'s membership, and that membership, on database `url`.
    async fn pod(url: &str, me: Identity) -> (PostgresStore, Membership) {
        let options = PostgresOptions {
            fence: Some(Fence {
                pod: me.pod.clone(),
                incarnation: me.incarnation.clone(),
            }),
            ..PostgresOptions::default()
        };
        let store = PostgresStore::connect(url, options.clone()).await.unwrap();
        let membership = Membership::connect(url, &options, me).await.unwrap();
        (store, membership)
    }

    fn id(n: u8) -> ResourceId {
        ResourceId::from_bytes([n; 32])
    }

    const JWK: &str =
        r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn joins_renewals_and_leaves_each_move_the_generation() {
        let url = zbase_tests::postgres::fresh_database().await;
        let (_, a) = pod(&url, identity("pod-a", SHORT * 10)).await;
        let (_, b) = pod(&url, identity("pod-b", SHORT * 10)).await;
        let first = a.join().await.unwrap();
        let second = b.join().await.unwrap();
        assert!(second.generation > first.generation);
        let pods: Vec<_> = second.members.iter().map(|m| m.pod.as_str()).collect();
        assert_eq!(pods, ["pod-a", "pod-b"]);
        assert!(!second.settled(), "nobody acknowledged the new view yet");

        a.renew(second.generation).await.unwrap();
        let view = b.renew(second.generation).await.unwrap();
        assert_eq!(
            view.generation, second.generation,
            "renewals change nothing"
        );
        assert!(view.settled());

        let leaving = a.start_leaving().await.unwrap();
        assert!(leaving.generation > view.generation);
        assert!(
            leaving
                .members
                .iter()
                .any(|m| m.pod == "pod-a" && m.leaving)
        );
        a.leave().await.unwrap();
        let after = b.renew(leaving.generation).await.unwrap();
        assert!(after.generation > leaving.generation);
        let pods: Vec<_> = after.members.iter().map(|m| m.pod.as_str()).collect();
        assert_eq!(pods, ["pod-b"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lapsed_member_is_removed_and_its_writes_are_fenced() {
        let url = zbase_tests::postgres::fresh_database().await;
        let (store_a, a) = pod(&url, identity("pod-a", SHORT)).await;
        let (_, b) = pod(&url, identity("pod-b", SHORT * 10)).await;
        a.join().await.unwrap();
        b.join().await.unwrap();
        store_a.claim(&id(1), JWK).await.unwrap();
        store_a
            .put_snapshot(&id(1), bytes::Bytes::from_static(b"under the lease"))
            .await
            .unwrap();

        tokio::time::sleep(SHORT * 2).await;
        let view = b.renew(0).await.unwrap();
        assert!(view.members.iter().all(|m| m.pod != "pod-a"), "{view:?}");
        let refused = store_a
            .put_snapshot(&id(1), bytes::Bytes::from_static(b"after the lease"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("fenced"), "{refused}");
        assert!(matches!(
            a.renew(0).await,
            Err(MembershipError::Expelled(pod)) if pod == "pod-a"
        ));
        let kept = store_a.load(&id(1)).await.unwrap().unwrap();
        assert_eq!(kept.snapshot.as_deref(), Some(&b"under the lease"[..]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removing_a_member_waits_for_its_write_in_flight() {
        let url = zbase_tests::postgres::fresh_database().await;
        let me = identity("pod-a", SHORT);
        let (_, a) = pod(&url, me.clone()).await;
        let (_, b) = pod(&url, identity("pod-b", SHORT * 10)).await;
        a.join().await.unwrap();
        b.join().await.unwrap();
        // What a write transaction of pod-a holds from its first statement to its commit.
        let mut writer = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::query("BEGIN").execute(&mut writer).await.unwrap();
        let held: Option<i32> = sqlx::query_scalar(crate::store::FENCE_FOR_TESTS)
            .bind(&me.pod)
            .bind(&me.incarnation)
            .fetch_optional(&mut writer)
            .await
            .unwrap();
        assert_eq!(held, Some(1));

        tokio::time::sleep(SHORT * 2).await;
        let removal = tokio::spawn(async move { b.renew(0).await.unwrap() });
        tokio::time::sleep(SHORT).await;
        assert!(!removal.is_finished(), "pod-a was removed during its write");
        sqlx::query("COMMIT").execute(&mut writer).await.unwrap();
        let view = removal.await.unwrap();
        assert!(view.members.iter().all(|m| m.pod != "pod-a"), "{view:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_process_under_one_name_waits_for_the_first_lease() {
        let url = zbase_tests::postgres::fresh_database().await;
        let (_, first) = pod(&url, identity("pod-a", SHORT)).await;
        let (_, second) = pod(&url, identity("pod-a", SHORT)).await;
        first.join().await.unwrap();
        let started = tokio::time::Instant::now();
        // The first process stops renewing (killed); the second gets the name once it lapsed.
        let view = second.join().await.unwrap();
        assert!(started.elapsed() >= SHORT / 2, "joined over a live lease");
        assert_eq!(view.members.len(), 1);
        assert!(matches!(
            first.renew(0).await,
            Err(MembershipError::Expelled(_))
        ));
    }
}
