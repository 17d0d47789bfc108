//! Per-client-IP admission: open connections and failed handshakes (WIRE.md section 9).
//!
//! The only state shared between resources on the connection path; it is sharded and held for
//! a map lookup, never across an await.

use dashmap::DashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Why a connection is refused at the door. Both close with 1013 / `RESOURCE_EXHAUSTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The IP already holds its share of connections.
    TooManyConnections,
    /// The IP failed too many handshakes recently.
    Throttled,
}

#[derive(Debug, Default)]
struct IpState {
    connections: usize,
    window_start: Option<Instant>,
    failures: u32,
    banned_until: Option<Instant>,
}

impl IpState {
    fn banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|until| now < until)
    }

    fn idle(&self, now: Instant) -> bool {
        self.connections == 0
            && !self.banned(now)
            && self
                .window_start
                .is_none_or(|start| now.duration_since(start) >= FAILURE_WINDOW)
    }
}

/// Admission state for every client IP.
#[derive(Debug, Clone)]
pub struct Admission {
    ips: Arc<DashMap<IpAddr, IpState>>,
    connections_per_ip: usize,
    failures_per_minute: u32,
    ban: Duration,
}

/// A connection's place in its IP's budget, given back on drop.
#[derive(Debug)]
pub struct IpPermit {
    admission: Admission,
    ip: IpAddr,
}

impl Admission {
    /// Admission with the given bounds.
    pub fn new(connections_per_ip: usize, failures_per_minute: u32, ban: Duration) -> Admission {
        Admission {
            ips: Arc::new(DashMap::new()),
            connections_per_ip,
            failures_per_minute,
            ban,
        }
    }

    /// Admits one connection from `ip`, or says why not.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<IpPermit, Refusal> {
        let mut state = self.ips.entry(ip).or_default();
        if state.banned(now) {
            return Err(Refusal::Throttled);
        }
        if state.connections >= self.connections_per_ip {
            return Err(Refusal::TooManyConnections);
        }
        state.connections += 1;
        Ok(IpPermit {
            admission: self.clone(),
            ip,
        })
    }

    /// Counts a failed handshake (bad proof, bad configuration, timeout) against `ip`.
    /// Returns true when this failure starts a ban.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) -> bool {
        let mut state = self.ips.entry(ip).or_default();
        let fresh = state
            .window_start
            .is_none_or(|start| now.duration_since(start) >= FAILURE_WINDOW);
        if fresh {
            state.window_start = Some(now);
            state.failures = 0;
        }
        state.failures = state.failures.saturating_add(1);
        if state.failures >= self.failures_per_minute && !state.banned(now) {
            state.banned_until = Some(now + self.ban);
            // The ban replaces the window: after it, the IP starts with a clean slate.
            state.window_start = None;
            state.failures = 0;
            return true;
        }
        false
    }

    fn release(&self, ip: IpAddr) {
        let now = Instant::now();
        if let Some(mut state) = self.ips.get_mut(&ip) {
            state.connections = state.connections.saturating_sub(1);
        }
        // Forget IPs with nothing to remember, so a scan of addresses cannot grow the map.
        self.ips.remove_if(&ip, |_, state| state.idle(now));
    }

    /// IPs currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.ips.len()
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn s9_connections_per_ip_are_bounded_and_released() {
        let admission = Admission::new(2, 20, Duration::from_secs(60));
        let now = Instant::now();
        let a = admission.admit(ip(1), now).unwrap();
        let _b = admission.admit(ip(1), now).unwrap();
        assert_eq!(
            admission.admit(ip(1), now).unwrap_err(),
            Refusal::TooManyConnections
        );
        assert!(
            admission.admit(ip(2), now).is_ok(),
            "other IPs are unaffected"
        );
        drop(a);
        assert!(admission.admit(ip(1), now).is_ok());
    }

    #[test]
    fn s9_failed_handshakes_ban_one_ip_for_the_ban_period() {
        let admission = Admission::new(256, 3, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!admission.record_failure(ip(1), t0));
        assert!(!admission.record_failure(ip(1), t0));
        assert!(admission.record_failure(ip(1), t0));
        assert_eq!(admission.admit(ip(1), t0).unwrap_err(), Refusal::Throttled);
        assert!(admission.admit(ip(2), t0).is_ok());
        let later = t0 + Duration::from_secs(61);
        assert!(admission.admit(ip(1), later).is_ok(), "the ban ends");
    }

    #[test]
    fn s9_failures_older_than_a_minute_do_not_count() {
        let admission = Admission::new(256, 3, Duration::from_secs(60));
        let t0 = Instant::now();
        admission.record_failure(ip(1), t0);
        admission.record_failure(ip(1), t0);
        let later = t0 + Duration::from_secs(61);
        assert!(!admission.record_failure(ip(1), later));
        assert!(admission.admit(ip(1), later).is_ok());
    }

    #[test]
    fn idle_ips_are_forgotten() {
        let admission = Admission::new(256, 20, Duration::from_secs(60));
        for last in 1..=50 {
            drop(admission.admit(ip(last), Instant::now()).unwrap());
        }
        assert_eq!(admission.tracked(), 0);
    }
}
