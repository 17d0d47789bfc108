//! The embedded SQLite store serves one process: a second station on the same data directory
//! is refused at start, with a message that says what to do instead.

use zbase_proto::wire::Code;
use zbase_tests::client::{Transport, create_resource, join, seed_snapshot};
use zbase_tests::station::Station;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_station_on_one_data_directory_is_refused_until_the_first_stops() {
    let mut first = Station::start().await;
    let (id, me) = create_resource(first.addr(), Transport::Ws).await;
    seed_snapshot(
        first.addr(),
        Transport::Ws,
        &id,
        &me,
        b"from the first station",
    )
    .await;

    let (status, stderr) = Station::builder()
        .data_dir(first.data_dir())
        .start_failure()
        .await;
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    let dir = first.data_dir().display().to_string();
    for needle in [
        &*format!("the data directory {dir} is in use by another station process"),
        "use PostgreSQL (--store postgres://...)",
    ] {
        assert!(
            stderr.contains(needle),
            "{needle:?} is not in stderr: {stderr}"
        );
    }
    // The refused station touched nothing: the first one still serves its resource.
    let mut peer = join(first.addr(), Transport::Grpc, &id, &me).await;
    peer.expect_payload(Code::OfferSnapshot, b"from the first station")
        .await;
    peer.close().await;

    assert!(first.terminate().await.success());
    let second = Station::builder().data_dir(first.data_dir()).start().await;
    let mut peer = join(second.addr(), Transport::Ws, &id, &me).await;
    peer.expect_payload(Code::OfferSnapshot, b"from the first station")
        .await;
}
