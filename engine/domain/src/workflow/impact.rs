//! What a change to an existing cluster does to its machines: which control-plane and
//! MachineDeployment nodes Cluster API replaces (a rolling replacement) or adds and removes (a
//! scale), and how long that is expected to take. Pure.
//!
//! Cluster API replaces every machine of the KubeadmControlPlane and of each MachineDeployment
//! whose Kubernetes version or machine template changes (docs/tkg2-class-based.md §8 "Order":
//! control plane first, then the MachineDeployments one at a time); a change of `replicas`
//! alone adds or removes machines without replacing the others.

use serde::Serialize;

use crate::request::{ClusterSpec, MachineSpec, WorkerSpec};

/// Seconds per replaced node assumed when no earlier run of this bot measured one: TKG's own
/// per-machine budget on AWS is about 5 minutes (instance boot, kubeadm join, drain of the old
/// node).
pub const DEFAULT_NODE_SECONDS: f64 = 300.0;

/// One group of machines (the control plane or one MachineDeployment) before and after a change.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineGroupChange {
    /// `control-plane`, or the MachineDeployment's name in the topology (`md-0`…).
    pub name: String,
    /// The MachineDeployment's AZ (`None` for the control plane, which spans them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub az: Option<String>,
    /// Replicas before the change (`None` when the MachineDeployment is new).
    pub replicas_from: Option<u32>,
    /// Replicas after the change.
    pub replicas_to: u32,
    /// Instance type before the change (`None` when new).
    pub instance_type_from: Option<String>,
    /// Instance type after the change.
    pub instance_type_to: String,
    /// Machines Cluster API replaces one by one (rolling replacement): every replica after the
    /// change when the version or the machine template changes, else 0.
    pub replaced: u32,
    /// Why the machines are replaced (`Kubernetes version`, `instance type`, `root volume`), empty
    /// when they are not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub because: Vec<String>,
}

/// The machine impact of a change to one cluster ([`impact`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    /// The control plane, then each MachineDeployment in topology order.
    pub groups: Vec<MachineGroupChange>,
    /// Total machines replaced.
    pub nodes_replaced: u32,
    /// Expected duration of the rollout in seconds: replaced and added nodes times the seconds
    /// per node.
    pub estimate_secs: u64,
    /// Where the seconds per node come from: measured by earlier runs, or the default.
    pub estimate_basis: String,
}

impl Impact {
    /// Whether the change touches any machine (replaced, added or removed).
    pub fn is_empty(&self) -> bool {
        self.groups
            .iter()
            .all(|g| g.replaced == 0 && g.replicas_from == Some(g.replicas_to))
    }
}

/// Measured rollout times from earlier runs, passed to the planner by the bot (the plan itself
/// never reads the journal).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct RolloutHistory {
    /// Mean seconds per replaced node over the measured runs.
    pub node_seconds: Option<f64>,
    /// How many replaced nodes the mean is computed from.
    pub samples: u32,
}

fn group(
    name: String,
    az: Option<String>,
    before: Option<(&MachineSpec, u32)>,
    after: (&MachineSpec, u32),
    version_changes: bool,
) -> MachineGroupChange {
    let (spec, replicas) = after;
    let mut because = Vec::new();
    if version_changes {
        because.push("Kubernetes version".to_string());
    }
    if let Some((b, _)) = before {
        if b.instance_type != spec.instance_type {
            because.push("instance type".into());
        }
        if b.root_volume_gib != spec.root_volume_gib {
            because.push("root volume".into());
        }
    }
    let replaced = if before.is_some() && !because.is_empty() {
        replicas
    } else {
        0
    };
    MachineGroupChange {
        name,
        az,
        replicas_from: before.map(|(_, r)| r),
        replicas_to: replicas,
        instance_type_from: before.map(|(b, _)| b.instance_type.clone()),
        instance_type_to: spec.instance_type.clone(),
        replaced,
        because,
    }
}

fn worker_machine(w: &WorkerSpec, root_volume_gib: u32) -> MachineSpec {
    MachineSpec {
        instance_type: w.instance_type.clone(),
        replicas: w.replicas,
        root_volume_gib,
    }
}

/// The machine impact of changing the cluster `before` into `after`: per group the replicas and
/// instance types before and after and the machines replaced, with an estimate from `history`
/// (else [`DEFAULT_NODE_SECONDS`] per node). Added machines count toward the estimate; removed
/// ones do not.
pub fn impact(before: &ClusterSpec, after: &ClusterSpec, history: &RolloutHistory) -> Impact {
    let version_changes = before.kubernetes_version != after.kubernetes_version;
    let mut groups = vec![group(
        "control-plane".into(),
        None,
        Some((&before.control_plane, before.control_plane.replicas)),
        (&after.control_plane, after.control_plane.replicas),
        version_changes,
    )];
    for w in &after.workers {
        let old = before.workers.iter().find(|o| o.name == w.name);
        let old_machine = old.map(|o| worker_machine(o, before.worker_root_volume_gib));
        let new_machine = worker_machine(w, after.worker_root_volume_gib);
        let mut g = group(
            w.name.clone(),
            Some(w.az.clone()),
            old_machine.as_ref().zip(old.map(|o| o.replicas)),
            (&new_machine, w.replicas),
            version_changes,
        );
        if let Some(o) = old {
            if o.overrides != w.overrides && g.replaced == 0 {
                g.because.push("machine overrides".into());
                g.replaced = w.replicas;
            }
        }
        groups.push(g);
    }
    let nodes_replaced: u32 = groups.iter().map(|g| g.replaced).sum();
    let added: u32 = groups
        .iter()
        .map(|g| g.replicas_to.saturating_sub(g.replicas_from.unwrap_or(0)))
        .sum();
    let (per_node, basis) = match history.node_seconds {
        Some(s) if s > 0.0 && history.samples > 0 => (
            s,
            format!(
                "{} per node, measured over {} node(s) of earlier runs",
                crate::workflow::markdown::format_duration(s.round() as u64),
                history.samples
            ),
        ),
        _ => (
            DEFAULT_NODE_SECONDS,
            "no earlier run measured yet; assumes 5m per node".to_string(),
        ),
    };
    Impact {
        estimate_secs: ((nodes_replaced + added) as f64 * per_node).round() as u64,
        groups,
        nodes_replaced,
        estimate_basis: basis,
    }
}
