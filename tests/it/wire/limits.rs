//! Sections 8 and 9: termination, isolation, shutdown, per-IP and per-resource limits, and
//! the HTTP endpoints on the public port.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::{join_peers, same};
use zbase_proto::wire::Code;
use zbase_tests::client::{
    CloseKind, Conn, Event, SILENCE, Transport, create_resource, join, random_bytes, random_id,
    seed_snapshot, sync, sync_fresh, verify,
};
use zbase_tests::station::Station;

both_transports!(
    s8_terminated_connection_affects_no_other,
    s8_sigterm_drains_with_going_away,
    s9_connections_per_ip_over_limit_are_refused,
    s9_verified_peers_per_resource_over_limit_are_refused,
    s9_failed_handshakes_throttle_only_that_address,
);

/// A second client address: all of 127.0.0.0/8 is loopback on Linux.
const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

async fn s8_terminated_connection_affects_no_other(t: Transport) {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let (other_id, other_key) = create_resource(addr, t).await;
    let snapshot = random_bytes(32);
    seed_snapshot(addr, t, &id, &me, &snapshot).await;
    let mut peers = join_peers(addr, &[t, t.other()], &id, &me).await;
    let mut others = join_peers(addr, &[t, t.other()], &other_id, &other_key).await;
    for peer in &mut peers {
        peer.expect_payload(Code::OfferSnapshot, &snapshot).await;
    }

    // A verified peer of the same resource breaks the protocol, another fails verification,
    // another times out nothing but leaves mid-handshake, another leaves abruptly.
    let mut violator = join(addr, t, &id, &me).await;
    violator
        .expect_payload(Code::OfferSnapshot, &snapshot)
        .await;
    violator.send_parts(9, 0x53, vec![1]).await.unwrap();
    violator.expect_close(CloseKind::Protocol).await;
    let mut impostor = Conn::connect(t, addr, &id).await;
    impostor.expect_challenge(Code::RequireVerification).await;
    impostor
        .send(Code::SubmitVerification, vec![0; 64])
        .await
        .unwrap();
    impostor.expect_close(CloseKind::Auth).await;
    let mut quitter = Conn::connect(t, addr, &id).await;
    quitter.expect_challenge(Code::RequireVerification).await;
    drop(quitter);
    let leaver = join(addr, t, &id, &me).await;
    drop(leaver);

    // Everyone else carries on, on both resources, and newcomers are served.
    let (a, b) = peers.split_at_mut(1);
    sync(&mut a[0], &mut b[0]).await;
    sync(&mut b[0], &mut a[0]).await;
    let (c, d) = others.split_at_mut(1);
    sync(&mut c[0], &mut d[0]).await;
    let mut newcomer = join(addr, t, &id, &me).await;
    newcomer
        .expect_payload(Code::OfferSnapshot, &snapshot)
        .await;
    sync(&mut newcomer, &mut a[0]).await;
}

async fn s8_sigterm_drains_with_going_away(t: Transport) {
    let mut station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let snapshot = random_bytes(77);
    seed_snapshot(addr, t, &id, &me, &snapshot).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    for peer in &mut peers {
        peer.expect_payload(Code::OfferSnapshot, &snapshot).await;
    }
    station.sigterm();
    for peer in &mut peers {
        peer.expect_close(CloseKind::GoingAway).await;
    }
    let status = station.wait_exit().await;
    assert!(
        status.success(),
        "zbase-station exited with {status} after SIGTERM"
    );
    // Drained, not lost.
    station.restart().await;
    let mut peer = join(station.addr(), t, &id, &me).await;
    peer.expect_payload(Code::OfferSnapshot, &snapshot).await;
}

/// Opens connections from `local` until one is admitted (its first frame is a challenge) or
/// `deadline` passes; a refusal must be `Overloaded`. Freed slots are released asynchronously,
/// so this polls.
async fn admitted_within(
    t: Transport,
    station: &Station,
    local: Option<IpAddr>,
    deadline: Duration,
) -> Conn {
    let start = Instant::now();
    loop {
        let mut conn = Conn::open_from(t, station.addr(), random_id().as_str(), local)
            .await
            .unwrap();
        match conn.recv().await {
            Event::Frame(frame) if frame.code() == Code::RequireConfig => {
                conn.unread(Event::Frame(frame));
                return conn;
            }
            Event::Closed(CloseKind::Overloaded) if start.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected admission within {deadline:?}, last got {other:?}"),
        }
    }
}

async fn s9_connections_per_ip_over_limit_are_refused(t: Transport) {
    let station = Station::builder().connections_per_ip(3).start().await;
    let addr = station.addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = Conn::connect(t, addr, &random_id()).await;
        conn.expect_challenge(Code::RequireConfig).await;
        held.push(conn);
    }
    for _ in 0..2 {
        let mut refused = Conn::open(t, addr, random_id().as_str()).await.unwrap();
        refused.expect_close(CloseKind::Overloaded).await;
    }
    // Another address has its own budget.
    let mut elsewhere = Conn::open_from(t, addr, random_id().as_str(), Some(OTHER_IP))
        .await
        .unwrap();
    elsewhere.expect_challenge(Code::RequireConfig).await;
    // Closing one frees one.
    let mut gone = held.pop().unwrap();
    gone.close().await;
    drop(gone);
    let _admitted = admitted_within(t, &station, None, Duration::from_secs(10)).await;
}

async fn s9_verified_peers_per_resource_over_limit_are_refused(t: Transport) {
    let station = Station::builder().peers_per_resource(2).start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    // The third is refused after, not before, its verification.
    for transport in Transport::ALL {
        let mut third = Conn::connect(transport, addr, &id).await;
        verify(&mut third, &id, &me).await;
        third.expect_close(CloseKind::Overloaded).await;
    }
    // The two are unaffected, and other resources have their own limit.
    let (a, b) = peers.split_at_mut(1);
    sync(&mut a[0], &mut b[0]).await;
    let (other_id, other_key) = create_resource(addr, t).await;
    let mut others = join_peers(addr, &same(t, 2), &other_id, &other_key).await;
    let (c, d) = others.split_at_mut(1);
    sync(&mut d[0], &mut c[0]).await;
    // When one leaves, a newcomer fits (polling: the departure has no event).
    let mut leaving = peers.remove(0);
    leaving.close().await;
    drop(leaving);
    let start = Instant::now();
    loop {
        let mut newcomer = join(addr, t, &id, &me).await;
        let token = random_bytes(16);
        let _ = newcomer.send(Code::SubmitDelta, token.clone()).await;
        match newcomer.recv_timeout(Duration::from_millis(500)).await {
            Some(Event::Closed(CloseKind::Overloaded))
                if start.elapsed() < Duration::from_secs(10) => {}
            None => {
                peers[0].expect_payload(Code::ForwardDelta, &token).await;
                break;
            }
            other => panic!("newcomer after a departure: {other:?}"),
        }
    }
}

async fn s9_failed_handshakes_throttle_only_that_address(t: Transport) {
    let station = Station::builder()
        .failed_handshakes_per_minute(3)
        .handshake_timeout(Duration::from_millis(500))
        .start()
        .await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    // Successful handshakes do not count.
    for _ in 0..4 {
        let mut peer = join(addr, t, &id, &me).await;
        let mut witness = join(addr, t, &id, &me).await;
        sync_fresh(&mut peer, &mut witness).await;
    }
    // Three failures of three kinds: bad signature, bad configuration, handshake timeout.
    let mut conn = Conn::connect(t, addr, &id).await;
    conn.expect_challenge(Code::RequireVerification).await;
    conn.send(Code::SubmitVerification, vec![1; 64])
        .await
        .unwrap();
    conn.expect_close(CloseKind::Auth).await;
    let proposed = random_id();
    let mut conn = Conn::connect(t, addr, &proposed).await;
    let challenge = conn.expect_challenge(Code::RequireConfig).await;
    let mut payload = me.config_payload(&challenge, &proposed);
    payload.push(b'}');
    conn.send(Code::SubmitConfig, payload).await.unwrap();
    conn.expect_close(CloseKind::Auth).await;
    let mut conn = Conn::connect(t, addr, &id).await;
    conn.expect_challenge(Code::RequireVerification).await;
    conn.expect_close(CloseKind::Auth).await;

    // This address is now refused at once, before any challenge, whatever it asks for.
    for target in [id, random_id()] {
        for transport in [t, t.other()] {
            let mut refused = Conn::open(transport, addr, target.as_str()).await.unwrap();
            refused.expect_close(CloseKind::Overloaded).await;
        }
    }
    // Another address is not: it verifies and relays as usual.
    let mut a = Conn::open_from(t, addr, id.as_str(), Some(OTHER_IP))
        .await
        .unwrap();
    verify(&mut a, &id, &me).await;
    let mut b = Conn::open_from(t.other(), addr, id.as_str(), Some(OTHER_IP))
        .await
        .unwrap();
    verify(&mut b, &id, &me).await;
    sync_fresh(&mut b, &mut a).await;
    a.expect_silence(SILENCE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_http_health_readiness_and_metrics_on_the_public_port() {
    let station = Station::start().await;
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let response = http.get(station.http_url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "GET {path}");
    }
    // Some traffic first, so counters have something to say.
    let (id, me) = create_resource(station.addr(), Transport::Ws).await;
    let _peer = join(station.addr(), Transport::Grpc, &id, &me).await;
    let response = http.get(station.http_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "GET /metrics");
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain"),
        "metrics content type {content_type:?}, expected text/plain"
    );
    let body = response.text().await.unwrap();
    assert!(
        body.lines()
            .any(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE ")),
        "metrics are not Prometheus text:\n{body}"
    );
    // Metrics never carry an identifier.
    assert!(
        !body.contains(id.as_str()),
        "metrics name a resource identifier"
    );
    // The families are all there.
    for family in [
        "zbase_connections",
        "zbase_verified_peers",
        "zbase_resources_active",
        "zbase_frames_in_total",
        "zbase_frames_out_total",
        "zbase_frame_bytes_in_total",
        "zbase_frame_bytes_out_total",
        "zbase_terminations_total",
        "zbase_store_write_seconds",
        "zbase_throttled_handshakes_total",
    ] {
        assert!(body.contains(family), "metrics lack {family}:\n{body}");
    }
    // A scraper that asks for OpenMetrics (Prometheus does) gets it by name.
    let response = http
        .get(station.http_url("/metrics"))
        .header(
            http::header::ACCEPT,
            "application/openmetrics-text; version=1.0.0",
        )
        .send()
        .await
        .unwrap();
    let content_type = response.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(response.text().await.unwrap().trim_end().ends_with("# EOF"));
}
