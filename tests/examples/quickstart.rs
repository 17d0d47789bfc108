//! A first look at a running station: create a resource, verify two peers, relay a delta, store
//! and fetch a snapshot. Run `make run` in one terminal and `make demo` in another.
//!
//! It speaks WIRE.md directly over WebSocket, so it is also the shortest complete client to
//! read: every frame is `[0x01][code][payload]`, every proof an Ed25519 signature.

use anyhow::{Context, bail};
use ed25519_dalek::{Signer, SigningKey};
use futures::{SinkExt, StreamExt};
use rand::RngCore;
use tokio_tungstenite::tungstenite::Message;
use zbase_proto::wire::{Code, Frame, ResourceId, config_message, encode_b64url, verify_message};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let station = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let key = SigningKey::generate(&mut rand::rngs::OsRng);

    // 1. Configure: propose a random identifier and prove the key over the challenge.
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let proposed = ResourceId::from_bytes(raw);
    let mut socket = open(&station, &proposed).await?;
    let challenge = expect(&mut socket, Code::RequireConfig).await?;
    let proof = key.sign(&config_message(
        &challenge.as_slice().try_into()?,
        &proposed,
    ));
    let config = serde_json::json!({
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": encode_b64url(key.verifying_key().as_bytes())},
        "proof": encode_b64url(&proof.to_bytes()),
    });
    send(
        &mut socket,
        Code::SubmitConfig,
        config.to_string().into_bytes(),
    )
    .await?;
    let offered = expect(&mut socket, Code::OfferConfig).await?;
    let id = ResourceId::parse(std::str::from_utf8(&offered)?)?;
    println!("created resource {id}");

    // 2. Two devices holding the key verify on the authoritative identifier.
    let mut alice = verified(&station, &id, &key).await?;
    let mut bob = verified(&station, &id, &key).await?;
    println!("two peers verified");

    // 3. A delta from one reaches the other, never the sender.
    send(
        &mut alice,
        Code::SubmitDelta,
        b"encrypted delta from alice".to_vec(),
    )
    .await?;
    let delta = expect(&mut bob, Code::ForwardDelta).await?;
    println!("bob received a delta: {}", String::from_utf8_lossy(&delta));

    // 4. A snapshot is stored; asking for state returns it.
    send(
        &mut alice,
        Code::SubmitSnapshot,
        b"encrypted snapshot v1".to_vec(),
    )
    .await?;
    send(&mut bob, Code::SubmitRequest, b"sync please".to_vec()).await?;
    let forwarded = expect(&mut alice, Code::ForwardRequest).await?;
    println!(
        "alice saw bob's request: {}",
        String::from_utf8_lossy(&forwarded)
    );
    loop {
        let frame = next(&mut bob).await?;
        if matches!(frame.code(), Code::OfferSnapshot | Code::ForwardResponse) {
            println!(
                "bob got the snapshot: {}",
                String::from_utf8_lossy(frame.payload())
            );
            break;
        }
    }
    println!("done: the station relayed and stored only opaque bytes");
    Ok(())
}

async fn open(station: &str, id: &ResourceId) -> anyhow::Result<Socket> {
    let url = format!("ws://{station}/v1/resources/{id}");
    let (socket, _) = tokio_tungstenite::connect_async(&url)
        .await
        .with_context(|| format!("cannot reach {url}: is `make run` running?"))?;
    Ok(socket)
}

async fn verified(station: &str, id: &ResourceId, key: &SigningKey) -> anyhow::Result<Socket> {
    let mut socket = open(station, id).await?;
    let challenge = expect(&mut socket, Code::RequireVerification).await?;
    let signature = key.sign(&verify_message(&challenge.as_slice().try_into()?, id));
    send(
        &mut socket,
        Code::SubmitVerification,
        signature.to_bytes().to_vec(),
    )
    .await?;
    Ok(socket)
}

async fn send(socket: &mut Socket, code: Code, payload: Vec<u8>) -> anyhow::Result<()> {
    let frame = Frame::new(code, payload)?;
    socket.send(Message::Binary(frame.encode())).await?;
    Ok(())
}

async fn next(socket: &mut Socket) -> anyhow::Result<Frame> {
    loop {
        match socket
            .next()
            .await
            .context("the station closed the connection")??
        {
            Message::Binary(bytes) => return Ok(Frame::decode(bytes, usize::MAX)?),
            Message::Close(close) => bail!("the station closed the connection: {close:?}"),
            _ => continue,
        }
    }
}

async fn expect(socket: &mut Socket, code: Code) -> anyhow::Result<Vec<u8>> {
    let frame = next(socket).await?;
    if frame.code() != code {
        bail!("expected {code}, got {}", frame.code());
    }
    Ok(frame.payload().to_vec())
}
