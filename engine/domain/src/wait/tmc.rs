//! Waits on a Tanzu Mission Control cluster (docs/tanzu-apis.md §3.5; TMC-TF
//! `internal/resources/cluster/resource_cluster.go`), judged on polled `GET`s (TMC has no watch
//! API): [`TmcClusterReady`] after the agent installer was applied (step 4), [`TmcClusterGone`]
//! after a detach (step 5).

use std::time::Duration;

use super::{Failure, Judge, Progress, Verdict};

/// `status.phase` of a TMC cluster whose agent is connected.
pub const PHASE_READY: &str = "READY";
/// `status.phase` of a TMC cluster being detached.
pub const PHASE_DETACHING: &str = "DETACHING";
/// `status.phase` of a TMC cluster being deleted.
pub const PHASE_DELETING: &str = "DELETING";
/// `status.phase` of a failed TMC cluster.
pub const PHASE_ERROR: &str = "ERROR";
/// `status.phase` of a TMC cluster whose upgrade failed.
pub const PHASE_UPGRADE_FAILED: &str = "UPGRADE_FAILED";

/// What the TMC waits read of a cluster (the providers' wire model implements it).
pub trait TmcCluster {
    /// `status.phase`, or `PHASE_UNSPECIFIED` when absent.
    fn phase(&self) -> &str;
    /// `status.health`, or `HEALTH_UNSPECIFIED` when absent.
    fn health(&self) -> &str;
    /// `meta.uid`, when set.
    fn uid(&self) -> Option<&str>;
    /// The conditions as `type: message` joined with `; ` (empty when none has a message).
    fn condition_messages(&self) -> String;
}

/// TMC-TF `isClusterStopStatus`' failure cases for a cluster tkgops waits on, named `shown`
/// (`mc/provisioner/name`): phase `ERROR` or `UPGRADE_FAILED` is permanent ("TMC cluster … is
/// in phase … (health …): \<conditions\>"); `DETACHING` or `DELETING` is transient (someone is
/// detaching it: "TMC cluster … is being detached (phase …)"). `None` otherwise.
pub fn cluster_failure<C: TmcCluster>(c: &C, shown: &str) -> Option<Failure> {
    let phase = c.phase();
    if matches!(phase, PHASE_ERROR | PHASE_UPGRADE_FAILED) {
        let conds = c.condition_messages();
        let detail = if conds.is_empty() {
            String::new()
        } else {
            format!(": {conds}")
        };
        return Some(Failure::permanent(format!(
            "TMC cluster {shown} is in phase {phase} (health {}){detail}",
            c.health()
        )));
    }
    if matches!(phase, PHASE_DETACHING | PHASE_DELETING) {
        return Some(Failure::transient(format!(
            "TMC cluster {shown} is being detached (phase {phase})"
        )));
    }
    None
}

/// The attach wait of `tmc.attach`: poll until `phase == READY` (the agent connected; TMC-TF
/// waits for READY only, docs/tanzu-apis.md §3.5 step 4). The health is reported, not required.
///
/// Snapshot: the cluster as a `GET` returned it (`None`: 404). Output: that cluster. Progress
/// (and closing line) "TMC phase `<phase>`, health `<health>`". Failures: [`cluster_failure`]; transient "TMC
/// cluster `<shown>` disappeared while waiting for its agent to connect" on a 404.
#[derive(Clone, Debug)]
pub struct TmcClusterReady<C> {
    shown: String,
    _model: std::marker::PhantomData<fn() -> C>,
}

impl<C> TmcClusterReady<C> {
    /// The judge for the TMC cluster named `shown` (`mc/provisioner/name`) in messages, over the
    /// cluster model `C`.
    pub fn new(shown: &str) -> Self {
        TmcClusterReady {
            shown: shown.to_string(),
            _model: std::marker::PhantomData,
        }
    }
}

impl<C: TmcCluster + Clone> Judge for TmcClusterReady<C> {
    type Snapshot = Option<C>;
    type Output = C;

    fn judge(&mut self, c: &Option<C>, _at: Duration) -> Verdict<C> {
        let shown = &self.shown;
        let Some(c) = c else {
            return Verdict::Failed(Failure::transient(format!(
                "TMC cluster {shown} disappeared while waiting for its agent to connect"
            )));
        };
        if let Some(f) = cluster_failure(c, shown) {
            return Verdict::Failed(f);
        }
        if c.phase() == PHASE_READY {
            return Verdict::Done(c.clone());
        }
        Verdict::Waiting(Progress::line(phase_line(c)))
    }

    /// The READY cluster's "TMC phase READY, health …" line.
    fn closing_line(&self, c: &C) -> Option<String> {
        Some(phase_line(c))
    }
}

fn phase_line<C: TmcCluster>(c: &C) -> String {
    format!("TMC phase {}, health {}", c.phase(), c.health())
}

/// How the detach wait of `tmc.detach` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The `GET` answered 404.
    Yes,
    /// A new TMC cluster of that name (this uid) answers: the one tkgops detached is gone, the
    /// new one is left alone.
    Replaced(String),
    /// The deadline passed with the cluster still there, in this phase (tkgops then detaches
    /// with `force=true`, docs/tanzu-apis.md §3.5 step 5).
    StillThere(String),
}

/// The detach wait of `tmc.detach`: poll until 404, or until the name answers with a `meta.uid`
/// other than the detached cluster's (docs/tanzu-apis.md §3.5 step 5). Snapshot: the `GET`'s cluster
/// (`None`: 404). Progress "TMC cluster `<shown>`: phase `<phase>`" (once per phase). At the
/// driver's deadline: [`Gone::StillThere`] with the last phase seen.
#[derive(Clone, Debug)]
pub struct TmcClusterGone<C> {
    shown: String,
    uid: Option<String>,
    last_phase: String,
    _model: std::marker::PhantomData<fn() -> C>,
}

impl<C> TmcClusterGone<C> {
    /// The judge for the TMC cluster named `shown`, detached with uid `uid` (`None`: any
    /// cluster of that name counts as still there).
    pub fn new(shown: &str, uid: Option<&str>) -> Self {
        TmcClusterGone {
            shown: shown.to_string(),
            uid: uid.map(str::to_string),
            last_phase: String::new(),
            _model: std::marker::PhantomData,
        }
    }
}

impl<C: TmcCluster> Judge for TmcClusterGone<C> {
    type Snapshot = Option<C>;
    type Output = Gone;

    fn judge(&mut self, c: &Option<C>, _at: Duration) -> Verdict<Gone> {
        let Some(c) = c else {
            return Verdict::Done(Gone::Yes);
        };
        if self.uid.is_some() && c.uid() != self.uid.as_deref() {
            return Verdict::Done(Gone::Replaced(c.uid().unwrap_or("?").to_string()));
        }
        self.last_phase = c.phase().to_string();
        Verdict::Waiting(Progress::line(format!(
            "TMC cluster {}: phase {}",
            self.shown, self.last_phase
        )))
    }

    fn closing_line(&self, output: &Gone) -> Option<String> {
        match output {
            Gone::Replaced(uid) => Some(format!(
                "TMC cluster {} was detached; a new TMC cluster of that name (uid {uid}) exists and is left alone",
                self.shown
            )),
            _ => None,
        }
    }

    fn deadline_passed(&mut self, _at: Duration) -> Result<Gone, Failure> {
        Ok(Gone::StillThere(self.last_phase.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TMC cluster as `GET /v1alpha1/clusters/{name}` returns its status.
    #[derive(Clone, Debug, PartialEq)]
    struct Fixture {
        phase: &'static str,
        health: &'static str,
        uid: &'static str,
        conditions: &'static str,
    }

    impl TmcCluster for Fixture {
        fn phase(&self) -> &str {
            self.phase
        }
        fn health(&self) -> &str {
            self.health
        }
        fn uid(&self) -> Option<&str> {
            Some(self.uid)
        }
        fn condition_messages(&self) -> String {
            self.conditions.to_string()
        }
    }

    fn c(phase: &'static str, health: &'static str) -> Option<Fixture> {
        Some(Fixture {
            phase,
            health,
            uid: "c:01",
            conditions: "",
        })
    }

    const SHOWN: &str = "attached/attached/wc1";

    #[test]
    fn attach_waits_for_ready_only() {
        let mut j = TmcClusterReady::<Fixture>::new(SHOWN);
        let z = Duration::ZERO;
        assert_eq!(
            j.judge(&c("PENDING", "HEALTH_UNSPECIFIED"), z),
            Verdict::Waiting(Progress::line(
                "TMC phase PENDING, health HEALTH_UNSPECIFIED"
            ))
        );
        let ready = c("READY", "WARNING");
        assert_eq!(j.judge(&ready, z), Verdict::Done(ready.clone().unwrap()));
        assert_eq!(
            j.closing_line(ready.as_ref().unwrap()).unwrap(),
            "TMC phase READY, health WARNING"
        );
        assert_eq!(
            j.judge(&None, z),
            Verdict::Failed(Failure::transient(
                "TMC cluster attached/attached/wc1 disappeared while waiting for its agent to connect"
            ))
        );
        let mut failed = c("ERROR", "UNHEALTHY");
        if let Some(f) = failed.as_mut() {
            f.conditions = "Agent-READY: cannot reach TMC";
        }
        assert_eq!(
            j.judge(&failed, z),
            Verdict::Failed(Failure::permanent(
                "TMC cluster attached/attached/wc1 is in phase ERROR (health UNHEALTHY): Agent-READY: cannot reach TMC"
            ))
        );
        assert_eq!(
            j.judge(&c("DETACHING", "HEALTHY"), z),
            Verdict::Failed(Failure::transient(
                "TMC cluster attached/attached/wc1 is being detached (phase DETACHING)"
            ))
        );
    }

    #[test]
    fn detach_waits_for_a_404_or_another_uid() {
        let z = Duration::ZERO;
        let mut j = TmcClusterGone::<Fixture>::new(SHOWN, Some("c:01"));
        assert_eq!(
            j.judge(&c("DETACHING", "HEALTHY"), z),
            Verdict::Waiting(Progress::line(
                "TMC cluster attached/attached/wc1: phase DETACHING"
            ))
        );
        assert_eq!(
            j.deadline_passed(z),
            Ok(Gone::StillThere("DETACHING".into()))
        );
        assert_eq!(j.judge(&None, z), Verdict::Done(Gone::Yes));
        let mut other = c("PENDING", "HEALTHY");
        if let Some(o) = other.as_mut() {
            o.uid = "c:02";
        }
        let v = j.judge(&other, z);
        assert_eq!(v, Verdict::Done(Gone::Replaced("c:02".into())));
        assert_eq!(
            j.closing_line(&Gone::Replaced("c:02".into())).unwrap(),
            "TMC cluster attached/attached/wc1 was detached; a new TMC cluster of that name (uid c:02) exists and is left alone"
        );
        // Without a uid to compare, any cluster of the name is still there.
        let mut j = TmcClusterGone::<Fixture>::new(SHOWN, None);
        assert!(matches!(j.judge(&other, z), Verdict::Waiting(_)));
    }
}
