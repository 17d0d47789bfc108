//! What the station writes about its traffic: logs and exported traces name a resource only by
//! a short keyed tag, and never carry a payload or a key (WIRE.md sections 1 and 6).

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use zbase_proto::wire::{Code, encode_b64url};
use zbase_tests::client::{Conn, Identity, Transport, create_resource_with, join_peers};
use zbase_tests::station::Station;

const DELTA: &[u8] = b"delta-marker-7f3a9c";
const SNAPSHOT: &[u8] = b"snapshot-marker-51be20";

/// Drives one resource through everything a log line could mention: creation, verification,
/// a failed verification, a delta, a snapshot and a request, on both transports.
async fn traffic(station: &Station) -> (String, Identity) {
    let identity = Identity::ed25519();
    let id = create_resource_with(station.addr(), Transport::Ws, &identity).await;
    let mut peers = join_peers(
        station.addr(),
        &[Transport::Ws, Transport::Grpc],
        &id,
        &identity,
    )
    .await;
    let (a, b) = peers.split_at_mut(1);
    let (a, b) = (&mut a[0], &mut b[0]);
    a.send(Code::SubmitDelta, DELTA.to_vec()).await.unwrap();
    b.expect_payload(Code::ForwardDelta, DELTA).await;
    a.send(Code::SubmitSnapshot, SNAPSHOT.to_vec())
        .await
        .unwrap();
    b.send(Code::SubmitRequest, b"request-marker".to_vec())
        .await
        .unwrap();
    a.expect_frame(Code::ForwardRequest).await;
    let mut intruder = Conn::connect(Transport::Ws, station.addr(), &id).await;
    intruder.expect_challenge(Code::RequireVerification).await;
    intruder
        .send(Code::SubmitVerification, vec![0u8; 64])
        .await
        .unwrap();
    intruder.expect_closed().await;
    (id.to_string(), identity)
}

fn assert_nothing_identifying(text: &str, id: &str, identity: &Identity, what: &str) {
    let secrets = [
        id.to_string(),
        id[..16].to_string(),
        String::from_utf8_lossy(DELTA).into_owned(),
        String::from_utf8_lossy(SNAPSHOT).into_owned(),
        encode_b64url(DELTA),
        encode_b64url(SNAPSHOT),
        "request-marker".to_string(),
        identity.jwk_x(),
    ];
    for secret in secrets {
        assert!(
            !text.contains(&secret),
            "{what} contains {secret:?}:\n{text}"
        );
    }
}

#[tokio::test]
async fn s1_logs_name_resources_by_tag_only_even_at_debug() {
    let mut station = Station::builder().flag("log", "debug").start().await;
    let (id, identity) = traffic(&station).await;
    assert!(station.terminate().await.success());
    let log = station.stderr_log();
    assert_nothing_identifying(&log, &id, &identity, "the debug log");
    // The log does say something useful: connection ends with their reason and a tag.
    assert!(log.contains("verification_failed"), "{log}");
    assert!(log.contains("resource="), "{log}");
}

struct Collector(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tokio::test]
async fn traces_reach_an_otlp_collector_without_identifiers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let mut station = Station::builder()
        .flag("otlp-endpoint", format!("http://{collector}"))
        .start()
        .await;
    let (id, identity) = traffic(&station).await;
    // Shutdown flushes the batch exporter.
    assert!(station.terminate().await.success());
    let mut exported = String::new();
    let mut spans = 0;
    while let Ok(Some(request)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        for resource in &request.resource_spans {
            for scope in &resource.scope_spans {
                spans += scope
                    .spans
                    .iter()
                    .filter(|span| span.name == "connection")
                    .count();
            }
        }
        exported.push_str(&format!("{request:?}"));
        if spans >= 4 {
            break;
        }
    }
    server.abort();
    assert!(
        spans >= 4,
        "expected a span per connection, got {spans}: {exported}"
    );
    assert!(exported.contains("zbase-station"), "service name missing");
    assert_nothing_identifying(&exported, &id, &identity, "the exported traces");
}
