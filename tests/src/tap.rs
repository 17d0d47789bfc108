//! A wire tap: a TCP relay in front of a station that keeps a copy of every byte it passes,
//! both ways, so a test can search what the station was sent and what it relayed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The relay; it stops when dropped.
pub struct Tap {
    addr: SocketAddr,
    station: Arc<Mutex<SocketAddr>>,
    to_station: Arc<Mutex<Vec<u8>>>,
    from_station: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// Listens on a free loopback port and relays every connection to `station`.
    pub async fn start(station: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the tap");
        let addr = listener.local_addr().expect("the tap's address");
        let to_station = Arc::new(Mutex::new(Vec::new()));
        let from_station = Arc::new(Mutex::new(Vec::new()));
        let station = Arc::new(Mutex::new(station));
        let (up, down, target) = (to_station.clone(), from_station.clone(), station.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (up, down) = (up.clone(), down.clone());
                let station = *target.lock().expect("tap target lock");
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(station).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        copy(client_read, server_write, up),
                        copy(server_read, client_write, down)
                    );
                });
            }
        });
        Tap {
            addr,
            station,
            to_station,
            from_station,
            task,
        }
    }

    /// Where clients connect instead of the station.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays new connections to `station` from now on (a station restarted on another port).
    pub fn retarget(&self, station: SocketAddr) {
        *self.station.lock().expect("tap target lock") = station;
    }

    /// Every byte clients sent the station so far.
    pub fn to_station(&self) -> Vec<u8> {
        self.to_station.lock().expect("tap record lock").clone()
    }

    /// Every byte the station sent clients so far.
    pub fn from_station(&self) -> Vec<u8> {
        self.from_station.lock().expect("tap record lock").clone()
    }
}

async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    record: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                record
                    .lock()
                    .expect("tap record lock")
                    .extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}
