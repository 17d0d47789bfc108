//! The contract every [`Store`] backend keeps, as one suite that each backend runs.
//!
//! Each check is a function named for the rule it tests and takes a fresh, empty store. A
//! backend runs them all, one `#[tokio::test]` per check, with one line in its tests module:
//!
//! ```text
//! conformance::conformance_tests!(fresh); // async fn fresh() -> Fixture
//! ```
//!
//! Nothing here measures time: every assertion is about what the store answers.
#![allow(clippy::unwrap_used)]

use super::{Change, Claim, KeyReplacement, RestoreItem, Seq, Store, StoreError};
use bytes::Bytes;
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use zbase_proto::wire::ResourceId;

/// A fresh, empty store and whatever must outlive it (a temporary directory, a scratch schema).
pub(crate) struct Fixture {
    /// The store under test.
    pub(crate) store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send>,
}

impl Fixture {
    /// Wraps `store`, keeping `keep` alive as long as the fixture.
    pub(crate) fn new(store: impl Store, keep: impl Any + Send) -> Fixture {
        Fixture {
            store: Arc::new(store),
            _keep: Box::new(keep),
        }
    }
}

/// Generates one `#[tokio::test]` per check, each on a store from `$fresh().await`.
macro_rules! conformance_tests {
    ($fresh:path) => {
        $crate::store::conformance::conformance_tests!(@each $fresh;
            load_of_an_unknown_id_is_none,
            an_open_store_answers_ping,
            an_empty_store_has_no_changes_and_last_seq_zero,
            put_snapshot_of_an_unknown_id_is_not_found_and_takes_no_seq,
            claim_of_a_free_id_succeeds_and_a_second_claim_is_taken,
            concurrent_claims_of_one_id_have_exactly_one_winner,
            snapshots_round_trip_byte_for_byte,
            a_snapshot_of_8_mib_round_trips,
            only_the_latest_snapshot_is_kept,
            sequence_increases_across_claims_and_puts_and_matches_last_seq,
            changes_list_each_resource_once_at_its_latest_seq_in_order,
            changes_since_pages_with_a_small_limit,
            a_resuming_reader_never_misses_a_change,
            calls_after_close_are_refused,
            export_sends_every_resource_once_in_order_at_last_seq,
            export_sees_one_point_while_writes_go_on,
            replace_key_from_the_expected_key_is_a_change_that_keeps_the_snapshot,
            replace_key_from_another_key_or_of_an_unknown_id_changes_nothing,
            concurrent_replacements_of_one_key_have_exactly_one_winner,
        );
    };
    (@each $fresh:path; $($check:ident),+ $(,)?) => {
        $(
            // Several worker threads, so racing tasks really run at the same time.
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let fixture = $fresh().await;
                $crate::store::conformance::$check(::std::sync::Arc::clone(&fixture.store)).await;
                fixture.store.close().await;
            }
        )+
    };
}
pub(crate) use conformance_tests;

/// A distinct identifier per `n`.
pub(crate) fn id(n: u32) -> ResourceId {
    let mut raw = [0x5a; 32];
    raw[..4].copy_from_slice(&n.to_be_bytes());
    ResourceId::from_bytes(raw)
}

/// A distinct key per `n`; the store treats it as opaque text.
pub(crate) fn jwk(n: u32) -> String {
    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"key-{n}"}}"#)
}

/// Claims `id(n)` with `jwk(n)`, which must be free, and returns the claim's sequence.
async fn claimed(store: &dyn Store, n: u32) -> Seq {
    match store.claim(&id(n), &jwk(n)).await.unwrap() {
        Claim::Claimed { seq } => seq,
        Claim::Taken => panic!("identifier {n} should have been free"),
    }
}

/// `len` bytes that are not a repeating pattern (xorshift), so a misplaced chunk shows.
fn noise(len: usize, seed: u64) -> Bytes {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect::<Vec<u8>>()
        .into()
}

/// Rule: replacing the key it holds is one change: the new key at a new sequence, listed in
/// the change feed (so replicas and backups carry it), the snapshot untouched.
pub(crate) async fn replace_key_from_the_expected_key_is_a_change_that_keeps_the_snapshot(
    store: Arc<dyn Store>,
) {
    claimed(&*store, 1).await;
    claimed(&*store, 2).await;
    let before = store
        .put_snapshot(&id(1), Bytes::from_static(b"kept"))
        .await
        .unwrap();
    let replaced = store.replace_key(&id(1), &jwk(1), &jwk(101)).await.unwrap();
    let KeyReplacement::Replaced { seq } = replaced else {
        panic!("the expected key was not replaced: {replaced:?}");
    };
    assert!(seq > before);
    assert_eq!(store.last_seq().await.unwrap(), seq);
    let stored = store.load(&id(1)).await.unwrap().unwrap();
    assert_eq!(stored.jwk, jwk(101));
    assert_eq!(stored.snapshot, Some(Bytes::from_static(b"kept")));
    assert_eq!(stored.seq, seq);
    assert_eq!(
        store.changes_since(before, 100).await.unwrap(),
        vec![Change {
            seq,
            id: id(1),
            jwk: jwk(101),
            snapshot: Some(Bytes::from_static(b"kept")),
        }]
    );
    // The other resource is untouched, and the new key can be replaced in turn.
    assert_eq!(store.load(&id(2)).await.unwrap().unwrap().jwk, jwk(2));
    let again = store
        .replace_key(&id(1), &jwk(101), &jwk(102))
        .await
        .unwrap();
    assert!(matches!(again, KeyReplacement::Replaced { seq: next } if next > seq));
    let (_, exported) = exported(&*store).await;
    let one = exported.iter().find(|change| change.id == id(1)).unwrap();
    assert_eq!(one.jwk, jwk(102));
}

/// Rule: replacing a key the resource no longer holds (or of no resource) writes nothing and
/// takes no sequence.
pub(crate) async fn replace_key_from_another_key_or_of_an_unknown_id_changes_nothing(
    store: Arc<dyn Store>,
) {
    let before = claimed(&*store, 1).await;
    assert_eq!(
        store.replace_key(&id(1), &jwk(9), &jwk(101)).await.unwrap(),
        KeyReplacement::Stale
    );
    assert_eq!(
        store.replace_key(&id(2), &jwk(2), &jwk(102)).await.unwrap(),
        KeyReplacement::Stale
    );
    assert_eq!(store.load(&id(1)).await.unwrap().unwrap().jwk, jwk(1));
    assert_eq!(store.load(&id(2)).await.unwrap(), None);
    assert_eq!(store.last_seq().await.unwrap(), before);
    assert!(store.changes_since(before, 100).await.unwrap().is_empty());
}

/// Rule: racing replacements of one key are compare-and-set: exactly one wins, and the
/// stored key is the winner's.
pub(crate) async fn concurrent_replacements_of_one_key_have_exactly_one_winner(
    store: Arc<dyn Store>,
) {
    claimed(&*store, 1).await;
    let racers: Vec<_> = (0..8u32)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let outcome = store.replace_key(&id(1), &jwk(1), &jwk(200 + n)).await;
                (n, outcome.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for racer in racers {
        let (n, outcome) = racer.await.unwrap();
        if let KeyReplacement::Replaced { .. } = outcome {
            winners.push(n);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    assert_eq!(
        store.load(&id(1)).await.unwrap().unwrap().jwk,
        jwk(200 + winners[0])
    );
}

/// Rule: a resource that was never claimed does not exist.
pub(crate) async fn load_of_an_unknown_id_is_none(store: Arc<dyn Store>) {
    assert_eq!(store.load(&id(1)).await.unwrap(), None);
}

/// Rule: an open store answers `ping`, empty or not.
pub(crate) async fn an_open_store_answers_ping(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    claimed(&*store, 1).await;
    store.ping().await.unwrap();
}

/// Rule: an empty store's sequence is 0 and it lists no change.
pub(crate) async fn an_empty_store_has_no_changes_and_last_seq_zero(store: Arc<dyn Store>) {
    assert_eq!(store.last_seq().await.unwrap(), 0);
    assert!(store.changes_since(0, 100).await.unwrap().is_empty());
}

/// Rule: a snapshot for an unknown identifier is refused, creates nothing and takes no sequence.
pub(crate) async fn put_snapshot_of_an_unknown_id_is_not_found_and_takes_no_seq(
    store: Arc<dyn Store>,
) {
    let before = claimed(&*store, 1).await;
    let refused = store.put_snapshot(&id(2), Bytes::from_static(b"x")).await;
    assert!(matches!(refused, Err(StoreError::NotFound)), "{refused:?}");
    assert_eq!(store.load(&id(2)).await.unwrap(), None);
    assert_eq!(store.last_seq().await.unwrap(), before);
    assert!(store.changes_since(before, 100).await.unwrap().is_empty());
}

/// Rule: claiming is "create if free"; a second claim changes nothing, whatever its key.
pub(crate) async fn claim_of_a_free_id_succeeds_and_a_second_claim_is_taken(store: Arc<dyn Store>) {
    let seq = claimed(&*store, 1).await;
    assert!(seq > 0);
    assert_eq!(store.last_seq().await.unwrap(), seq);
    let loaded = store.load(&id(1)).await.unwrap().unwrap();
    assert_eq!(
        (loaded.jwk.as_str(), loaded.snapshot, loaded.seq),
        (&*jwk(1), None, seq)
    );

    assert_eq!(store.claim(&id(1), &jwk(2)).await.unwrap(), Claim::Taken);
    let after = store.load(&id(1)).await.unwrap().unwrap();
    assert_eq!(
        after.jwk,
        jwk(1),
        "a refused claim must not replace the key"
    );
    assert_eq!(after.seq, seq);
    assert_eq!(
        store.last_seq().await.unwrap(),
        seq,
        "a refused claim takes no sequence"
    );
}

/// Rule: the claim is atomic: of 32 simultaneous claims of one identifier, exactly one wins.
pub(crate) async fn concurrent_claims_of_one_id_have_exactly_one_winner(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..32)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { (n, store.claim(&id(7), &jwk(n)).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        if let (n, Claim::Claimed { seq }) = task.await.unwrap() {
            winners.push((n, seq));
        }
    }
    let [(winner, seq)] = winners[..] else {
        panic!("expected exactly one winner, got {winners:?}");
    };
    let loaded = store.load(&id(7)).await.unwrap().unwrap();
    assert_eq!((loaded.jwk, loaded.seq), (jwk(winner), seq));
    assert_eq!(store.last_seq().await.unwrap(), seq);
}

/// Rule: a snapshot is stored verbatim: NULs, 0xFF, every byte value, and the empty snapshot.
pub(crate) async fn snapshots_round_trip_byte_for_byte(store: Arc<dyn Store>) {
    let every_byte: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let cases = [
        Bytes::from_static(b"\0"),
        Bytes::from_static(b"\xff\xfe\0\0\x80not utf-8\xc3\x28\0"),
        Bytes::from(every_byte),
        Bytes::new(),
    ];
    for (n, snapshot) in (1..).zip(cases) {
        claimed(&*store, n).await;
        let seq = store.put_snapshot(&id(n), snapshot.clone()).await.unwrap();
        let loaded = store.load(&id(n)).await.unwrap().unwrap();
        assert_eq!(loaded.snapshot, Some(snapshot), "case {n}");
        assert_eq!(loaded.seq, seq);
    }
}

/// Rule: snapshots as large as the largest frame (8 MiB) are stored whole.
pub(crate) async fn a_snapshot_of_8_mib_round_trips(store: Arc<dyn Store>) {
    let big = noise(8 << 20, 0x2b);
    claimed(&*store, 1).await;
    store.put_snapshot(&id(1), big.clone()).await.unwrap();
    let loaded = store.load(&id(1)).await.unwrap().unwrap().snapshot.unwrap();
    assert!(loaded == big, "8 MiB snapshot came back different");
    let change = store.changes_since(0, 10).await.unwrap();
    assert!(change.len() == 1 && change[0].snapshot.as_ref() == Some(&big));
}

/// Rule: a snapshot replaces the previous one; only the latest is kept and listed.
pub(crate) async fn only_the_latest_snapshot_is_kept(store: Arc<dyn Store>) {
    claimed(&*store, 1).await;
    store
        .put_snapshot(
            &id(1),
            Bytes::from_static(b"first, and longer than the second"),
        )
        .await
        .unwrap();
    let seq = store
        .put_snapshot(&id(1), Bytes::from_static(b"second"))
        .await
        .unwrap();
    let loaded = store.load(&id(1)).await.unwrap().unwrap();
    assert_eq!(loaded.snapshot, Some(Bytes::from_static(b"second")));
    let changes = store.changes_since(0, 100).await.unwrap();
    assert_eq!(
        changes,
        [Change {
            seq,
            id: id(1),
            jwk: jwk(1),
            snapshot: Some(Bytes::from_static(b"second")),
        }]
    );
}

/// Rule: every change gets a sequence above all before it, and `last_seq` is the latest.
pub(crate) async fn sequence_increases_across_claims_and_puts_and_matches_last_seq(
    store: Arc<dyn Store>,
) {
    let mut previous = store.last_seq().await.unwrap();
    let mut latest = HashMap::new();
    for round in 0..5u32 {
        for n in 0..3 {
            let seq = if round == 0 {
                claimed(&*store, n).await
            } else {
                let snapshot = Bytes::from(format!("{n}@{round}"));
                store.put_snapshot(&id(n), snapshot).await.unwrap()
            };
            assert!(seq > previous, "sequence went from {previous} to {seq}");
            assert_eq!(store.last_seq().await.unwrap(), seq);
            previous = seq;
            latest.insert(n, seq);
        }
    }
    for (n, seq) in latest {
        assert_eq!(store.load(&id(n)).await.unwrap().unwrap().seq, seq);
    }
}

/// Rule: changes are listed in sequence order, each resource once, at its latest change.
pub(crate) async fn changes_list_each_resource_once_at_its_latest_seq_in_order(
    store: Arc<dyn Store>,
) {
    for n in 0..5 {
        claimed(&*store, n).await;
    }
    let middle = store.last_seq().await.unwrap();
    for n in [3, 1, 3, 4] {
        let snapshot = Bytes::from(format!("{n} after {}", store.last_seq().await.unwrap()));
        store.put_snapshot(&id(n), snapshot).await.unwrap();
    }

    let all = store.changes_since(0, 1000).await.unwrap();
    let order: Vec<ResourceId> = all.iter().map(|c| c.id).collect();
    assert_eq!(order, [id(0), id(2), id(1), id(3), id(4)]);
    assert!(all.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    for change in &all {
        let loaded = store.load(&change.id).await.unwrap().unwrap();
        assert_eq!(
            (change.seq, &change.jwk, &change.snapshot),
            (loaded.seq, &loaded.jwk, &loaded.snapshot)
        );
    }
    assert_eq!(all.last().unwrap().seq, store.last_seq().await.unwrap());

    let recent = store.changes_since(middle, 1000).await.unwrap();
    let order: Vec<ResourceId> = recent.iter().map(|c| c.id).collect();
    assert_eq!(order, [id(1), id(3), id(4)]);
}

/// Rule: reading with a small limit, resuming after the last sequence seen, lists everything.
pub(crate) async fn changes_since_pages_with_a_small_limit(store: Arc<dyn Store>) {
    for n in 0..10 {
        claimed(&*store, n).await;
    }
    for n in [2, 5, 7] {
        store
            .put_snapshot(&id(n), Bytes::from(vec![n as u8; 3]))
            .await
            .unwrap();
    }
    assert!(store.changes_since(0, 0).await.unwrap().is_empty());
    let mut paged = Vec::new();
    let mut position = 0;
    loop {
        let page = store.changes_since(position, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        position = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, store.changes_since(0, usize::MAX).await.unwrap());
    assert_eq!(paged.len(), 10);
    assert_eq!(position, store.last_seq().await.unwrap());
}

/// A reader that pages through `changes_since` from 0, resuming from the last sequence it saw,
/// until the writers are `done` and it has caught up with `last_seq`: what it saw last of each
/// resource. It asserts the sequence only ever grows.
fn resuming_reader(
    store: Arc<dyn Store>,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<HashMap<ResourceId, (Seq, Option<Bytes>)>> {
    tokio::spawn(async move {
        let mut position = 0;
        let mut seen = HashMap::new();
        let mut end = None;
        loop {
            let page = store.changes_since(position, 7).await.unwrap();
            for change in &page {
                assert!(change.seq > position, "{} after {position}", change.seq);
                position = change.seq;
                seen.insert(change.id, (change.seq, change.snapshot.clone()));
            }
            if page.is_empty() {
                // Only once the writers are done is "caught up" final.
                if end.is_none() && done.load(Ordering::Acquire) {
                    end = Some(store.last_seq().await.unwrap());
                }
                if end.is_some_and(|end| position >= end) {
                    return seen;
                }
                tokio::task::yield_now().await;
            }
        }
    })
}

/// Rule: a reader that resumes from the last sequence it saw, while 64 writers write, ends with
/// every resource's latest state, and never sees the sequence go backwards.
pub(crate) async fn a_resuming_reader_never_misses_a_change(store: Arc<dyn Store>) {
    const RESOURCES: u32 = 16;
    const WRITERS: u32 = 64;
    const PUTS: u32 = 50;
    for n in 0..RESOURCES {
        claimed(&*store, n).await;
    }
    let done = Arc::new(AtomicBool::new(false));

    let reader = resuming_reader(Arc::clone(&store), Arc::clone(&done));

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..PUTS {
                    let n = (w + i) % RESOURCES;
                    let snapshot = Bytes::from(format!("writer {w} put {i}"));
                    store.put_snapshot(&id(n), snapshot).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let seen = reader.await.unwrap();

    assert_eq!(seen.len(), RESOURCES as usize);
    for n in 0..RESOURCES {
        let loaded = store.load(&id(n)).await.unwrap().unwrap();
        assert_eq!(seen[&id(n)], (loaded.seq, loaded.snapshot), "resource {n}");
    }
}

/// Rule: after `close`, every call is refused with `Closed`.
pub(crate) async fn calls_after_close_are_refused(store: Arc<dyn Store>) {
    claimed(&*store, 1).await;
    store.close().await;
    let closed = |result: Result<(), StoreError>| matches!(result, Err(StoreError::Closed));
    assert!(closed(store.claim(&id(2), &jwk(2)).await.map(drop)));
    assert!(closed(
        store.put_snapshot(&id(1), Bytes::new()).await.map(drop)
    ));
    assert!(closed(store.load(&id(1)).await.map(drop)));
    assert!(closed(store.changes_since(0, 10).await.map(drop)));
    assert!(closed(store.last_seq().await.map(drop)));
    assert!(closed(store.ping().await));
    // Closing twice is harmless.
    store.close().await;
}

/// Rule, for backends that several processes share: while writers on every store in `writers`
/// claim new resources (each changed once, so any skipped change stays missing) and rewrite
/// old ones, a reader on `reader` that resumes from the last sequence it saw ends with every
/// resource at its latest state, and never sees the sequence go backwards.
pub(crate) async fn a_resuming_reader_never_misses_a_change_from_several_writers(
    writers: &[Arc<dyn Store>],
    reader: Arc<dyn Store>,
) {
    const TASKS_PER_WRITER: u32 = 32;
    const CLAIMS: u32 = 20;
    let done = Arc::new(AtomicBool::new(false));

    let reading = resuming_reader(Arc::clone(&reader), Arc::clone(&done));

    let mut tasks = Vec::new();
    for (w, store) in (0..).zip(writers) {
        for t in 0..TASKS_PER_WRITER {
            let store = Arc::clone(store);
            let task = w * TASKS_PER_WRITER + t;
            tasks.push(tokio::spawn(async move {
                for i in 0..CLAIMS {
                    let n = task * CLAIMS + i;
                    claimed(&*store, n).await;
                    // Rewrite an earlier resource of this task, moving it up the sequence.
                    let earlier = task * CLAIMS + i / 2;
                    let snapshot = Bytes::from(format!("task {task} step {i}"));
                    store.put_snapshot(&id(earlier), snapshot).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let seen = reading.await.unwrap();

    let total = writers.len() as u32 * TASKS_PER_WRITER * CLAIMS;
    assert_eq!(seen.len(), total as usize, "the reader missed resources");
    for n in 0..total {
        let loaded = reader.load(&id(n)).await.unwrap().unwrap();
        assert_eq!(seen[&id(n)], (loaded.seq, loaded.snapshot), "resource {n}");
    }
}

/// 64 writers at once, each claiming its resource and then writing ten snapshots: 704
/// requests for a group-committing backend to share transactions between (each backend's
/// own test then reads its `WriteStats`).
pub(crate) async fn sixty_four_writers_write_704_times(store: Arc<dyn Store>) {
    let writers: Vec<_> = (0..64)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store.claim(&id(n), &jwk(n)).await.unwrap();
                for i in 0..10u8 {
                    store
                        .put_snapshot(&id(n), Bytes::from(vec![i; 100]))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
}

/// Everything `store` exports, and the point it names.
pub(crate) async fn exported(store: &dyn Store) -> (Seq, Vec<Change>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let (point, all) = tokio::join!(store.export(tx), async move {
        let mut all = Vec::new();
        while let Some(change) = rx.recv().await {
            all.push(change);
        }
        all
    });
    (point.unwrap(), all)
}

/// Claims `n` resources and gives every third one a snapshot (of sizes up to 64 KiB).
pub(crate) async fn populate(store: &dyn Store, n: u32) {
    for i in 0..n {
        claimed(store, i).await;
        if i % 3 == 0 {
            let len = (i as usize * 997) % 65_536;
            store
                .put_snapshot(&id(i), noise(len, u64::from(i)))
                .await
                .unwrap();
        }
    }
}

/// Rule: an export holds every resource once, as `changes_since(0)` lists them, and names the
/// last committed sequence as its point.
pub(crate) async fn export_sends_every_resource_once_in_order_at_last_seq(store: Arc<dyn Store>) {
    assert_eq!(exported(store.as_ref()).await, (0, vec![]));
    populate(store.as_ref(), 40).await;
    store
        .put_snapshot(&id(7), Bytes::from_static(b"again"))
        .await
        .unwrap();
    let (point, all) = exported(store.as_ref()).await;
    assert_eq!(point, store.last_seq().await.unwrap());
    assert_eq!(all, store.changes_since(0, usize::MAX).await.unwrap());
    assert_eq!(all.len(), 40);
}

/// Rule: an export is of one sequence point. Writes committed while it streams (new
/// resources, new snapshots of resources not yet sent) do not show in it.
pub(crate) async fn export_sees_one_point_while_writes_go_on(store: Arc<dyn Store>) {
    populate(store.as_ref(), 30).await;
    let (before, expected) = (
        store.last_seq().await.unwrap(),
        store.changes_since(0, usize::MAX).await.unwrap(),
    );
    // A queue of one: the export is held mid-stream while the writes happen.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let export = tokio::spawn({
        let store = Arc::clone(&store);
        async move { store.export(tx).await }
    });
    let first = rx.recv().await.unwrap();
    for i in 0..30 {
        store
            .put_snapshot(&id(i), Bytes::from(format!("late {i}")))
            .await
            .unwrap();
    }
    claimed(store.as_ref(), 1000).await;
    let mut all = vec![first];
    while let Some(change) = rx.recv().await {
        all.push(change);
    }
    assert_eq!(export.await.unwrap().unwrap(), before);
    assert_eq!(
        all, expected,
        "the export is the store as it was at {before}"
    );
}

/// Rule, for a backend's restore: an export restored into an empty store reads back
/// identical, later changes are numbered above it, a store with data is refused unless wiped,
/// and a restore that never gets its `Commit` leaves the store as it was.
///
/// `restore(items, wipe)` restores into the target; `open()` opens the target for reading
/// (closed again here), never while a restore runs.
pub(crate) async fn restore_reproduces_an_export<R, RF, O, OF>(
    source: Arc<dyn Store>,
    restore: R,
    open: O,
) where
    R: Fn(tokio::sync::mpsc::Receiver<RestoreItem>, bool) -> RF,
    RF: std::future::Future<Output = Result<Seq, StoreError>>,
    O: Fn() -> OF,
    OF: std::future::Future<Output = Arc<dyn Store>>,
{
    populate(source.as_ref(), 50).await;
    let (point, all) = exported(source.as_ref()).await;
    let feed = |commit: bool| {
        let (tx, rx) = tokio::sync::mpsc::channel(all.len() + 1);
        for change in &all {
            tx.try_send(RestoreItem::Resource(change.clone())).unwrap();
        }
        if commit {
            tx.try_send(RestoreItem::Commit { sequence: point })
                .unwrap();
        }
        rx
    };

    assert_eq!(restore(feed(true), false).await.unwrap(), point);
    let target = open().await;
    assert_eq!(exported(target.as_ref()).await, (point, all.clone()));
    assert_eq!(target.last_seq().await.unwrap(), point);
    let after = claimed(target.as_ref(), 5000).await;
    assert!(
        after > point,
        "numbering goes on above the backup: {after} > {point}"
    );
    target.close().await;

    let refused = restore(feed(true), false).await.unwrap_err();
    assert!(matches!(refused, StoreError::NotEmpty(51)), "{refused:?}");
    assert!(refused.to_string().contains("--wipe"), "{refused}");
    let abandoned = restore(feed(false), true).await.unwrap_err();
    assert!(
        matches!(abandoned, StoreError::RestoreAbandoned),
        "{abandoned:?}"
    );
    let target = open().await;
    assert_eq!(
        target.load(&id(5000)).await.unwrap().map(|r| r.seq),
        Some(after)
    );
    target.close().await;

    assert_eq!(restore(feed(true), true).await.unwrap(), point);
    let target = open().await;
    let (_, again) = exported(target.as_ref()).await;
    assert_eq!(again, all, "a wiped store holds the backup alone");
    target.close().await;
}
