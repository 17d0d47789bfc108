//! A replica site following a primary site, both real `zbase-station` processes: reads served
//! from the replica's cache, writes committed on the primary before anyone is shown them,
//! the primary away (writes refused with 1013, reads and local relay go on), catch-up, and a
//! killed replica resuming from its cache.

use std::net::SocketAddr;
use std::time::Duration;

use zbase_proto::wire::{Challenge, Code, ResourceId};
use zbase_tests::client::{
    CloseKind, Conn, Event, Identity, SILENCE, Transport, create_resource, join, random_bytes,
    seed_snapshot, sync_fresh, verify_keeping_challenge,
};
use zbase_tests::pods::{Pods, metric};
use zbase_tests::sites::{
    Sites, SitesTls, admin, eventually, replication_addresses, status, wait_ready,
};
use zbase_tests::station::Station;

/// How long a change may take to reach the replica in these tests (it takes milliseconds).
const CONVERGE: Duration = Duration::from_secs(10);

/// The snapshot the station offers a newly verified peer of `id`, if any (`None` when the
/// verification itself fails, e.g. the replica does not know the resource yet).
async fn offered(
    station: &Station,
    transport: Transport,
    id: &ResourceId,
    identity: &Identity,
) -> Option<Vec<u8>> {
    offered_at(station.addr(), transport, id, identity).await
}

/// [`offered`] by the station at `addr`.
async fn offered_at(
    addr: SocketAddr,
    transport: Transport,
    id: &ResourceId,
    identity: &Identity,
) -> Option<Vec<u8>> {
    let mut conn = Conn::connect(transport, addr, id).await;
    let challenge = match conn.recv_timeout(Duration::from_secs(5)).await? {
        Event::Frame(frame) if frame.code() == Code::RequireVerification => frame,
        _ => return None,
    };
    let challenge: Challenge = challenge.payload()[..].try_into().ok()?;
    let signature = identity.verify_payload(&challenge, id);
    conn.send(Code::SubmitVerification, signature.to_vec())
        .await
        .ok()?;
    match conn.recv_timeout(SILENCE * 3).await? {
        Event::Frame(frame) if frame.code() == Code::OfferSnapshot => {
            Some(frame.payload().to_vec())
        }
        _ => None,
    }
}

/// Waits until `station` offers exactly `snapshot` for `id`.
async fn until_offered(station: &Station, id: &ResourceId, identity: &Identity, snapshot: &[u8]) {
    until_offered_at(station.addr(), id, identity, snapshot).await;
}

/// [`until_offered`] by the station at `addr`.
async fn until_offered_at(addr: SocketAddr, id: &ResourceId, identity: &Identity, snapshot: &[u8]) {
    eventually(
        CONVERGE,
        "the station offers the latest snapshot",
        || async {
            offered_at(addr, Transport::Ws, id, identity)
                .await
                .as_deref()
                == Some(snapshot)
        },
    )
    .await;
}

#[tokio::test]
async fn a_replica_offers_what_the_primary_holds_and_answers_its_requesters_with_new_writes() {
    let sites = Sites::start().await;
    let (id, identity) = create_resource(sites.primary.addr(), Transport::Grpc).await;
    seed_snapshot(
        sites.primary.addr(),
        Transport::Grpc,
        &id,
        &identity,
        b"first",
    )
    .await;
    until_offered(&sites.replica, &id, &identity, b"first").await;

    // A requester on the replica is pending; a write on the primary reaches it through the
    // feed as forward-response, as a write by a local peer would.
    for transport in [Transport::Ws, Transport::Grpc] {
        let mut requester = join(sites.replica.addr(), transport, &id, &identity).await;
        requester.expect_frame(Code::OfferSnapshot).await;
        requester
            .send(Code::SubmitRequest, random_bytes(8))
            .await
            .unwrap();
        requester.expect_frame(Code::OfferSnapshot).await;
        let next = format!("written on the primary for {transport:?}").into_bytes();
        let mut writer = join(sites.primary.addr(), Transport::Ws, &id, &identity).await;
        writer.expect_frame(Code::OfferSnapshot).await;
        writer
            .send(Code::SubmitSnapshot, next.clone())
            .await
            .unwrap();
        requester.expect_payload(Code::ForwardResponse, &next).await;
    }
}

#[tokio::test]
async fn a_configuration_and_a_snapshot_on_the_replica_are_committed_on_the_primary() {
    let sites = Sites::start().await;
    for transport in [Transport::Ws, Transport::Grpc] {
        // Configured on the replica: the primary holds the key, so a client verifies there.
        let (id, identity) = create_resource(sites.replica.addr(), transport).await;
        let mut on_primary = join(sites.primary.addr(), Transport::Grpc, &id, &identity).await;
        on_primary.expect_silence(SILENCE).await;

        // A requester on the replica waits; a peer on the replica writes; the requester is
        // answered only once the primary committed it, and the primary's peers see it too.
        let mut requester = join(sites.replica.addr(), transport, &id, &identity).await;
        requester
            .send(Code::SubmitRequest, random_bytes(8))
            .await
            .unwrap();
        let mut writer = join(sites.replica.addr(), transport, &id, &identity).await;
        writer
            .send(Code::SubmitSnapshot, b"from the replica".to_vec())
            .await
            .unwrap();
        requester
            .expect_keeping_offers(Code::ForwardResponse, b"from the replica")
            .await;
        until_offered(&sites.primary, &id, &identity, b"from the replica").await;
    }
    let accepted = metric(
        sites.replica.addr(),
        "zbase_replication_writes_total{result=\"committed\"}",
    )
    .await;
    assert_eq!(
        accepted,
        Some(4.0),
        "two configurations and two snapshots went to the primary"
    );
}

#[tokio::test]
async fn with_the_primary_away_a_replica_serves_and_relays_but_refuses_writes_with_1013() {
    let mut sites = Sites::start().await;
    let (id, identity) = create_resource(sites.primary.addr(), Transport::Ws).await;
    seed_snapshot(
        sites.primary.addr(),
        Transport::Ws,
        &id,
        &identity,
        b"before",
    )
    .await;
    until_offered(&sites.replica, &id, &identity, b"before").await;

    sites.primary.kill().await;
    let replica = sites.replica.addr();
    eventually(
        CONVERGE,
        "the replica notices the primary is gone",
        || async { metric(replica, "zbase_replication_connected").await == Some(0.0) },
    )
    .await;
    wait_ready(&sites.replica).await;

    // Reads: verification and the cached snapshot. Local relay: deltas between two peers.
    let mut a = join(replica, Transport::Ws, &id, &identity).await;
    a.expect_payload(Code::OfferSnapshot, b"before").await;
    let mut b = join(replica, Transport::Grpc, &id, &identity).await;
    b.expect_payload(Code::OfferSnapshot, b"before").await;
    a.send(Code::SubmitDelta, b"delta".to_vec()).await.unwrap();
    b.expect_payload(Code::ForwardDelta, b"delta").await;

    // Writes: refused with "try again later", on both transports, and nothing is offered.
    a.send(Code::SubmitSnapshot, b"lost?".to_vec())
        .await
        .unwrap();
    a.expect_close(CloseKind::Overloaded).await;
    b.send(Code::SubmitSnapshot, b"lost?".to_vec())
        .await
        .unwrap();
    assert_eq!(b.expect_closed().await, CloseKind::GoingAway);
    assert_eq!(b.close_detail(), "try again later");
    let proposed = zbase_tests::client::random_id();
    let mut configuring = Conn::connect(Transport::Ws, replica, &proposed).await;
    let challenge = configuring.expect_challenge(Code::RequireConfig).await;
    let config = Identity::ed25519().config_payload(&challenge, &proposed);
    configuring.send(Code::SubmitConfig, config).await.unwrap();
    configuring.expect_close(CloseKind::Overloaded).await;
    assert_eq!(
        offered(&sites.replica, Transport::Ws, &id, &identity)
            .await
            .as_deref(),
        Some(&b"before"[..])
    );

    // The primary returns: the replica reconnects by itself and writes go through again.
    sites.primary.restart().await;
    eventually(
        CONVERGE,
        "the replica follows the primary again",
        || async { metric(replica, "zbase_replication_connected").await == Some(1.0) },
    )
    .await;
    seed_snapshot(replica, Transport::Ws, &id, &identity, b"after").await;
    until_offered(&sites.primary, &id, &identity, b"after").await;
}

#[tokio::test]
async fn a_replica_killed_during_its_first_sync_resumes_from_its_cache() {
    let sites = Sites::start().await;
    let primary = sites.primary.addr();
    let mut resources = Vec::new();
    for n in 0..120u32 {
        let (id, identity) = create_resource(primary, Transport::Grpc).await;
        let snapshot = format!("resource {n} ").repeat(2000).into_bytes();
        seed_snapshot(primary, Transport::Grpc, &id, &identity, &snapshot).await;
        resources.push((id, identity, snapshot));
    }
    // A second replica on the same primary, killed a moment into its sync, then restarted.
    let mut replica = Station::builder()
        .flag("replica-of", format!("http://{}", sites.replication))
        .start_process()
        .await;
    tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 150)).await;
    replica.kill().await;
    replica.restart().await;
    wait_ready(&replica).await;
    for (id, identity, snapshot) in &resources {
        until_offered(&replica, id, identity, snapshot).await;
    }
}

#[tokio::test]
async fn sites_authenticate_each_other_with_mutual_tls() {
    let mut tls = SitesTls::new();
    let sites = Sites::start_with(Station::builder(), Station::builder(), Some(&mut tls)).await;
    let (id, identity) = create_resource(sites.replica.addr(), Transport::Ws).await;
    seed_snapshot(
        sites.replica.addr(),
        Transport::Ws,
        &id,
        &identity,
        b"over mTLS",
    )
    .await;
    until_offered(&sites.primary, &id, &identity, b"over mTLS").await;

    // A station whose certificate comes from another CA is refused by the primary's port:
    // it never syncs, so it never turns ready, and says why.
    let mut stranger_tls = SitesTls::new();
    let stranger = stranger_tls
        .site(Station::builder())
        .flag("replica-of", format!("https://{}", sites.replication))
        .start_process()
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let readyz = reqwest::get(stranger.http_url("/readyz")).await.unwrap();
    assert_eq!(readyz.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let why = readyz.text().await.unwrap();
    assert!(why.contains("first sync"), "{why}");
    assert_eq!(
        metric(stranger.addr(), "zbase_replication_connected").await,
        Some(0.0)
    );
}

/// Sends numbered deltas from `from` until `to` receives one (a bridge opens a moment after
/// the first peer joins), then drains what else arrived at both.
async fn until_bridged(from: &mut Conn, to: &mut Conn) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    for n in 0u32.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delta crossed the sites within {CONVERGE:?}"
        );
        from.send(Code::SubmitDelta, format!("sync {n}").into_bytes())
            .await
            .unwrap();
        if let Some(Event::Frame(frame)) = to.recv_timeout(Duration::from_millis(200)).await
            && frame.code() == Code::ForwardDelta
        {
            break;
        }
    }
    while to.recv_timeout(SILENCE).await.is_some() {}
}

#[tokio::test]
async fn peers_of_one_resource_on_different_sites_see_each_others_deltas_and_requests() {
    let sites = Sites::start().await;
    let second = Station::builder()
        .flag("replica-of", format!("http://{}", sites.replication))
        .start_process()
        .await;
    wait_ready(&second).await;
    let (id, identity) = create_resource(sites.primary.addr(), Transport::Ws).await;
    seed_snapshot(sites.primary.addr(), Transport::Ws, &id, &identity, b"base").await;
    until_offered(&sites.replica, &id, &identity, b"base").await;
    until_offered(&second, &id, &identity, b"base").await;

    let mut on_primary = join(sites.primary.addr(), Transport::Grpc, &id, &identity).await;
    on_primary.expect_frame(Code::OfferSnapshot).await;
    let mut on_replica = join(sites.replica.addr(), Transport::Ws, &id, &identity).await;
    on_replica.expect_frame(Code::OfferSnapshot).await;
    let mut on_second = join(second.addr(), Transport::Grpc, &id, &identity).await;
    on_second.expect_frame(Code::OfferSnapshot).await;
    until_bridged(&mut on_replica, &mut on_primary).await;
    until_bridged(&mut on_second, &mut on_primary).await;
    while on_replica.recv_timeout(SILENCE).await.is_some() {}
    while on_second.recv_timeout(SILENCE).await.is_some() {}

    // A replica's delta reaches the primary's peers and the other replica's, not its sender.
    on_replica
        .send(Code::SubmitDelta, b"from replica".to_vec())
        .await
        .unwrap();
    on_primary
        .expect_payload(Code::ForwardDelta, b"from replica")
        .await;
    on_second
        .expect_payload(Code::ForwardDelta, b"from replica")
        .await;
    on_replica.expect_silence(SILENCE).await;

    // The primary's delta reaches both replicas' peers.
    on_primary
        .send(Code::SubmitDelta, b"from primary".to_vec())
        .await
        .unwrap();
    on_replica
        .expect_payload(Code::ForwardDelta, b"from primary")
        .await;
    on_second
        .expect_payload(Code::ForwardDelta, b"from primary")
        .await;
    on_primary.expect_silence(SILENCE).await;

    // A request: answered on its own site from the cache, relayed to every other peer.
    on_second
        .send(Code::SubmitRequest, b"who has it?".to_vec())
        .await
        .unwrap();
    on_second.expect_payload(Code::OfferSnapshot, b"base").await;
    on_primary
        .expect_payload(Code::ForwardRequest, b"who has it?")
        .await;
    on_replica
        .expect_payload(Code::ForwardRequest, b"who has it?")
        .await;
    on_second.expect_silence(SILENCE).await;

    // A peer on the primary answers with a snapshot: the requester on the other site gets it.
    on_primary
        .send(Code::SubmitSnapshot, b"answer".to_vec())
        .await
        .unwrap();
    on_second
        .expect_payload(Code::ForwardResponse, b"answer")
        .await;
    assert_eq!(
        metric(sites.primary.addr(), "zbase_replication_followers").await,
        Some(2.0)
    );
}

/// A station with a replication port at `listen`, following `replica_of` if given, knowing
/// `sites`.
async fn site_at(
    listen: SocketAddr,
    replica_of: Option<SocketAddr>,
    sites: &[SocketAddr],
) -> Station {
    let mut builder = Station::builder().flag("replication-listen", listen);
    if let Some(primary) = replica_of {
        builder = builder.flag("replica-of", format!("http://{primary}"));
    }
    if !sites.is_empty() {
        let list: Vec<String> = sites.iter().map(|site| format!("http://{site}")).collect();
        builder = builder.flag("sites", list.join(","));
    }
    let station = builder.start_process().await;
    wait_ready(&station).await;
    station
}

/// Writes `snapshot` as `id`'s on `station` and waits until the station shows it to a
/// requester (so it was acknowledged).
async fn write(station: &Station, id: &ResourceId, identity: &Identity, snapshot: &[u8]) {
    seed_snapshot(station.addr(), Transport::Ws, id, identity, snapshot).await;
}

/// Tries to write on `station`; returns how the station closed the writer (if it did).
async fn refused_write(station: &Station, id: &ResourceId, identity: &Identity) -> CloseKind {
    let mut conn = join(station.addr(), Transport::Ws, id, identity).await;
    conn.expect_frame(Code::OfferSnapshot).await;
    conn.send(Code::SubmitSnapshot, b"must not be taken".to_vec())
        .await
        .unwrap();
    conn.expect_closed().await
}

#[tokio::test]
async fn a_planned_switchover_loses_nothing_and_the_old_primary_takes_no_more_writes() {
    let [a_port, b_port, c_port]: [SocketAddr; 3] = replication_addresses(3).try_into().unwrap();
    let a = site_at(a_port, None, &[b_port, c_port]).await;
    let b = site_at(b_port, Some(a_port), &[c_port]).await;
    let c = site_at(c_port, Some(a_port), &[b_port]).await;
    let mut written = Vec::new();
    for n in 0..20u32 {
        let at = if n % 2 == 0 { &a } else { &b };
        let (id, identity) = create_resource(at.addr(), Transport::Grpc).await;
        let snapshot = format!("before the switchover {n}").into_bytes();
        write(at, &id, &identity, &snapshot).await;
        written.push((id, identity, snapshot));
    }

    // A client of the other replica, connected across the switchover: its bridge moves to
    // the new primary along with the feed.
    let (id0, identity0, _) = &written[0];
    let mut on_c = join(c.addr(), Transport::Ws, id0, identity0).await;
    on_c.expect_frame(Code::OfferSnapshot).await;

    let replica = status(b_port).await;
    assert_eq!(replica["role"], "replica");
    assert_eq!(replica["following"], format!("http://{a_port}"));
    assert!(replica["lagChanges"].is_u64(), "{replica}");
    assert!(replica["lagSeconds"].is_number(), "{replica}");

    let (ok, token, err) = admin("demote", a_port, &[]).await;
    assert!(ok, "demote failed: {err}");
    let token = token.trim().to_owned();
    assert!(token.starts_with("1:"), "the token names epoch 1: {token}");
    let (ok, again, err) = admin("demote", a_port, &[]).await;
    assert!(ok, "a repeated demotion answers again: {err}");
    assert_eq!(again.trim(), token, "with the same token");
    let (id, identity, _) = &written[0];
    assert_eq!(refused_write(&a, id, identity).await, CloseKind::Overloaded);
    assert_eq!(status(a_port).await["role"], "fenced");

    let (ok, out, err) = admin("promote", b_port, &["--token", &token, "--json"]).await;
    assert!(ok, "promote failed: {err}");
    let promoted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(promoted["epoch"], 2);
    assert_eq!(promoted["failover"], false);
    assert_eq!(status(b_port).await["role"], "primary");

    // Nothing was lost: every snapshot written before is on the new primary, which takes
    // writes of its own; the other replica follows it by itself.
    for (id, identity, snapshot) in &written {
        until_offered(&b, id, identity, snapshot).await;
    }
    write(&b, id, identity, b"after the switchover").await;
    until_offered(&c, id, identity, b"after the switchover").await;
    let (id2, identity2) = create_resource(c.addr(), Transport::Ws).await;
    write(&c, &id2, &identity2, b"through the replica").await;
    until_offered(&b, &id2, &identity2, b"through the replica").await;
    assert_eq!(status(c_port).await["epoch"], 2);
    let mut on_b = join(b.addr(), Transport::Grpc, id0, identity0).await;
    on_b.expect_frame(Code::OfferSnapshot).await;
    until_bridged(&mut on_c, &mut on_b).await;

    // Promoting again is refused with a reason.
    let (ok, _, err) = admin("promote", b_port, &[]).await;
    assert!(!ok);
    assert!(err.contains("already the primary"), "{err}");
}

#[tokio::test]
async fn after_a_failover_the_old_primary_is_fenced_and_the_other_replica_follows_the_new_one() {
    let [a_port, b_port, c_port]: [SocketAddr; 3] = replication_addresses(3).try_into().unwrap();
    let mut a = site_at(a_port, None, &[b_port, c_port]).await;
    let b = site_at(b_port, Some(a_port), &[c_port]).await;
    let c = site_at(c_port, Some(a_port), &[b_port]).await;
    let (id, identity) = create_resource(a.addr(), Transport::Grpc).await;
    write(&a, &id, &identity, b"on the old primary").await;
    until_offered(&b, &id, &identity, b"on the old primary").await;
    until_offered(&c, &id, &identity, b"on the old primary").await;

    // The primary's site is lost; the replica is promoted without a token.
    a.kill().await;
    let (ok, out, err) = admin("promote", b_port, &["--json"]).await;
    assert!(ok, "promote failed: {err}");
    let promoted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(promoted["failover"], true);
    write(&b, &id, &identity, b"on the new primary").await;
    until_offered(&c, &id, &identity, b"on the new primary").await;

    // The old primary comes back: it learns of the later epoch and takes no write.
    a.restart().await;
    wait_ready(&a).await;
    assert_eq!(status(a_port).await["role"], "fenced");
    assert_eq!(
        refused_write(&a, &id, &identity).await,
        CloseKind::Overloaded
    );
    // Fenced by a later epoch, it hands out no token: its history is no prefix to promote.
    let (ok, _, err) = admin("demote", a_port, &[]).await;
    assert!(!ok && err.contains("later epoch"), "{err}");
    assert_eq!(
        offered(&a, Transport::Ws, &id, &identity).await.as_deref(),
        Some(&b"on the old primary"[..]),
        "a fenced site still serves what it has"
    );
    until_offered(&b, &id, &identity, b"on the new primary").await;
}

#[tokio::test]
async fn a_replica_that_missed_the_last_writes_catches_up_from_the_demoted_primary_to_promote() {
    let [a_port, b_port]: [SocketAddr; 2] = replication_addresses(2).try_into().unwrap();
    let a = site_at(a_port, None, &[b_port]).await;
    let mut b = site_at(b_port, Some(a_port), &[]).await;
    let (id, identity) = create_resource(a.addr(), Transport::Ws).await;
    write(&a, &id, &identity, b"seen by both").await;
    until_offered(&b, &id, &identity, b"seen by both").await;

    // The replica is away for the last writes and the handover: when it is back, no site is
    // primary, and the demoted one is the only place that has them.
    b.kill().await;
    write(&a, &id, &identity, b"the last write").await;
    let (ok, token, err) = admin("demote", a_port, &[]).await;
    assert!(ok, "demote failed: {err}");
    b.restart().await;
    wait_ready(&b).await;

    let (ok, out, err) = admin("promote", b_port, &["--token", token.trim(), "--json"]).await;
    assert!(ok, "promote with the token failed: {err}");
    let promoted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(promoted["failover"], false);
    until_offered(&b, &id, &identity, b"the last write").await;
    write(&b, &id, &identity, b"on the new primary").await;
}

#[tokio::test]
async fn a_former_primary_rejoining_as_a_replica_keeps_its_diverged_writes_across_restarts() {
    let [a_port, b_port]: [SocketAddr; 2] = replication_addresses(2).try_into().unwrap();
    let mut a = site_at(a_port, None, &[b_port]).await;
    let mut b = site_at(b_port, Some(a_port), &[]).await;
    let (id, identity) = create_resource(a.addr(), Transport::Ws).await;
    write(&a, &id, &identity, b"seen by both").await;
    until_offered(&b, &id, &identity, b"seen by both").await;

    // A write only the primary has, then the primary is lost and the replica promoted.
    b.kill().await;
    write(&a, &id, &identity, b"only on the old primary").await;
    a.kill().await;
    b.restart().await;
    wait_ready(&b).await;
    let (ok, _, err) = admin("promote", b_port, &[]).await;
    assert!(ok, "failover failed: {err}");
    write(&b, &id, &identity, b"on the new primary").await;

    // The old primary comes back as it was (it fences itself), then twice as a replica of the
    // new one: its history diverged, so it is kept every time, never wiped.
    a.restart().await;
    wait_ready(&a).await;
    assert_eq!(status(a_port).await["role"], "fenced");
    a.kill().await;
    for start in 0..2 {
        let mut rejoined = Station::builder()
            .data_dir(a.data_dir())
            .flag("replication-listen", a_port)
            .flag("replica-of", format!("http://{b_port}"))
            .start_process()
            .await;
        wait_ready(&rejoined).await;
        eventually(CONVERGE, "the diverged history is reported", || async {
            rejoined.stderr_log().contains("it is not wiped")
        })
        .await;
        assert_eq!(
            offered(&rejoined, Transport::Ws, &id, &identity)
                .await
                .as_deref(),
            Some(&b"only on the old primary"[..]),
            "start {start}: the write nobody else has is still there"
        );
        let (ok, _, err) = admin("promote", a_port, &[]).await;
        assert!(
            !ok && err.contains("former primary"),
            "start {start}: {err}"
        );
        rejoined.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_of_several_pods_takes_a_replicas_writes_for_every_home_and_hands_over_as_one() {
    let ports = replication_addresses(4);
    let (pod_ports, replica_port) = (ports[..3].to_vec(), ports[3]);
    let pods = Pods::start_each(3, |i, _| {
        Station::builder().flag("replication-listen", pod_ports[i])
    })
    .await;
    let replica = site_at(replica_port, Some(pod_ports[0]), &[]).await;

    // Resources created and written through the replica: their homes are spread over the
    // three pods, and the pod the replica follows passes each call on to the home.
    let mut written = Vec::new();
    for n in 0..12u32 {
        let (id, identity) = create_resource(replica.addr(), Transport::Ws).await;
        let snapshot = format!("through the replica {n}").into_bytes();
        write(&replica, &id, &identity, &snapshot).await;
        until_offered_at(pods.vip(), &id, &identity, &snapshot).await;
        written.push((id, identity, snapshot));
    }
    // Deltas cross between the replica's clients and the primary's, whichever pod is home.
    for (id, identity, _) in &written[..3] {
        let mut on_replica = join(replica.addr(), Transport::Ws, id, identity).await;
        on_replica.expect_frame(Code::OfferSnapshot).await;
        let mut on_primary = join(pods.vip(), Transport::Grpc, id, identity).await;
        on_primary.expect_frame(Code::OfferSnapshot).await;
        until_bridged(&mut on_replica, &mut on_primary).await;
    }

    // Demoting through one pod fences them all: none takes a write after the token.
    let (ok, token, err) = admin("demote", pod_ports[1], &[]).await;
    assert!(ok, "demote failed: {err}");
    let token = token.trim().to_owned();
    for (id, identity, _) in &written[..4] {
        let mut conn = join(pods.vip(), Transport::Ws, id, identity).await;
        conn.expect_frame(Code::OfferSnapshot).await;
        conn.send(Code::SubmitSnapshot, b"after the demotion".to_vec())
            .await
            .unwrap();
        assert_eq!(conn.expect_closed().await, CloseKind::Overloaded);
    }
    for port in &pod_ports {
        eventually(CONVERGE, "every pod reports the demotion", || async {
            status(*port).await["role"] == "fenced"
        })
        .await;
    }

    let (ok, out, err) = admin("promote", replica_port, &["--token", &token, "--json"]).await;
    assert!(ok, "promote with the token failed: {err}");
    let promoted: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token_seq: u64 = token.split_once(':').unwrap().1.parse().unwrap();
    assert_eq!(
        promoted["firstSequence"],
        token_seq + 1,
        "the new epoch starts right after the token: nothing was written after it"
    );
    for (id, identity, snapshot) in &written {
        until_offered(&replica, id, identity, snapshot).await;
    }
}

/// Extension R1 on a replica: the rotation is committed on the primary, which closes its own
/// sessions of the old key; the replica closes its own and keeps the rotating one.
#[tokio::test]
async fn a_key_rotation_on_the_replica_is_carried_out_by_the_primary_and_closes_old_key_sessions_on_both_sites()
 {
    let sites = Sites::start().await;
    for transport in [Transport::Ws, Transport::Grpc] {
        let (id, old) = create_resource(sites.primary.addr(), transport).await;
        seed_snapshot(sites.primary.addr(), transport, &id, &old, b"kept").await;
        until_offered(&sites.replica, &id, &old, b"kept").await;
        let new = Identity::ed25519();

        let mut rotator = Conn::connect(transport, sites.replica.addr(), &id).await;
        let challenge = verify_keeping_challenge(&mut rotator, &id, &old).await;
        rotator.expect_payload(Code::OfferSnapshot, b"kept").await;
        let mut on_replica = join(sites.replica.addr(), transport, &id, &old).await;
        on_replica
            .expect_payload(Code::OfferSnapshot, b"kept")
            .await;
        sync_fresh(&mut on_replica, &mut rotator).await;
        let mut on_primary = join(sites.primary.addr(), transport, &id, &old).await;
        on_primary
            .expect_payload(Code::OfferSnapshot, b"kept")
            .await;

        rotator
            .send(Code::RotateKey, old.rotate_payload(&new, &challenge, &id))
            .await
            .unwrap();
        rotator.expect_frame(Code::KeyRotated).await;
        on_replica.expect_close(CloseKind::Auth).await;
        on_primary.expect_close(CloseKind::Auth).await;
        for site in [&sites.primary, &sites.replica] {
            assert_eq!(offered(site, transport, &id, &old).await, None);
            assert_eq!(
                offered(site, transport, &id, &new).await.as_deref(),
                Some(&b"kept"[..])
            );
        }
        // The rotating session writes on under the new key, through the primary.
        rotator
            .send(Code::SubmitSnapshot, b"after".to_vec())
            .await
            .unwrap();
        until_offered(&sites.primary, &id, &new, b"after").await;
    }
}

/// Extension R1 from the primary: the change reaches the replica through the feed, which
/// closes the replica's sessions of the old key.
#[tokio::test]
async fn a_key_rotation_on_the_primary_closes_the_replicas_old_key_sessions() {
    let sites = Sites::start().await;
    let transport = Transport::Grpc;
    let (id, old) = create_resource(sites.primary.addr(), transport).await;
    seed_snapshot(sites.primary.addr(), transport, &id, &old, b"kept").await;
    until_offered(&sites.replica, &id, &old, b"kept").await;
    let new = Identity::p256();
    let mut on_replica = join(sites.replica.addr(), Transport::Ws, &id, &old).await;
    on_replica
        .expect_payload(Code::OfferSnapshot, b"kept")
        .await;
    let mut rotator = Conn::connect(transport, sites.primary.addr(), &id).await;
    let challenge = verify_keeping_challenge(&mut rotator, &id, &old).await;
    rotator.expect_payload(Code::OfferSnapshot, b"kept").await;
    rotator
        .send(Code::RotateKey, old.rotate_payload(&new, &challenge, &id))
        .await
        .unwrap();
    rotator.expect_frame(Code::KeyRotated).await;
    on_replica.expect_close(CloseKind::Auth).await;
    until_offered(&sites.replica, &id, &new, b"kept").await;
    assert_eq!(offered(&sites.replica, transport, &id, &old).await, None);
}
