//! A real browser as a zbase client: headless Chromium runs `tests/browser/zbase.js`, which uses
//! WebCrypto and WebSocket only, against the real station binary, next to Rust peers on
//! WebSocket and gRPC that hold the same resource key (as a user's other devices would).
//!
//! What this proves that the Rust-only tests cannot: the JWK WebCrypto exports (with `ext` and
//! `key_ops`), WebCrypto's P1363 ECDSA and Ed25519 signatures, and the browser's binary
//! WebSocket messages are exactly what the station accepts and relays (WIRE.md sections 3-7).
//!
//! Chromium is driven over W3C WebDriver: `chromedriver` runs as a child process and is spoken
//! to with plain HTTP. Both must be installed (`apt-get install -y chromium chromium-driver`);
//! the tests fail, never skip, when they are not.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use zbase_proto::wire::{CHALLENGE_LEN, Code, ResourceId, decode_b64url, encode_b64url};
use zbase_tests::client::{Identity, SILENCE, Transport, join, random_bytes};
use zbase_tests::station::Station;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str = "run `apt-get install -y chromium chromium-driver` (Debian packages)";
/// How long chromedriver may take to answer `/status` with `ready: true`.
const DRIVER_START: Duration = Duration::from_secs(30);
/// How long the test waits for the browser to record an expected event.
const BROWSER_WAIT: Duration = Duration::from_secs(30);
/// Between two reads of the page's event record while waiting for a condition.
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// WebDriver script timeout: above the page's own 20 s step timeout, so a stuck step returns
/// the page's record (which names what happened) rather than a bare script timeout.
const SCRIPT_TIMEOUT_MS: u64 = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webcrypto_p256_client_configures_verifies_and_relays() {
    browser_round_trip(Algorithm::P256).await;
}

// Chromium has shipped Ed25519 in WebCrypto by default since version 137 (Debian bookworm's
// package is newer), so an unsupported Ed25519 is a broken test environment, and fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webcrypto_ed25519_client_configures_verifies_and_relays() {
    browser_round_trip(Algorithm::Ed25519).await;
}

/// The actor formats (docs/ACTOR-FORMATS.md) in a browser with WebCrypto alone: the page
/// opens the envelope, sealed key and operation the Rust crate made (`actor/vectors/v1.json`),
/// and makes the same bytes again from the same secrets and nonces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webcrypto_opens_and_reproduces_the_actor_formats() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../actor/vectors/v1.json"),
        )
        .expect("actor/vectors/v1.json exists"),
    )
    .expect("the vectors are JSON");
    let browser = Browser::launch().await;
    browser.open_page("actor.html", "").await;
    assert_eq!(
        browser
            .exec("return typeof actor === 'object'", json!([]))
            .await,
        Value::Bool(true),
        "the page did not load actor.js"
    );
    let record = browser
        .exec("return actor.check(arguments[0])", json!([vectors]))
        .await;
    let expect = |check: &str, want: &Value| {
        assert_eq!(
            &record[check], want,
            "{check}: the browser computed {record:#}"
        );
    };
    expect("envelopeOpens", &vectors["envelope"]["snapshot"]);
    expect("envelopeMade", &vectors["envelope"]["envelope"]);
    expect("envelopeOtherResourceRefused", &Value::Bool(true));
    expect("sealedKeyOpens", &vectors["contentKey"]["key"]);
    expect("sealedKeyMade", &vectors["sealedKey"]["sealed"]);
    expect("operationVerifies", &Value::Bool(true));
    expect("operationAlteredRefused", &Value::Bool(true));
    expect("operationId", &vectors["operation"]["id"]);
    expect("operationMade", &vectors["operation"]["token"]);
    expect("sealingProofVerifies", &Value::Bool(true));
    expect("sealingProofOfAnotherRefused", &Value::Bool(true));
    expect("sealingProofMade", &vectors["member"]["sealingProof"]);
    expect("bundleMade", &vectors["bundle"]["bundle"]);
    expect("grantVerifies", &Value::Bool(true));
    expect("grantProofVerifies", &Value::Bool(true));
    let mailbox = &vectors["mailbox"];
    expect(
        "mailboxDerived",
        &json!({"id": mailbox["id"], "access": mailbox["access"], "key": mailbox["key"]}),
    );
    expect(
        "mailboxOpens",
        &json!({"keyring": mailbox["keyring"], "ownerProved": true}),
    );
    expect("rotationThumbprint", &vectors["rotation"]["nextThumbprint"]);
    let payload = decode_b64url(vectors["rotation"]["payload"].as_str().expect("a string"))
        .expect("base64url");
    expect(
        "rotationMade",
        &Value::String(String::from_utf8(payload).expect("JSON is UTF-8")),
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    P256,
    Ed25519,
}

impl Algorithm {
    /// The name `zb.generate` takes.
    fn name(self) -> &'static str {
        match self {
            Algorithm::P256 => "P-256",
            Algorithm::Ed25519 => "Ed25519",
        }
    }
}

async fn browser_round_trip(algorithm: Algorithm) {
    let station = Station::start().await;
    let addr = station.addr();
    let browser = Browser::launch().await;
    browser.open_client(addr).await;

    if algorithm == Algorithm::Ed25519 {
        let supported = browser
            .exec("return zb.ed25519Supported()", json!([]))
            .await;
        assert_eq!(
            supported,
            Value::Bool(true),
            "this Chromium has no Ed25519 in WebCrypto (default since Chromium 137); upgrade it"
        );
    }

    // 1. The browser makes the resource key; the Rust peers import the same private key.
    let keys = browser
        .exec(
            "return zb.generate(arguments[0])",
            json!([algorithm.name()]),
        )
        .await;
    let identity = identity_from_private_jwk(algorithm, &keys["privateJwk"]);
    let public_jwk = &keys["publicJwk"];
    for member in ["kty", "crv", "x", "y"] {
        assert_eq!(
            identity.jwk()[member],
            public_jwk[member],
            "the imported private key must be the browser's key (JWK member {member})"
        );
    }

    // 2. Configuration, entirely in the browser, on an identifier the browser drew.
    let proposed = browser
        .exec("return zb.randomId()", json!([]))
        .await
        .as_str()
        .expect("zb.randomId returns a string")
        .to_owned();
    ResourceId::parse(&proposed)
        .unwrap_or_else(|e| panic!("the page drew {proposed:?}, not an identifier: {e}"));
    let record = browser
        .exec("return zb.configure(arguments[0])", json!([proposed]))
        .await;
    let sent: Value = serde_json::from_str(
        record["sent"]
            .as_str()
            .unwrap_or_else(|| panic!("the page never sent submit-config: {record}")),
    )
    .expect("the page sent JSON");
    // The point of the browser test: the JWK goes to the station exactly as WebCrypto exported it.
    assert!(
        sent["jwk"].get("ext").is_some() && sent["jwk"].get("key_ops").is_some(),
        "WebCrypto's export was expected to carry `ext` and `key_ops`: {sent}"
    );
    let events = record["events"].as_array().expect("events is an array");
    assert_eq!(
        events.len(),
        3,
        "configuration: expected require-config, offer-config, close; the browser saw {events:#?}"
    );
    expect_challenge(&events[0], Code::RequireConfig, events);
    let offered = frame_payload(&events[1], Code::OfferConfig)
        .unwrap_or_else(|| panic!("expected offer-config second, the browser saw {events:#?}"));
    assert_eq!(
        offered,
        proposed.as_bytes(),
        "a free proposed identifier must be kept and offered as its 43 ASCII bytes"
    );
    expect_close(&events[2], 1000, events);
    let id = ResourceId::parse(&proposed).expect("checked above");

    // 3. Verification in the browser on the authoritative identifier.
    let first = browser
        .exec("return zb.join(arguments[0])", json!([id.as_str()]))
        .await;
    let first = first.as_array().expect("zb.join returns the events");
    assert!(
        !first.is_empty(),
        "no require-verification within the page's step timeout"
    );
    expect_challenge(&first[0], Code::RequireVerification, first);

    // 4. The browser submits a snapshot. Its request is answered with that snapshot once it is
    // persisted, which shows both that the browser is verified and that a peer joining now
    // must be offered it. (Should the request overtake the write, the answer is the same bytes
    // as forward-response.) Every byte value is included to prove binary transparency.
    let mut snapshot: Vec<u8> = (0..=255).collect();
    snapshot.extend(random_bytes(4096));
    browser.send(Code::SubmitSnapshot, &snapshot).await;
    browser.send(Code::SubmitRequest, &random_bytes(8)).await;
    browser
        .wait_for_frame(&[Code::OfferSnapshot, Code::ForwardResponse], &snapshot)
        .await;

    // 5. Rust peers with the imported key verify and are offered the browser's snapshot.
    let mut ws = join(addr, Transport::Ws, &id, &identity).await;
    ws.expect_payload(Code::OfferSnapshot, &snapshot).await;
    let mut grpc = join(addr, Transport::Grpc, &id, &identity).await;
    grpc.expect_payload(Code::OfferSnapshot, &snapshot).await;

    // 6. Deltas in every direction, byte for byte.
    let from_browser = random_bytes(1024);
    browser.send(Code::SubmitDelta, &from_browser).await;
    ws.expect_payload(Code::ForwardDelta, &from_browser).await;
    grpc.expect_payload(Code::ForwardDelta, &from_browser).await;

    let from_ws = random_bytes(1024);
    ws.send(Code::SubmitDelta, from_ws.clone())
        .await
        .expect("send submit-delta on WebSocket");
    browser
        .wait_for_frame(&[Code::ForwardDelta], &from_ws)
        .await;
    grpc.expect_payload(Code::ForwardDelta, &from_ws).await;

    let from_grpc = random_bytes(1024);
    grpc.send(Code::SubmitDelta, from_grpc.clone())
        .await
        .expect("send submit-delta on gRPC");
    browser
        .wait_for_frame(&[Code::ForwardDelta], &from_grpc)
        .await;
    // Also shows the WebSocket peer did not get its own delta back: it would have come first.
    ws.expect_payload(Code::ForwardDelta, &from_grpc).await;

    // 7. Nothing else: no echo to any sender, no extra frame, nobody disconnected.
    ws.expect_silence(SILENCE).await;
    grpc.expect_silence(SILENCE).await;
    let events = browser.events().await;
    let expected = [
        (Code::OfferSnapshot, &snapshot),
        (Code::ForwardResponse, &snapshot),
        (Code::ForwardDelta, &from_ws),
        (Code::ForwardDelta, &from_grpc),
    ];
    for event in &events[1..] {
        let known = expected
            .iter()
            .any(|(code, payload)| frame_payload(event, *code).as_ref() == Some(*payload));
        assert!(
            known,
            "the browser received something it should not have: {event}\nall: {events:#?}"
        );
    }
}

/// The Rust side's copy of the browser's key, from the JWK `d` WebCrypto exported.
fn identity_from_private_jwk(algorithm: Algorithm, jwk: &Value) -> Identity {
    let d = jwk["d"]
        .as_str()
        .unwrap_or_else(|| panic!("the exported private JWK has no `d`: {jwk}"));
    let d = decode_b64url(d).expect("`d` is base64url");
    match algorithm {
        Algorithm::P256 => Identity::P256(
            p256::ecdsa::SigningKey::from_slice(&d).expect("`d` is a P-256 private scalar"),
        ),
        Algorithm::Ed25519 => {
            let seed: [u8; 32] = d.try_into().expect("an Ed25519 `d` is a 32-byte seed");
            Identity::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
        }
    }
}

/// The payload of a page-recorded event if it is a version-1 frame with `code`.
fn frame_payload(event: &Value, code: Code) -> Option<Vec<u8>> {
    if event["kind"] != "frame" || event["version"] != 1 || event["code"] != u64::from(code.byte())
    {
        return None;
    }
    Some(decode_b64url(event["payload"].as_str()?).expect("the page records base64url"))
}

fn expect_challenge(event: &Value, code: Code, all: &[Value]) {
    let challenge = frame_payload(event, code)
        .unwrap_or_else(|| panic!("expected {code}, the browser saw {all:#?}"));
    assert_eq!(
        challenge.len(),
        CHALLENGE_LEN,
        "{code} must carry a {CHALLENGE_LEN}-byte challenge"
    );
}

fn expect_close(event: &Value, code: u64, all: &[Value]) {
    assert!(
        event["kind"] == "close" && event["code"] == code,
        "expected a WebSocket close with code {code}, the browser saw {all:#?}"
    );
}

/// A chromedriver child process with one Chromium session. Dropping it ends the session and
/// kills chromedriver's process group, so no Chromium outlives the test, even a failing one.
struct Browser {
    http: reqwest::Client,
    driver: Child,
    port: u16,
    session: String,
    // Chromium's profile and chromedriver's log; removed after the processes are gone.
    dir: tempfile::TempDir,
}

impl Browser {
    async fn launch() -> Browser {
        assert!(
            Path::new(CHROMIUM).is_file(),
            "{CHROMIUM} is missing: {INSTALL_HINT}"
        );
        assert!(
            Path::new(CHROMEDRIVER).is_file(),
            "{CHROMEDRIVER} is missing: {INSTALL_HINT}"
        );
        let dir = tempfile::Builder::new()
            .prefix("zbase-browser-test-")
            .tempdir()
            .expect("create a temporary directory for Chromium");
        let http = reqwest::Client::builder()
            // The driver is on loopback; a proxy from the environment must not intercept it.
            .no_proxy()
            .timeout(Duration::from_millis(SCRIPT_TIMEOUT_MS) + Duration::from_secs(30))
            .build()
            .expect("build the HTTP client");
        let (driver, port) = start_driver(&http, dir.path()).await;
        let mut browser = Browser {
            http,
            driver,
            port,
            session: String::new(),
            dir,
        };
        let profile = browser.dir.path().join("profile");
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "timeouts": { "script": SCRIPT_TIMEOUT_MS, "pageLoad": 30_000 },
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            format!("--user-data-dir={}", profile.display()),
                            "--no-first-run",
                            "--no-proxy-server",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                        ],
                    },
                },
            },
        });
        let session = browser
            .command(reqwest::Method::POST, "/session", Some(capabilities))
            .await;
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session without an id: {session}"))
            .to_owned();
        browser
    }

    /// Loads `tests/browser/<name>` as a `file://` URL with `query` (a secure context, so
    /// `crypto.subtle` exists).
    async fn open_page(&self, name: &str, query: &str) {
        let page = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("browser")
            .join(name);
        let page = page
            .canonicalize()
            .unwrap_or_else(|_| panic!("tests/browser/{name} exists"));
        let url = format!("file://{}{query}", page.display());
        self.session_command("/url", json!({ "url": url })).await;
    }

    /// Loads the client page, pointed at `station`.
    async fn open_client(&self, station: SocketAddr) {
        self.open_page("index.html", &format!("?station={station}"))
            .await;
        let ready = self
            .exec(
                "return typeof zb === 'object' && isSecureContext",
                json!([]),
            )
            .await;
        assert_eq!(
            ready,
            Value::Bool(true),
            "the page did not load zbase.js in a secure context"
        );
    }

    /// Runs `script` in the page; a returned promise is awaited (W3C WebDriver semantics).
    async fn exec(&self, script: &str, args: Value) -> Value {
        self.session_command("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Sends a client frame on the page's verified connection.
    async fn send(&self, code: Code, payload: &[u8]) {
        self.exec(
            "zb.send(arguments[0], arguments[1])",
            json!([code.byte(), encode_b64url(payload)]),
        )
        .await;
    }

    /// Everything the page's verified connection has recorded so far.
    async fn events(&self) -> Vec<Value> {
        match self.exec("return zb.peer.events", json!([])).await {
            Value::Array(events) => events,
            other => panic!("zb.peer.events is not an array: {other}"),
        }
    }

    /// Polls the page's record until a frame with one of `codes` carries exactly `payload`.
    async fn wait_for_frame(&self, codes: &[Code], payload: &[u8]) {
        let deadline = Instant::now() + BROWSER_WAIT;
        loop {
            let events = self.events().await;
            let found = events.iter().any(|event| {
                codes
                    .iter()
                    .any(|code| frame_payload(event, *code).as_deref() == Some(payload))
            });
            if found {
                return;
            }
            let closed = events.iter().any(|event| event["kind"] == "close");
            assert!(
                !closed && Instant::now() < deadline,
                "the browser never received {codes:?} with the expected {} bytes; it saw {events:#?}",
                payload.len()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    async fn session_command(&self, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.command(reqwest::Method::POST, &path, Some(body)).await
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("http://127.0.0.1:{}{path}", self.port));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let status = response.status();
        let mut body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("WebDriver {path}: HTTP {status}, body not JSON: {e}"));
        let value = body["value"].take();
        assert!(
            status.is_success(),
            "WebDriver {path}: HTTP {status}: {}: {}",
            value["error"],
            value["message"]
        );
        value
    }

    fn log_path(dir: &Path) -> PathBuf {
        dir.join("chromedriver.log")
    }
}

/// Starts chromedriver on a free loopback port and waits until it is ready. The port is found
/// by binding port 0 and releasing it, which can race with another process; a driver that
/// exits at once (port taken) is retried on a fresh port.
async fn start_driver(http: &reqwest::Client, dir: &Path) -> (Child, u16) {
    for _attempt in 0..3 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("find a free port")
            .port();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Browser::log_path(dir))
            .expect("open the chromedriver log");
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            // Its own process group, so Drop can kill chromedriver and every Chromium process
            // it started with one signal to an id this test owns.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {CHROMEDRIVER}: {e}; {INSTALL_HINT}"));
        let deadline = Instant::now() + DRIVER_START;
        loop {
            if let Some(status) = driver.try_wait().expect("poll chromedriver") {
                eprintln!("chromedriver on port {port} exited with {status}; retrying");
                break;
            }
            let status = http
                .get(format!("http://127.0.0.1:{port}/status"))
                .send()
                .await;
            if let Ok(response) = status
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return (driver, port);
            }
            if Instant::now() >= deadline {
                kill_group(&mut driver);
                panic!(
                    "chromedriver was not ready within {DRIVER_START:?}; log:\n{}",
                    std::fs::read_to_string(Browser::log_path(dir)).unwrap_or_default()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    panic!(
        "chromedriver kept exiting at start; log:\n{}",
        std::fs::read_to_string(Browser::log_path(dir)).unwrap_or_default()
    );
}

fn kill_group(driver: &mut Child) {
    if let Ok(pid) = i32::try_from(driver.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = driver.wait();
}

/// `DELETE /session/{id}` with blocking std I/O, since Drop cannot await: chromedriver then
/// quits Chromium cleanly (the group kill afterwards is the backstop).
fn delete_session(port: u16, session: &str) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return;
    }
    // chromedriver answers only once Chromium has quit, and keeps the connection open despite
    // `Connection: close`, so wait for the response head rather than for the end of stream.
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            delete_session(self.port, &self.session);
        }
        kill_group(&mut self.driver);
        if std::thread::panicking() {
            eprintln!(
                "----- chromedriver log -----\n{}\n----- end of chromedriver log -----",
                std::fs::read_to_string(Browser::log_path(self.dir.path())).unwrap_or_default()
            );
        }
    }
}
