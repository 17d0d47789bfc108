//! Several pods on one PostgreSQL database behind HAProxy (the virtual IP): one peer set per
//! resource whatever pod a peer reached, and no acknowledged snapshot lost when a pod is
//! killed or the pods are restarted one by one under traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use tokio_util::sync::CancellationToken;
use zbase_proto::wire::{Code, ResourceId};
use zbase_tests::client::{
    Conn, Event, Identity, Transport, create_resource, join, join_peers, random_bytes,
    seed_snapshot, sync, sync_fresh,
};
use zbase_tests::pods::{LEASE, Pods, metric};

/// Resources written continuously in the failure tests.
const WRITERS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_different_pods_share_one_peer_set_ws() {
    peers_on_different_pods_share_one_peer_set(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_different_pods_share_one_peer_set_grpc() {
    peers_on_different_pods_share_one_peer_set(Transport::Grpc).await;
}

async fn peers_on_different_pods_share_one_peer_set(t: Transport) {
    let mut pods = Pods::start(3).await;
    let addrs: Vec<_> = (0..3).map(|i| pods.pod(i).addr()).collect();
    let (id, me) = create_resource(pods.vip(), t).await;

    // One peer on each pod, addressed directly: deltas cross every pair.
    let mut a = join(addrs[0], t, &id, &me).await;
    let mut b = join(addrs[1], t, &id, &me).await;
    sync_fresh(&mut b, &mut a).await;
    let mut c = join(addrs[2], t, &id, &me).await;
    // c's delta is relayed after its own join, so it reaching a and b shows c joined too.
    let token = random_bytes(16);
    c.send(Code::SubmitDelta, token.clone()).await.unwrap();
    a.expect_payload(Code::ForwardDelta, &token).await;
    b.expect_payload(Code::ForwardDelta, &token).await;
    let token = random_bytes(16);
    a.send(Code::SubmitDelta, token.clone()).await.unwrap();
    b.expect_payload(Code::ForwardDelta, &token).await;
    c.expect_payload(Code::ForwardDelta, &token).await;

    // A snapshot written through pod 0 is offered to a new peer on pod 1 and pod 2.
    let snapshot = random_bytes(5000);
    seed_snapshot(addrs[0], t, &id, &me, &snapshot).await;
    for addr in &addrs[1..] {
        let mut late = join(*addr, t, &id, &me).await;
        late.expect_payload(Code::OfferSnapshot, &snapshot).await;
    }

    // Through the virtual IP, round robin spreads peers over the pods; they still share one
    // peer set.
    let (other, owner) = create_resource(pods.vip(), t).await;
    let peers = join_peers(pods.vip(), &[t, t, t], &other, &owner).await;
    drop(peers);

    // Exactly one pod is home (holds the resource), and the others relayed frames to it.
    let mut relaying = 0;
    for addr in &addrs {
        let out = metric_labelled(*addr, "zbase_relayed_frames_total{direction=\"out\"}").await;
        if out > 0.0 {
            relaying += 1;
        }
    }
    assert!(
        relaying >= 2,
        "only {relaying} pods relayed frames to a home pod"
    );
}

async fn metric_labelled(addr: std::net::SocketAddr, series: &str) -> f64 {
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// One resource written continuously through the virtual IP: submit snapshot `n`, ask for
/// it, and count it acknowledged once the station shows it back. Reconnects (through the
/// VIP) whenever the connection ends, and checks on every rejoin that the snapshot offered is
/// at least the last one acknowledged.
struct Writer {
    id: ResourceId,
    identity: Identity,
    transport: Transport,
    acked: AtomicU64,
    submitted: AtomicU64,
    reconnects: AtomicU64,
    /// The longest time, in milliseconds, from losing the connection to being verified again.
    longest_gap_ms: AtomicU64,
    gaps_ms: std::sync::Mutex<Vec<u64>>,
}

fn payload_of(n: u64) -> Vec<u8> {
    format!("snapshot {n:010}").into_bytes()
}

fn number_in(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|text| text.strip_prefix("snapshot "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a snapshot this test did not write: {payload:?}"))
}

impl Writer {
    async fn run(self: Arc<Self>, vip: std::net::SocketAddr, stop: CancellationToken) {
        let mut lost_at: Option<Instant> = None;
        while !stop.is_cancelled() {
            let Ok(mut conn) = Conn::open(self.transport, vip, self.id.as_str()).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let challenge = match conn.recv_timeout(Duration::from_secs(10)).await {
                Some(Event::Frame(frame)) if frame.code() == Code::RequireVerification => {
                    let mut challenge = [0u8; 32];
                    challenge.copy_from_slice(frame.payload());
                    challenge
                }
                // Refused with 1013 while homes move, or the pod went away: try again.
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let proof = self.identity.verify_payload(&challenge, &self.id);
            if conn
                .send(Code::SubmitVerification, proof.to_vec())
                .await
                .is_err()
            {
                continue;
            }
            if let Some(since) = lost_at.take() {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                let gap = since.elapsed().as_millis() as u64;
                self.longest_gap_ms.fetch_max(gap, Ordering::Relaxed);
                self.gaps_ms.lock().unwrap().push(gap);
            }
            // Write until the connection ends.
            'session: while !stop.is_cancelled() {
                let n = self.submitted.fetch_add(1, Ordering::SeqCst) + 1;
                if conn
                    .send(Code::SubmitSnapshot, payload_of(n))
                    .await
                    .is_err()
                    || conn
                        .send(Code::SubmitRequest, random_bytes(4))
                        .await
                        .is_err()
                {
                    break 'session;
                }
                loop {
                    match conn.recv_timeout(Duration::from_secs(10)).await {
                        Some(Event::Frame(frame))
                            if matches!(
                                frame.code(),
                                Code::OfferSnapshot | Code::ForwardResponse
                            ) =>
                        {
                            let shown = number_in(frame.payload());
                            let acked = self.acked.load(Ordering::SeqCst);
                            assert!(
                                shown >= acked || frame.code() == Code::ForwardResponse,
                                "offered snapshot {shown} after {acked} was acknowledged"
                            );
                            if shown == n {
                                self.acked.fetch_max(n, Ordering::SeqCst);
                                break;
                            }
                        }
                        Some(Event::Frame(frame)) => {
                            panic!("unexpected {:?} on a writer", frame.code())
                        }
                        Some(Event::Closed(_)) | None => break 'session,
                    }
                }
            }
            if !stop.is_cancelled() {
                lost_at = Some(Instant::now());
            }
            conn.close().await;
        }
    }
}

async fn start_writers(
    pods: &Pods,
    t: Transport,
) -> (
    Vec<Arc<Writer>>,
    Vec<tokio::task::JoinHandle<()>>,
    CancellationToken,
) {
    let stop = CancellationToken::new();
    let mut writers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let (id, identity) = create_resource(pods.vip(), t).await;
        let writer = Arc::new(Writer {
            id,
            identity,
            transport: t,
            acked: AtomicU64::new(0),
            submitted: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            longest_gap_ms: AtomicU64::new(0),
            gaps_ms: std::sync::Mutex::new(Vec::new()),
        });
        tasks.push(tokio::spawn(
            Arc::clone(&writer).run(pods.vip(), stop.clone()),
        ));
        writers.push(writer);
    }
    (writers, tasks, stop)
}

/// Lets the writers make progress: every one acknowledges at least `more` further snapshots.
async fn progress(writers: &[Arc<Writer>], more: u64, pods: &Pods) {
    let start: Vec<u64> = writers
        .iter()
        .map(|w| w.acked.load(Ordering::SeqCst))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while writers
        .iter()
        .zip(&start)
        .any(|(w, s)| w.acked.load(Ordering::SeqCst) < s + more)
    {
        assert!(
            Instant::now() < deadline,
            "writers stalled: {:?}\n{}",
            writers
                .iter()
                .map(|w| w.acked.load(Ordering::SeqCst))
                .collect::<Vec<_>>(),
            pods.stderr_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every writer's last acknowledged snapshot (or a later one it submitted) is what the
/// database holds and what a fresh peer through the VIP is offered.
async fn nothing_acknowledged_was_lost(writers: &[Arc<Writer>], pods: &Pods, t: Transport) {
    let mut db = sqlx::PgConnection::connect(pods.database_url())
        .await
        .unwrap();
    for writer in writers {
        let acked = writer.acked.load(Ordering::SeqCst);
        let submitted = writer.submitted.load(Ordering::SeqCst);
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT snapshot FROM resources WHERE id = $1")
                .bind(writer.id.as_str())
                .fetch_one(&mut db)
                .await
                .unwrap();
        let stored = number_in(&stored.expect("a written resource has a snapshot"));
        assert!(
            (acked..=submitted).contains(&stored),
            "the database holds snapshot {stored}; {acked} was acknowledged, {submitted} submitted"
        );
        let mut fresh = join(pods.vip(), t, &writer.id, &writer.identity).await;
        let offered = number_in(&fresh.expect_frame(Code::OfferSnapshot).await);
        assert_eq!(
            offered, stored,
            "a fresh peer is offered what the database holds"
        );
    }
    let _ = db.close().await;
}

/// The membership table lists exactly the running pods, every one having applied the latest
/// generation: one view, so one home per resource.
async fn one_settled_view(pods: &Pods, running: &[&str]) {
    let mut db = sqlx::PgConnection::connect(pods.database_url())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let generation: i64 = sqlx::query_scalar("SELECT generation FROM zbase_membership")
            .fetch_one(&mut db)
            .await
            .unwrap();
        let members: Vec<(String, i64)> =
            sqlx::query_as("SELECT pod, acked FROM zbase_members ORDER BY pod")
                .fetch_all(&mut db)
                .await
                .unwrap();
        let names: Vec<&str> = members.iter().map(|(pod, _)| pod.as_str()).collect();
        if names == running && members.iter().all(|(_, acked)| *acked == generation) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "membership did not settle on {running:?}: {members:?} at generation {generation}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = db.close().await;
}

/// From the peers' view: two peers of each resource, one on each of two different pods,
/// exchange deltas both ways, so they are in one peer set.
async fn one_peer_set_each(
    writers: &[Arc<Writer>],
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    t: Transport,
) {
    for writer in writers {
        let mut first = join(a, t, &writer.id, &writer.identity).await;
        let mut second = join(b, t, &writer.id, &writer.identity).await;
        // Offers of the current snapshot come first; deltas after.
        let _ = first.expect_frame(Code::OfferSnapshot).await;
        let _ = second.expect_frame(Code::OfferSnapshot).await;
        sync_fresh(&mut second, &mut first).await;
        sync(&mut first, &mut second).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pod_loses_no_acknowledged_snapshot() {
    let t = Transport::Ws;
    let mut pods = Pods::start(3).await;
    let (writers, tasks, stop) = start_writers(&pods, t).await;
    progress(&writers, 5, &pods).await;

    pods.pod(0).kill().await;
    // Within the lease the others notice, rehome its resources, and every writer goes on.
    progress(&writers, 5, &pods).await;
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    let reconnected = writers
        .iter()
        .filter(|w| w.reconnects.load(Ordering::Relaxed) > 0)
        .count();
    assert!(
        reconnected > 0,
        "no writer was on the killed pod's resources"
    );
    one_settled_view(&pods, &["pod-1", "pod-2"]).await;
    nothing_acknowledged_was_lost(&writers, &pods, t).await;
    let (a, b) = (pods.pod(1).addr(), pods.pod(2).addr());
    one_peer_set_each(&writers, a, b, t).await;
    let longest = writers
        .iter()
        .map(|w| w.longest_gap_ms.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    eprintln!(
        "SIGKILL of one of 3 pods (lease {LEASE:?}): {reconnected}/{WRITERS} writers reconnected; longest time without a session {longest} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_acknowledged_snapshot() {
    let t = Transport::Grpc;
    let mut pods = Pods::start(3).await;
    let (writers, tasks, stop) = start_writers(&pods, t).await;
    progress(&writers, 3, &pods).await;
    for i in 0..pods.len() {
        let status = pods.pod(i).terminate().await;
        assert!(status.success(), "pod-{i} exited with {status} on SIGTERM");
        progress(&writers, 2, &pods).await;
        pods.pod(i).restart().await;
        pods.settle().await;
        progress(&writers, 2, &pods).await;
    }
    stop.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    one_settled_view(&pods, &["pod-0", "pod-1", "pod-2"]).await;
    nothing_acknowledged_was_lost(&writers, &pods, t).await;
    let mut gaps: Vec<u64> = writers
        .iter()
        .flat_map(|w| w.gaps_ms.lock().unwrap().clone())
        .collect();
    gaps.sort_unstable();
    assert!(
        !gaps.is_empty(),
        "no writer was disconnected by the restarts"
    );
    let p50 = gaps[gaps.len() / 2];
    let max = gaps[gaps.len() - 1];
    eprintln!(
        "rolling restart of 3 pods: {} disconnections of {WRITERS} writers; time without a session p50 {p50} ms, max {max} ms",
        gaps.len()
    );
    // Every pod is still serving metrics, with the whole membership.
    for i in 0..pods.len() {
        assert_eq!(
            metric(pods.pod(i).addr(), "zbase_cluster_members").await,
            Some(3.0)
        );
    }
}

/// The pod that holds `id`'s resource task: the one whose homed-resources gauge counts it
/// (call with no other resource active).
async fn home_of(pods: &mut Pods) -> usize {
    for i in 0..pods.len() {
        if metric(pods.pod(i).addr(), "zbase_cluster_homed_resources").await == Some(1.0) {
            return i;
        }
    }
    panic!("no pod holds the resource");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_sessions_relay_between_two_pods() {
    const RELAYED: usize = 300;
    let t = Transport::Ws;
    let builder = zbase_tests::station::Station::builder().connections_per_ip(4 * RELAYED);
    let mut pods = Pods::start_with(3, builder).await;
    let (id, me) = create_resource(pods.pod(0).addr(), t).await;
    // A first peer wakes the resource on its home; then a peer directly on the home.
    let probe = join(pods.pod(0).addr(), t, &id, &me).await;
    let home = home_of(&mut pods).await;
    let mut direct = join(pods.pod(home).addr(), t, &id, &me).await;
    drop(probe);
    let other = pods.pod((home + 1) % pods.len()).addr();
    // More sessions between one pair of pods than HTTP/2's usual stream limit (100 to 200).
    let mut relayed = Vec::with_capacity(RELAYED);
    for _ in 0..RELAYED {
        relayed.push(join(other, t, &id, &me).await);
    }
    // A delta is relayed after its sender's own join, so the direct peer receiving one from
    // each relayed peer shows all of them joined.
    let mut tokens = std::collections::HashSet::new();
    for peer in &mut relayed {
        let token = random_bytes(16);
        peer.send(Code::SubmitDelta, token.clone()).await.unwrap();
        tokens.insert(token);
    }
    while !tokens.is_empty() {
        let got = direct.expect_frame(Code::ForwardDelta).await;
        assert!(tokens.remove(&got[..]), "a delta nobody sent");
    }
    // Then one delta from the home side reaches every relayed peer (after the others' deltas).
    let token = random_bytes(16);
    direct.send(Code::SubmitDelta, token.clone()).await.unwrap();
    let mut missing = Vec::new();
    for (i, peer) in relayed.iter_mut().enumerate() {
        loop {
            match peer.recv_timeout(Duration::from_secs(10)).await {
                Some(Event::Frame(frame)) if frame.code() == Code::ForwardDelta => {
                    if frame.payload()[..] == token[..] {
                        break;
                    }
                }
                other => {
                    missing.push((i, format!("{other:?}")));
                    break;
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {RELAYED} relayed peers did not get the delta: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}
