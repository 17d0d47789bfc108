//! Several release stations ("pods") on one PostgreSQL database, for figures 7 and 8.
//!
//! Each pod is started like every other server of the bench ([`procs::station`]: release
//! binary, port 0, its own process), plus the cluster flags: the shared `--store`, its own
//! `--pod-id`, an internal port on 127.0.0.1 (which a pod advertises by itself when the address
//! is a specific IP) and a short lease. No HAProxy: every figure chooses which pod each peer
//! connects to, and the bench must know which one is home to each resource. It replicates the
//! station's rendezvous hash for that (cluster/view.rs `score`) rather than asking, so a
//! placement is decided before any connection exists and cannot be disturbed by measuring it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::bail;
use zbase_proto::wire::ResourceId;

use crate::load::Target;
use crate::procs::{self, Server};

/// The lease the pods run with: the harness's (tests/src/pods.rs), short enough that pods join
/// each other quickly.
const LEASE: &str = "2s";
/// How long every pod may take to see every other as a member.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Running pods on one database.
pub struct Deployment {
    /// Each pod, in `--pod-id` order (`pod-0`, `pod-1`, ...).
    pub pods: Vec<Target>,
    names: Vec<String>,
}

impl Deployment {
    /// Starts `n` pods on the database at `url`, their data directories under `dir/name-i`,
    /// and waits until every pod counts `n` members.
    pub async fn start(dir: &Path, name: &str, n: usize, url: &str) -> anyhow::Result<Deployment> {
        let names: Vec<String> = (0..n).map(|i| format!("pod-{i}")).collect();
        let mut pods = Vec::with_capacity(n);
        for pod in &names {
            let flags = [
                ("store", url.to_owned()),
                ("pod-id", pod.clone()),
                ("internal-listen", "127.0.0.1:0".to_owned()),
                ("lease", LEASE.to_owned()),
            ];
            let server = procs::station(&dir.join(format!("{name}-{pod}")), &flags).await?;
            pods.push(Target::station(server));
        }
        let deployment = Deployment { pods, names };
        deployment.settle().await?;
        Ok(deployment)
    }

    async fn settle(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut members = Vec::with_capacity(self.pods.len());
            for pod in &self.pods {
                members.push(pod.server.metric("zbase_cluster_members").await?);
            }
            if members.iter().all(|m| *m == self.pods.len() as f64) {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the pods did not all see each other within {SETTLE_TIMEOUT:?}: {members:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The index of the pod home to `id`: the highest rendezvous score, as every pod computes it.
    pub fn home(&self, id: &ResourceId) -> usize {
        (0..self.names.len())
            .max_by_key(|&i| (score(&self.names[i], id), self.names[i].as_str()))
            .unwrap_or(0)
    }

    /// Pod `index`'s public address.
    pub fn addr(&self, index: usize) -> SocketAddr {
        self.pods[index].addr()
    }

    /// Every pod's process, for their CPU time.
    pub fn servers(&self) -> Vec<&Server> {
        self.pods.iter().map(|pod| &pod.server).collect()
    }

    /// Kills every pod and waits for each.
    pub async fn stop(self) {
        for pod in self.pods {
            pod.server.stop().await;
        }
    }
}

/// The station's rendezvous score of `pod` for `id` (cluster/view.rs): blake3 of the pod's
/// name, a zero byte and the identifier's text; the first 8 bytes, big-endian.
fn score(pod: &str, id: &ResourceId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(pod.as_bytes());
    hasher.update(&[0]);
    hasher.update(id.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first)
}
