//! Sites in real network namespaces (`zbase_tests::netns`): a primary and a replica 20 ms
//! apart (each way) under traffic, partitioned by taking their link down, and killed with
//! SIGKILL at random moments; then three sites, with a promotion while the old primary is cut
//! off. Needs root (CI runs as root) for `ip netns`.
//!
//! A snapshot counts as acknowledged when its writer was shown it as `forward-response` (the
//! writer is its own pending requester): after the traffic stops, both sites hold the same
//! snapshot of every resource, and no snapshot older than an acknowledged one.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use zbase_proto::wire::{Code, ResourceId};
use zbase_tests::client::{CloseKind, Conn, Event, Identity, Transport, create_resource, join};
use zbase_tests::netns::{DelayProxy, Net};
use zbase_tests::sites::{admin, eventually, status, wait_ready};
use zbase_tests::station::{Station, StationBuilder};

/// The replication port every site listens on, in its own namespace.
const REPLICATION_PORT: u16 = 7000;
/// Each site's public port, fixed so clients reach a restarted site at the same address.
const PUBLIC_PORT: u16 = 7100;
/// One way, between the sites.
const LATENCY: Duration = Duration::from_millis(20);
/// How long the sites may take to agree once the traffic stops.
const CONVERGE: Duration = Duration::from_secs(30);

fn site(net: &Net, index: usize) -> StationBuilder {
    Station::builder()
        .netns(&net.namespace(index))
        .flag("listen", SocketAddr::new(net.client_ip(index), PUBLIC_PORT))
        .flag(
            "replication-listen",
            SocketAddr::new(IpAddr::from([0, 0, 0, 0]), REPLICATION_PORT),
        )
}

/// Snapshot `n` of resource `r`: both numbers, then filler, so a torn or mixed-up write shows.
fn snapshot(r: usize, n: u64) -> Vec<u8> {
    let mut bytes = format!("{r:04}:{n:08}:").into_bytes();
    bytes.resize(600, b'x');
    bytes
}

fn number(payload: &[u8]) -> Option<(usize, u64)> {
    let text = std::str::from_utf8(payload.get(..14)?).ok()?;
    let (r, n) = text.trim_end_matches(':').split_once(':')?;
    Some((r.parse().ok()?, n.parse().ok()?))
}

/// One resource's writer: numbered snapshots on its site, each acknowledged by the
/// forward-response it gets as its own requester; reconnects after a refusal or a kill.
struct Writer {
    index: usize,
    id: ResourceId,
    identity: Identity,
    acked: AtomicU64,
    refused: AtomicU64,
}

impl Writer {
    async fn run(self: Arc<Self>, at: SocketAddr, stop: Arc<AtomicBool>) {
        let mut next = 1;
        while !stop.load(Ordering::Relaxed) {
            let Ok(Ok(mut conn)) = tokio::time::timeout(
                Duration::from_secs(3),
                Conn::open(Transport::Grpc, at, self.id.as_str()),
            )
            .await
            else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if !self.verify(&mut conn).await {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            while !stop.load(Ordering::Relaxed) {
                let payload = snapshot(self.index, next);
                let sent = conn
                    .send(Code::SubmitRequest, b"ack?".to_vec())
                    .await
                    .is_ok()
                    && conn
                        .send(Code::SubmitSnapshot, payload.clone())
                        .await
                        .is_ok();
                if !sent || !self.acknowledged(&mut conn, next).await {
                    break;
                }
                self.acked.fetch_max(next, Ordering::SeqCst);
                next += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The next attempt writes a number never tried, so "acknowledged" stays monotonic.
            next += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn verify(&self, conn: &mut Conn) -> bool {
        let Some(Event::Frame(frame)) = conn.recv_timeout(Duration::from_secs(3)).await else {
            return false;
        };
        let Ok(challenge) = frame.payload()[..].try_into() else {
            return false;
        };
        if frame.code() != Code::RequireVerification {
            return false;
        }
        let signature = self.identity.verify_payload(&challenge, &self.id);
        conn.send(Code::SubmitVerification, signature.to_vec())
            .await
            .is_ok()
    }

    /// Waits for the forward-response carrying snapshot `n`; false if the station closed the
    /// connection (a refusal is counted) or did not answer in time.
    async fn acknowledged(&self, conn: &mut Conn, n: u64) -> bool {
        loop {
            match conn.recv_timeout(Duration::from_secs(8)).await {
                Some(Event::Frame(frame)) if frame.code() == Code::ForwardResponse => {
                    if number(frame.payload()) == Some((self.index, n)) {
                        return true;
                    }
                }
                Some(Event::Frame(_)) => {}
                Some(Event::Closed(kind)) => {
                    if matches!(kind, CloseKind::Overloaded | CloseKind::GoingAway) {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    return false;
                }
                _ => return false,
            }
        }
    }
}

/// Every resource's snapshot in the store of `station` (its SQLite file, read beside it).
async fn snapshots(station: &Station) -> HashMap<String, Vec<u8>> {
    use sqlx::{ConnectOptions as _, Row as _};
    let path = station.data_dir().join("station.sqlite3");
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .read_only(true)
        .connect()
        .await
        .expect("open the station's store read-only");
    let rows = sqlx::query("SELECT id, snapshot FROM resources WHERE snapshot IS NOT NULL")
        .fetch_all(&mut conn)
        .await
        .expect("read the store");
    rows.iter()
        .map(|row| (row.get::<String, _>(0), row.get::<Vec<u8>, _>(1)))
        .collect()
}

/// Waits until both stores hold the same snapshot of every resource, then checks none is
/// older than what its writer was shown.
async fn converged(primary: &Station, replica: &Station, writers: &[Arc<Writer>]) {
    eventually(CONVERGE, "both sites hold the same snapshots", || async {
        let (a, b) = (snapshots(primary).await, snapshots(replica).await);
        a.len() == writers.len() && a == b
    })
    .await;
    let held = snapshots(primary).await;
    for writer in writers {
        let payload = &held[writer.id.as_str()];
        let (index, n) = number(payload).expect("a well-formed snapshot");
        assert_eq!(index, writer.index, "a snapshot of another resource");
        assert_eq!(&payload[..], &snapshot(index, n)[..], "a torn snapshot");
        let acked = writer.acked.load(Ordering::SeqCst);
        assert!(
            n >= acked,
            "resource {index}: holds #{n} but #{acked} was acknowledged"
        );
    }
}

/// A primary (site 0) and a replica (site 1) following it through a 20 ms delay proxy, and
/// three writers on each, writing until `stop`.
struct Pair {
    net: Net,
    primary: Station,
    replica: Station,
    _proxy: DelayProxy,
    writers: Vec<Arc<Writer>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Pair {
    async fn start() -> Pair {
        let net = Net::create(2);
        let primary = site(&net, 0).start_process().await;
        wait_ready(&primary).await;
        let upstream = SocketAddr::new(net.site_ip(0, 1), REPLICATION_PORT);
        let proxy = DelayProxy::start(Some(&net.namespace(1)), upstream, LATENCY);
        let replica = site(&net, 1)
            .flag("replica-of", format!("http://{}", proxy.addr))
            .start_process()
            .await;
        wait_ready(&replica).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..6 {
            let at = if index % 2 == 0 { &primary } else { &replica };
            let (id, identity) = create_resource(at.addr(), Transport::Ws).await;
            let writer = Arc::new(Writer {
                index,
                id,
                identity,
                acked: AtomicU64::new(0),
                refused: AtomicU64::new(0),
            });
            tasks.push(tokio::spawn(
                Arc::clone(&writer).run(at.addr(), Arc::clone(&stop)),
            ));
            writers.push(writer);
        }
        Pair {
            net,
            primary,
            replica,
            _proxy: proxy,
            writers,
            stop,
            tasks,
        }
    }

    /// Stops the writers and waits for them.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
        }
    }

    fn acked(&self) -> u64 {
        self.writers
            .iter()
            .map(|w| w.acked.load(Ordering::SeqCst))
            .sum()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_keeps_the_replica_serving_refuses_its_writes_and_heals_without_a_gap() {
    let mut pair = Pair::start().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = pair.acked();
    assert!(before > 0, "no write was acknowledged before the partition");

    pair.net.set_link(0, 1, false);
    // The replica notices within three heartbeats; meanwhile and after, it serves reads.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reader = &pair.writers[0];
    let mut conn = join(
        pair.replica.addr(),
        Transport::Ws,
        &reader.id,
        &reader.identity,
    )
    .await;
    conn.expect_frame(Code::OfferSnapshot).await;
    let primary_progress = pair.writers[0].acked.load(Ordering::SeqCst);
    // A write sent just before the link went down waits out its 5 s timeout; later ones are
    // refused at once, since the feed is known to be lost.
    let writers = &pair.writers;
    eventually(
        Duration::from_secs(15),
        "the replica's writers are refused while cut off",
        || async {
            writers
                .iter()
                .skip(1)
                .step_by(2)
                .all(|w| w.refused.load(Ordering::Relaxed) > 0)
        },
    )
    .await;
    assert!(
        pair.writers[0].acked.load(Ordering::SeqCst) > primary_progress,
        "the primary's own clients keep writing during the partition"
    );

    pair.net.set_link(0, 1, true);
    tokio::time::sleep(Duration::from_secs(3)).await;
    pair.stop().await;
    let replica_writes: u64 = pair
        .writers
        .iter()
        .skip(1)
        .step_by(2)
        .map(|w| w.acked.load(Ordering::SeqCst))
        .sum();
    assert!(
        replica_writes > 0,
        "the replica's writers wrote again after the partition healed"
    );
    converged(&pair.primary, &pair.replica, &pair.writers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_either_site_at_random_moments_loses_no_acknowledged_snapshot() {
    let mut pair = Pair::start().await;
    for round in 0..4 {
        let wait = 300 + rand::random::<u64>() % 700;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let victim = if rand::random::<bool>() {
            &mut pair.primary
        } else {
            &mut pair.replica
        };
        victim.kill().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        victim.restart().await;
        wait_ready(victim).await;
        eprintln!(
            "round {round}: {} snapshots acknowledged so far",
            pair.acked()
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    pair.stop().await;
    assert!(pair.acked() > 0);
    converged(&pair.primary, &pair.replica, &pair.writers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_while_the_old_primary_is_cut_off_fences_it_when_it_returns() {
    let net = Net::create(3);
    let at = |site: usize, from: usize| {
        format!(
            "http://{}",
            SocketAddr::new(net.site_ip(site, from), REPLICATION_PORT)
        )
    };
    let admin_of = |site: usize| SocketAddr::new(net.client_ip(site), REPLICATION_PORT);
    let a = site(&net, 0)
        .flag("sites", format!("{},{}", at(1, 0), at(2, 0)))
        .start_process()
        .await;
    wait_ready(&a).await;
    let b = site(&net, 1)
        .flag("replica-of", at(0, 1))
        .flag("sites", at(2, 1))
        .start_process()
        .await;
    let c = site(&net, 2)
        .flag("replica-of", at(0, 2))
        .flag("sites", at(1, 2))
        .start_process()
        .await;
    wait_ready(&b).await;
    wait_ready(&c).await;
    let (id, identity) = create_resource(a.addr(), Transport::Ws).await;
    let mut writer = join(a.addr(), Transport::Ws, &id, &identity).await;
    writer
        .send(Code::SubmitRequest, b"?".to_vec())
        .await
        .unwrap();
    writer
        .send(Code::SubmitSnapshot, b"before".to_vec())
        .await
        .unwrap();
    writer
        .expect_payload(Code::ForwardResponse, b"before")
        .await;
    drop(writer);
    eventually(
        CONVERGE,
        "both replicas hold the first snapshot",
        || async { snapshots(&b).await.len() == 1 && snapshots(&c).await.len() == 1 },
    )
    .await;

    // The old primary's site is cut off from the others (its own clients still reach it).
    net.set_link(0, 1, false);
    net.set_link(0, 2, false);
    let (ok, out, err) = admin("promote", admin_of(1), &["--json"]).await;
    assert!(ok, "promote failed: {err}");
    assert!(out.contains("\"failover\":true"), "{out}");
    let mut writer = join(b.addr(), Transport::Ws, &id, &identity).await;
    writer.expect_frame(Code::OfferSnapshot).await;
    writer
        .send(Code::SubmitRequest, b"?".to_vec())
        .await
        .unwrap();
    writer
        .send(Code::SubmitSnapshot, b"after".to_vec())
        .await
        .unwrap();
    writer
        .expect_keeping_offers(Code::ForwardResponse, b"after")
        .await;
    eventually(
        CONVERGE,
        "the other replica follows the new primary",
        || async { snapshots(&c).await.get(id.as_str()).map(Vec::as_slice) == Some(&b"after"[..]) },
    )
    .await;
    assert_eq!(status(admin_of(2)).await["epoch"], 2);

    // The old primary returns: it hears of epoch 2 and takes no write from then on.
    net.set_link(0, 1, true);
    net.set_link(0, 2, true);
    eventually(CONVERGE, "the old primary fences itself", || async {
        status(admin_of(0)).await["role"] == "fenced"
    })
    .await;
    let mut late = join(a.addr(), Transport::Ws, &id, &identity).await;
    late.expect_frame(Code::OfferSnapshot).await;
    late.send(Code::SubmitSnapshot, b"too late".to_vec())
        .await
        .unwrap();
    late.expect_close(CloseKind::Overloaded).await;
    assert_eq!(
        snapshots(&b).await.get(id.as_str()).map(Vec::as_slice),
        Some(&b"after"[..])
    );
}
