//! The `zbase` CLI against a real station: two devices of one owner and a third member sync
//! offline edits, a revoked member keeps what it had and reads nothing newer, its operations
//! are rejected by everyone else, and the station's database, logs and the bytes it relayed
//! hold no plaintext, key or actor identifier.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use zbase_actor::local::Local;
use zbase_proto::wire::ResourceId;
use zbase_tests::station::{Station, workspace_bin};
use zbase_tests::tap::Tap;
use zbase_tests::tls::{TestCa, write_pair};

/// How long `watch` has to show a change made on another device.
const LIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// One device: a home directory and the CLI pointed at the station.
struct Device {
    home: tempfile::TempDir,
    station: String,
    /// The CA file to trust (`ZBASE_CA`), for a TLS station.
    ca: Option<std::path::PathBuf>,
}

impl Device {
    async fn new(station: &str) -> Device {
        Device::with_ca(station, None).await
    }

    async fn with_ca(station: &str, ca: Option<&Path>) -> Device {
        let device = Device::uninitialised(station, ca);
        device.ok(&["init"]).await;
        device
    }

    fn uninitialised(station: &str, ca: Option<&Path>) -> Device {
        Device {
            home: tempfile::tempdir().expect("a home directory"),
            station: station.to_owned(),
            ca: ca.map(Path::to_path_buf),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command =
            tokio::process::Command::new(workspace_bin("zbase", "ZBASE_BIN", "zbase-actor"));
        command
            .arg("--json")
            .arg("--home")
            .arg(self.home.path())
            .args(args)
            .env("ZBASE_STATION", &self.station)
            .env_remove("ZBASE_HOME")
            .env_remove("ZBASE_CA")
            .kill_on_drop(true);
        if let Some(ca) = &self.ca {
            command.env("ZBASE_CA", ca);
        }
        command
    }

    async fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args)
            .output()
            .await
            .expect("the zbase binary runs")
    }

    /// Runs `args`, which must succeed; returns the JSON it printed (the last line of several).
    async fn ok(&self, args: &[&str]) -> Value {
        let out = self.run(args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "zbase {args:?} failed: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        // One pretty document (export), or one document per line: the last one counts.
        serde_json::from_str(&stdout)
            .or_else(|_| serde_json::from_str(stdout.lines().last().unwrap_or("null")))
            .unwrap_or_else(|e| panic!("zbase {args:?} printed {stdout:?}: {e}"))
    }

    /// Runs `args`, which must fail; returns the error it printed.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            !out.status.success(),
            "zbase {args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    async fn identity(&self) -> String {
        self.ok(&["whoami"]).await["identity"]
            .as_str()
            .expect("whoami prints the identity")
            .to_owned()
    }

    async fn actor(&self) -> String {
        self.identity()
            .await
            .split('.')
            .next()
            .expect("id.sealing.proof")
            .to_owned()
    }

    async fn values(&self, resource: &str) -> BTreeMap<String, String> {
        serde_json::from_value(self.ok(&["get", resource]).await).expect("get prints a map")
    }

    async fn export(&self, resource: &str) -> Value {
        self.ok(&["export", resource]).await
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Starts `watch` on `device` and returns a receiver of the changes it prints.
fn watch(
    device: &Device,
    resource: &str,
) -> (tokio::process::Child, tokio::sync::mpsc::Receiver<Value>) {
    let mut child = device
        .command(&["watch", resource])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("zbase watch starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(value) = serde_json::from_str(&line)
                && tx.send(value).await.is_err()
            {
                break;
            }
        }
    });
    (child, rx)
}

async fn next_change(rx: &mut tokio::sync::mpsc::Receiver<Value>, key: &str) -> Value {
    let deadline = tokio::time::Instant::now() + LIVE_TIMEOUT;
    loop {
        let change = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("watch showed no change of {key} within {LIVE_TIMEOUT:?}"))
            .expect("watch keeps running");
        if change["key"] == key {
            return change;
        }
    }
}

/// Every file under `dir`, concatenated.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the data directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            all.extend(files_under(&path));
        } else {
            all.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

async fn scenario(scheme: &str) {
    // Default limits: a device cut off by a rotation must find its new keys without proving
    // the refused key over and over (20 failed handshakes a minute close its IP for a minute).
    let station = Station::builder().env("ZBASE_LOG", "debug").start().await;
    let tap = Tap::start(station.addr()).await;
    let url = format!("{scheme}://{}", tap.addr());
    let (laptop, phone, friend) = (
        Device::new(&url).await,
        Device::new(&url).await,
        Device::new(&url).await,
    );

    // The owner's laptop creates a resource and shares it with the owner's phone (another
    // device, so another actor, as an owner) and with a friend as an editor.
    let created = laptop.ok(&["create"]).await;
    let resource = created["resource"]
        .as_str()
        .expect("create prints the resource")
        .to_owned();
    let r = resource.as_str();
    laptop.ok(&["put", r, "color", "MARKER-blue-4c1d"]).await;
    laptop
        .ok(&["share", r, &phone.identity().await, "owner"])
        .await;
    laptop
        .ok(&["share", r, &friend.identity().await, "editor"])
        .await;
    let laptop_id = laptop.identity().await;
    phone.ok(&["join", r, "--from", &laptop_id]).await;
    friend.ok(&["join", r, "--from", &laptop_id]).await;
    assert_eq!(phone.values(r).await, map(&[("color", "MARKER-blue-4c1d")]));
    assert_eq!(
        friend.values(r).await,
        map(&[("color", "MARKER-blue-4c1d")])
    );

    // Offline edits on both devices, including one key both change, merge to one state.
    laptop
        .ok(&["put", r, "shape", "MARKER-round-77aa", "--offline"])
        .await;
    laptop
        .ok(&["put", r, "size", "from-laptop", "--offline"])
        .await;
    phone
        .ok(&["put", r, "size", "from-phone", "--offline"])
        .await;
    phone.ok(&["delete", r, "color", "--offline"]).await;
    phone.ok(&["sync", r]).await;
    laptop.ok(&["sync", r]).await;
    phone.ok(&["sync", r]).await;
    friend.ok(&["sync", r]).await;
    let merged = laptop.values(r).await;
    assert_eq!(
        merged.get("shape").map(String::as_str),
        Some("MARKER-round-77aa")
    );
    assert!(
        !merged.contains_key("color"),
        "the phone's delete merged: {merged:?}"
    );
    assert!(merged.contains_key("size"));
    assert_eq!(phone.values(r).await, merged, "the two devices converge");
    assert_eq!(friend.values(r).await, merged, "the member converges");

    // Live changes reach a watching device as deltas.
    let (mut watcher, mut changes) = watch(&phone, r);
    tokio::time::sleep(Duration::from_secs(1)).await;
    friend.ok(&["put", r, "live", "MARKER-live-9e01"]).await;
    let change = next_change(&mut changes, "live").await;
    assert_eq!(change["value"], "MARKER-live-9e01");

    // An editor cannot share: the CLI says so before anything is recorded or sent.
    let error = friend.fails(&["share", r, &laptop_id, "viewer"]).await;
    assert!(error.contains("does not allow"), "{error}");

    // The laptop revokes the friend while offline; the friend, not knowing, writes meanwhile.
    let friend_actor = friend.actor().await;
    laptop.ok(&["revoke", r, &friend_actor, "--offline"]).await;
    let concurrent = friend.ok(&["put", r, "color", "MARKER-junk-0bad"]).await;
    let concurrent = concurrent["operation"]
        .as_str()
        .expect("put prints its operation")
        .to_owned();
    // The laptop syncs: it takes in the friend's write, rotates the keys at the station and
    // sends the new keys to the phone's mailbox.
    let synced = laptop.ok(&["sync", r]).await;
    assert_eq!(synced["sync"]["rotated"], true, "{synced}");
    let after = "MARKER-after-5f5f";
    laptop.ok(&["put", r, "secret", after]).await;

    // The watching phone is cut off by the rotation, fetches the new keys from its mailbox,
    // and sees the write made under them.
    let change = next_change(&mut changes, "secret").await;
    assert_eq!(change["value"], after);
    watcher.kill().await.expect("stop watch");
    phone.ok(&["sync", r]).await;
    assert_eq!(
        phone.values(r).await.get("secret").map(String::as_str),
        Some(after)
    );

    // Every other actor rejects the friend's concurrent write.
    for device in [&laptop, &phone] {
        let values = device.values(r).await;
        assert_ne!(
            values.get("color").map(String::as_str),
            Some("MARKER-junk-0bad")
        );
        let export = device.export(r).await;
        let rejected = export["rejected"]
            .as_array()
            .expect("export lists rejections");
        assert!(
            rejected.iter().any(|x| x["operation"] == concurrent.as_str()
                && x["why"] == "RevokedConcurrently"),
            "{export}"
        );
        let members = export["members"].as_array().expect("members");
        assert!(
            members
                .iter()
                .any(|m| m["actor"] == friend_actor.as_str() && m["role"] == "revoked")
        );
    }

    // The friend keeps what it had, cannot connect any more, and cannot open the snapshot
    // written after the revocation.
    let error = friend.fails(&["sync", r]).await;
    assert!(error.contains("taken away"), "{error}");
    // Syncing everything, a resource of its own still syncs beside the one taken away, and
    // the failure is reported for that one alone.
    let own = friend.ok(&["create", "--station", &url]).await;
    let own = own["resource"]
        .as_str()
        .expect("create prints the resource");
    friend.ok(&["put", own, "note", "mine", "--offline"]).await;
    let all = friend.run(&["sync"]).await;
    assert!(!all.status.success(), "one resource could not sync");
    let lines: Vec<Value> = String::from_utf8_lossy(&all.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["resource"] == own && l["sync"]["confirmed"] == true),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["resource"] == r
            && l["error"]
                .as_str()
                .is_some_and(|e| e.contains("taken away"))),
        "{lines:?}"
    );
    assert!(
        String::from_utf8_lossy(&all.stderr).contains("1 of 2 resources did not sync"),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    assert_eq!(
        friend.values(r).await.get("shape").map(String::as_str),
        Some("MARKER-round-77aa")
    );
    assert!(!friend.values(r).await.contains_key("secret"));
    let id = ResourceId::parse(r).expect("a resource id");
    let snapshot = latest_snapshot(&station, &id).await;
    let friend_keys = Local::open(friend.home.path())
        .await
        .expect("the friend's store")
        .keys(&id)
        .await
        .expect("the friend's keys");
    assert!(matches!(
        zbase_actor::envelope::decrypt(&friend_keys, &id, &snapshot),
        Err(zbase_actor::EnvelopeError::NoKey(_))
    ));
    // Its writes are refused by the station too.
    let error = friend.fails(&["put", r, "color", "MARKER-junk-0bad"]).await;
    assert!(error.contains("taken away"), "{error}");

    // The station saw nothing: no value, key or actor identifier in its files, its debug log
    // or the bytes it exchanged with the devices.
    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for marker in [
        "MARKER-blue-4c1d",
        "MARKER-round-77aa",
        "MARKER-live-9e01",
        after,
        "from-laptop",
        "from-phone",
    ] {
        secrets.push((format!("value {marker}"), marker.as_bytes().to_vec()));
    }
    for (name, device) in [("laptop", &laptop), ("phone", &phone), ("friend", &friend)] {
        let actor = device.actor().await;
        secrets.push((format!("{name}'s actor id"), actor.as_bytes().to_vec()));
        let identity = device.identity().await;
        let sealing = identity.split('.').nth(1).expect("id.sealing");
        secrets.push((format!("{name}'s sealing key"), sealing.as_bytes().to_vec()));
        secrets.push((
            format!("{name}'s sealing key, raw"),
            zbase_proto::wire::decode_b64url(sealing).expect("base64url"),
        ));
        // The proof names its actor as surely as the key does.
        let proof = identity.split('.').nth(2).expect("id.sealing.proof");
        secrets.push((format!("{name}'s sealing proof"), proof.as_bytes().to_vec()));
        secrets.push((
            format!("{name}'s sealing proof, raw"),
            zbase_proto::wire::decode_b64url(proof).expect("base64url"),
        ));
        let raw = zbase_actor::ActorId::parse(&actor).expect("an actor id");
        secrets.push((format!("{name}'s actor id, raw"), raw.as_bytes().to_vec()));
        let local = Local::open(device.home.path()).await.expect("a store");
        for key in local.keys(&id).await.expect("keys") {
            secrets.push((
                format!("{name}'s content key {}", key.epoch()),
                key.bytes().to_vec(),
            ));
        }
        let held = local.resource(&id).await.expect("the resource");
        secrets.push((
            format!("{name}'s access key"),
            held.access.to_text().as_bytes().to_vec(),
        ));
    }
    let stored = files_under(station.data_dir());
    let log = station.stderr_log();
    assert!(
        log.contains("DEBUG") || log.contains("debug"),
        "the station logged at debug"
    );
    let sent = tap.to_station();
    let relayed = tap.from_station();
    assert!(relayed.len() > 10_000, "the tap saw the traffic");
    for (what, secret) in &secrets {
        assert!(
            !contains(&stored, secret),
            "{what} is in the station's files"
        );
        assert!(
            !contains(log.as_bytes(), secret),
            "{what} is in the station's log"
        );
        assert!(
            !contains(&relayed, secret),
            "{what} is in the bytes the station sent"
        );
        // WebSocket masks what clients send, so only gRPC's client bytes are worth searching.
        if scheme == "grpc" {
            assert!(
                !contains(&sent, secret),
                "{what} is in the bytes sent to the station"
            );
        }
    }
}

/// The snapshot the station stores for `id`, read from a running station over the wire by a
/// member that holds the current access key would be circular; read it from the database.
async fn latest_snapshot(station: &Station, id: &ResourceId) -> Vec<u8> {
    let db = station.data_dir().join("station.sqlite3");
    let url = format!("sqlite://{}?mode=ro", db.display());
    let pool = sqlx::SqlitePool::connect(&url)
        .await
        .expect("open the station's database");
    let row: (Vec<u8>,) = sqlx::query_as("SELECT snapshot FROM resources WHERE id = ?")
        .bind(id.as_str())
        .fetch_one(&pool)
        .await
        .expect("the resource's snapshot");
    row.0
}

#[tokio::test]
async fn devices_share_sync_and_revoke_through_a_station_over_websocket() {
    scenario("ws").await;
}

#[tokio::test]
async fn devices_share_sync_and_revoke_through_a_station_over_grpc() {
    scenario("grpc").await;
}

#[tokio::test]
async fn over_tls_offline_changes_wait_for_the_station_and_errors_say_what_to_do() {
    let ca = TestCa::new("station CA");
    let secret = tempfile::tempdir().expect("a directory for the certificate");
    let (cert, key) = write_pair(secret.path(), &ca.server_leaf(1));
    let ca_file = secret.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write the CA file");
    let mut station = Station::builder()
        .flag("tls-cert", cert.display())
        .flag("tls-key", key.display())
        .start()
        .await;
    // Devices keep one address across the station's restart (which picks a new port).
    let tap = Tap::start(station.addr()).await;
    let port = tap.addr().port();
    let wss = format!("wss://localhost:{port}");
    let grpcs = format!("grpcs://localhost:{port}");

    // One device on WebSocket over TLS, the other on gRPC over TLS, both trusting the CA.
    let laptop = Device::with_ca(&wss, Some(&ca_file)).await;
    let phone = Device::with_ca(&grpcs, Some(&ca_file)).await;
    let r = laptop.ok(&["create"]).await["resource"]
        .as_str()
        .expect("a resource")
        .to_owned();
    let r = r.as_str();
    laptop
        .ok(&["share", r, &phone.identity().await, "viewer"])
        .await;
    phone
        .ok(&["join", r, "--from", &laptop.identity().await])
        .await;
    assert_eq!(
        phone.ok(&["members", r]).await.as_array().map(Vec::len),
        Some(2)
    );

    // Without the CA, the certificate is not trusted, and the error says how to fix it.
    let untrusting = Device::with_ca(&wss, None).await;
    let error = untrusting.fails(&["create"]).await;
    assert!(error.contains("certificate"), "{error}");

    // The station goes away: a change is kept on the device and sent when it is back.
    station.kill().await;
    let put = laptop
        .ok(&["put", r, "note", "written while the station was down"])
        .await;
    assert_eq!(put["synced"], false, "{put}");
    assert!(
        put["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("unreachable"),
        "{put}"
    );
    let error = phone.fails(&["sync", r]).await;
    assert!(error.contains("unreachable"), "{error}");
    station.restart().await;
    tap.retarget(station.addr());
    let synced = laptop.ok(&["sync", r]).await;
    assert_eq!(synced["sync"]["sent"], 1, "{synced}");
    phone.ok(&["sync", r]).await;
    assert_eq!(
        phone.values(r).await.get("note").map(String::as_str),
        Some("written while the station was down")
    );

    // A viewer may read but not write.
    let error = phone.fails(&["put", r, "note", "mine"]).await;
    assert!(
        error.contains("viewer") && error.contains("does not allow"),
        "{error}"
    );

    // Clear errors for the usual mistakes.
    let error = Device::uninitialised(&wss, Some(&ca_file))
        .fails(&["whoami"])
        .await;
    assert!(error.contains("zbase init"), "{error}");
    let error = laptop
        .fails(&["get", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"])
        .await;
    assert!(error.contains("not on this device"), "{error}");
    let error = laptop.fails(&["get", "not-an-id"]).await;
    assert!(error.contains("not a resource identifier"), "{error}");
    let error = laptop.fails(&["share", r, "someone", "editor"]).await;
    assert!(error.contains("zbase whoami"), "{error}");
    let error = laptop
        .fails(&["share", r, &phone.identity().await, "admin"])
        .await;
    assert!(error.contains("not a role"), "{error}");
    let stranger = Device::with_ca(&wss, Some(&ca_file)).await;
    let error = stranger
        .fails(&["join", r, "--from", &laptop.identity().await])
        .await;
    assert!(error.contains("nothing shared"), "{error}");
    let closed = Device::new("ws://127.0.0.1:9").await;
    let error = closed.fails(&["create"]).await;
    assert!(error.contains("unreachable"), "{error}");
    let error = closed
        .fails(&["create", "--station", "http://127.0.0.1:9"])
        .await;
    assert!(
        error.contains("ws://, wss://, grpc:// or grpcs://"),
        "{error}"
    );
}

/// A station, a resource its owner shared with a member in `role`, and a third device.
struct Shared {
    station: Station,
    url: String,
    owner: Device,
    member: Device,
    other: Device,
    resource: String,
    /// The owner's public identity.
    owner_id: String,
}

impl Shared {
    async fn start(role: &str) -> Shared {
        let station = Station::start().await;
        let url = format!("ws://{}", station.addr());
        let (owner, member, other) = (
            Device::new(&url).await,
            Device::new(&url).await,
            Device::new(&url).await,
        );
        let resource = owner.ok(&["create"]).await["resource"]
            .as_str()
            .expect("a resource")
            .to_owned();
        let owner_id = owner.identity().await;
        owner
            .ok(&["share", &resource, &member.identity().await, role])
            .await;
        member.ok(&["join", &resource, "--from", &owner_id]).await;
        Shared {
            station,
            url,
            owner,
            member,
            other,
            resource,
            owner_id,
        }
    }
}

#[tokio::test]
async fn keys_reach_the_members_after_a_lost_rotation_answer_and_never_a_revoked_one() {
    let Shared {
        station: _station,
        url,
        owner,
        member,
        other: dropped,
        resource,
        owner_id,
    } = Shared::start("editor").await;
    let r = resource.as_str();

    // Shared and revoked before any sync: the keys must never be sent to it.
    owner
        .ok(&["share", r, &dropped.identity().await, "viewer", "--offline"])
        .await;
    owner
        .ok(&["revoke", r, &dropped.actor().await, "--offline"])
        .await;

    // The owner's device starts the rotation the revocation calls for, the station takes it,
    // and the answer never reaches the device (it is cut off here, as by a crash).
    let id = ResourceId::parse(r).expect("a resource id");
    let device = zbase_actor::Device::open(owner.home.path(), None)
        .await
        .expect("the owner's device");
    let held = device.local().resource(&id).await.expect("held");
    let (next, _) = device
        .local()
        .begin_rotation(
            &id,
            &zbase_actor::AccessKey::generate(&mut rand::rngs::OsRng),
            &[0x5a; 32],
        )
        .await
        .expect("record the rotation");
    let at = zbase_actor::station::Station::parse(&url, None).expect("a station URL");
    let (mut session, _) = at.open(&id, &held.access).await.expect("verify");
    session
        .rotate(&held.access, &next)
        .await
        .expect("the station rotates");
    drop(session);
    drop(device);

    // The next sync finds the old key refused and the new one accepted: it installs the keys,
    // writes under the new epoch and sends the keys to the member, not to the revoked one.
    let synced = owner.ok(&["sync", r]).await;
    assert_eq!(synced["sync"]["delivered"], 1, "{synced}");
    owner.ok(&["put", r, "after", "the rotation"]).await;
    member.ok(&["sync", r]).await;
    assert_eq!(
        member.values(r).await.get("after").map(String::as_str),
        Some("the rotation")
    );
    let error = dropped.fails(&["join", r, "--from", &owner_id]).await;
    assert!(error.contains("nothing shared"), "{error}");
}

/// `zbase rotate` replaces the keys on request (an owner's or manager's); a member shared by a
/// manager confirms who the owner is; and two `zbase` processes on one home carrying out the
/// same due rotation at once agree on its keys: the device is not locked out of its own
/// resource, and the members get the keys it holds.
#[tokio::test]
async fn a_rotation_on_request_and_two_processes_rotating_at_once() {
    let Shared {
        station: _station,
        owner,
        member,
        other: third,
        resource,
        ..
    } = Shared::start("manager").await;
    let r = resource.as_str();

    // On request: new keys, sent to the member, who is cut off and finds them in its mailbox.
    let rotated = owner.ok(&["rotate", r]).await;
    assert_eq!(rotated["sync"]["rotated"], true, "{rotated}");
    assert_eq!(rotated["sync"]["delivered"], 1, "{rotated}");
    owner.ok(&["put", r, "after", "one"]).await;
    member.ok(&["sync", r]).await;
    assert_eq!(
        member.values(r).await.get("after").map(String::as_str),
        Some("one")
    );

    // The manager shares with a third actor. The keyring names the owner, but the sharer is
    // not the owner, so the third actor confirms whom it trusts as the root.
    member
        .ok(&["share", r, &third.identity().await, "viewer"])
        .await;
    let member_id = member.identity().await;
    let owner_actor = owner.actor().await;
    let error = third.fails(&["join", r, "--from", &member_id]).await;
    assert!(error.contains(&format!("--owner {owner_actor}")), "{error}");
    let member_actor = member.actor().await;
    let error = third
        .fails(&["join", r, "--from", &member_id, "--owner", &member_actor])
        .await;
    assert!(error.contains(&format!("not {member_actor}")), "{error}");
    third
        .ok(&["join", r, "--from", &member_id, "--owner", &owner_actor])
        .await;
    assert_eq!(
        third.values(r).await.get("after").map(String::as_str),
        Some("one")
    );
    // A viewer may not rotate.
    let error = third.fails(&["rotate", r]).await;
    assert!(
        error.contains("only an owner or a manager rotates"),
        "{error}"
    );

    // A revocation recorded offline, then two syncs of the same home at once: both carry out
    // the due rotation, one of them wins at the station.
    owner.ok(&["sync", r]).await;
    owner
        .ok(&["revoke", r, &third.actor().await, "--offline"])
        .await;
    let sync = ["sync", r];
    let (a, b) = tokio::join!(owner.run(&sync), owner.run(&sync));
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rotations = [&a, &b]
        .iter()
        .filter(|out| {
            let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
            report["sync"]["rotated"] == true
        })
        .count();
    assert!(rotations >= 1, "one of them rotated");

    // The device still syncs with the keys it installed, the member reads what it writes
    // next, and the revoked viewer is out.
    owner.ok(&["put", r, "after", "two"]).await;
    let synced = owner.ok(&["sync", r]).await;
    assert_eq!(synced["sync"]["confirmed"], true, "{synced}");
    member.ok(&["sync", r]).await;
    assert_eq!(
        member.values(r).await.get("after").map(String::as_str),
        Some("two")
    );
    let error = third.fails(&["sync", r]).await;
    assert!(error.contains("taken away"), "{error}");
}
