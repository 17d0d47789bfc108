//! Which backups to delete: keep the newest `last`, and all those younger than `within`; never
//! the newest good one, whatever the settings say. Pure: the caller lists and deletes.

use std::time::{Duration, SystemTime};

/// How many backups to keep, and for how long.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest this many good backups (`None`: no count limit).
    pub last: Option<usize>,
    /// Keep every good backup created within this long (`None`: no age limit).
    pub within: Option<Duration>,
}

/// A backup as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate<K> {
    /// What the caller deletes it by (a folder, an object prefix).
    pub key: K,
    /// When it was taken; `None` when its manifest cannot be read. Such a backup is never
    /// deleted here (it may be what someone is investigating) nor counted as good.
    pub created: Option<SystemTime>,
}

impl Retention {
    /// Whether any limit is set; without one nothing is ever deleted.
    pub fn is_set(&self) -> bool {
        self.last.is_some() || self.within.is_some()
    }

    /// The keys of the backups to delete at `now`, among `candidates`, oldest first (backups
    /// taken within the same second are told apart by that order).
    pub fn expired<K: Clone>(&self, candidates: &[Candidate<K>], now: SystemTime) -> Vec<K> {
        if !self.is_set() {
            return Vec::new();
        }
        let mut good: Vec<(usize, &K, SystemTime)> = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.created.map(|t| (i, &c.key, t)))
            .collect();
        // Newest first.
        good.sort_by_key(|&(i, _, created)| std::cmp::Reverse((created, i)));
        good.iter()
            .map(|&(_, key, created)| (key, created))
            .enumerate()
            .filter(|&(rank, (_, created))| {
                // The newest good backup is never deleted, whatever the limits.
                let kept_by_count = rank == 0 || self.last.is_some_and(|last| rank < last);
                let kept_by_age = self
                    .within
                    .is_some_and(|within| now.duration_since(created).unwrap_or_default() < within);
                !(kept_by_count || kept_by_age)
            })
            .map(|(_, (key, _))| key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    /// Backups `0..n`, backup `i` taken `i` days before `t0`.
    fn daily(n: usize) -> Vec<Candidate<usize>> {
        (0..n)
            .map(|i| Candidate {
                key: i,
                created: Some(t0() - DAY * u32::try_from(i).unwrap_or(u32::MAX)),
            })
            .collect()
    }

    #[test]
    fn nothing_is_deleted_without_a_limit() {
        assert!(Retention::default().expired(&daily(30), t0()).is_empty());
    }

    #[test]
    fn the_newest_n_are_kept() {
        let keep = Retention {
            last: Some(7),
            within: None,
        };
        let mut gone = keep.expired(&daily(10), t0());
        gone.sort_unstable();
        assert_eq!(gone, [7, 8, 9]);
    }

    #[test]
    fn those_within_the_age_are_kept() {
        let keep = Retention {
            last: None,
            within: Some(DAY * 3 + Duration::from_secs(1)),
        };
        let mut gone = keep.expired(&daily(6), t0());
        gone.sort_unstable();
        assert_eq!(gone, [4, 5]);
    }

    #[test]
    fn either_limit_keeps_a_backup() {
        let keep = Retention {
            last: Some(2),
            within: Some(DAY * 4),
        };
        let mut gone = keep.expired(&daily(8), t0());
        gone.sort_unstable();
        assert_eq!(gone, [4, 5, 6, 7]);
    }

    #[test]
    fn the_only_good_backup_is_never_deleted() {
        // All older than the age limit, and a count of zero: the newest good one stays.
        let keep = Retention {
            last: Some(0),
            within: Some(DAY),
        };
        let mut old = daily(4);
        old.retain(|c| c.key >= 2);
        let mut gone = keep.expired(&old, t0());
        gone.sort_unstable();
        assert_eq!(gone, [3]);
        // An unreadable backup is neither good nor deleted, even if it is the newest.
        let broken = vec![
            Candidate {
                key: 9,
                created: None,
            },
            Candidate {
                key: 1,
                created: Some(t0() - DAY * 30),
            },
        ];
        assert!(keep.expired(&broken, t0()).is_empty());
    }
}
