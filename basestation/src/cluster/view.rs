//! One pod's picture of the membership, and the pure decisions it supports: which pod is home
//! to a resource (rendezvous hashing), and whether a pod may serve it yet.
//!
//! Rendezvous (highest random weight) hashing scores every eligible member for an identifier
//! and picks the highest score. When a member leaves, only the resources it was home to move,
//! each to its own runner-up, so the load spreads instead of landing on one neighbour; when a
//! member joins, it takes an even share from each of the others. No ring, no virtual nodes,
//! no state to agree on beyond the member list itself.

use zbase_proto::wire::ResourceId;

/// One registered pod as the membership table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The pod's stable name (a StatefulSet pod name, or `--pod-id`).
    pub pod: String,
    /// Where its internal port is reached, `host:port`.
    pub address: String,
    /// Set while the pod hands its resources over before exiting: no longer a home, but
    /// still owed an acknowledgement.
    pub leaving: bool,
    /// The highest membership generation whose changes this pod has applied.
    pub acked: u64,
}

/// The membership at one generation, seen from pod `me`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Bumped on every join, leave and expiry; views of the same generation agree.
    pub generation: u64,
    /// Every registered member (lapsed ones until removed), in pod order.
    pub members: Vec<Member>,
    /// This pod's name.
    pub me: String,
}

/// Where a connection for one resource must go under a view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This pod is home and every member has applied the view: serve it here.
    Local,
    /// This pod is home, but some member has not yet let go of resources it was home to
    /// under an older view: wait, or the resource could have two homes.
    Settling,
    /// Another pod is home: relay the connection to its internal address.
    Remote {
        /// The home pod's name.
        pod: String,
        /// Its internal address.
        address: String,
    },
    /// No pod can be home (this pod is leaving or not a member, or nobody is eligible).
    Unavailable,
}

/// The rendezvous score of `pod` for `id`: a keyless hash, so every pod computes the same.
fn score(pod: &str, id: &ResourceId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(pod.as_bytes());
    // A separator, so pod "ab" with id "c…" never hashes like pod "a" with id "bc…".
    hasher.update(&[0]);
    hasher.update(id.as_str().as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_be_bytes(first)
}

impl View {
    /// The member that is home to `id`: the highest score among members not leaving (ties,
    /// astronomically unlikely, go to the greater pod name so every pod agrees).
    pub fn home(&self, id: &ResourceId) -> Option<&Member> {
        self.members
            .iter()
            .filter(|member| !member.leaving)
            .max_by_key(|member| (score(&member.pod, id), member.pod.as_str()))
    }

    /// True once every member (leaving ones included) has applied this generation.
    pub fn settled(&self) -> bool {
        self.members
            .iter()
            .all(|member| member.acked >= self.generation)
    }

    /// This pod's own entry, if it is a member.
    pub fn own(&self) -> Option<&Member> {
        self.members.iter().find(|member| member.pod == self.me)
    }

    /// Where a connection for `id` goes under this view.
    pub fn route(&self, id: &ResourceId) -> Route {
        if self.own().is_none_or(|own| own.leaving) {
            return Route::Unavailable;
        }
        match self.home(id) {
            None => Route::Unavailable,
            Some(home) if home.pod == self.me => {
                if self.settled() {
                    Route::Local
                } else {
                    Route::Settling
                }
            }
            Some(home) => Route::Remote {
                pod: home.pod.clone(),
                address: home.address.clone(),
            },
        }
    }

    /// True if this pod is home to `id` under this view (settled or not): what a resource
    /// task checks to know whether it must let go.
    pub fn is_home(&self, id: &ResourceId) -> bool {
        self.own().is_some_and(|own| !own.leaving)
            && self.home(id).is_some_and(|home| home.pod == self.me)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn member(pod: &str, acked: u64) -> Member {
        Member {
            pod: pod.into(),
            address: format!("{pod}:7201"),
            leaving: false,
            acked,
        }
    }

    fn view(me: &str, pods: &[&str], generation: u64) -> View {
        View {
            generation,
            members: pods.iter().map(|pod| member(pod, generation)).collect(),
            me: me.into(),
        }
    }

    fn ids(n: u32) -> Vec<ResourceId> {
        (0..n)
            .map(|i| {
                let mut raw = [0u8; 32];
                raw[..4].copy_from_slice(&i.to_be_bytes());
                raw[31] = 7;
                ResourceId::from_bytes(raw)
            })
            .collect()
    }

    #[test]
    fn every_pod_computes_the_same_home() {
        let pods = ["pod-0", "pod-1", "pod-2"];
        for id in ids(200) {
            let homes: Vec<_> = pods
                .iter()
                .map(|me| view(me, &pods, 3).home(&id).unwrap().pod.clone())
                .collect();
            assert!(homes.windows(2).all(|w| w[0] == w[1]), "{homes:?}");
        }
    }

    #[test]
    fn homes_spread_evenly() {
        let pods = ["pod-0", "pod-1", "pod-2"];
        let v = view("pod-0", &pods, 1);
        let mut counts = [0usize; 3];
        for id in ids(3000) {
            let home = v.home(&id).unwrap();
            counts[pods.iter().position(|p| *p == home.pod).unwrap()] += 1;
        }
        // 1000 expected each; 5 standard deviations is about +-130.
        for count in counts {
            assert!((850..1150).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn a_leaving_member_moves_only_its_own_resources_and_spreads_them() {
        let all = view("pod-0", &["pod-0", "pod-1", "pod-2", "pod-3"], 1);
        let mut after = all.clone();
        after.members[3].leaving = true;
        let mut moved_to = std::collections::HashMap::<String, usize>::new();
        for id in ids(2000) {
            let before = all.home(&id).unwrap().pod.clone();
            let now = after.home(&id).unwrap().pod.clone();
            if before == "pod-3" {
                assert_ne!(now, "pod-3");
                *moved_to.entry(now).or_default() += 1;
            } else {
                assert_eq!(before, now, "a resource of a staying pod moved");
            }
        }
        assert_eq!(
            moved_to.len(),
            3,
            "spread over every remaining pod: {moved_to:?}"
        );
    }

    #[test]
    fn a_joining_member_takes_a_share_from_everyone_and_nothing_else_moves() {
        let three = view("pod-0", &["pod-0", "pod-1", "pod-2"], 1);
        let four = view("pod-0", &["pod-0", "pod-1", "pod-2", "pod-3"], 2);
        let mut taken = 0;
        for id in ids(2000) {
            let before = three.home(&id).unwrap().pod.clone();
            let now = four.home(&id).unwrap().pod.clone();
            if now == "pod-3" {
                taken += 1;
            } else {
                assert_eq!(before, now);
            }
        }
        assert!((400..600).contains(&taken), "{taken}");
    }

    #[test]
    fn routes_wait_for_every_member_to_apply_the_view() {
        let mut v = view("pod-0", &["pod-0", "pod-1"], 5);
        let mine = ids(100)
            .into_iter()
            .find(|id| v.home(id).unwrap().pod == "pod-0")
            .unwrap();
        let theirs = ids(100)
            .into_iter()
            .find(|id| v.home(id).unwrap().pod == "pod-1")
            .unwrap();
        assert_eq!(v.route(&mine), Route::Local);
        assert_eq!(
            v.route(&theirs),
            Route::Remote {
                pod: "pod-1".into(),
                address: "pod-1:7201".into()
            }
        );
        v.members[1].acked = 4;
        assert_eq!(v.route(&mine), Route::Settling);
        assert!(v.is_home(&mine));
        // A remote home decides for itself whether it is settled.
        assert!(matches!(v.route(&theirs), Route::Remote { .. }));
    }

    #[test]
    fn a_leaving_or_absent_pod_serves_nothing() {
        let mut v = view("pod-0", &["pod-0", "pod-1"], 2);
        v.members[0].leaving = true;
        for id in ids(20) {
            assert_eq!(v.route(&id), Route::Unavailable);
            assert!(!v.is_home(&id));
            assert_eq!(v.home(&id).unwrap().pod, "pod-1");
        }
        let stranger = view("pod-9", &["pod-0"], 1);
        assert_eq!(stranger.route(&ids(1)[0]), Route::Unavailable);
        let empty = view("pod-0", &[], 1);
        assert_eq!(empty.home(&ids(1)[0]), None);
    }
}
