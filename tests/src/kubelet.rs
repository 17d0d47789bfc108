//! A stand-in kubelet: runs the container of a pod template the operator rendered as a local
//! process, so a test proves that the command, arguments, environment and mounted files the
//! operator writes start the real binary (a renamed flag or key on either side fails it).
//!
//! What it does as a kubelet would: the files of each volume appear at their mount path
//! (under a private root, and every path in arguments and mounted files is rewritten to that
//! root); `fieldRef` variables get the pod's name, namespace and IP; `$(VAR)` references to
//! earlier variables are expanded; the termination message file is the pod's own, read back
//! as Kubernetes puts it in the pod's status. What it cannot do: container ports are moved
//! to free loopback ports (rewritten the same way), and images are not pulled (the binary is
//! given). A pod started with [`LocalPod::start_at`] has a loopback IP of its own instead and
//! keeps its container ports, as a pod with its own IP does: then another process (the
//! operator) reaches it at `podIP:containerPort` exactly as it would in a cluster.

// A test harness: a failure to set up the pod is the test's failure, said where it happens.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

/// Files to put in a volume: file name to contents.
pub type VolumeFiles = BTreeMap<String, Vec<u8>>;

/// What a volume of a local pod holds.
pub enum LocalVolume {
    /// These files, written into the pod's own root (a Secret, a ConfigMap).
    Files(VolumeFiles),
    /// This host folder, shared with whoever else mounts it (one claim, two pods).
    Shared(PathBuf),
}

impl From<VolumeFiles> for LocalVolume {
    fn from(files: VolumeFiles) -> Self {
        LocalVolume::Files(files)
    }
}

/// A container of a pod template running as a local process; killed on drop.
pub struct LocalPod {
    child: Child,
    root: tempfile::TempDir,
    ports: BTreeMap<String, SocketAddr>,
    termination_log: PathBuf,
}

impl LocalPod {
    /// Starts container `container` of `template` from `binary`, with `volumes` (volume name
    /// to files or a shared folder) mounted where the container's volumeMounts say, and
    /// `extra_env` set (over the template's variables of the same name, which are then not
    /// resolved).
    pub fn start(
        template: &PodTemplateSpec,
        container: &str,
        binary: &Path,
        volumes: &BTreeMap<String, LocalVolume>,
        pod_name: &str,
        namespace: &str,
        extra_env: &[(&str, String)],
    ) -> LocalPod {
        LocalPod::start_inner(
            template, container, binary, volumes, pod_name, namespace, extra_env, None,
        )
    }

    /// As [`LocalPod::start`], but the pod has the loopback IP `pod_ip` to itself (its
    /// `status.podIP`) and every container port keeps its number there.
    #[allow(clippy::too_many_arguments)]
    pub fn start_at(
        pod_ip: std::net::IpAddr,
        template: &PodTemplateSpec,
        container: &str,
        binary: &Path,
        volumes: &BTreeMap<String, LocalVolume>,
        pod_name: &str,
        namespace: &str,
        extra_env: &[(&str, String)],
    ) -> LocalPod {
        LocalPod::start_inner(
            template,
            container,
            binary,
            volumes,
            pod_name,
            namespace,
            extra_env,
            Some(pod_ip),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn start_inner(
        template: &PodTemplateSpec,
        container: &str,
        binary: &Path,
        volumes: &BTreeMap<String, LocalVolume>,
        pod_name: &str,
        namespace: &str,
        extra_env: &[(&str, String)],
        pod_ip: Option<std::net::IpAddr>,
    ) -> LocalPod {
        let spec = template.spec.as_ref().expect("a pod template has a spec");
        // An init container runs the same way: to its end, before the others.
        let c: &Container = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .find(|c| c.name == container)
            .unwrap_or_else(|| panic!("no container named {container}"));
        let root = tempfile::tempdir().expect("pod root");

        // Ports first: every file and argument is rewritten with them.
        let mut ports = BTreeMap::new();
        let mut rewrites: Vec<(String, String)> = Vec::new();
        for port in c.ports.iter().flatten() {
            let free = match pod_ip {
                // The pod's own address: the port must be free there, as on a fresh pod.
                Some(ip) => {
                    let number = u16::try_from(port.container_port).expect("a port number");
                    TcpListener::bind((ip, number))
                        .unwrap_or_else(|e| panic!("{ip}:{number} is taken: {e}"))
                        .local_addr()
                        .expect("addr")
                }
                None => TcpListener::bind("127.0.0.1:0")
                    .expect("free port")
                    .local_addr()
                    .expect("addr"),
            };
            let name = port
                .name
                .clone()
                .unwrap_or_else(|| port.container_port.to_string());
            ports.insert(name, free);
            rewrites.push((format!("0.0.0.0:{}", port.container_port), free.to_string()));
        }
        let mounts: Vec<(String, String)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect();
        let mounted = |volume: &str, path: &str| match volumes.get(volume) {
            Some(LocalVolume::Shared(dir)) => dir.clone(),
            _ => host_path(root.path(), path),
        };
        for (volume, path) in &mounts {
            rewrites.push((path.clone(), mounted(volume, path).display().to_string()));
        }
        // The file whose content Kubernetes reports as the container's termination message.
        let termination = c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into());
        let termination_log = host_path(root.path(), &termination);
        std::fs::create_dir_all(termination_log.parent().expect("a file has a folder"))
            .expect("termination log folder");
        rewrites.push((termination, termination_log.display().to_string()));
        // Longest first, so a mount inside another's path is rewritten as itself.
        rewrites.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        // One pass, longest match first: a host path that was put in is never rewritten again
        // (the pod's root is itself under /tmp, which may be a mount path).
        let rewrite = |text: &str| {
            let mut out = String::with_capacity(text.len());
            let mut rest = text;
            while let Some(c) = rest.chars().next() {
                match rewrites
                    .iter()
                    .find(|(from, _)| rest.starts_with(from.as_str()))
                {
                    Some((from, to)) => {
                        out.push_str(to);
                        rest = &rest[from.len()..];
                    }
                    None => {
                        out.push(c);
                        rest = &rest[c.len_utf8()..];
                    }
                }
            }
            out
        };

        for (volume, path) in &mounts {
            let dir = mounted(volume, path);
            std::fs::create_dir_all(&dir).expect("mount dir");
            let files = match volumes.get(volume) {
                Some(LocalVolume::Files(files)) => Some(files),
                _ => None,
            };
            for (file, contents) in files.into_iter().flatten() {
                let contents = match std::str::from_utf8(contents) {
                    Ok(text) => rewrite(text).into_bytes(),
                    Err(_) => contents.clone(),
                };
                std::fs::write(dir.join(file), contents).expect("volume file");
            }
        }

        let mut env: Vec<(String, String)> = Vec::new();
        for var in c.env.iter().flatten() {
            // What the caller gives is not resolved (a Secret's key, say): it is set below.
            if extra_env.iter().any(|(name, _)| *name == var.name) {
                continue;
            }
            let value = match (&var.value, &var.value_from) {
                (Some(v), _) => expand(v, &env),
                (None, Some(from)) => {
                    match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                        Some("metadata.name") => pod_name.to_owned(),
                        Some("metadata.namespace") => namespace.to_owned(),
                        Some("status.podIP") => {
                            pod_ip.map_or_else(|| "127.0.0.1".to_owned(), |ip| ip.to_string())
                        }
                        other => panic!(
                            "the stand-in kubelet cannot resolve {} from {other:?}",
                            var.name
                        ),
                    }
                }
                (None, None) => String::new(),
            };
            env.push((var.name.clone(), rewrite(&value)));
        }

        let args: Vec<String> = c
            .command
            .iter()
            .flatten()
            .skip(1)
            .chain(c.args.iter().flatten())
            .map(|a| rewrite(&expand(a, &env)))
            .collect();
        let child = Command::new(binary)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .envs(extra_env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.path().join("stderr.log")).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        LocalPod {
            child,
            root,
            ports,
            termination_log,
        }
    }

    /// Where the named container port is reachable.
    pub fn port(&self, name: &str) -> SocketAddr {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no container port named {name}"))
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        std::fs::read_to_string(self.root.path().join("stderr.log")).unwrap_or_default()
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Waits for the process to end, as a Job's pod does; `None` if it still runs after
    /// `limit` (it is then killed on drop).
    pub async fn finished(&mut self, limit: std::time::Duration) -> Option<ExitStatus> {
        let until = std::time::Instant::now() + limit;
        while std::time::Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    }

    /// What the container wrote to its termination message file, which Kubernetes would put
    /// in the pod's status.
    pub fn termination_message(&self) -> String {
        std::fs::read_to_string(&self.termination_log).unwrap_or_default()
    }

    /// Where the container's `path`, in a volume of the pod's own, is on this host.
    pub fn host_path(&self, path: &str) -> PathBuf {
        host_path(self.root.path(), path)
    }
}

impl Drop for LocalPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_path(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Expands `$(NAME)` references to earlier variables, as the kubelet does.
fn expand(text: &str, env: &[(String, String)]) -> String {
    env.iter().fold(text.to_owned(), |acc, (k, v)| {
        acc.replace(&format!("$({k})"), v)
    })
}
