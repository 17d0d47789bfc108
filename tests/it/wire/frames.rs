//! Sections 1, 2 and 7 (and the frame size of section 9): what is an identifier, what is a
//! frame, and how anything else is refused.

use super::{join_peers, same};
use zbase_proto::wire::{Code, ResourceId, encode_b64url};
use zbase_tests::client::{
    CloseKind, Conn, ConnectError, Transport, create_resource, join, random_bytes, random_id, sync,
};
use zbase_tests::station::Station;

both_transports!(
    s1_identifiers_keys_and_payloads_are_never_logged,
    s1_invalid_identifier_is_refused_before_any_frame,
    s1_every_canonical_identifier_is_accepted,
    s2_wrong_version_terminates,
    s2_short_frame_terminates,
    s2_unassigned_code_terminates,
    s2_station_code_from_client_terminates,
    s9_frame_over_configured_limit_terminates,
    s9_default_frame_limit_is_8_mib,
);

async fn s1_identifiers_keys_and_payloads_are_never_logged(t: Transport) {
    // Debug level, so whatever the station logs per connection and per frame is in play.
    let mut station = Station::builder().env("ZBASE_LOG", "debug").start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let marker = format!("payload-marker-{}", encode_b64url(&random_bytes(12)));
    let mut peers = join_peers(addr, &[t, t.other()], &id, &me).await;
    let (a, b) = peers.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    for code in [Code::SubmitDelta, Code::SubmitRequest, Code::SubmitSnapshot] {
        a.send(code, marker.clone().into_bytes()).await.unwrap();
    }
    b.expect_payload(Code::ForwardDelta, marker.as_bytes())
        .await;
    b.expect_payload(Code::ForwardRequest, marker.as_bytes())
        .await;
    // Failures are logged too: a bad signature, a bad configuration, a violation.
    let mut bad = Conn::connect(t, addr, &id).await;
    bad.expect_challenge(Code::RequireVerification).await;
    bad.send(Code::SubmitVerification, vec![0; 64])
        .await
        .unwrap();
    bad.expect_close(CloseKind::Auth).await;
    let proposed = random_id();
    let mut bad = Conn::connect(t, addr, &proposed).await;
    bad.expect_challenge(Code::RequireConfig).await;
    bad.send(Code::SubmitConfig, marker.clone().into_bytes())
        .await
        .unwrap();
    bad.expect_close(CloseKind::Auth).await;
    b.send_parts(1, 0x03, marker.clone().into_bytes())
        .await
        .unwrap();
    b.expect_close(CloseKind::Protocol).await;
    let status = station.terminate().await;
    assert!(status.success());
    let log = station.stderr_log();
    assert!(
        log.lines().count() > 1,
        "the station logged nothing at debug level"
    );
    for (what, secret) in [
        ("the resource identifier", id.as_str()),
        ("the proposed identifier", proposed.as_str()),
        ("the verification key", me.jwk_x().as_str()),
        ("a payload", marker.as_str()),
    ] {
        assert!(!log.contains(secret), "the station's log contains {what}");
    }
}

/// Strings that are not identifiers (section 1), each for its own reason.
fn invalid_identifiers() -> Vec<String> {
    let a42 = "A".repeat(42);
    vec![
        a42.clone(),                       // 42 characters
        "A".repeat(44),                    // 44 characters
        format!("{a42}B"),                 // decodes, but not canonical (stray low bits)
        format!("{a42}_"),                 // not canonical either
        format!("{}=", "A".repeat(42)),    // padding character
        format!("{}.A", "A".repeat(41)),   // outside the alphabet
        format!("{}~A", "A".repeat(41)),   // outside the alphabet
        format!("{}AAA=", "A".repeat(40)), // padded 44
    ]
}

async fn assert_refused_before_any_frame(t: Transport, station: &Station, id: &str) {
    match t {
        Transport::Ws => match Conn::ws(station.addr(), id).await {
            Err(ConnectError::Http(400)) => {}
            Err(other) => panic!("ws path id {id:?}: expected HTTP 400, got {other}"),
            Ok(mut conn) => panic!(
                "ws path id {id:?} was upgraded (expected HTTP 400); first event: {:?}",
                conn.recv().await
            ),
        },
        Transport::Grpc => {
            let mut conn = Conn::grpc(station.addr(), id).await.unwrap();
            conn.expect_close(CloseKind::Protocol).await;
        }
    }
}

async fn s1_invalid_identifier_is_refused_before_any_frame(t: Transport) {
    let station = Station::start().await;
    for id in invalid_identifiers() {
        assert_refused_before_any_frame(t, &station, &id).await;
    }
    if t == Transport::Grpc {
        // No metadata at all, and an empty value.
        let mut conn = Conn::grpc_from(station.addr(), None, None).await.unwrap();
        conn.expect_close(CloseKind::Protocol).await;
        let mut conn = Conn::grpc(station.addr(), "").await.unwrap();
        conn.expect_close(CloseKind::Protocol).await;
    }
    // The refusals hurt nothing: a valid identifier is still served.
    let mut conn = Conn::connect(t, station.addr(), &random_id()).await;
    conn.expect_challenge(Code::RequireConfig).await;
}

async fn s1_every_canonical_identifier_is_accepted(t: Transport) {
    let station = Station::start().await;
    for last in "AEIMQUYcgkosw048".chars() {
        let text = format!("{}{last}", "_-".repeat(21));
        let id = ResourceId::parse(&text).expect("a canonical identifier");
        let mut conn = Conn::connect(t, station.addr(), &id).await;
        conn.expect_challenge(Code::RequireConfig).await;
        conn.close().await;
    }
}

/// Sends `(version, code, payload)` as one frame during the handshake (after
/// `require-verification`) and in a verified session, and expects each connection to end with
/// `kind`, while another verified peer of the resource is unaffected.
async fn assert_terminates(
    t: Transport,
    station: &Station,
    cases: &[(u32, u32, Vec<u8>)],
    kind: CloseKind,
) {
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut witnesses = join_peers(addr, &same(t, 2), &id, &me).await;
    for (version, code, payload) in cases {
        let what = format!(
            "version {version:#x}, code {code:#x}, {} payload bytes",
            payload.len()
        );
        // During the handshake, as the answer to require-verification.
        let mut conn = Conn::connect(t, addr, &id).await;
        conn.expect_challenge(Code::RequireVerification).await;
        let _ = conn.send_parts(*version, *code, payload.clone()).await;
        let got = conn.expect_closed().await;
        assert_eq!(got, kind, "handshake answer of {what}");
        // In a verified session.
        let mut conn = join(addr, t, &id, &me).await;
        let _ = conn.send_parts(*version, *code, payload.clone()).await;
        let got = conn.expect_closed().await;
        assert_eq!(got, kind, "verified session frame of {what}");
    }
    let (a, b) = witnesses.split_at_mut(1);
    sync(&mut a[0], &mut b[0]).await;
    sync(&mut b[0], &mut a[0]).await;
}

async fn s2_wrong_version_terminates(t: Transport) {
    let station = Station::start().await;
    let mut cases = vec![
        (0, 0x53, vec![1]),
        (2, 0x53, vec![1]),
        (0x7f, 0x50, vec![1; 64]),
        (0xff, 0x53, vec![1]),
    ];
    if t == Transport::Grpc {
        // A uint32 version must not be truncated to a byte.
        cases.push((0x101, 0x53, vec![1]));
    }
    assert_terminates(t, &station, &cases, CloseKind::Protocol).await;
}

async fn s2_short_frame_terminates(t: Transport) {
    let station = Station::start().await;
    // Two bytes on WebSocket; an empty payload on gRPC.
    let cases = [(1, 0x53, vec![]), (1, 0x50, vec![]), (1, 0x54, vec![])];
    assert_terminates(t, &station, &cases, CloseKind::Protocol).await;
    if t == Transport::Ws {
        let (id, me) = create_resource(station.addr(), t).await;
        for bytes in [vec![], vec![1u8], vec![1, 0x53]] {
            let mut conn = join(station.addr(), t, &id, &me).await;
            let _ = conn.send_ws_bytes(bytes.clone()).await;
            assert_eq!(
                conn.expect_closed().await,
                CloseKind::Protocol,
                "{} byte message",
                bytes.len()
            );
        }
    }
}

async fn s2_unassigned_code_terminates(t: Transport) {
    let station = Station::start().await;
    let mut cases: Vec<(u32, u32, Vec<u8>)> = [0x03, 0x09, 0x4f, 0x56, 0x57, 0x80, 0xff]
        .into_iter()
        .map(|code| (1, code, vec![1]))
        .collect();
    if t == Transport::Grpc {
        // 0x153 and 0x150 must not wrap to submit-delta or submit-verification.
        cases.push((1, 0x153, vec![1]));
        cases.push((1, 0x150, vec![1; 64]));
    }
    assert_terminates(t, &station, &cases, CloseKind::Protocol).await;
}

async fn s2_station_code_from_client_terminates(t: Transport) {
    let station = Station::start().await;
    let cases: Vec<(u32, u32, Vec<u8>)> = [0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07, 0x08]
        .into_iter()
        .map(|code| (1, code, vec![7; 32]))
        .collect();
    assert_terminates(t, &station, &cases, CloseKind::Protocol).await;
}

/// A frame of exactly `limit` bytes is relayed; one byte more ends the connection with
/// `TooLarge`, during the handshake and in a verified session.
async fn assert_frame_limit(t: Transport, station: &Station, limit: usize) {
    let addr = station.addr();
    let (id, me) = create_resource(addr, t).await;
    let mut peers = join_peers(addr, &same(t, 2), &id, &me).await;
    let (a, b) = peers.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    let at_limit = random_bytes(limit - 2);
    a.send(Code::SubmitDelta, at_limit.clone()).await.unwrap();
    b.expect_payload(Code::ForwardDelta, &at_limit).await;

    let over = random_bytes(limit - 1);
    let _ = a.send(Code::SubmitDelta, over.clone()).await;
    assert_eq!(
        a.expect_closed().await,
        CloseKind::TooLarge,
        "delta over the limit"
    );
    // Oversize snapshot too; and nothing of either reached the other peer.
    let mut c = join(addr, t, &id, &me).await;
    let _ = c.send(Code::SubmitSnapshot, over.clone()).await;
    assert_eq!(
        c.expect_closed().await,
        CloseKind::TooLarge,
        "snapshot over the limit"
    );
    // During the handshake.
    let mut d = Conn::connect(t, addr, &id).await;
    d.expect_challenge(Code::RequireVerification).await;
    let _ = d.send(Code::SubmitVerification, over).await;
    assert_eq!(
        d.expect_closed().await,
        CloseKind::TooLarge,
        "handshake frame over the limit"
    );

    let mut e = join(addr, t, &id, &me).await;
    sync(&mut e, b).await;
    e.expect_silence(zbase_tests::client::SILENCE).await;
}

async fn s9_frame_over_configured_limit_terminates(t: Transport) {
    // The station's floor is 8194 bytes (an 8 KiB configuration payload must fit).
    let station = Station::builder().frame_max_bytes(16384).start().await;
    assert_frame_limit(t, &station, 16384).await;
}

async fn s9_default_frame_limit_is_8_mib(t: Transport) {
    let station = Station::start().await;
    assert_frame_limit(t, &station, 8 * 1024 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_ws_text_message_terminates() {
    let station = Station::start().await;
    let addr = station.addr();
    let (id, me) = create_resource(addr, Transport::Ws).await;
    // During the handshake.
    let mut conn = Conn::connect(Transport::Ws, addr, &id).await;
    conn.expect_challenge(Code::RequireVerification).await;
    let _ = conn.send_ws_text("hello").await;
    conn.expect_close(CloseKind::Protocol).await;
    // For an unknown resource.
    let mut conn = Conn::connect(Transport::Ws, addr, &random_id()).await;
    conn.expect_challenge(Code::RequireConfig).await;
    let _ = conn.send_ws_text(r#"{"jwk":{},"proof":""}"#).await;
    conn.expect_close(CloseKind::Protocol).await;
    // In a verified session, even when the text spells a valid frame.
    let mut conn = join(addr, Transport::Ws, &id, &me).await;
    let _ = conn.send_ws_text("\u{1}Sx").await;
    conn.expect_close(CloseKind::Protocol).await;
}
