//! `action: apply` of a schedule (issue 8 item 6), the pure part: the progress of one fire
//! through its waves ([`ApplyProgress`]), as an explicit state machine the bot drives and
//! persists, and the health judgement of the soak ([`ClusterHealth`]).
//!
//! A fire's [`crate::schedule::WavePlan`] is frozen into an [`ApplyProgress`] when it
//! fires (a restart never re-plans it). Then, on every poll, the bot asks [`ApplyProgress::next`]
//! what to do and reports back through the transition methods:
//!
//! | wave state | event | next state |
//! |---|---|---|
//! | `Pending`/`Running` | [`ApplyProgress::started`] (inside the window, at most `maxConcurrent` at a time) | `Running` |
//! | `Running` | [`ApplyProgress::run_finished`] ok, every cluster done | `Soaking` until now + soak |
//! | `Running` | [`ApplyProgress::run_finished`] failed | `Halted` |
//! | `Soaking` | [`ApplyProgress::observed`] regression ([`ClusterHealth::regression_from`]) | `Halted` |
//! | `Soaking` | [`ApplyProgress::observed`] healthy, soak over | `Succeeded` (the next wave may start) |
//! | `Halted` | [`ApplyProgress::resume`] | `Running` (failed runs retried) or `Soaking` (re-baselined) |
//!
//! A wave starts only when the previous one `Succeeded`, and only inside the maintenance window;
//! runs already started finish and soaks complete after the window closes, but nothing new
//! starts ([`Next::WindowClosed`]). A halted fire stays halted until a person resumes it.
//!
//! Health (rule of the soak): Cluster `Ready`, MachineHealthCheck unhealthy Machines
//! (`expectedMachines - currentHealthy`, docs/tanzu-apis.md §MachineHealthCheck) not above the
//! cluster's count before its upgrade, and no PackageInstall `ReconcileFailed` (docs/tanzu-apis.md
//! §4.3).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::schedule::WavePlan;

/// One observation of a workload cluster's health, as the soak judges it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterHealth {
    /// The Cluster's `Ready` condition is `True`.
    pub ready: bool,
    /// Why not ready (the condition's reason and message), when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    /// Sum over the cluster's MachineHealthChecks of `expectedMachines - currentHealthy`.
    pub unhealthy_machines: u32,
    /// PackageInstalls seen on the workload cluster.
    pub packages: u32,
    /// PackageInstalls `ReconcileFailed`, as `ns/name: message`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failing_packages: Vec<String>,
}

impl ClusterHealth {
    /// What is wrong now regardless of any baseline (not `Ready`, failing PackageInstalls);
    /// `None` when nothing is.
    pub fn problem(&self) -> Option<String> {
        let mut out = Vec::new();
        if !self.ready {
            out.push(format!(
                "Cluster not Ready ({})",
                self.not_ready.as_deref().unwrap_or("no Ready condition")
            ));
        }
        if !self.failing_packages.is_empty() {
            out.push(format!(
                "PackageInstalls failing: {}",
                self.failing_packages.join("; ")
            ));
        }
        (!out.is_empty()).then(|| out.join("; "))
    }

    /// The health regression of this observation against `baseline` (taken before the
    /// upgrade): [`Self::problem`], or more unhealthy Machines than the baseline had. `None`
    /// when healthy.
    pub fn regression_from(&self, baseline: &ClusterHealth) -> Option<String> {
        let mut out: Vec<String> = self.problem().into_iter().collect();
        if self.unhealthy_machines > baseline.unhealthy_machines {
            out.push(format!(
                "MachineHealthCheck unhealthy Machines rose from {} to {}",
                baseline.unhealthy_machines, self.unhealthy_machines
            ));
        }
        (!out.is_empty()).then(|| out.join("; "))
    }
}

/// Where one cluster of a wave is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClusterStage {
    /// Not started (or to be retried after a resume when it has a run).
    Pending,
    /// Its upgrade run was submitted.
    Running,
    /// Its upgrade run succeeded.
    Succeeded,
    /// Its upgrade run failed or was cancelled (or it was unhealthy before it started).
    Failed,
}

/// One cluster of a wave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProgress {
    /// Cluster name.
    pub cluster: String,
    /// TKR before.
    pub from: String,
    /// TKR after.
    pub to: String,
    /// Where it is.
    pub stage: ClusterStage,
    /// Its upgrade run id, once submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Its health before the upgrade (the soak's baseline); reset by a resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<ClusterHealth>,
    /// What happened, for people (the failure, the regression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The Cluster its health is read from (from its upgrade plan), once started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<crate::step::WorkloadTarget>,
}

/// Where one wave is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WaveState {
    /// Waiting for the previous wave (or the window).
    Pending,
    /// Upgrade runs started.
    Running,
    /// Every run succeeded; health is watched until `soak_until`.
    Soaking,
    /// Soaked healthy: the next wave may start.
    Succeeded,
    /// A run failed or health regressed: waits for a person.
    Halted,
}

/// One wave of an [`ApplyProgress`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaveProgress {
    /// Wave name.
    pub name: String,
    /// Soak time, seconds.
    pub soak_secs: u64,
    /// Upgrade runs at the same time, >= 1.
    pub max_concurrent: u32,
    /// Where it is.
    pub state: WaveState,
    /// Its clusters, by name.
    pub clusters: Vec<ClusterProgress>,
    /// The commit its runs are pinned to (the wave's bump commit), once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// End of the soak, while `Soaking`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_until: Option<DateTime<Utc>>,
}

impl WaveProgress {
    /// When every cluster's run succeeded: the wave soaks from `now` for its soak time.
    /// Returns whether it does.
    fn soak_if_all_succeeded(&mut self, now: DateTime<Utc>) -> bool {
        let done = self
            .clusters
            .iter()
            .all(|c| c.stage == ClusterStage::Succeeded);
        if done {
            self.state = WaveState::Soaking;
            self.soak_until = Some(now + chrono::Duration::seconds(self.soak_secs as i64));
        }
        done
    }
}

/// Why a fire halted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Halt {
    /// The wave that halted.
    pub wave: String,
    /// Why, for people.
    pub reason: String,
    /// When (the bot's clock).
    pub at: DateTime<Utc>,
}

/// A person's resume of a halted fire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resume {
    /// GitHub login.
    pub by: String,
    /// When (the bot's clock).
    pub at: DateTime<Utc>,
    /// The halt it lifted.
    pub halt: Halt,
}

/// The progress of one `apply` fire (persisted in its fire record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyProgress {
    /// The default branch's commit at the fire: the policy, and the parent of the first wave's
    /// bump commit.
    pub base: String,
    /// The record pull request holding the bump commits, once opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<u64>,
    /// The waves, in order.
    pub waves: Vec<WaveProgress>,
    /// The current halt, if halted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halt: Option<Halt>,
    /// Earlier halts people lifted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumes: Vec<Resume>,
}

/// What the bot should do next for a fire ([`ApplyProgress::next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Halted: nothing until a person resumes.
    Halted,
    /// Every wave succeeded.
    Done,
    /// The window closed with clusters not upgraded and nothing in flight: the fire ends.
    WindowClosed {
        /// The clusters left for a later fire.
        left: Vec<String>,
    },
    /// Start (or retry, when they have a run) these clusters of wave `wave` (indexes).
    Start {
        /// Wave index.
        wave: usize,
        /// Cluster indexes within the wave, at most `maxConcurrent` minus those running.
        clusters: Vec<usize>,
    },
    /// Runs of wave `wave` are in flight (and nothing more may start): observe them.
    Watch {
        /// Wave index.
        wave: usize,
    },
    /// Wave `wave` soaks: probe its clusters' health.
    Soak {
        /// Wave index.
        wave: usize,
    },
}

impl ApplyProgress {
    /// A fire's progress from its frozen `plan`, based on default-branch commit `base`: every
    /// wave `Pending`.
    pub fn new(base: &str, plan: &WavePlan) -> ApplyProgress {
        ApplyProgress {
            base: base.to_string(),
            pull: None,
            waves: plan
                .waves
                .iter()
                .map(|w| WaveProgress {
                    name: w.name.clone(),
                    soak_secs: w.soak.as_secs(),
                    max_concurrent: w.max_concurrent.max(1),
                    state: WaveState::Pending,
                    clusters: w
                        .bumps
                        .iter()
                        .map(|b| ClusterProgress {
                            cluster: b.cluster.clone(),
                            from: b.from.clone(),
                            to: b.to.clone(),
                            stage: ClusterStage::Pending,
                            run: None,
                            baseline: None,
                            detail: None,
                            target: None,
                        })
                        .collect(),
                    commit: None,
                    soak_until: None,
                })
                .collect(),
            halt: None,
            resumes: Vec::new(),
        }
    }

    /// The wave in progress: the first not `Succeeded` (`None` when all are).
    pub fn current(&self) -> Option<usize> {
        self.waves
            .iter()
            .position(|w| w.state != WaveState::Succeeded)
    }

    /// What to do at `now`, with the maintenance window open or not (see the module docs).
    pub fn next(&self, window_open: bool) -> Next {
        if self.halt.is_some() {
            return Next::Halted;
        }
        let Some(i) = self.current() else {
            return Next::Done;
        };
        let w = &self.waves[i];
        match w.state {
            WaveState::Halted => Next::Halted,
            WaveState::Soaking => Next::Soak { wave: i },
            WaveState::Succeeded => Next::Done,
            WaveState::Pending | WaveState::Running => {
                let running = w
                    .clusters
                    .iter()
                    .filter(|c| c.stage == ClusterStage::Running)
                    .count();
                let room = (w.max_concurrent as usize).saturating_sub(running);
                let pending: Vec<usize> = w
                    .clusters
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.stage == ClusterStage::Pending)
                    .map(|(j, _)| j)
                    .take(room)
                    .collect();
                if window_open && !pending.is_empty() {
                    Next::Start {
                        wave: i,
                        clusters: pending,
                    }
                } else if running > 0 {
                    Next::Watch { wave: i }
                } else {
                    Next::WindowClosed {
                        left: self.waves[i..]
                            .iter()
                            .flat_map(|w| &w.clusters)
                            .filter(|c| c.stage != ClusterStage::Succeeded)
                            .map(|c| c.cluster.clone())
                            .collect(),
                    }
                }
            }
        }
    }

    /// Cluster `c` of wave `w` is being started as run `run`, with health `baseline` before its
    /// upgrade (kept when it already has one, i.e. on a retry after a resume). The bot persists
    /// this state *before* it submits the run; the run id is deterministic, so a restart in
    /// between submits the same run once.
    pub fn started(&mut self, w: usize, c: usize, run: &str, baseline: ClusterHealth) {
        if let Some(wave) = self.waves.get_mut(w) {
            wave.state = WaveState::Running;
            if let Some(cp) = wave.clusters.get_mut(c) {
                cp.stage = ClusterStage::Running;
                cp.run = Some(run.to_string());
                if cp.baseline.is_none() {
                    cp.baseline = Some(baseline);
                }
                cp.detail = None;
            }
        }
    }

    /// The run of cluster `c` of wave `w` finished at `now`: `Ok(())` succeeded, `Err(why)`
    /// failed or was cancelled (the wave and the fire halt). When every cluster of the wave
    /// succeeded, the wave soaks until `now` + its soak time.
    pub fn run_finished(
        &mut self,
        w: usize,
        c: usize,
        result: Result<(), String>,
        now: DateTime<Utc>,
    ) {
        let Some(wave) = self.waves.get_mut(w) else {
            return;
        };
        let Some(cp) = wave.clusters.get_mut(c) else {
            return;
        };
        match result {
            Ok(()) => {
                cp.stage = ClusterStage::Succeeded;
                wave.soak_if_all_succeeded(now);
            }
            Err(why) => {
                cp.stage = ClusterStage::Failed;
                let reason = format!("the upgrade of `{}` failed: {why}", cp.cluster);
                cp.detail = Some(why);
                self.halt_at(w, reason, now);
            }
        }
    }

    /// Health `h` of cluster `c` of wave `w` observed at `now` while the wave soaks (with no
    /// baseline after a resume, `h` becomes the baseline and only [`ClusterHealth::problem`]
    /// counts). A regression halts the wave and the fire; returns it. Call
    /// [`Self::soak_done`] once every cluster was observed healthy.
    pub fn observed(
        &mut self,
        w: usize,
        c: usize,
        h: &ClusterHealth,
        now: DateTime<Utc>,
    ) -> Option<String> {
        let cp = self.waves.get_mut(w)?.clusters.get_mut(c)?;
        // No baseline (re-baselined by a resume): this observation is the baseline, and is
        // still judged for what is wrong regardless of one.
        let base = cp.baseline.get_or_insert_with(|| h.clone()).clone();
        let regression = h.regression_from(&base)?;
        cp.detail = Some(regression.clone());
        let reason = format!("`{}` regressed while soaking: {regression}", cp.cluster);
        self.halt_at(w, reason, now);
        Some(regression)
    }

    /// Ends the soak of wave `w` when it is over at `now` (call after every cluster was
    /// observed healthy this round); returns whether the wave succeeded.
    pub fn soak_done(&mut self, w: usize, now: DateTime<Utc>) -> bool {
        let Some(wave) = self.waves.get_mut(w) else {
            return false;
        };
        if wave.state == WaveState::Soaking && wave.soak_until.is_some_and(|u| now >= u) {
            wave.state = WaveState::Succeeded;
            wave.soak_until = None;
            return true;
        }
        false
    }

    /// Cluster `c` of wave `w` cannot start (e.g. unhealthy before its upgrade): it fails and
    /// the fire halts with `why`.
    pub fn refuse_start(&mut self, w: usize, c: usize, why: String, now: DateTime<Utc>) {
        if let Some(cp) = self.waves.get_mut(w).and_then(|x| x.clusters.get_mut(c)) {
            cp.stage = ClusterStage::Failed;
            cp.detail = Some(why.clone());
            let reason = format!("`{}` was not upgraded: {why}", cp.cluster);
            self.halt_at(w, reason, now);
        }
    }

    fn halt_at(&mut self, w: usize, reason: String, now: DateTime<Utc>) {
        if let Some(wave) = self.waves.get_mut(w) {
            wave.state = WaveState::Halted;
            self.halt = Some(Halt {
                wave: wave.name.clone(),
                reason,
                at: now,
            });
        }
    }

    /// A person (`by`) lifts the halt at `now`: failed clusters become `Pending` again (the bot
    /// retries their runs from the failed step), every other cluster of the wave is
    /// re-baselined at its next observation, and a wave whose runs all succeeded soaks again
    /// for its full soak time. Returns the halt lifted, `None` when not halted.
    pub fn resume(&mut self, by: &str, now: DateTime<Utc>) -> Option<Halt> {
        let halt = self.halt.take()?;
        if let Some(w) = self.current() {
            let wave = &mut self.waves[w];
            for c in &mut wave.clusters {
                if c.stage == ClusterStage::Failed {
                    c.stage = ClusterStage::Pending;
                }
                if c.stage == ClusterStage::Succeeded {
                    c.baseline = None;
                    c.detail = None;
                }
            }
            if !wave.soak_if_all_succeeded(now) {
                wave.state = WaveState::Running;
            }
        }
        self.resumes.push(Resume {
            by: by.to_string(),
            at: now,
            halt: halt.clone(),
        });
        Some(halt)
    }

    /// The clusters upgraded so far, by name.
    pub fn upgraded(&self) -> Vec<String> {
        self.waves
            .iter()
            .flat_map(|w| &w.clusters)
            .filter(|c| c.stage == ClusterStage::Succeeded)
            .map(|c| c.cluster.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{Bump, PlannedWave};
    use chrono::TimeZone;
    use std::time::Duration;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    fn bump(c: &str) -> Bump {
        Bump {
            cluster: c.into(),
            from: "v1.24.11+vmware.1-tkg.1".into(),
            to: "v1.25.7+vmware.2-tkg.1".into(),
        }
    }

    fn two_waves() -> ApplyProgress {
        ApplyProgress::new(
            "base",
            &WavePlan {
                waves: vec![
                    PlannedWave {
                        name: "canary".into(),
                        soak: Duration::from_secs(1800),
                        max_concurrent: 1,
                        bumps: vec![bump("a")],
                    },
                    PlannedWave {
                        name: "rest".into(),
                        soak: Duration::ZERO,
                        max_concurrent: 2,
                        bumps: vec![bump("b"), bump("c"), bump("d")],
                    },
                ],
                ..Default::default()
            },
        )
    }

    fn healthy(unhealthy: u32) -> ClusterHealth {
        ClusterHealth {
            ready: true,
            unhealthy_machines: unhealthy,
            packages: 3,
            ..Default::default()
        }
    }

    #[test]
    fn waves_start_in_order_within_max_concurrent_and_gate_on_the_soak() {
        let mut p = two_waves();
        assert_eq!(
            p.next(true),
            Next::Start {
                wave: 0,
                clusters: vec![0]
            }
        );
        p.started(0, 0, "run-a", healthy(0));
        assert_eq!(p.next(true), Next::Watch { wave: 0 });
        p.run_finished(0, 0, Ok(()), t(10));
        assert_eq!(p.waves[0].state, WaveState::Soaking);
        assert_eq!(p.next(true), Next::Soak { wave: 0 });
        // Healthy but the soak (30m) is not over: the next wave waits.
        assert_eq!(p.observed(0, 0, &healthy(0), t(20)), None);
        assert!(!p.soak_done(0, t(20)));
        assert_eq!(p.next(true), Next::Soak { wave: 0 });
        assert_eq!(p.observed(0, 0, &healthy(0), t(40)), None);
        assert!(p.soak_done(0, t(40)));
        // Wave 2: two at a time.
        assert_eq!(
            p.next(true),
            Next::Start {
                wave: 1,
                clusters: vec![0, 1]
            }
        );
        p.started(1, 0, "run-b", healthy(0));
        p.started(1, 1, "run-c", healthy(0));
        assert_eq!(p.next(true), Next::Watch { wave: 1 });
        p.run_finished(1, 0, Ok(()), t(50));
        assert_eq!(
            p.next(true),
            Next::Start {
                wave: 1,
                clusters: vec![2]
            }
        );
        p.started(1, 2, "run-d", healthy(0));
        p.run_finished(1, 1, Ok(()), t(55));
        p.run_finished(1, 2, Ok(()), t(60));
        // A soak of 0 still observes once.
        assert_eq!(p.next(true), Next::Soak { wave: 1 });
        for c in 0..3 {
            assert_eq!(p.observed(1, c, &healthy(0), t(60)), None);
        }
        assert!(p.soak_done(1, t(60)));
        assert_eq!(p.next(true), Next::Done);
        assert_eq!(p.upgraded(), ["a", "b", "c", "d"]);
    }

    #[test]
    fn nothing_starts_outside_the_window_but_runs_in_flight_are_watched() {
        let mut p = two_waves();
        assert_eq!(
            p.next(false),
            Next::WindowClosed {
                left: vec!["a".into(), "b".into(), "c".into(), "d".into()]
            }
        );
        p.started(0, 0, "run-a", healthy(0));
        assert_eq!(p.next(false), Next::Watch { wave: 0 });
        p.run_finished(0, 0, Ok(()), t(10));
        // The soak completes after the window closed, but wave 2 does not start.
        assert!(!p.soak_done(0, t(20)));
        assert_eq!(p.observed(0, 0, &healthy(0), t(41)), None);
        assert!(p.soak_done(0, t(41)));
        assert_eq!(
            p.next(false),
            Next::WindowClosed {
                left: vec!["b".into(), "c".into(), "d".into()]
            }
        );
    }

    #[test]
    fn a_failed_run_halts_until_resumed_then_it_is_retried() {
        let mut p = two_waves();
        p.started(0, 0, "run-a", healthy(0));
        p.run_finished(0, 0, Err("wait-control-plane: timed out".into()), t(10));
        assert_eq!(p.next(true), Next::Halted);
        let halt = p.halt.clone().unwrap();
        assert_eq!(halt.wave, "canary");
        assert_eq!(
            halt.reason,
            "the upgrade of `a` failed: wait-control-plane: timed out"
        );
        // Halted stays halted, whatever the window.
        assert_eq!(p.next(false), Next::Halted);
        assert_eq!(p.resume("alice", t(30)), Some(halt));
        assert_eq!(p.resume("alice", t(31)), None, "nothing to resume twice");
        // The failed cluster starts again (the bot retries its run: it has one).
        assert_eq!(
            p.next(true),
            Next::Start {
                wave: 0,
                clusters: vec![0]
            }
        );
        assert_eq!(p.waves[0].clusters[0].run.as_deref(), Some("run-a"));
        assert_eq!(p.resumes.len(), 1);
    }

    #[test]
    fn a_health_regression_halts_and_a_resume_rebaselines_and_soaks_again() {
        let mut p = two_waves();
        p.started(0, 0, "run-a", healthy(1));
        p.run_finished(0, 0, Ok(()), t(10));
        // One unhealthy Machine before the upgrade: one after is not a regression.
        assert_eq!(p.observed(0, 0, &healthy(1), t(15)), None);
        let r = p.observed(0, 0, &healthy(2), t(20));
        assert_eq!(
            r.as_deref(),
            Some("MachineHealthCheck unhealthy Machines rose from 1 to 2")
        );
        assert_eq!(p.next(true), Next::Halted);
        assert!(!p.soak_done(0, t(60)), "a halted wave never succeeds");
        p.resume("alice", t(60));
        assert_eq!(p.next(true), Next::Soak { wave: 0 });
        assert_eq!(p.waves[0].soak_until, Some(t(90)));
        // Re-baselined at 2: staying at 2 is healthy.
        assert_eq!(p.observed(0, 0, &healthy(2), t(61)), None);
        assert_eq!(p.observed(0, 0, &healthy(2), t(90)), None);
        assert!(p.soak_done(0, t(90)));
    }

    #[test]
    fn not_ready_and_failing_packages_are_regressions_and_unhealthy_before_is_refused() {
        let sick = ClusterHealth {
            ready: false,
            not_ready: Some("ScalingUp: 1 of 3 replicas".into()),
            unhealthy_machines: 0,
            packages: 2,
            failing_packages: vec!["tkg-system/contour: kapp: deploy failed".into()],
        };
        assert_eq!(
            sick.regression_from(&healthy(0)).as_deref(),
            Some("Cluster not Ready (ScalingUp: 1 of 3 replicas); PackageInstalls failing: tkg-system/contour: kapp: deploy failed")
        );
        let mut p = two_waves();
        p.refuse_start(0, 0, sick.problem().unwrap(), t(1));
        assert_eq!(p.next(true), Next::Halted);
        assert!(p
            .halt
            .as_ref()
            .unwrap()
            .reason
            .starts_with("`a` was not upgraded: Cluster not Ready"));
    }

    #[test]
    fn after_a_resume_the_first_observation_is_the_baseline_but_still_judged() {
        let mut p = two_waves();
        p.started(0, 0, "run-a", healthy(0));
        p.run_finished(0, 0, Ok(()), t(10));
        assert!(p.observed(0, 0, &healthy(1), t(11)).is_some());
        p.resume("alice", t(20));
        let sick = ClusterHealth {
            ready: false,
            not_ready: Some("WaitingForControlPlane".into()),
            ..healthy(1)
        };
        assert_eq!(
            p.observed(0, 0, &sick, t(21)).as_deref(),
            Some("Cluster not Ready (WaitingForControlPlane)")
        );
        assert_eq!(p.next(true), Next::Halted);
    }

    #[test]
    fn progress_round_trips_through_json() {
        let mut p = two_waves();
        p.started(0, 0, "run-a", healthy(0));
        let back: ApplyProgress =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }
}
