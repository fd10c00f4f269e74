//! Where an existing cluster lives, and what selects it: the checks a change to a cluster that
//! exists at the plan's base gets beyond its own validation.
//!
//! - **Immutable placement** (rule [`PLACEMENT_RULE`], docs/design.md security rule 7): a cluster's
//!   management cluster, namespace and name never change after creation. tkgops addresses the
//!   live Cluster by exactly these three; a change would make the next resize *create* a second
//!   Cluster elsewhere, and a delete report "already gone" after detaching the live cluster
//!   from TMC. Moving a cluster is a delete and a create, each reviewed as such.
//! - **Selection by labels**: the repository's `schedules` (and their waves) and the label-scoped
//!   `rules.overrides` select clusters by their labels, so a label change can put a cluster into
//!   a scheduled apply or change which rule severities apply to it. The plan lists such changes
//!   ([`label_notes`]) instead of passing them silently.
//!
//! Pure: compares two loaded requests under the trusted policy ([`RepoConfig`]).

use std::collections::BTreeMap;

use kube_core::SelectorExt;

use crate::request::{ClusterRequest, Finding, RepoConfig, Severity};
use crate::schedule::{Schedule, REMAINING_WAVE};

/// Rule ID of a change of an existing cluster's management cluster, namespace or name.
pub const PLACEMENT_RULE: &str = "TKGOPS-PLACEMENT";

/// Where a cluster request puts its Cluster: management cluster, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// `managementCluster` of the cluster's `tkgops.yaml`.
    pub management_cluster: String,
    /// `NAMESPACE` (the request's, else its management cluster's `defaults`), else the
    /// management cluster's `namespace`, else `default` — as [`crate::request::cluster_spec`]
    /// resolves it.
    pub namespace: String,
    /// `CLUSTER_NAME`, else the directory name.
    pub name: String,
}

/// The placement of `req` under the policy `repo` (namespace defaults come from its management
/// cluster entry; without `repo` or without that entry, `NAMESPACE` else `default`).
pub fn placement(req: &ClusterRequest, repo: Option<&RepoConfig>) -> Placement {
    let mc = repo.and_then(|r| r.management_cluster(&req.settings.management_cluster));
    let merged = mc.map(|m| req.config.with_defaults(&m.defaults));
    let config = merged.as_ref().unwrap_or(&req.config);
    Placement {
        management_cluster: req.settings.management_cluster.clone(),
        namespace: config
            .get("NAMESPACE")
            .map(str::to_string)
            .or_else(|| mc.map(|m| m.namespace.clone()))
            .unwrap_or_else(|| "default".into()),
        name: config
            .get("CLUSTER_NAME")
            .map(str::to_string)
            .unwrap_or_else(|| req.name.clone()),
    }
}

/// `TKGOPS-PLACEMENT` findings (always errors; a security rule the policy cannot lower) for the
/// change `old` → `new` of a cluster that exists at the plan's base: one per changed field, on
/// the new file and line that changes it (`managementCluster` in the cluster's `tkgops.yaml`,
/// `NAMESPACE` and `CLUSTER_NAME` in its `cluster-config.yaml`; without a line when the
/// variable was removed). Empty when the placement is unchanged.
pub fn placement_findings(
    old: &ClusterRequest,
    new: &ClusterRequest,
    repo: Option<&RepoConfig>,
) -> Vec<Finding> {
    let (a, b) = (placement(old, repo), placement(new, repo));
    let mut out = Vec::new();
    let why = "tkgops finds the live Cluster by its management cluster, namespace and name, so they never change after creation (a later change would create a second Cluster, and a delete would miss the live one). To move the cluster, delete it in one pull request and create it in another";
    if a.management_cluster != b.management_cluster {
        out.push(Finding::new(
            &new.settings.path,
            new.settings.line("managementCluster"),
            PLACEMENT_RULE,
            Severity::Error,
            format!(
                "managementCluster of the existing cluster {} changes from {} to {}: refused. {why}.",
                new.name, a.management_cluster, b.management_cluster
            ),
        ));
    }
    let config_line = |var: &str| new.config.line(var).or_else(|| old.config.line(var));
    if a.namespace != b.namespace {
        out.push(Finding::new(
            &new.config.path,
            config_line("NAMESPACE"),
            PLACEMENT_RULE,
            Severity::Error,
            format!(
                "the namespace of the existing cluster {} changes from {} to {} (NAMESPACE): refused. {why}.",
                new.name, a.namespace, b.namespace
            ),
        ));
    }
    if a.name != b.name {
        out.push(Finding::new(
            &new.config.path,
            config_line("CLUSTER_NAME"),
            PLACEMENT_RULE,
            Severity::Error,
            format!(
                "CLUSTER_NAME of the existing cluster changes from {} to {}: refused. {why}.",
                a.name, b.name
            ),
        ));
    }
    out
}

/// Which wave of `schedule` selects a cluster labelled `labels`: `None` when the schedule does
/// not select it, else the first wave whose selector matches ([`REMAINING_WAVE`] when none
/// does), as [`crate::schedule::plan_waves`] assigns them. An invalid selector selects nothing
/// (fail closed, as the schedules do).
pub fn schedule_selection(
    schedule: &Schedule,
    labels: &BTreeMap<String, String>,
) -> Option<String> {
    let selected = schedule
        .label_selector()
        .ok()
        .is_some_and(|s| s.matches(labels));
    if !selected {
        return None;
    }
    let wave = schedule
        .waves
        .iter()
        .find(|w| w.label_selector().ok().is_some_and(|s| s.matches(labels)))
        .map(|w| w.name.clone())
        .unwrap_or_else(|| REMAINING_WAVE.to_string());
    Some(wave)
}

fn show_labels(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "none".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The plan note of a label change of the existing cluster `cluster` (`old` → `new` labels)
/// under the policy `repo`: which schedules or waves select it before and after, and which
/// label-scoped `rules.overrides` entries apply before and after. `None` when the labels are
/// unchanged; a note saying the change selects nothing new otherwise.
pub fn label_notes(
    cluster: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    repo: Option<&RepoConfig>,
) -> Option<String> {
    if old == new {
        return None;
    }
    let mut effects = Vec::new();
    if let Some(r) = repo {
        for s in &r.schedules {
            let (a, b) = (schedule_selection(s, old), schedule_selection(s, new));
            let what = match (&a, &b) {
                (None, Some(w)) => format!(
                    "schedule `{}` ({}) now selects it, in wave `{w}`",
                    s.name,
                    action_word(s)
                ),
                (Some(w), None) => format!(
                    "schedule `{}` ({}) no longer selects it (it was in wave `{w}`)",
                    s.name,
                    action_word(s)
                ),
                (Some(x), Some(y)) if x != y => format!(
                    "schedule `{}` ({}) moves it from wave `{x}` to wave `{y}`",
                    s.name,
                    action_word(s)
                ),
                _ => continue,
            };
            effects.push(what);
        }
        for (i, o) in r.rules.overrides.iter().enumerate() {
            if o.match_labels.is_empty() {
                continue;
            }
            let matches = |l: &BTreeMap<String, String>| {
                o.match_labels.iter().all(|(k, v)| l.get(k) == Some(v))
            };
            let rules: Vec<String> = o
                .severities
                .iter()
                .map(|(id, lvl)| format!("{id}: {}", format!("{lvl:?}").to_lowercase()))
                .collect();
            let entry = format!(
                "the rule override `rules.overrides[{i}]` ({}; {})",
                show_labels(&o.match_labels),
                rules.join(", ")
            );
            match (matches(old), matches(new)) {
                (false, true) => effects.push(format!("{entry} now applies to it")),
                (true, false) => effects.push(format!("{entry} no longer applies to it")),
                _ => {}
            }
        }
    }
    let change = format!(
        "The labels of the existing cluster `{cluster}` change ({} → {})",
        show_labels(old),
        show_labels(new)
    );
    Some(if effects.is_empty() {
        format!("{change}: no schedule, wave or rule override selects it differently.")
    } else {
        format!("{change}: {}.", effects.join("; "))
    })
}

fn action_word(s: &Schedule) -> &'static str {
    match s.action {
        crate::schedule::ScheduleAction::Apply => {
            "`action: apply`: upgrades without a pull request"
        }
        crate::schedule::ScheduleAction::Propose => "`action: propose`",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{parse_cluster_settings, parse_repo_config, parse_tkg_config};

    const REPO: &str = "managementClusters:\n  - name: mc-1\n    kubeconfig: {file: /k}\n    tkgVersion: \"2.2\"\n    namespace: teams\n  - name: mc-2\n    kubeconfig: {file: /k2}\n    tkgVersion: \"2.2\"\nrules:\n  overrides:\n    - matchLabels: {tier: lab}\n      severities: {TKO-CLS-004: warning}\nschedules:\n  - name: weekly\n    cron: \"0 2 * * SAT\"\n    window: 4h\n    selector: {matchLabels: {env: prod}}\n    action: apply\n    waves:\n      - {name: canary, selector: {matchLabels: {tier: canary}}}\n      - {name: rest, selector: {}}\n";

    fn req(config: &str, settings: &str) -> ClusterRequest {
        ClusterRequest {
            name: "team-a".into(),
            config: parse_tkg_config("clusters/team-a/cluster-config.yaml", config.as_bytes())
                .unwrap(),
            settings: parse_cluster_settings("clusters/team-a/tkgops.yaml", settings.as_bytes())
                .unwrap(),
        }
    }

    #[test]
    fn a_change_of_management_cluster_namespace_or_name_is_refused_on_its_line() {
        let repo = parse_repo_config("tkgops.yaml", REPO.as_bytes()).unwrap();
        let old = req(
            "CLUSTER_NAME: team-a\nCLUSTER_PLAN: prod\n",
            "managementCluster: mc-1\ntkr: v1.25.7+vmware.2-tkg.1\n",
        );
        assert!(placement_findings(&old, &old, Some(&repo)).is_empty());
        // The namespace is the management cluster's (`teams`): NAMESPACE: teams changes nothing.
        let same = req(
            "CLUSTER_NAME: team-a\nCLUSTER_PLAN: prod\nNAMESPACE: teams\n",
            "managementCluster: mc-1\ntkr: v1.25.7+vmware.2-tkg.1\n",
        );
        assert!(placement_findings(&old, &same, Some(&repo)).is_empty());
        let moved = req(
            "CLUSTER_NAME: team-a\nCLUSTER_PLAN: prod\nNAMESPACE: other\n",
            "tkr: v1.25.7+vmware.2-tkg.1\nmanagementCluster: mc-2\n",
        );
        let f = placement_findings(&old, &moved, Some(&repo));
        let shown: Vec<String> = f.iter().map(|f| f.to_string()).collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert!(shown[0].starts_with("clusters/team-a/tkgops.yaml:2: TKGOPS-PLACEMENT error: managementCluster of the existing cluster team-a changes from mc-1 to mc-2: refused."), "{shown:#?}");
        assert!(shown[1].starts_with("clusters/team-a/cluster-config.yaml:3: TKGOPS-PLACEMENT error: the namespace of the existing cluster team-a changes from teams to other (NAMESPACE): refused."), "{shown:#?}");
        let renamed = req(
            "CLUSTER_NAME: team-b\nCLUSTER_PLAN: prod\n",
            "managementCluster: mc-1\ntkr: v1.25.7+vmware.2-tkg.1\n",
        );
        let f = placement_findings(&old, &renamed, Some(&repo));
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].line, Some(1));
        assert!(
            f[0].message.contains("from team-a to team-b"),
            "{}",
            f[0].message
        );
    }

    #[test]
    fn a_label_change_names_the_schedules_waves_and_overrides_it_changes() {
        let repo = parse_repo_config("tkgops.yaml", REPO.as_bytes()).unwrap();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            label_notes(
                "a",
                &labels(&[("env", "dev")]),
                &labels(&[("env", "dev")]),
                Some(&repo)
            ),
            None
        );
        let n = label_notes(
            "a",
            &labels(&[("env", "dev")]),
            &labels(&[("env", "prod"), ("tier", "canary")]),
            Some(&repo),
        )
        .unwrap();
        assert!(n.contains("schedule `weekly` (`action: apply`: upgrades without a pull request) now selects it, in wave `canary`"), "{n}");
        let n = label_notes(
            "a",
            &labels(&[("env", "prod"), ("tier", "canary")]),
            &labels(&[("env", "prod"), ("tier", "lab")]),
            Some(&repo),
        )
        .unwrap();
        assert!(
            n.contains("moves it from wave `canary` to wave `rest`"),
            "{n}"
        );
        assert!(
            n.contains("`rules.overrides[0]` (`tier=lab`; TKO-CLS-004: warning) now applies to it"),
            "{n}"
        );
        let n = label_notes("a", &labels(&[]), &labels(&[("team", "x")]), Some(&repo)).unwrap();
        assert!(
            n.ends_with("no schedule, wave or rule override selects it differently."),
            "{n}"
        );
    }
}
