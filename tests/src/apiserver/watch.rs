//! Watch responses: a chunked stream of JSON lines, one watch event per line.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::store::{Broadcast, EventType, Store, WatchFilter, WatchStart};

/// How often a watch that allows bookmarks gets one while nothing else happens.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(10);

/// How a watch request asked to be served.
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// `timeoutSeconds`: the stream ends after it (with a bookmark, when allowed).
    pub timeout: Duration,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents`: end the initial ADDED events with the `initial-events-end`
    /// bookmark, for kube-runtime's streaming-list strategy.
    pub initial_events_end: bool,
    /// The client asked for `PartialObjectMetadata` (a metadata watcher).
    pub metadata_only: bool,
}

fn line(kind: &str, object: &Value) -> Result<Bytes, Infallible> {
    let mut bytes =
        serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    Ok(Bytes::from(bytes))
}

fn bookmark(filter: &WatchFilter, rv: u64, initial_events_end: bool) -> Result<Bytes, Infallible> {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(
        "BOOKMARK",
        &json!({"kind": filter.info.kind, "apiVersion": filter.info.api_version(), "metadata": metadata}),
    )
}

/// The body of a watch that could not start: one `ERROR` event, as the real server sends
/// (with HTTP 200) for a resourceVersion that is too old.
pub fn error_body(error: &ApiError) -> Body {
    let chunk = line("ERROR", &error.to_status());
    Body::from_stream(futures::stream::iter([chunk]))
}

/// Streams a started watch until its timeout, a history reset, the client going away, or
/// the server stopping.
pub fn body(start: WatchStart, filter: WatchFilter, options: WatchOptions) -> Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let WatchStart {
            initial,
            rv: start_rv,
            mut live,
        } = start;
        for (kind, object) in initial {
            if tx
                .send(line(kind.as_str(), &render(&object, &filter, options)))
                .await
                .is_err()
            {
                return;
            }
        }
        if options.initial_events_end && tx.send(bookmark(&filter, start_rv, true)).await.is_err() {
            return;
        }
        let mut last_rv = start_rv;
        let deadline = tokio::time::sleep(options.timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + BOOKMARK_INTERVAL,
            BOOKMARK_INTERVAL,
        );
        loop {
            let message = tokio::select! {
                () = &mut deadline => {
                    // Deliver what already happened, then say how far this watch got, so the
                    // client resumes from there without a gap.
                    while let Ok(Broadcast::Event(event)) = live.try_recv() {
                        if let Some(chunk) = forward(&filter, options, &event, &mut last_rv) {
                            let _ = tx.send(chunk).await;
                        }
                    }
                    if options.bookmarks {
                        let _ = tx.send(bookmark(&filter, last_rv, false)).await;
                    }
                    return;
                }
                _ = ticker.tick(), if options.bookmarks => Some(bookmark(&filter, last_rv, false)),
                () = tx.closed() => return,
                received = live.recv() => match received {
                    Ok(Broadcast::Event(event)) => forward(&filter, options, &event, &mut last_rv),
                    Ok(Broadcast::Reset) | Err(broadcast::error::RecvError::Closed) => return,
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let gone = ApiError::gone("the watch fell too far behind; re-list");
                        let _ = tx.send(line("ERROR", &gone.to_status())).await;
                        return;
                    }
                },
            };
            if let Some(chunk) = message
                && tx.send(chunk).await.is_err()
            {
                return;
            }
        }
    });
    Body::from_stream(ReceiverStream::new(rx))
}

/// An object as this watch shows it.
fn render(object: &Value, filter: &WatchFilter, options: WatchOptions) -> Value {
    let object = Store::present(object, &filter.info);
    if options.metadata_only {
        Store::metadata_only(&object)
    } else {
        object
    }
}

/// The line a live event becomes for this watch, if any; advances the watch's position.
fn forward(
    filter: &WatchFilter,
    options: WatchOptions,
    event: &super::store::Event,
    last_rv: &mut u64,
) -> Option<Result<Bytes, Infallible>> {
    if event.rv <= *last_rv {
        return None;
    }
    *last_rv = event.rv;
    let (kind, object): (EventType, &Value) = filter.translate(event)?;
    Some(line(kind.as_str(), &render(object, filter, options)))
}
