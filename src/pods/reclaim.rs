//! The judgement behind the reclaim of leaked pod addresses, sans IO: observations of
//! the plugin's reservations (is the pod's netns there? its host veth?) and `now` in,
//! each pod's state and the reservations to free out.
//!
//! A reservation is freed only when both its netns and its host veth have been seen
//! gone, at every scan, for the whole grace period (`--reclaim-pod-after`). Anything
//! else keeps it: either one present, either one unknown (a record of an older plugin
//! that did not write it, a netns directory the daemon cannot see), or gone for less
//! than the grace. docs/reclaim.md argues why that never frees a live pod's address.
//!
//! Left out: how the facts are gathered and the files removed (under the store's lock,
//! after a second look): `crate::daemon::pods`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use overlayd_node_info::pods::PodRecord;

use super::PodState;

/// Whether a pod's netns or host veth exists, as the daemon sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// It exists.
    Present,
    /// It does not exist, and the daemon could have seen it if it did.
    Gone,
    /// The daemon cannot tell (no name recorded, a directory it cannot see, an error).
    Unknown,
}

/// One pod attachment as one scan saw it: its reservations in one network's store
/// (one per address family) and the presence of its netns and host veth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Observation {
    /// The network (the store's directory name under `dataDir`).
    pub(crate) network: String,
    /// Its reservations, all of one owner (same container ID and interface).
    pub(crate) records: Vec<PodRecord>,
    /// Its netns (`CNI_NETNS` of the ADD).
    pub(crate) netns: Presence,
    /// Its host veth.
    pub(crate) veth: Presence,
}

impl Observation {
    /// The attachment's key: network, container ID, interface.
    pub(crate) fn key(&self) -> Key {
        let owner = self.records.first().map(|r| &r.owner);
        (
            self.network.clone(),
            owner.map(|o| o.container_id.clone()).unwrap_or_default(),
            owner.map(|o| o.ifname.clone()).unwrap_or_default(),
        )
    }
}

/// An attachment: network, container ID, interface name.
pub(crate) type Key = (String, String, String);

/// Groups a store's records by attachment (container ID and interface), in address
/// order of each group's first record.
pub(crate) fn group(records: Vec<PodRecord>) -> Vec<Vec<PodRecord>> {
    let mut groups: BTreeMap<(String, String), Vec<PodRecord>> = BTreeMap::new();
    for r in records {
        groups
            .entry((r.owner.container_id.clone(), r.owner.ifname.clone()))
            .or_default()
            .push(r);
    }
    let mut out: Vec<Vec<PodRecord>> = groups.into_values().collect();
    for g in &mut out {
        g.sort_by_key(|r| r.ip);
    }
    out.sort_by_key(|g| g.first().map(|r| r.ip));
    out
}

/// What one scan decided about one attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Judged {
    /// The observation.
    pub(crate) observation: Observation,
    /// Its state.
    pub(crate) state: PodState,
    /// Whether to free its reservations now (after a second look under the lock).
    pub(crate) reclaim: bool,
}

/// Remembers since when each attachment has been seen gone.
#[derive(Debug, Clone)]
pub(crate) struct Reclaimer {
    grace: Duration,
    gone_since: HashMap<Key, Instant>,
}

impl Reclaimer {
    /// A reclaimer with grace period `grace`; `Duration::ZERO` judges but never frees.
    pub(crate) fn new(grace: Duration) -> Reclaimer {
        Reclaimer {
            grace,
            gone_since: HashMap::new(),
        }
    }

    /// The grace period (`Duration::ZERO`: reclaim is off).
    pub(crate) fn grace(&self) -> Duration {
        self.grace
    }

    /// Judges one scan's observations at `now`. An attachment absent from the scan is
    /// forgotten (a DEL freed it), so a later one with the same key starts afresh.
    pub(crate) fn observe(&mut self, now: Instant, observations: Vec<Observation>) -> Vec<Judged> {
        let mut seen: HashMap<Key, Instant> = HashMap::new();
        let mut out = Vec::with_capacity(observations.len());
        for observation in observations {
            let key = observation.key();
            let state = match (observation.netns, observation.veth) {
                (Presence::Gone, Presence::Gone) => {
                    let since = self.gone_since.get(&key).copied().unwrap_or(now);
                    seen.insert(key, since);
                    PodState::Gone {
                        for_secs: now.saturating_duration_since(since).as_secs(),
                    }
                }
                (Presence::Present, _) | (_, Presence::Present) => PodState::Running,
                _ => PodState::Unknown,
            };
            let reclaim = match state {
                PodState::Gone { .. } if !self.grace.is_zero() => {
                    let since = seen.get(&observation.key()).copied().unwrap_or(now);
                    now.saturating_duration_since(since) >= self.grace
                }
                _ => false,
            };
            out.push(Judged {
                observation,
                state,
                reclaim,
            });
        }
        self.gone_since = seen;
        out
    }

    /// Forgets `key` (its reservations were freed).
    pub(crate) fn forget(&mut self, key: &Key) {
        self.gone_since.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlayd_node_info::pods::Owner;

    fn obs(id: &str, netns: Presence, veth: Presence) -> Observation {
        let mut owner = Owner::new(id, "eth0");
        owner.host_veth = Some(format!("veth-{id}"));
        owner.netns = Some(format!("/var/run/netns/{id}"));
        Observation {
            network: "overlayd".into(),
            records: vec![PodRecord {
                ip: "10.244.1.5".parse().unwrap(),
                owner,
            }],
            netns,
            veth,
        }
    }

    use Presence::{Gone, Present, Unknown};

    #[test]
    fn freed_only_after_both_gone_for_the_whole_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Reclaimer::new(s(60));
        let j = r.observe(t0, vec![obs("a", Gone, Gone)]);
        assert_eq!(j[0].state, PodState::Gone { for_secs: 0 });
        assert!(!j[0].reclaim);
        let j = r.observe(t0 + s(59), vec![obs("a", Gone, Gone)]);
        assert_eq!(j[0].state, PodState::Gone { for_secs: 59 });
        assert!(!j[0].reclaim);
        let j = r.observe(t0 + s(60), vec![obs("a", Gone, Gone)]);
        assert!(j[0].reclaim);
    }

    #[test]
    fn anything_present_or_unknown_keeps_the_address_and_restarts_the_grace() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        for (netns, veth, state) in [
            (Present, Present, PodState::Running),
            (Present, Gone, PodState::Running),
            (Gone, Present, PodState::Running),
            (Unknown, Present, PodState::Running),
            (Gone, Unknown, PodState::Unknown),
            (Unknown, Gone, PodState::Unknown),
            (Unknown, Unknown, PodState::Unknown),
        ] {
            let mut r = Reclaimer::new(s(60));
            r.observe(t0, vec![obs("a", Gone, Gone)]);
            // Half-way through the grace, the pod shows (or cannot be judged).
            let j = r.observe(t0 + s(30), vec![obs("a", netns, veth)]);
            assert_eq!(j[0].state, state, "{netns:?} {veth:?}");
            assert!(!j[0].reclaim);
            // Gone again: the grace starts over.
            let j = r.observe(t0 + s(61), vec![obs("a", Gone, Gone)]);
            assert_eq!(
                j[0].state,
                PodState::Gone { for_secs: 0 },
                "{netns:?} {veth:?}"
            );
            assert!(!j[0].reclaim);
            let j = r.observe(t0 + s(121), vec![obs("a", Gone, Gone)]);
            assert!(j[0].reclaim);
        }
    }

    #[test]
    fn zero_grace_judges_but_never_frees() {
        let t0 = Instant::now();
        let mut r = Reclaimer::new(Duration::ZERO);
        r.observe(t0, vec![obs("a", Gone, Gone)]);
        let j = r.observe(t0 + Duration::from_secs(86_400), vec![obs("a", Gone, Gone)]);
        assert_eq!(j[0].state, PodState::Gone { for_secs: 86_400 });
        assert!(!j[0].reclaim);
    }

    #[test]
    fn a_pod_freed_by_its_del_is_forgotten() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut r = Reclaimer::new(s(60));
        r.observe(t0, vec![obs("a", Gone, Gone), obs("b", Present, Present)]);
        // a's DEL came: a is not in the scan. A new pod with a's key (a retried ADD)
        // starts afresh.
        r.observe(t0 + s(30), vec![obs("b", Present, Present)]);
        let j = r.observe(t0 + s(70), vec![obs("a", Gone, Gone)]);
        assert_eq!(j[0].state, PodState::Gone { for_secs: 0 });
        assert!(!j[0].reclaim);
    }

    #[test]
    fn records_group_by_attachment() {
        let rec = |ip: &str, id: &str, ifname: &str| PodRecord {
            ip: ip.parse().unwrap(),
            owner: Owner::new(id, ifname),
        };
        let groups = group(vec![
            rec("10.244.1.9", "b", "eth0"),
            rec("fd00:10:244:1::5", "a", "eth0"),
            rec("10.244.1.5", "a", "eth0"),
            rec("10.244.1.7", "a", "net1"),
        ]);
        let ips: Vec<Vec<String>> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.ip.to_string()).collect())
            .collect();
        assert_eq!(
            ips,
            [
                vec!["10.244.1.5", "fd00:10:244:1::5"],
                vec!["10.244.1.7"],
                vec!["10.244.1.9"]
            ]
        );
    }
}
