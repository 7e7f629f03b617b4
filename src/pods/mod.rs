//! The pods on this node, as `overlayd pods` shows them: each attachment that the CNI
//! plugin's IPAM store holds an address for, with the pod's Kubernetes identity, its
//! interfaces, its age and whether it still runs, and the text of that listing.
//!
//! [`reclaim`] judges, sans IO, when a pod is gone for good and its addresses may be
//! freed. Gathering the facts and freeing the files is `crate::daemon::pods`.

pub(crate) mod reclaim;

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Whether a pod still runs, as the reclaim sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PodState {
    /// Its netns or its host veth exists.
    Running,
    /// Neither exists, for `for_secs` seconds so far: its addresses are freed once
    /// that reaches the grace period.
    Gone {
        /// Seconds since it was first seen gone.
        for_secs: u64,
    },
    /// The daemon cannot tell (the record lacks the netns or host veth name, or the
    /// netns directory is not visible to it): the addresses are kept.
    Unknown,
}

/// One pod attachment on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodReport {
    /// Its addresses (one per family).
    pub ips: Vec<IpAddr>,
    /// `K8S_POD_NAMESPACE`, when the runtime gave it.
    pub namespace: Option<String>,
    /// `K8S_POD_NAME`.
    pub name: Option<String>,
    /// `K8S_POD_UID`.
    pub uid: Option<String>,
    /// `CNI_CONTAINERID` (the sandbox).
    pub container_id: String,
    /// The interface inside the pod.
    pub ifname: String,
    /// The host end of its veth pair.
    pub host_veth: Option<String>,
    /// Its netns path as the runtime gave it.
    pub netns: Option<String>,
    /// Seconds since its first address was reserved, when known.
    pub age_secs: Option<u64>,
    /// The CNI network (store) it belongs to.
    pub network: String,
    /// Running, gone (and for how long) or unknown.
    #[serde(flatten)]
    pub state: PodState,
}

impl PodReport {
    /// `namespace/name`, when both are known.
    pub(crate) fn qualified_name(&self) -> Option<String> {
        Some(format!(
            "{}/{}",
            self.namespace.as_ref()?,
            self.name.as_ref()?
        ))
    }
}

/// A reservation file that does not parse: its address stays taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MalformedReport {
    /// The file.
    pub(crate) path: PathBuf,
    /// What is wrong with it.
    pub error: String,
}

/// Every pod on this node, and how the reclaim runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodsReport {
    /// The plugin's `dataDir` the daemon reads (one store per network below it).
    pub data_dir: PathBuf,
    /// `--reclaim-pod-after` in seconds; 0 when the reclaim is off.
    pub reclaim_after_secs: u64,
    /// Addresses freed by the reclaim since the daemon started.
    pub reclaimed: u64,
    /// The pods, in address order.
    pub pods: Vec<PodReport>,
    /// Reservation files that do not parse.
    pub malformed: Vec<MalformedReport>,
    /// Why the store could not be read, if it could not.
    pub error: Option<String>,
}

impl PodsReport {
    /// The pods named `namespace/name`.
    pub fn find(&self, namespace: &str, name: &str) -> Vec<&PodReport> {
        self.pods
            .iter()
            .filter(|p| {
                p.namespace.as_deref() == Some(namespace) && p.name.as_deref() == Some(name)
            })
            .collect()
    }
}

/// `12s`, `5m`, `3h`, `2d`: an age in its largest whole unit.
pub(crate) fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The text of `overlayd pods`: one line per pod.
pub fn render(report: &PodsReport) -> String {
    let mut rows = vec![[
        "POD".to_string(),
        "ADDRESSES".to_string(),
        "CONTAINER".to_string(),
        "IF".to_string(),
        "HOST VETH".to_string(),
        "AGE".to_string(),
        "STATE".to_string(),
    ]];
    for p in &report.pods {
        let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
        let state = match p.state {
            PodState::Running => "running".to_string(),
            PodState::Gone { for_secs } if report.reclaim_after_secs > 0 => format!(
                "gone {}, freed after {}",
                age(for_secs),
                age(report.reclaim_after_secs)
            ),
            PodState::Gone { for_secs } => format!("gone {} (reclaim off)", age(for_secs)),
            PodState::Unknown => "unknown (kept)".to_string(),
        };
        rows.push([
            p.qualified_name().unwrap_or_else(|| "-".into()),
            ips.join(","),
            p.container_id.chars().take(13).collect(),
            p.ifname.clone(),
            p.host_veth.clone().unwrap_or_else(|| "-".into()),
            p.age_secs.map(age).unwrap_or_else(|| "-".into()),
            state,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let reclaim = if report.reclaim_after_secs > 0 {
        format!(
            "addresses of pods gone for {} are freed ({} so far)",
            age(report.reclaim_after_secs),
            report.reclaimed
        )
    } else {
        "the reclaim of leaked addresses is off (--reclaim-pod-after 0)".to_string()
    };
    out.push_str(&format!(
        "{} pod(s) in {}; {reclaim}\n",
        report.pods.len(),
        report.data_dir.display()
    ));
    for m in &report.malformed {
        out.push_str(&format!(
            "unreadable reservation {}: {} (its address stays taken; remove the file once no pod uses it)\n",
            m.path.display(),
            m.error
        ));
    }
    if let Some(e) = &report.error {
        out.push_str(&format!("cannot read the store: {e}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: Option<&str>, state: PodState) -> PodReport {
        PodReport {
            ips: vec![
                "10.244.1.5".parse().unwrap(),
                "fd00:10:244:1::5".parse().unwrap(),
            ],
            namespace: ns.map(Into::into),
            name: ns.map(|_| "web-0".into()),
            uid: None,
            container_id: "3f1c9a7e6b2d0011223344".into(),
            ifname: "eth0".into(),
            host_veth: Some("ovlv0123456789a".into()),
            netns: Some("/var/run/netns/cni-1".into()),
            age_secs: Some(300),
            network: "overlayd".into(),
            state,
        }
    }

    #[test]
    fn text_has_a_line_per_pod_and_says_what_the_reclaim_does() {
        let report = PodsReport {
            data_dir: "/var/lib/cni/overlayd".into(),
            reclaim_after_secs: 60,
            reclaimed: 2,
            pods: vec![
                pod(Some("default"), PodState::Running),
                pod(None, PodState::Gone { for_secs: 12 }),
            ],
            malformed: vec![],
            error: None,
        };
        let text = render(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("POD "), "{text}");
        assert!(
            lines[1].starts_with("default/web-0  10.244.1.5,fd00:10:244:1::5  3f1c9a7e6b2d0 "),
            "{text}"
        );
        assert!(lines[1].ends_with("5m   running"), "{text}");
        assert!(lines[2].starts_with("-  "), "{text}");
        assert!(lines[2].ends_with("gone 12s, freed after 60s"), "{text}");
        assert_eq!(
            lines[3],
            "2 pod(s) in /var/lib/cni/overlayd; addresses of pods gone for 60s are freed (2 so far)"
        );
        assert_eq!(report.find("default", "web-0").len(), 1);
        assert!(report.find("default", "web-1").is_empty());
    }

    #[test]
    fn json_is_flat_with_the_state() {
        let v = serde_json::to_value(pod(Some("default"), PodState::Gone { for_secs: 3 })).unwrap();
        assert_eq!(v["state"], "gone");
        assert_eq!(v["for_secs"], 3);
        assert_eq!(v["namespace"], "default");
        let back: PodReport = serde_json::from_value(v).unwrap();
        assert_eq!(back.state, PodState::Gone { for_secs: 3 });
    }
}
