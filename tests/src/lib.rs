//! Test harness for the real zbase binaries: start a station in a fresh directory on port 0,
//! talk to it over WebSocket and gRPC as an independent client would, kill it for real; and
//! throwaway PostgreSQL servers for the store tests of both crates, and several pods on one
//! of them behind HAProxy; a throwaway PKI for TLS tests; an in-memory stand-in Kubernetes API
//! server over HTTP, a stand-in kubelet that runs the operator's pod templates as local
//! processes, and the operator's Helm chart linted and rendered by the real Helm engine.

pub mod apiserver;
pub mod client;
pub mod helm;
pub mod kubelet;
pub mod netns;
pub mod pods;
pub mod postgres;
pub mod restored;
pub mod sites;
pub mod station;
pub mod tap;
pub mod tls;
