//! Scheduled upgrade runs (issue 8 item 6), the bot's part: firing the `schedules` of the
//! default branch's `tkgops.yaml` ([`tkgops_domain::schedule`]) at their cron times, once, and
//! keeping the fleet dashboard issue.
//!
//! Every poll asks each schedule whether it is due ([`due_fire`]) at the bot's clock:
//! - a fire whose maintenance window is open is recorded in the journal (its
//!   [`FireRecord`] `firing`, and the schedule's last fire,
//!   [`crate::BotJournal::last_fire`]) before anything is done for it,
//!   so a restart never fires it twice; a fire interrupted by a restart is finished on the next
//!   poll if its window is still open;
//! - fires whose windows closed while the bot was down are recorded as missed and shown on the
//!   dashboard, never run late.
//!
//! Actions:
//! - `propose` (Renovate-style): one pull request per target TKR with every selected cluster's
//!   `tkr` bumped ([`bump_tkr_line`]), pushed with git2 to a deterministic branch
//!   ([`group_bumps`]) and opened through the GitHub API, within `maxOpenPRs` and
//!   `maxPRsPerHour`; a bump whose branch already has an open pull request is left to it. The
//!   pull request is planned and approved like any other; merging it runs `upgrade-cluster`.
//! - `apply`: the bot upgrades the selected clusters itself, wave by wave inside the window
//!   ([`crate::reconcile::wave`]); a fire stays `applying` (halted or not) until its waves are
//!   done or its window closed, and a later fire of the same schedule does not start meanwhile.
//!
//! The dashboard is one issue opened by the bot, found by [`DASHBOARD_MARKER`]: every cluster
//! with its TKR and pending bump, and every schedule with its last fire, result and next fire.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tracing::{info, warn};

use crate::scheduler::Action;
use crate::{blocking, BotError};
use tkgops_domain::request::{parse_cluster_settings, RepoConfig};
use tkgops_domain::schedule::{
    bump_tkr_line, due_fire, group_bumps, plan_waves, Bump, DueFire, FleetCluster, Schedule,
    ScheduleAction,
};
use tkgops_domain::waves::{ApplyProgress, ClusterStage, WaveProgress, WaveState};
use tkgops_domain::workflow::markdown::cell;
use tkgops_github::PullRequest;

/// The hidden marker of the fleet dashboard issue.
pub const DASHBOARD_MARKER: &str = "<!-- tkgops:fleet-dashboard -->";

/// The fleet dashboard issue's title.
pub const DASHBOARD_TITLE: &str = "tkgops fleet dashboard";

/// The author of bump commits (name, e-mail).
pub const BUMP_AUTHOR: (&str, &str) = ("tkgops", "tkgops@users.noreply.github.com");

/// The bot's clock: what "now" is for schedules (the system clock, or a simulated one in tests
/// and the sandbox's scheduled stories).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

/// What happened to one fire of a schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FireState {
    /// Recorded, its action not finished yet (resumed while its window is open).
    Firing,
    /// `propose` finished: the pull requests it opened or found are listed.
    Proposed,
    /// Its action did not run (the reason is the detail).
    NotRun,
    /// Its window closed while the bot was down: not run.
    Missed,
    /// `apply` in progress (or halted, waiting for `/tkgops resume`): see its progress.
    Applying,
    /// `apply` finished: every wave soaked healthy.
    Applied,
    /// `apply` ended when its window closed with clusters not upgraded (left for a later fire).
    Incomplete,
}

/// The journal record of one fire ([`crate::BotJournal::fire`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FireRecord {
    /// Schedule name.
    pub schedule: String,
    /// The cron time (UTC).
    pub fire: DateTime<Utc>,
    /// What happened.
    pub state: FireState,
    /// For people: what was done or why not.
    pub detail: String,
    /// Bump pull requests opened or found open for this fire.
    #[serde(default)]
    pub pulls: Vec<u64>,
    /// Bumps not proposed because a cap was reached.
    #[serde(default)]
    pub capped: Vec<Bump>,
    /// When the record was last written (the bot's clock).
    pub updated_at: DateTime<Utc>,
    /// `apply`: the fire's progress through its waves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply: Option<ApplyProgress>,
}

impl FireRecord {
    /// A record of `fire` of schedule `schedule` in `state`, with no pull requests.
    pub(crate) fn new(
        schedule: &str,
        fire: DateTime<Utc>,
        state: FireState,
        detail: impl Into<String>,
        now: DateTime<Utc>,
    ) -> FireRecord {
        FireRecord {
            schedule: schedule.to_string(),
            fire,
            state,
            detail: detail.into(),
            pulls: Vec::new(),
            capped: Vec::new(),
            updated_at: now,
            apply: None,
        }
    }
}

/// A time in the schedule's time zone, e.g. `2026-12-05 02:00 Europe/Berlin`.
pub(crate) fn local(s: &Schedule, t: DateTime<Utc>) -> String {
    match s.tz() {
        Ok(tz) => format!(
            "{} {}",
            t.with_timezone(&tz).format("%Y-%m-%d %H:%M"),
            tz.name()
        ),
        Err(_) => format!("{} UTC", t.format("%Y-%m-%d %H:%M")),
    }
}

on_context!(
    /// The schedule reconciler ([`super::Key::Schedule`], keyed by schedule, and
    /// [`super::Key::Dashboard`]; module docs).
    ScheduleReconciler
);

impl ScheduleReconciler<'_> {
    /// Fires schedule `name` of the trusted policy if due at the observation's clock, and
    /// advances its applying fires (see the module docs). A schedule the policy no longer has is
    /// done.
    ///
    /// Errors: [`BotError`] when the journal, git or GitHub fail; the key is tried again from
    /// the fire's last journalled state.
    pub(crate) async fn reconcile(&self, name: &str) -> Result<Action, BotError> {
        let o = self.observed();
        let Some(rc) = &o.repo_config else {
            return Ok(Action::AwaitChange);
        };
        let Some(s) = rc.schedules.iter().find(|s| s.name == name) else {
            return Ok(Action::AwaitChange);
        };
        let fleet = self.fleet(&o.tip, rc).await?;
        self.tick_schedule(s, &o.tip, &fleet, &o.open, o.now)
            .await?;
        Ok(Action::AwaitChange)
    }

    /// Updates the fleet dashboard issue and reports the halts of scheduled applies on it. The
    /// dashboard also carries an untrusted policy change (security rule 1), and is kept up to
    /// date once it exists; with no schedule, no untrusted change and no dashboard yet, nothing
    /// is opened.
    ///
    /// Errors: [`BotError`] when the journal cannot be read or the dashboard not written.
    pub(crate) async fn dashboard(&self) -> Result<Action, BotError> {
        let o = self.observed();
        let Some(rc) = &o.repo_config else {
            return Ok(Action::AwaitChange);
        };
        if rc.schedules.is_empty()
            && self.policy_health.untrusted().is_none()
            && self.journal.dashboard().await?.is_none()
            && self.journal.drift_scan().await?.is_none()
        {
            return Ok(Action::AwaitChange);
        }
        let fleet = self.fleet(&o.tip, rc).await?;
        self.update_dashboard(rc, &fleet, &o.open, o.now).await?;
        // Halts are reported on the dashboard issue (where `/tkgops resume` is read).
        if let Some(issue) = self.dashboard_issue().await? {
            self.waves().report_halts(&rc.schedules, issue).await?;
        }
        Ok(Action::AwaitChange)
    }

    async fn tick_schedule(
        &self,
        s: &Schedule,
        tip: &str,
        fleet: &[FleetCluster],
        open: &[PullRequest],
        now: DateTime<Utc>,
    ) -> Result<(), BotError> {
        // A fire a restart interrupted: finished while its window is open.
        let mut applying: Option<DateTime<Utc>> = None;
        for rec in self.journal.fires(&s.name).await? {
            if rec.state == FireState::Applying {
                // `apply` fires advance wave by wave on every poll.
                let fire = rec.fire;
                let rec = self.waves().advance_apply(s, rec, open, now).await?;
                if rec.state == FireState::Applying {
                    applying = Some(fire);
                }
                continue;
            }
            if rec.state != FireState::Firing {
                continue;
            }
            if s.window_open(rec.fire, now) {
                info!(schedule = %s.name, fire = %rec.fire, "finishing a fire a restart interrupted");
                self.act(s, rec.fire, tip, fleet, open, now).await?;
            } else {
                self.put_fire(FireRecord {
                    state: FireState::NotRun,
                    detail: "the window closed before the fire finished (the bot was down)".into(),
                    updated_at: now,
                    ..rec
                })
                .await?;
            }
        }
        let last = self.journal.last_fire(&s.name).await?;
        match due_fire(s, last, now) {
            DueFire::None => Ok(()),
            DueFire::Missed { fires } => {
                for fire in &fires {
                    warn!(schedule = %s.name, fire = %fire, "a fire was missed: its window closed while the bot was down");
                    self.put_fire(FireRecord::new(
                        &s.name,
                        *fire,
                        FireState::Missed,
                        "missed: its window closed while the bot was down",
                        now,
                    ))
                    .await?;
                }
                if let Some(latest) = fires.last() {
                    self.put_last(&s.name, *latest).await?;
                }
                Ok(())
            }
            DueFire::Run { fire } => {
                if let Some(busy) = applying {
                    // A halted or unfinished fire is never overtaken: its halt stands until a
                    // person resumes it.
                    self.put_last(&s.name, fire).await?;
                    let why = format!(
                        "not run: the fire of {} is still applying (or halted: resume it with `/tkgops resume {}` on the fleet dashboard issue)",
                        local(s, busy),
                        s.name
                    );
                    warn!(schedule = %s.name, fire = %fire, "{why}");
                    return self
                        .put_fire(FireRecord::new(&s.name, fire, FireState::NotRun, why, now))
                        .await;
                }
                // Recorded before anything is done: a restart never fires it twice.
                self.put_fire(FireRecord::new(
                    &s.name,
                    fire,
                    FireState::Firing,
                    "firing",
                    now,
                ))
                .await?;
                self.put_last(&s.name, fire).await?;
                info!(schedule = %s.name, fire = %fire, "schedule fired");
                self.act(s, fire, tip, fleet, open, now).await
            }
        }
    }

    async fn put_last(&self, name: &str, fire: DateTime<Utc>) -> Result<(), BotError> {
        Ok(self.journal.set_last_fire(name, fire).await?)
    }

    /// Every cluster of the default branch at `tip` whose `tkgops.yaml` parses, with the TKRs
    /// its management cluster offers (`tkgVersion`'s and `tkrs`, as the plan's `TKGOPS-TKR`).
    /// `rc` is the trusted policy's; the fleet is read once per (tip, trusted policy commit).
    ///
    /// Errors: [`BotError::Git`] when `tip` cannot be read, [`BotError::Store`].
    async fn fleet(&self, tip: &str, rc: &RepoConfig) -> Result<Arc<Vec<FleetCluster>>, BotError> {
        let key = (
            tip.to_string(),
            self.trust().policy_commit().await?.to_string(),
        );
        if let Some(fleet) = self.fleet_cache.get(&key) {
            return Ok(fleet);
        }
        let fleet = Arc::new(self.read_fleet(tip, rc).await?);
        self.fleet_cache.put(key, fleet.clone());
        Ok(fleet)
    }

    async fn read_fleet(&self, tip: &str, rc: &RepoConfig) -> Result<Vec<FleetCluster>, BotError> {
        let git = self.git.clone();
        let tip = tip.to_string();
        let files = blocking(move || {
            let tree = git.tree(&tip)?;
            let names = git.list_dirs(&tip, "clusters")?;
            use tkgops_domain::files::TreeReader;
            Ok(names
                .into_iter()
                .filter_map(|n| {
                    let path = format!("clusters/{n}/tkgops.yaml");
                    tree.read(&path).map(|b| (n, path, b))
                })
                .collect::<Vec<_>>())
        })
        .await?;
        Ok(files
            .into_iter()
            .filter_map(|(name, path, bytes)| {
                let settings = parse_cluster_settings(&path, &bytes).ok()?;
                let offered = rc
                    .management_cluster(&settings.management_cluster)
                    .map(|m| m.offered_tkrs())
                    .unwrap_or_default();
                Some(FleetCluster {
                    name,
                    labels: settings.labels,
                    tkr: settings.tkr,
                    offered,
                })
            })
            .collect())
    }

    async fn act(
        &self,
        s: &Schedule,
        fire: DateTime<Utc>,
        tip: &str,
        fleet: &[FleetCluster],
        open: &[PullRequest],
        now: DateTime<Utc>,
    ) -> Result<(), BotError> {
        match s.action {
            ScheduleAction::Apply => {
                let rec = self.waves().start_apply(s, fire, tip, fleet, now);
                self.put_fire(rec.clone()).await?;
                if rec.state == FireState::Applying {
                    self.waves().advance_apply(s, rec, open, now).await?;
                }
                Ok(())
            }
            ScheduleAction::Propose => {
                let rec = self.propose(s, fire, tip, fleet, open, now).await?;
                self.put_fire(rec).await
            }
        }
    }

    /// `action: propose`: one bump pull request per target TKR, within the caps.
    async fn propose(
        &self,
        s: &Schedule,
        fire: DateTime<Utc>,
        tip: &str,
        fleet: &[FleetCluster],
        open: &[PullRequest],
        now: DateTime<Utc>,
    ) -> Result<FireRecord, BotError> {
        let plan = plan_waves(s, fleet);
        let bumps: Vec<Bump> = plan.waves.iter().flat_map(|w| w.bumps.clone()).collect();
        let groups = group_bumps(&s.name, &bumps);
        // Schedule names are DNS labels (TKGOPS-SCHEDULE): their branch prefix is verbatim.
        let branch_prefix = format!("tkgops/schedule/{}/", s.name);
        let open_mine: BTreeMap<&str, u64> = open
            .iter()
            .filter(|p| p.head_ref.starts_with(&branch_prefix))
            .map(|p| (p.head_ref.as_str(), p.number))
            .collect();
        let hour_ago = now - chrono::Duration::hours(1);
        let opened_last_hour = self
            .journal
            .bump_pulls_opened_since(&s.name, hour_ago)
            .await?;
        let mut budget = s
            .propose_limits()
            .budget(open_mine.len() as u32, opened_last_hour);
        let mut pulls = Vec::new();
        let mut capped = Vec::new();
        for g in &groups {
            if let Some(n) = open_mine.get(g.branch.as_str()) {
                pulls.push(*n);
                continue;
            }
            if budget == 0 {
                capped.extend(g.bumps.iter().cloned());
                continue;
            }
            let n = self.open_bump_pull(s, fire, tip, g).await?;
            self.journal.record_bump_pull(&s.name, now, n).await?;
            pulls.push(n);
            budget -= 1;
        }
        let detail = if bumps.is_empty() {
            "nothing to propose: every selected cluster runs the target TKR".to_string()
        } else if capped.is_empty() {
            format!("{} bump(s) proposed", bumps.len())
        } else {
            format!(
                "{} bump(s) proposed, {} waiting for the caps (maxOpenPRs {}, maxPRsPerHour {})",
                bumps.len() - capped.len(),
                capped.len(),
                s.propose_limits().max_open_prs,
                s.propose_limits().max_prs_per_hour
            )
        };
        Ok(FireRecord {
            schedule: s.name.clone(),
            fire,
            state: FireState::Proposed,
            detail,
            pulls,
            capped,
            updated_at: now,
            apply: None,
        })
    }

    /// Commits the bumps of `g` on top of `tip`, pushes them to `g.branch` and opens the pull
    /// request; returns its number.
    async fn open_bump_pull(
        &self,
        s: &Schedule,
        fire: DateTime<Utc>,
        tip: &str,
        g: &tkgops_domain::schedule::BumpGroup,
    ) -> Result<u64, BotError> {
        let git = self.git.clone();
        let (tip, bumps, to, branch) = (
            tip.to_string(),
            g.bumps.clone(),
            g.to.clone(),
            g.branch.clone(),
        );
        let title = format!(
            "Upgrade {} cluster(s) to TKR {to} (schedule {})",
            bumps.len(),
            s.name
        );
        let message = format!(
            "{title}\n\nScheduled by {} at {}.\n",
            s.name,
            local(s, fire)
        );
        let msg = message.clone();
        let b = branch.clone();
        blocking(move || {
            use tkgops_domain::files::TreeReader;
            let tree = git.tree(&tip)?;
            let mut files = Vec::new();
            for bump in &bumps {
                let path = format!("clusters/{}/tkgops.yaml", bump.cluster);
                let text = tree
                    .read(&path)
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                match bump_tkr_line(&text, &to) {
                    Ok(new) => files.push((path, new.into_bytes())),
                    Err(e) => warn!(cluster = %bump.cluster, error = %e, "cannot bump; left out"),
                }
            }
            let commit = git.commit_files(&tip, &files, &msg, BUMP_AUTHOR)?;
            git.push_branch(&commit, &b)
        })
        .await?;
        let rows: Vec<String> = g
            .bumps
            .iter()
            .map(|b| format!("| `{}` | `{}` | `{}` |", b.cluster, b.from, b.to))
            .collect();
        let body = format!(
            "Scheduled by **{}** (fire {}, target `{}`): upgrades these clusters to TKR `{}`.\n\n| Cluster | From | To |\n|---|---|---|\n{}\n\nThe plan comment shows what each upgrade replaces and how long it should take. Merging runs `upgrade-cluster` for every cluster, one run per cluster, under the usual approvals.\n",
            s.name,
            local(s, fire),
            serde_json::to_value(s.target)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            g.to,
            rows.join("\n")
        );
        let n = self
            .github
            .create_pull(&title, &branch, &self.default_branch, &body)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        info!(schedule = %s.name, pr = n, branch = %branch, "bump pull request opened");
        Ok(n)
    }

    /// Renders the dashboard and writes it when it changed since GitHub last accepted it.
    async fn update_dashboard(
        &self,
        rc: &RepoConfig,
        fleet: &[FleetCluster],
        open: &[PullRequest],
        now: DateTime<Utc>,
    ) -> Result<(), BotError> {
        let mut fires: BTreeMap<String, Vec<FireRecord>> = BTreeMap::new();
        for s in &rc.schedules {
            fires.insert(s.name.clone(), self.journal.fires(&s.name).await?);
        }
        let mut body = dashboard(rc, fleet, open, &fires, now);
        if let Some(u) = self.policy_health.untrusted() {
            let header = format!("{DASHBOARD_MARKER}\n## tkgops fleet dashboard\n\n");
            let section = format!(
                "### ⛔ Untrusted policy change\n\n{}.\n\n",
                crate::trust::capitalise(&u.sentence())
            );
            body = body.replacen(&header, &format!("{header}{section}"), 1);
        }
        // The drift of the last scan, before the cluster table (which GitHub's size limit cuts).
        if let Some(scan) = self.journal.drift_scan().await? {
            let reverts = super::drift::reverts_with_runs(self.cx).await?;
            let drifts = self.journal.drifts().await?;
            let section = super::drift::drift_section(&scan, &drifts, &reverts);
            match body.find(CLUSTER_TABLE_HEAD) {
                Some(at) => body.insert_str(at, &section),
                None => body.push_str(&section),
            }
        }
        let digest = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        let stored = self.journal.dashboard().await?;
        if stored.is_some_and(|d| d.body_sha256 == digest) {
            return Ok(());
        }
        let number = self
            .github
            .upsert_issue(DASHBOARD_MARKER, DASHBOARD_TITLE, &body)
            .await
            .map_err(|e| BotError::GitHub(e.to_string()))?;
        Ok(self
            .journal
            .set_dashboard(&crate::journal::DashboardIssue {
                number,
                body_sha256: digest,
            })
            .await?)
    }
}

/// The wire word of a serde enum value (`apply`, `latest-patch`, `soaking`).
fn word(v: serde_json::Result<serde_json::Value>) -> String {
    v.ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The dashboard issue body: schedules (last fire, result, next fire), the latest apply fire
/// of each schedule wave by wave, missed fires, then every cluster (TKR, pending bump), last
/// because GitHub's 65,536-character limit cuts a large fleet's table.
pub fn dashboard(
    rc: &RepoConfig,
    fleet: &[FleetCluster],
    open: &[PullRequest],
    fires: &BTreeMap<String, Vec<FireRecord>>,
    now: DateTime<Utc>,
) -> String {
    let mut out = format!("{DASHBOARD_MARKER}\n## tkgops fleet dashboard\n\n");
    let (schedules, missed) = schedule_table(rc, fires, now);
    out.push_str(&schedules);
    // The latest apply fire of each schedule, wave by wave.
    for s in &rc.schedules {
        let recs = fires.get(&s.name).map(Vec::as_slice).unwrap_or_default();
        if let Some((r, p)) = recs
            .iter()
            .filter_map(|r| r.apply.as_ref().map(|p| (r, p)))
            .filter(|(_, p)| !p.waves.is_empty())
            .max_by_key(|(r, _)| r.fire)
        {
            out.push_str(&apply_fire_section(s, r, p));
        }
    }
    if !missed.is_empty() {
        out.push_str("\n### Missed fires\n\n");
        out.push_str(&missed.join("\n"));
        out.push('\n');
    }
    // The cluster table goes last: with a large fleet it is what GitHub's size limit cuts.
    out.push_str(&cluster_table(fleet, &pending_bumps(rc, fleet, open)));
    out
}

/// The bumps each schedule of `rc` would propose now for `fleet`, by cluster: one line per
/// bump (`→ `target` (#pr) by schedule`), naming the open pull request of `open` that carries
/// its branch, if any.
fn pending_bumps(
    rc: &RepoConfig,
    fleet: &[FleetCluster],
    open: &[PullRequest],
) -> BTreeMap<String, Vec<String>> {
    let mut pending: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &rc.schedules {
        let plan = plan_waves(s, fleet);
        for g in group_bumps(
            &s.name,
            &plan
                .waves
                .iter()
                .flat_map(|w| w.bumps.clone())
                .collect::<Vec<_>>(),
        ) {
            let pr = open
                .iter()
                .find(|p| p.head_ref == g.branch)
                .map(|p| format!(" (#{})", p.number))
                .unwrap_or_default();
            for b in &g.bumps {
                pending
                    .entry(b.cluster.clone())
                    .or_default()
                    .push(format!("→ `{}`{pr} by {}", b.to, s.name));
            }
        }
    }
    pending
}

/// The head of the dashboard's cluster table.
const CLUSTER_TABLE_HEAD: &str = "\n| Cluster | TKR | Pending bump |\n|---|---|---|\n";

/// The dashboard's cluster table: every cluster of `fleet` with its TKR and its `pending`
/// bumps ([`pending_bumps`]), or "up to date".
fn cluster_table(fleet: &[FleetCluster], pending: &BTreeMap<String, Vec<String>>) -> String {
    let mut clusters = String::from(CLUSTER_TABLE_HEAD);
    for c in fleet {
        let p = pending
            .get(&c.name)
            .map(|v| v.join("<br>"))
            .unwrap_or_else(|| "up to date".into());
        clusters.push_str(&format!("| `{}` | `{}` | {} |\n", c.name, c.tkr, p));
    }
    clusters
}

/// The dashboard's schedule table (each schedule of `rc` with its action, target, last fire
/// and result from `fires`, and its next fire after `now`), and the list items of every missed
/// fire, schedule by schedule.
fn schedule_table(
    rc: &RepoConfig,
    fires: &BTreeMap<String, Vec<FireRecord>>,
    now: DateTime<Utc>,
) -> (String, Vec<String>) {
    let mut out = String::from("| Schedule | Action | Target | Last fire | Result | Next fire |\n|---|---|---|---|---|---|\n");
    let mut missed = Vec::new();
    for s in &rc.schedules {
        let recs = fires.get(&s.name).map(Vec::as_slice).unwrap_or_default();
        let last = recs
            .iter()
            .filter(|r| r.state != FireState::Missed)
            .max_by_key(|r| r.fire);
        let (when, result) = match last {
            Some(r) => {
                let prs: Vec<String> = r.pulls.iter().map(|n| format!("#{n}")).collect();
                let prs = if prs.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", prs.join(", "))
                };
                (local(s, r.fire), cell(&format!("{}{prs}", r.detail), 200))
            }
            None => ("never".into(), String::new()),
        };
        let next = s
            .next_fire(now)
            .map(|t| local(s, t))
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "| `{}` | {} | {} | {when} | {result} | {next} |\n",
            s.name,
            word(serde_json::to_value(s.action)),
            word(serde_json::to_value(s.target))
        ));
        for r in recs.iter().filter(|r| r.state == FireState::Missed) {
            missed.push(format!(
                "- `{}`: {} ({})",
                s.name,
                local(s, r.fire),
                r.detail
            ));
        }
    }
    (out, missed)
}

/// The dashboard section of apply fire `r` of schedule `s`, whose progress is `p`: its halt
/// (and how to resume), its record pull request, then one row per wave ([`wave_row`]).
fn apply_fire_section(s: &Schedule, r: &FireRecord, p: &ApplyProgress) -> String {
    let mut out = format!("\n### `{}`: fire {}\n\n", s.name, local(s, r.fire));
    if let Some(h) = &p.halt {
        out.push_str(&format!(
            "⛔ **Halted** in wave `{}`: {}\nAn approver resumes it with a comment `/tkgops resume {}` on this issue.\n\n",
            h.wave,
            cell(&h.reason, 500),
            s.name
        ));
    }
    if let Some(n) = p.pull {
        out.push_str(&format!("Record pull request: #{n}\n\n"));
    }
    out.push_str("| Wave | State | Clusters |\n|---|---|---|\n");
    for w in &p.waves {
        out.push_str(&wave_row(s, w));
    }
    out
}

/// The dashboard row of wave `w` of schedule `s`: its state, and its clusters with their
/// stages; a wave of more than [`WAVE_LIST_LIMIT`] clusters shows counts per stage and only
/// the clusters running or failed by name.
fn wave_row(s: &Schedule, w: &WaveProgress) -> String {
    let state = match w.state {
        WaveState::Soaking => format!(
            "soaking until {}",
            w.soak_until.map(|t| local(s, t)).unwrap_or_default()
        ),
        other => word(serde_json::to_value(other)),
    };
    let large = w.clusters.len() > WAVE_LIST_LIMIT;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &w.clusters {
        *counts.entry(stage_word(c.stage)).or_default() += 1;
    }
    let summary = counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let listed: Vec<String> = w
        .clusters
        .iter()
        .filter(|c| !large || matches!(c.stage, ClusterStage::Running | ClusterStage::Failed))
        .take(WAVE_LIST_LIMIT)
        .map(|c| {
            let icon = match c.stage {
                ClusterStage::Pending => "⏸️",
                ClusterStage::Running => "⏳",
                ClusterStage::Succeeded => "✅",
                ClusterStage::Failed => "❌",
            };
            let detail = c
                .detail
                .as_deref()
                .map(|d| format!(" ({})", cell(d, 200)))
                .unwrap_or_default();
            format!("{icon} `{}` → `{}`{detail}", c.cluster, c.to)
        })
        .collect();
    let cell_text = if large {
        std::iter::once(summary)
            .chain(listed)
            .collect::<Vec<_>>()
            .join("<br>")
    } else {
        listed.join("<br>")
    };
    format!("| {} | {state} | {cell_text} |\n", w.name)
}

/// Waves with more clusters than this are shown as counts plus the clusters running or failed.
const WAVE_LIST_LIMIT: usize = 20;

fn stage_word(s: ClusterStage) -> &'static str {
    match s {
        ClusterStage::Pending => "pending",
        ClusterStage::Running => "running",
        ClusterStage::Succeeded => "upgraded",
        ClusterStage::Failed => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Key;
    use crate::testing::{example_request, Harness, EXAMPLE_POLICY};
    use chrono::TimeZone;

    const PROPOSE: &str = "schedules:\n  - name: weekly-patch\n    cron: \"0 2 * * SAT\"\n    timezone: Europe/Berlin\n    window: 4h\n    selector: {matchLabels: {env: prod}}\n    target: latest-patch\n    action: propose\n";

    /// Saturday 2026-12-05 02:30 in Berlin: inside the window of the 02:00 fire.
    fn in_window() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 5, 1, 30, 0).unwrap()
    }

    async fn harness(policy: &str) -> Harness {
        let h = Harness::new(policy).await;
        h.commit_main(&example_request());
        let now = in_window();
        h.bot.set_clock(std::sync::Arc::new(move || now));
        h
    }

    /// A due fire is recorded before anything is done for it, once: reconciling the schedule
    /// again at the same time fires nothing more.
    #[tokio::test]
    async fn a_due_fire_is_recorded_once() {
        let h = harness(&format!("{EXAMPLE_POLICY}{PROPOSE}")).await;
        h.observe().await;
        let key = Key::Schedule {
            position: 0,
            name: "weekly-patch".into(),
        };
        h.reconcile(&key).await.unwrap();
        let fire = Utc.with_ymd_and_hms(2026, 12, 5, 1, 0, 0).unwrap();
        assert_eq!(
            h.cx().journal.last_fire("weekly-patch").await.unwrap(),
            Some(fire)
        );
        let fires = h.cx().journal.fires("weekly-patch").await.unwrap();
        assert_eq!(fires.len(), 1, "{fires:?}");
        assert_ne!(fires[0].state, FireState::Firing, "{fires:?}");
        h.reconcile(&key).await.unwrap();
        assert_eq!(h.cx().journal.fires("weekly-patch").await.unwrap(), fires);
        // A schedule the policy does not have is done without a fire.
        h.reconcile(&Key::Schedule {
            position: 1,
            name: "gone".into(),
        })
        .await
        .unwrap();
        assert!(h.cx().journal.fires("gone").await.unwrap().is_empty());
    }

    /// The dashboard is opened for a policy with schedules (naming each), and not for a
    /// policy without schedules, untrusted changes or a dashboard already open.
    #[tokio::test]
    async fn the_dashboard_is_opened_only_when_there_is_something_to_show() {
        let quiet = harness(EXAMPLE_POLICY).await;
        quiet.observe().await;
        quiet.reconcile(&Key::Dashboard).await.unwrap();
        assert!(quiet.github.issues.lock().unwrap().is_empty());

        let h = harness(&format!("{EXAMPLE_POLICY}{PROPOSE}")).await;
        h.observe().await;
        h.reconcile(&Key::Dashboard).await.unwrap();
        let issues = h.github.issues.lock().unwrap().clone();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].0, DASHBOARD_MARKER);
        assert!(issues[0].2.contains("weekly-patch"), "{}", issues[0].2);
        assert!(issues[0].2.contains("team-a-prod"), "{}", issues[0].2);
    }
}
