//! The station on PostgreSQL through an outage: while the database is down the station stays
//! up, says it is not ready, and refuses what it cannot store with "try again later" (1013,
//! gRPC UNAVAILABLE); when the database is back it is ready again and keeps every snapshot it
//! had acknowledged, without a restart.

use std::time::Duration;

use sqlx::{Connection as _, PgConnection};
use tokio::time::Instant;
use zbase_proto::wire::{Code, ResourceId};
use zbase_tests::client::{
    CloseKind, Conn, Transport, create_resource, join, random_id, seed_snapshot,
};
use zbase_tests::postgres;
use zbase_tests::station::Station;

/// How long the station may take to notice the database left or came back.
const READINESS_DEADLINE: Duration = Duration::from_secs(30);

/// The text both transports carry with a 1013 / UNAVAILABLE for "try again later".
const TRY_AGAIN: &str = "try again later";

/// Polls `/readyz` until it answers `status`; returns the body.
async fn readyz_until(station: &Station, status: u16) -> String {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + READINESS_DEADLINE;
    loop {
        let response = http.get(station.http_url("/readyz")).send().await.unwrap();
        let got = response.status().as_u16();
        let body = response.text().await.unwrap();
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still answers {got} {body:?} after {READINESS_DEADLINE:?}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The snapshot of `id` as the database holds it, read past the station.
async fn stored_snapshot(url: &str, id: &ResourceId) -> Option<Vec<u8>> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let snapshot: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT snapshot FROM resources WHERE id = $1")
            .bind(id.as_str())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    snapshot
}

/// A connection the station ended with "try again later": 1013 on WebSocket, UNAVAILABLE
/// (which the client calls `GoingAway`, as for shutdown, hence the detail) on gRPC.
async fn expect_try_again(conn: &mut Conn) {
    let expected = match conn.transport() {
        Transport::Ws => CloseKind::Overloaded,
        Transport::Grpc => CloseKind::GoingAway,
    };
    let got = conn.expect_closed().await;
    assert_eq!(
        (got, conn.close_detail()),
        (expected, TRY_AGAIN),
        "{:?}: ended the wrong way",
        conn.transport()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_makes_the_station_unready_and_it_recovers_without_a_restart() {
    // A server of this test's own: the outage must not reach tests sharing the process's one.
    let server = postgres::dedicated().await;
    let url = server.create_database().await;
    // The server trusts every local connection, so this password is never checked; it is here
    // to show it never reaches a readiness answer or a log line.
    let with_password = url.replacen("postgres@", "postgres:hunter2@", 1);
    let mut station = Station::builder()
        .flag("store", &with_password)
        .start()
        .await;
    let pid = station.pid();
    assert_eq!(readyz_until(&station, 200).await, "ready\n");

    let (id, me) = create_resource(station.addr(), Transport::Ws).await;
    let before = b"written before the outage".to_vec();
    seed_snapshot(station.addr(), Transport::Ws, &id, &me, &before).await;
    // Joined while the database is up; their snapshots will arrive while it is down.
    let mut writers = Vec::new();
    for t in Transport::ALL {
        let mut writer = join(station.addr(), t, &id, &me).await;
        writer.expect_payload(Code::OfferSnapshot, &before).await;
        writers.push(writer);
    }

    server.stop().await;
    let body = readyz_until(&station, 503).await;
    assert!(body.starts_with("store unreachable: "), "{body:?}");
    assert!(!body.contains("hunter2"), "the password leaked: {body:?}");

    // Each refusal waits for the pool's acquire timeout, so all of them run at once.
    let writes = writers.into_iter().map(|mut writer| async move {
        let lost = format!("submitted during the outage over {:?}", writer.transport());
        writer.send(Code::SubmitSnapshot, lost).await.unwrap();
        expect_try_again(&mut writer).await;
    });
    // An identifier the station has not loaded: its handshake needs the store at once.
    let addr = station.addr();
    let unloaded = Transport::ALL.map(|t| (t, random_id()));
    let handshakes = unloaded.map(|(t, unknown)| async move {
        let mut conn = Conn::connect(t, addr, &unknown).await;
        expect_try_again(&mut conn).await;
    });
    futures::future::join(
        futures::future::join_all(writes),
        futures::future::join_all(handshakes),
    )
    .await;
    assert_eq!(
        station.exited(),
        None,
        "the station exited during the outage"
    );

    server.start().await;
    assert_eq!(readyz_until(&station, 200).await, "ready\n");
    assert_eq!(
        stored_snapshot(&url, &id).await.as_deref(),
        Some(&before[..]),
        "the database lost or replaced the snapshot acknowledged before the outage"
    );
    let mut peer = join(station.addr(), Transport::Grpc, &id, &me).await;
    peer.expect_payload(Code::OfferSnapshot, &before).await;
    // Identifiers whose load failed during the outage are loaded again by the next handshake
    // (they are unknown, so it is a configuration), without waiting for them to go idle.
    for (t, unknown) in unloaded {
        let mut conn = Conn::connect(t, station.addr(), &unknown).await;
        conn.expect_challenge(Code::RequireConfig).await;
    }
    let after = b"written after the outage".to_vec();
    seed_snapshot(station.addr(), Transport::Ws, &id, &me, &after).await;
    assert_eq!(stored_snapshot(&url, &id).await, Some(after));

    assert_eq!(station.exited(), None, "the station exited");
    assert_eq!(station.pid(), pid, "the station is not the process started");
    assert!(
        !station.stderr_log().contains("hunter2"),
        "the password reached the log"
    );
}
