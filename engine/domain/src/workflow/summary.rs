//! The one-row summary of a cluster's plan that leads the plan comment (issue 8 item 10): what
//! a reviewer needs to decide in seconds, old → new: the TKR, the control plane and the workers
//! per AZ (count × instance type), the TMC cluster group and the package changes. Computed from
//! the cluster's desired state before and after the change ([`ClusterSpec`]); display only, not
//! part of the plan's digest.

use serde::Serialize;

use crate::request::ClusterSpec;

/// One value before and after the change: `from` is `None` for a new cluster, `to` is `None`
/// for a deleted one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Before the change.
    pub from: Option<String>,
    /// After the change.
    pub to: Option<String>,
}

impl Change {
    /// `a → b` when the value changes, `a` when it does not, `– → b` for a new cluster and
    /// `a → –` for a deleted one.
    pub fn display(&self) -> String {
        match (&self.from, &self.to) {
            (Some(a), Some(b)) if a == b => a.clone(),
            (Some(a), Some(b)) => format!("{a} → {b}"),
            (None, Some(b)) => b.clone(),
            (Some(a), None) => format!("{a} → –"),
            (None, None) => "–".into(),
        }
    }

    /// Whether the value changes.
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// The summary row of one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSummary {
    /// The TKR version.
    pub tkr: Change,
    /// The control plane: `3 × m5.xlarge`.
    pub control_plane: Change,
    /// The workers: `us-west-2a 1 × m5.xlarge, us-west-2b 1 × m5.xlarge, …` (AZs in order).
    pub workers: Change,
    /// The TMC cluster group (`–` without TMC).
    pub tmc_group: Change,
    /// Package changes: `+fluent-bit 1.8.15`, `−harbor`, `contour 1.20.2 → 1.22.0`,
    /// `contour values`; empty when none.
    pub packages: Vec<String>,
}

fn control_plane(s: &ClusterSpec) -> String {
    format!(
        "{} × {}",
        s.control_plane.replicas, s.control_plane.instance_type
    )
}

fn workers(s: &ClusterSpec) -> String {
    // Same shape in every AZ: `3 × m5.xlarge in 3 AZs`; else one entry per MachineDeployment.
    let first = s.workers.first();
    if let Some(w) = first {
        if s.workers.len() > 1
            && s.workers
                .iter()
                .all(|x| x.replicas == w.replicas && x.instance_type == w.instance_type)
        {
            return format!(
                "{} × {} in {} AZs",
                w.replicas * s.workers.len() as u32,
                w.instance_type,
                s.workers.len()
            );
        }
    }
    s.workers
        .iter()
        .map(|w| format!("{} {} × {}", w.az, w.replicas, w.instance_type))
        .collect::<Vec<_>>()
        .join(", ")
}

fn tmc_group(s: &ClusterSpec) -> String {
    s.tmc
        .as_ref()
        .map(|t| t.cluster_group.clone())
        .unwrap_or_else(|| "–".into())
}

/// The summary of a change from `before` (`None`: a new cluster) to `after` (`None`: a
/// deleted cluster).
pub fn summarize(before: Option<&ClusterSpec>, after: Option<&ClusterSpec>) -> ClusterSummary {
    let pick = |f: fn(&ClusterSpec) -> String| Change {
        from: before.map(f),
        to: after.map(f),
    };
    let mut packages = Vec::new();
    if let (Some(b), Some(a)) = (before, after) {
        for p in &a.packages {
            match b.packages.iter().find(|o| o.name == p.name) {
                None => packages.push(format!("+{} {}", p.name, p.version)),
                Some(o) if o.version != p.version => {
                    packages.push(format!("{} {} → {}", p.name, o.version, p.version))
                }
                Some(o) if o.values_yaml != p.values_yaml || o.values_from != p.values_from => {
                    packages.push(format!("{} values", p.name))
                }
                Some(_) => {}
            }
        }
        for o in &b.packages {
            if !a.packages.iter().any(|p| p.name == o.name) {
                packages.push(format!("−{}", o.name));
            }
        }
    } else if let (None, Some(a)) = (before, after) {
        packages.extend(
            a.packages
                .iter()
                .map(|p| format!("+{} {}", p.name, p.version)),
        );
    }
    ClusterSummary {
        tkr: Change {
            from: before.map(|s| s.tkr.clone()),
            to: after.map(|s| s.tkr.clone()),
        },
        control_plane: pick(control_plane),
        workers: pick(workers),
        tmc_group: pick(tmc_group),
        packages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_display() {
        let c = |a: Option<&str>, b: Option<&str>| Change {
            from: a.map(str::to_string),
            to: b.map(str::to_string),
        };
        assert_eq!(c(Some("a"), Some("a")).display(), "a");
        assert_eq!(c(Some("a"), Some("b")).display(), "a → b");
        assert_eq!(c(None, Some("b")).display(), "b");
        assert_eq!(c(Some("a"), None).display(), "a → –");
        assert!(!c(Some("a"), Some("a")).changed());
    }
}
