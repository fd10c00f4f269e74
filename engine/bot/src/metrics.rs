//! The bot's Prometheus metrics (`GET /metrics`, [`crate::webhook::router`]): one [`Metrics`]
//! registry per bot, built with `prometheus-client` and passed to the parts that report to it
//! (the engine's observer [`MetricsObserver`], the webhook receiver, the poll loop, the
//! schedule reconciler). README "Metrics and alerts" lists every metric.
//!
//! Labels carry bounded values only (workflow, outcome, step kind, TKR, schedule, the
//! cluster of queued runs) and never a secret: no token, no URL, no error text.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tkgops_engine::store::{RunRecord, RunState, StepState};
use tkgops_engine::RunObserver;
use tkgops_github::{ApiUsage, CONTENT_WRITES_PER_MINUTE};

use crate::reconcile::schedule::{FireRecord, FireState};
use crate::trust::PolicyHealth;

/// The `Content-Type` of the exposition [`Metrics::encode`] writes (OpenMetrics text, which
/// Prometheus negotiates and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the step duration histogram: a step takes from a second (a
/// secret) to hours (a control plane rollout).
const STEP_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];
/// Upper bounds (seconds) of the poll duration histogram.
const POLL_BUCKETS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The results of webhook deliveries ([`Metrics::webhook_delivery`]).
pub const WEBHOOK_RESULTS: [&str; 7] = [
    "accepted",
    "ignored",
    "duplicate",
    "bad_signature",
    "no_secret",
    "bad_request",
    "journal_unavailable",
];

/// The results of schedule fires ([`Metrics::schedule_fire`]).
const FIRE_RESULTS: [&str; 5] = ["proposed", "applied", "incomplete", "not_run", "missed"];

/// Labels of run counters: the workflow (`create-cluster`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

/// Labels of finished runs: the workflow and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunOutcomeLabels {
    workflow: String,
    /// `succeeded`, `failed` or `cancelled`.
    outcome: String,
}

/// Labels of step metrics: the step kind and how the step (or attempt) ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: String,
    outcome: String,
}

/// Labels of per-cluster gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

/// Labels of counters by result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// Labels of the clusters-by-TKR gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TkrLabels {
    tkr: String,
}

/// A gauge without labels that is absent until its value is known (a family whose only
/// series, with no labels, is created by the first `set`).
type OptionalGauge = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;

fn set_optional(g: &OptionalGauge, v: f64) {
    g.get_or_create(&Vec::new()).set(v);
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

/// What the run tracker remembers of a run it saw, to count each transition once.
struct Seen {
    state: RunState,
    /// The run's first step began in this process (counted as started).
    started: bool,
    /// Finished attempts of each step at the last sight.
    finished_attempts: Vec<usize>,
    /// Whether each step was terminal at the last sight.
    terminal: Vec<bool>,
}

impl Seen {
    /// What `run` shows now, counted already (a run first seen after a restart is not counted
    /// again for what an earlier process did).
    fn baseline(run: &RunRecord) -> Seen {
        Seen {
            state: run.state,
            started: false,
            finished_attempts: run
                .steps
                .iter()
                .map(|s| s.attempts.iter().filter(|a| a.outcome.is_some()).count())
                .collect(),
            terminal: run.steps.iter().map(|s| s.state.is_terminal()).collect(),
        }
    }
}

/// The bot's metrics: the registry and every metric in it. Built once per bot
/// ([`Metrics::new`]), shared as `Arc<Metrics>`; every method takes `&self` and is cheap.
pub struct Metrics {
    registry: Registry,
    runs_started: Family<WorkflowLabels, Counter>,
    runs_finished: Family<RunOutcomeLabels, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    step_attempts: Family<StepLabels, Counter>,
    runs_queued: Family<ClusterLabels, Gauge>,
    oldest_queued_age: Gauge<f64, AtomicU64>,
    github_rate_limit_remaining: OptionalGauge,
    github_content_writes: Counter,
    github_content_writes_limit: Gauge,
    webhook_deliveries: Family<ResultLabels, Counter>,
    polls: Family<ResultLabels, Counter>,
    poll_duration: Histogram,
    last_successful_poll: OptionalGauge,
    policy_trusted: OptionalGauge,
    policy_untrusted_changes: Counter,
    schedule_fires: Family<ResultLabels, Counter>,
    waves_halted: Counter,
    applies_halted: Gauge,
    /// The schedules whose apply is halted now.
    halted_schedules: Mutex<std::collections::BTreeSet<String>>,
    clusters_by_tkr: Family<TkrLabels, Gauge>,
    drift_clusters: Gauge,
    github_usage: Mutex<Option<Arc<ApiUsage>>>,
    runs: Mutex<HashMap<String, Seen>>,
    /// Serialises [`Metrics::encode`] (it refreshes the scrape-time gauges first).
    encoding: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Registers `metric` in `r` under `name` with `help` and returns it (a metric is a shared
/// handle: the registry and the returned value update the same series).
fn registered<M: prometheus_client::registry::Metric + Clone>(
    r: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Metrics {
    /// A registry with every metric of the bot, all at zero (the optional gauges absent).
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let runs_started = registered(
            &mut r,
            "tkgops_runs_started",
            "Runs whose first step began, by workflow",
            Family::<WorkflowLabels, Counter>::default(),
        );
        let runs_finished = registered(
            &mut r,
            "tkgops_runs_finished",
            "Runs that reached a terminal state, by workflow and outcome (succeeded, failed, cancelled)",
            Family::<RunOutcomeLabels, Counter>::default(),
        );
        let step_duration: HistogramFamily<StepLabels> = registered(
            &mut r,
            "tkgops_step_duration_seconds",
            "Duration of finished steps (first attempt's start to the step's end, retries included), by step kind and outcome (succeeded, failed)",
            Family::new_with_constructor(step_histogram as fn() -> Histogram),
        );
        let step_attempts = registered(
            &mut r,
            "tkgops_step_attempts",
            "Finished step attempts, by step kind and outcome (succeeded, transient, permanent, timeout, interrupted, shutdown)",
            Family::<StepLabels, Counter>::default(),
        );
        let runs_queued = registered(
            &mut r,
            "tkgops_runs_queued",
            "Runs waiting for their cluster, by cluster",
            Family::<ClusterLabels, Gauge>::default(),
        );
        let oldest_queued_age = registered(
            &mut r,
            "tkgops_oldest_queued_run_age_seconds",
            "Age of the oldest queued run (since its submission); 0 when none is queued",
            Gauge::<f64, AtomicU64>::default(),
        );
        let github_rate_limit_remaining = registered(
            &mut r,
            "tkgops_github_rate_limit_remaining",
            "GitHub API requests left in the primary rate-limit window (x-ratelimit-remaining of the last answer)",
            OptionalGauge::default(),
        );
        let github_content_writes = registered(
            &mut r,
            "tkgops_github_content_writes",
            "Content-creating GitHub requests sent (comments, statuses, PR edits)",
            Counter::default(),
        );
        let github_content_writes_limit = registered(
            &mut r,
            "tkgops_github_content_writes_per_minute_limit",
            "The bot's budget of content-creating GitHub requests per minute",
            Gauge::default(),
        );
        github_content_writes_limit.set(i64::from(CONTENT_WRITES_PER_MINUTE));
        let webhook_deliveries = registered(
            &mut r,
            "tkgops_webhook_deliveries",
            "GitHub webhook deliveries, by result (accepted, ignored, duplicate, bad_signature, no_secret, bad_request, journal_unavailable)",
            Family::<ResultLabels, Counter>::default(),
        );
        let polls = registered(
            &mut r,
            "tkgops_polls",
            "Polls of GitHub (syncs), by result (ok, error)",
            Family::<ResultLabels, Counter>::default(),
        );
        let poll_duration = registered(
            &mut r,
            "tkgops_poll_duration_seconds",
            "Duration of a poll of GitHub and of the work it found",
            Histogram::new(POLL_BUCKETS),
        );
        let last_successful_poll = registered(
            &mut r,
            "tkgops_last_successful_poll_timestamp_seconds",
            "Unix time of the end of the last successful poll",
            OptionalGauge::default(),
        );
        let policy_trusted = registered(
            &mut r,
            "tkgops_policy_trusted",
            "1 when the default branch's policy is the trusted one, 0 while an untrusted policy change is pending",
            OptionalGauge::default(),
        );
        let policy_untrusted_changes = registered(
            &mut r,
            "tkgops_policy_untrusted_changes",
            "Distinct untrusted policy changes found on the default branch",
            Counter::default(),
        );
        let schedule_fires = registered(
            &mut r,
            "tkgops_schedule_fires",
            "Schedule fires that ended, by result (proposed, applied, incomplete, not_run, missed)",
            Family::<ResultLabels, Counter>::default(),
        );
        let waves_halted = registered(
            &mut r,
            "tkgops_waves_halted",
            "Halts of scheduled applies (a wave stopped for a failed run, an unhealthy cluster or a regression)",
            Counter::default(),
        );
        let applies_halted = registered(
            &mut r,
            "tkgops_scheduled_applies_halted",
            "Schedules whose apply is halted now (until /tkgops resume)",
            Gauge::default(),
        );
        let clusters_by_tkr = registered(
            &mut r,
            "tkgops_clusters",
            "Deployed clusters (of the default branch, with a successful run) by the TKR of their deployed commit",
            Family::<TkrLabels, Gauge>::default(),
        );
        let drift_clusters = registered(
            &mut r,
            "tkgops_drift_clusters",
            "Deployed clusters whose live state differed from Git at their deployed commit in the last drift scan",
            Gauge::default(),
        );
        // The bounded results are there at 0 from the start (rate() needs a first sample).
        for result in WEBHOOK_RESULTS {
            let _ = webhook_deliveries.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        for result in ["ok", "error"] {
            let _ = polls.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        for result in FIRE_RESULTS {
            let _ = schedule_fires.get_or_create(&ResultLabels {
                result: result.into(),
            });
        }
        Metrics {
            registry: r,
            runs_started,
            runs_finished,
            step_duration,
            step_attempts,
            runs_queued,
            oldest_queued_age,
            github_rate_limit_remaining,
            github_content_writes,
            github_content_writes_limit,
            webhook_deliveries,
            polls,
            poll_duration,
            last_successful_poll,
            policy_trusted,
            policy_untrusted_changes,
            schedule_fires,
            waves_halted,
            applies_halted,
            halted_schedules: Mutex::new(Default::default()),
            clusters_by_tkr,
            drift_clusters,
            github_usage: Mutex::new(None),
            runs: Mutex::new(HashMap::new()),
            encoding: Mutex::new(()),
        }
    }

    /// Reads the GitHub client's `usage` (rate limit left, content writes) at each scrape.
    pub fn set_github_usage(&self, usage: Arc<ApiUsage>) {
        *self.github_usage.lock().unwrap_or_else(|e| e.into_inner()) = Some(usage);
    }

    /// Counts what changed in `run` since it was last seen (the engine's observer calls this
    /// after every persisted transition): its start (the first attempt of its first step),
    /// its finish, each finished attempt and each finished step's duration. A run first seen
    /// after a restart counts only what happens from then on.
    pub fn observe_run(&self, run: &RunRecord) {
        let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        let first = !runs.contains_key(&run.id);
        let seen = runs
            .entry(run.id.clone())
            .or_insert_with(|| Seen::baseline(run));
        let first_step_began = run.steps.first().is_some_and(|s| {
            s.attempts_before_retry == 0 && s.attempts.len() == 1 && s.attempts[0].outcome.is_none()
        });
        if !seen.started && run.state == RunState::Running && first_step_began {
            seen.started = true;
            self.runs_started
                .get_or_create(&WorkflowLabels {
                    workflow: run.workflow.clone(),
                })
                .inc();
        }
        seen.finished_attempts.resize(run.steps.len(), 0);
        seen.terminal.resize(run.steps.len(), false);
        for (i, step) in run.steps.iter().enumerate() {
            let kind = step.spec.kind().as_str().to_string();
            let finished: Vec<&str> = step
                .attempts
                .iter()
                .filter_map(|a| a.outcome.as_deref())
                .collect();
            for outcome in finished.iter().skip(seen.finished_attempts[i]) {
                self.step_attempts
                    .get_or_create(&StepLabels {
                        kind: kind.clone(),
                        outcome: (*outcome).to_string(),
                    })
                    .inc();
            }
            seen.finished_attempts[i] = finished.len();
            let terminal = step.state.is_terminal();
            if terminal && !seen.terminal[i] {
                let outcome = match step.state {
                    StepState::Succeeded => Some("succeeded"),
                    StepState::Failed => Some("failed"),
                    _ => None,
                };
                if let (Some(outcome), Some(start), Some(end)) =
                    (outcome, step.started_at, step.finished_at)
                {
                    let secs = (end - start).to_std().unwrap_or_default().as_secs_f64();
                    self.step_duration
                        .get_or_create(&StepLabels {
                            kind,
                            outcome: outcome.into(),
                        })
                        .observe(secs);
                }
            }
            seen.terminal[i] = terminal;
        }
        if run.state.is_terminal() && (first || !seen.state.is_terminal()) {
            let outcome = match run.state {
                RunState::Succeeded => "succeeded",
                RunState::Failed => "failed",
                _ => "cancelled",
            };
            self.runs_finished
                .get_or_create(&RunOutcomeLabels {
                    workflow: run.workflow.clone(),
                    outcome: outcome.into(),
                })
                .inc();
        }
        if run.state.is_terminal() {
            // A retry makes it a run seen for the first time again.
            runs.remove(&run.id);
        } else {
            seen.state = run.state;
        }
    }

    /// Counts a webhook delivery with `result` (one of the values the help text lists).
    pub fn webhook_delivery(&self, result: &str) {
        self.webhook_deliveries
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// Records a poll that took `took`: counted by result, and when `ok`, the Unix time
    /// `now_unix` (seconds) as the last successful poll.
    pub fn poll(&self, took: Duration, ok: bool, now_unix: f64) {
        self.poll_duration.observe(took.as_secs_f64());
        self.polls
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
        if ok {
            set_optional(&self.last_successful_poll, now_unix);
        }
    }

    /// Copies the state of the policy chain (`health`) once it is known: trusted (1) or an
    /// untrusted change pending (0), and the count of untrusted changes found.
    pub fn policy(&self, health: &PolicyHealth) {
        if health.trusted().is_some() {
            let trusted = health.untrusted().is_none();
            set_optional(&self.policy_trusted, if trusted { 1.0 } else { 0.0 });
        }
        let total = health.untrusted_total();
        let counted = self.policy_untrusted_changes.get();
        if total > counted {
            self.policy_untrusted_changes.inc_by(total - counted);
        }
    }

    /// Counts the write of fire record `rec`: a fire that ended (proposed, applied,
    /// incomplete, not run, missed) by its result, and whether its schedule's apply is halted.
    pub fn schedule_fire(&self, rec: &FireRecord) {
        let result = match rec.state {
            FireState::Proposed => Some("proposed"),
            FireState::Applied => Some("applied"),
            FireState::Incomplete => Some("incomplete"),
            FireState::NotRun => Some("not_run"),
            FireState::Missed => Some("missed"),
            FireState::Firing | FireState::Applying => None,
        };
        if let Some(result) = result {
            self.schedule_fires
                .get_or_create(&ResultLabels {
                    result: result.into(),
                })
                .inc();
        }
        if let Some(p) = &rec.apply {
            let halted = rec.state == FireState::Applying && p.halt.is_some();
            let mut set = self
                .halted_schedules
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if halted {
                set.insert(rec.schedule.clone());
            } else {
                set.remove(&rec.schedule);
            }
            self.applies_halted.set(set.len() as i64);
        }
    }

    /// Counts a new halt of a scheduled apply.
    pub fn wave_halted(&self) {
        self.waves_halted.inc();
    }

    /// Sets the drift gauge to `n`, the clusters with drift in the last drift scan.
    pub fn set_drift_clusters(&self, n: i64) {
        self.drift_clusters.set(n);
    }

    /// Replaces the clusters-by-TKR gauge with `by_tkr` (TKR → number of clusters).
    pub fn set_clusters_by_tkr(&self, by_tkr: &BTreeMap<String, i64>) {
        self.clusters_by_tkr.clear();
        for (tkr, n) in by_tkr {
            self.clusters_by_tkr
                .get_or_create(&TkrLabels { tkr: tkr.clone() })
                .set(*n);
        }
    }

    /// The exposition (OpenMetrics text, [`CONTENT_TYPE`]) of every metric, after refreshing
    /// the scrape-time ones: queued runs per cluster and the oldest one's age from `active`
    /// (the engine's non-terminal runs) at `now`, and the GitHub client's usage.
    pub fn encode(&self, active: &[RunRecord], now: chrono::DateTime<chrono::Utc>) -> String {
        let _one = self.encoding.lock().unwrap_or_else(|e| e.into_inner());
        let mut per_cluster: BTreeMap<&str, i64> = BTreeMap::new();
        let mut oldest: Option<chrono::DateTime<chrono::Utc>> = None;
        for run in active.iter().filter(|r| r.state == RunState::Queued) {
            *per_cluster.entry(&run.cluster).or_default() += 1;
            oldest = Some(oldest.map_or(run.created_at, |o| o.min(run.created_at)));
        }
        self.runs_queued.clear();
        for (cluster, n) in per_cluster {
            self.runs_queued
                .get_or_create(&ClusterLabels {
                    cluster: cluster.to_string(),
                })
                .set(n);
        }
        self.oldest_queued_age.set(
            oldest
                .map(|o| (now - o).to_std().unwrap_or_default().as_secs_f64())
                .unwrap_or(0.0),
        );
        let usage = self
            .github_usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(usage) = usage {
            if let Some(n) = usage.rate_limit_remaining() {
                set_optional(&self.github_rate_limit_remaining, n as f64);
            }
            let writes = usage.content_writes();
            let counted = self.github_content_writes.get();
            if writes > counted {
                self.github_content_writes.inc_by(writes - counted);
            }
        }
        let _ = &self.github_content_writes_limit;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The engine's observer: counts every run transition in [`Metrics`] ([`Metrics::observe_run`]),
/// then hands it to `inner` (the comment publisher).
pub struct MetricsObserver {
    /// The bot's metrics.
    pub metrics: Arc<Metrics>,
    /// The observer told after the metrics.
    pub inner: Arc<dyn RunObserver>,
}

#[async_trait::async_trait]
impl RunObserver for MetricsObserver {
    async fn run_changed(&self, run: &RunRecord, progress: Option<&str>) {
        if progress.is_none() {
            self.metrics.observe_run(run);
        }
        self.inner.run_changed(run, progress).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use tkgops_engine::store::{AttemptRecord, StepRecord};

    /// The samples of `name` in `text`, sorted by series (a label family's order in the
    /// exposition is not defined).
    fn sample(name: &str, text: &str) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = text
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn run(state: RunState) -> RunRecord {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let spec = tkgops_engine::StepSpec {
            id: "wait".into(),
            title: "Wait".into(),
            timeout_secs: 60,
            retry: tkgops_engine::RetryPolicy {
                max_attempts: 3,
                initial_backoff_secs: 1.0,
                max_backoff_secs: 2.0,
            },
            inputs: tkgops_engine::StepInputs::KubeWaitCluster(
                tkgops_domain::step::WorkloadTarget {
                    management_cluster: "mc".into(),
                    kubeconfig: None,
                    namespace: "default".into(),
                    cluster_name: "c1".into(),
                },
            ),
        };
        RunRecord {
            id: "r1".into(),
            cluster: "c1".into(),
            workflow: "create-cluster".into(),
            commit_sha: "abc".into(),
            origin: None,
            state,
            seq: 1,
            created_at: t0,
            updated_at: t0,
            finished_at: None,
            steps: vec![StepRecord::pending(spec)],
            error: None,
            note: None,
        }
    }

    fn attempt(number: u32, outcome: Option<&str>, secs: i64) -> AttemptRecord {
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        AttemptRecord {
            number,
            started_at: t0,
            finished_at: outcome.map(|_| t0 + chrono::Duration::seconds(secs)),
            error: None,
            outcome: outcome.map(String::from),
        }
    }

    #[test]
    fn every_metric_is_registered_with_its_type() {
        let m = Metrics::new();
        // Families show once they have a series.
        let mut r = run(RunState::Queued);
        m.observe_run(&r);
        r.state = RunState::Running;
        r.steps[0].state = StepState::Running;
        r.steps[0].started_at = Some(r.created_at);
        r.steps[0].attempts.push(attempt(1, None, 0));
        m.observe_run(&r);
        r.steps[0].attempts[0] = attempt(1, Some("succeeded"), 1);
        r.steps[0].state = StepState::Succeeded;
        r.steps[0].finished_at = Some(r.created_at);
        r.state = RunState::Succeeded;
        m.observe_run(&r);
        m.set_clusters_by_tkr(&BTreeMap::from([("v1.31.1".to_string(), 1)]));
        let health = PolicyHealth::default();
        m.policy(&health);
        let text = m.encode(&[run(RunState::Queued)], Utc::now());
        assert!(
            !text.contains("tkgops_policy_trusted "),
            "unknown before a poll"
        );
        for (name, ty) in [
            ("tkgops_runs_started", "counter"),
            ("tkgops_runs_finished", "counter"),
            ("tkgops_step_duration_seconds", "histogram"),
            ("tkgops_step_attempts", "counter"),
            ("tkgops_runs_queued", "gauge"),
            ("tkgops_oldest_queued_run_age_seconds", "gauge"),
            ("tkgops_github_content_writes", "counter"),
            ("tkgops_github_content_writes_per_minute_limit", "gauge"),
            ("tkgops_webhook_deliveries", "counter"),
            ("tkgops_polls", "counter"),
            ("tkgops_poll_duration_seconds", "histogram"),
            ("tkgops_policy_untrusted_changes", "counter"),
            ("tkgops_schedule_fires", "counter"),
            ("tkgops_waves_halted", "counter"),
            ("tkgops_scheduled_applies_halted", "gauge"),
            ("tkgops_clusters", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "{name} {ty} missing in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        assert_eq!(
            sample("tkgops_github_content_writes_per_minute_limit", &text),
            [(
                "tkgops_github_content_writes_per_minute_limit".to_string(),
                80.0
            )]
        );
        // Unknown until seen: no sample, not a misleading 0.
        assert!(sample("tkgops_github_rate_limit_remaining", &text).is_empty());
        assert!(sample("tkgops_last_successful_poll_timestamp_seconds", &text).is_empty());
        assert_eq!(
            sample("tkgops_webhook_deliveries_total", &text).len(),
            WEBHOOK_RESULTS.len(),
            "every result from the start"
        );
    }

    #[test]
    fn a_run_counts_its_start_attempts_steps_and_finish_once() {
        let m = Metrics::new();
        let mut r = run(RunState::Queued);
        m.observe_run(&r);
        r.state = RunState::Running;
        r.steps[0].state = StepState::Running;
        r.steps[0].started_at = Some(r.created_at);
        r.steps[0].attempts.push(attempt(1, None, 0));
        m.observe_run(&r);
        m.observe_run(&r); // seen again: nothing new
        r.steps[0].attempts[0] = attempt(1, Some("transient"), 3);
        r.steps[0].attempts.push(attempt(2, Some("succeeded"), 42));
        r.steps[0].state = StepState::Succeeded;
        r.steps[0].finished_at = Some(r.created_at + chrono::Duration::seconds(42));
        r.state = RunState::Succeeded;
        m.observe_run(&r);
        let text = m.encode(&[], Utc::now());
        let get = |series: &str| {
            sample(series, &text)
                .into_iter()
                .find(|(s, _)| s == series)
                .map(|(_, v)| v)
        };
        assert_eq!(
            get(r#"tkgops_runs_started_total{workflow="create-cluster"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tkgops_runs_finished_total{workflow="create-cluster",outcome="succeeded"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tkgops_step_attempts_total{kind="kube.wait-cluster",outcome="transient"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(r#"tkgops_step_attempts_total{kind="kube.wait-cluster",outcome="succeeded"}"#),
            Some(1.0)
        );
        assert_eq!(
            get(
                r#"tkgops_step_duration_seconds_count{kind="kube.wait-cluster",outcome="succeeded"}"#
            ),
            Some(1.0)
        );
        assert_eq!(
            get(
                r#"tkgops_step_duration_seconds_sum{kind="kube.wait-cluster",outcome="succeeded"}"#
            ),
            Some(42.0)
        );
    }

    #[test]
    fn a_run_resumed_after_a_restart_is_not_counted_as_started_again() {
        let m = Metrics::new();
        let mut r = run(RunState::Running);
        r.steps[0].state = StepState::Running;
        r.steps[0].attempts.push(attempt(1, Some("interrupted"), 1));
        r.steps[0].attempts.push(attempt(2, None, 0));
        m.observe_run(&r);
        let text = m.encode(&[], Utc::now());
        assert!(
            sample("tkgops_runs_started_total", &text).is_empty(),
            "{text}"
        );
        assert!(
            sample("tkgops_step_attempts_total", &text).is_empty(),
            "{text}"
        );
    }

    #[test]
    fn queued_runs_are_counted_per_cluster_with_the_oldest_age() {
        let m = Metrics::new();
        let mut a = run(RunState::Queued);
        let mut b = run(RunState::Queued);
        b.id = "r2".into();
        b.created_at += chrono::Duration::seconds(30);
        a.cluster = "c2".into();
        let running = run(RunState::Running);
        let now = a.created_at + chrono::Duration::seconds(90);
        let text = m.encode(&[a, b, running], now);
        assert_eq!(
            sample("tkgops_runs_queued", &text),
            [
                (r#"tkgops_runs_queued{cluster="c1"}"#.to_string(), 1.0),
                (r#"tkgops_runs_queued{cluster="c2"}"#.to_string(), 1.0)
            ]
        );
        assert_eq!(
            sample("tkgops_oldest_queued_run_age_seconds", &text),
            [("tkgops_oldest_queued_run_age_seconds".to_string(), 90.0)]
        );
        // Nothing queued any more: the per-cluster series go, the age is 0.
        let text = m.encode(&[], now);
        assert!(sample("tkgops_runs_queued{", &text).is_empty());
        assert_eq!(
            sample("tkgops_oldest_queued_run_age_seconds", &text),
            [("tkgops_oldest_queued_run_age_seconds".to_string(), 0.0)]
        );
    }

    #[test]
    fn clusters_by_tkr_are_replaced_whole() {
        let m = Metrics::new();
        m.set_clusters_by_tkr(&BTreeMap::from([("v1.30.2".to_string(), 2)]));
        m.set_clusters_by_tkr(&BTreeMap::from([("v1.31.1".to_string(), 3)]));
        let text = m.encode(&[], Utc::now());
        assert_eq!(
            sample("tkgops_clusters{", &text),
            [(r#"tkgops_clusters{tkr="v1.31.1"}"#.to_string(), 3.0)]
        );
    }
}
