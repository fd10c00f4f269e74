//! The stories the chaos harness tells (README "Chaos harness"), in two parallel lines over
//! distinct clusters:
//!
//! - **team-a-prod**: create (at TKR v1.24.11), packages (fluent-bit with values), a run that
//!   fails for a real reason (a move to a TMC cluster group TMC does not know) with a second
//!   change (a scale) queued behind it and cancelled with `/tkgops cancel`, upgrade (to
//!   v1.25.7, which also carries what the failed and cancelled changes left undone), delete;
//! - **the fleet** team-b-prod (canary) and team-c-prod: created in one change, then an
//!   `action: apply` schedule with two waves whose fire is the moment the schedule's pull
//!   request is opened (a 7-field cron naming that second; window 10m, canary soak 2s): the
//!   bot upgrades both clusters wave by wave in real time.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{Timelike, Utc};
use http::Method;
use tkgops_emulators::faults::{Fault, FaultAction};

use super::{mark, Mark};
use crate::stories::{merge_change, Change, EXAMPLE_TKR, UPGRADABLE_TKR};
use crate::{request_files, Environment, SandboxError, APPROVER, SECOND_APPROVER};

/// The cluster of the first line of stories.
pub(super) const CLUSTER: &str = "team-a-prod";
/// The fleet of the scheduled apply: the canary first, then the rest.
pub(super) const FLEET: [&str; 2] = ["team-b-prod", "team-c-prod"];
/// The apply schedule's name.
pub(super) const SCHEDULE: &str = "waves";
const SETTINGS: &str = "clusters/team-a-prod/tkgops.yaml";
const CONFIG: &str = "clusters/team-a-prod/cluster-config.yaml";

/// One merged change: which story, its cluster(s), PR, `tkgops/apply` outcome and the record
/// offsets around it.
#[derive(Clone, Debug)]
pub(super) struct Phase {
    pub(super) name: &'static str,
    pub(super) clusters: Vec<String>,
    pub(super) pr: u64,
    pub(super) apply: String,
    pub(super) start: Mark,
    pub(super) end: Mark,
}

/// What the queued-behind-a-failed-run story saw.
#[derive(Clone, Debug, Default)]
pub(super) struct Queued {
    /// `tkgops/apply` of the failing run's merge commit (want `failure`).
    pub(super) failed_apply: String,
    /// `tkgops/apply` state and description of the queued change after `/tkgops cancel`.
    pub(super) cancelled_apply: (String, String),
    /// The bot's reply to `/tkgops cancel` (empty when none came).
    pub(super) cancel_reply: String,
    /// Whether its status said `queued behind run …` before the cancel.
    pub(super) was_queued: bool,
    /// Offsets when the queued change was merged, when the failure was seen, and when the
    /// next change of the cluster was opened.
    pub(super) merged: Option<Mark>,
    pub(super) failed: Option<Mark>,
    pub(super) next: Option<Mark>,
}

/// What the scheduled-apply story saw.
#[derive(Clone, Debug, Default)]
pub(super) struct Scheduled {
    /// The record branch of the fire (`tkgops/schedule/waves/apply-<fire>`).
    pub(super) record_branch: String,
    /// The dashboard said both waves finished (`cluster(s) upgraded in 2 wave(s)`).
    pub(super) finished: bool,
    /// The dashboard showed a halt instead.
    pub(super) halted: bool,
}

/// Shared between the stories and the chaos schedule.
#[derive(Default)]
pub(super) struct Told {
    pub(super) phases: Mutex<Vec<Phase>>,
    pub(super) queued: Mutex<Queued>,
    pub(super) scheduled: Mutex<Scheduled>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The example request at TKR v1.24.11, renamed to `name`, with `extra` label lines.
fn cluster_files(env: &Environment, name: &str, extra: &str) -> Vec<(String, String)> {
    let (_, files) = request_files(None, &env.vpc);
    files
        .into_iter()
        .map(|(p, c)| {
            (
                p.replace(CLUSTER, name),
                c.replace(EXAMPLE_TKR, UPGRADABLE_TKR)
                    .replace(CLUSTER, name)
                    .replace("  team: team-a", &format!("  team: team-a{extra}")),
            )
        })
        .collect()
}

fn file(files: &[(String, String)], path: &str) -> String {
    files
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, c)| c.clone())
        .unwrap_or_default()
}

fn one_file<'a>(branch: &'a str, title: &'a str, path: &str, text: String) -> Change<'a> {
    Change {
        branch,
        title,
        files: vec![(path.to_string(), text)],
        removed: Vec::new(),
        label: None,
        approvers: &[APPROVER],
    }
}

/// Merges `change` and records it as phase `name`. Returns its `tkgops/apply` outcome.
async fn phase(
    env: &Environment,
    told: &Told,
    name: &'static str,
    clusters: &[&str],
    change: Change<'_>,
    timeout: Duration,
) -> Result<String, SandboxError> {
    let start = mark(env);
    let (pr, apply) = merge_change(env, change, timeout).await?;
    lock(&told.phases).push(Phase {
        name,
        clusters: clusters.iter().map(|c| c.to_string()).collect(),
        pr,
        apply: apply.clone(),
        start,
        end: mark(env),
    });
    Ok(apply)
}

/// Both lines of stories, in parallel. Errors: a wait that timed out, git or emulator errors.
pub(super) async fn tell(
    env: &Environment,
    told: &Told,
    timeout: Duration,
) -> Result<(), SandboxError> {
    let (a, b) = tokio::join!(team_a(env, told, timeout), fleet(env, told, timeout));
    a.and(b)
}

/// create → packages → failed + queued (cancelled) → upgrade → delete, on team-a-prod.
async fn team_a(env: &Environment, told: &Told, timeout: Duration) -> Result<(), SandboxError> {
    let files = cluster_files(env, CLUSTER, "");
    let settings = file(&files, SETTINGS);
    let c = &[CLUSTER];
    let create = Change {
        branch: "add-team-a-prod",
        title: "Add cluster team-a-prod",
        files: files.clone(),
        removed: Vec::new(),
        label: None,
        approvers: &[APPROVER],
    };
    if phase(env, told, "create", c, create, timeout).await? != "success" {
        return Ok(());
    }
    let with_pkg = settings.replace(
        "labels:\n",
        "  - name: fluent-bit\n    values:\n      logLevel: info\nlabels:\n",
    );
    let packages = one_file(
        "fluent-bit-team-a-prod",
        "Add fluent-bit to team-a-prod",
        SETTINGS,
        with_pkg.clone(),
    );
    if phase(env, told, "packages", c, packages, timeout).await? != "success" {
        return Ok(());
    }
    queued_behind_a_failure(env, told, &files, &with_pkg, timeout).await?;
    // The upgrade, with a new TMC description: one PUT of the TMC cluster (team-b exists now).
    env.tmc.set_cluster_groups(&["team-a", "team-b"]);
    lock(&told.queued).next = Some(mark(env));
    let moved = with_pkg
        .replace("clusterGroup: team-a", "clusterGroup: team-b")
        .replace(
            "description: Team A production cluster",
            "description: Team A production cluster (payments)",
        );
    let upgrade = one_file(
        "upgrade-team-a-prod",
        "Upgrade team-a-prod to v1.25.7",
        SETTINGS,
        moved.replace(UPGRADABLE_TKR, EXAMPLE_TKR),
    );
    if phase(env, told, "upgrade", c, upgrade, timeout).await? != "success" {
        return Ok(());
    }
    let delete = Change {
        branch: "delete-team-a-prod",
        title: "Delete team-a-prod",
        files: Vec::new(),
        removed: files.iter().map(|(p, _)| p.clone()).collect(),
        label: Some(tkgops_domain::request::ALLOW_DELETE_LABEL),
        approvers: &[APPROVER, SECOND_APPROVER],
    };
    phase(env, told, "delete", c, delete, timeout).await?;
    Ok(())
}

/// A move to TMC cluster group `team-b`, which TMC does not know: its PUT is held (every PUT of
/// the cluster answers after 6 s, so the run stays in flight through restarts) while a scale of
/// the same cluster is merged, queues behind it and is cancelled; then TMC answers, 404: the
/// move's run fails.
async fn queued_behind_a_failure(
    env: &Environment,
    told: &Told,
    files: &[(String, String)],
    settings: &str,
    timeout: Duration,
) -> Result<(), SandboxError> {
    env.tmc.set_cluster_groups(&["team-a"]);
    let hold = || {
        Fault::new(
            Some(Method::PUT),
            &format!("/v1alpha1/clusters/{CLUSTER}"),
            FaultAction::Delay(Duration::from_secs(6)),
            None,
        )
    };
    env.tmc.faults().inject(hold());
    let moved = settings.replace("clusterGroup: team-a", "clusterGroup: team-b");
    let start = mark(env);
    let (pr1, merge1) = merge_or_plan(
        env,
        one_file(
            "move-team-a-prod",
            "Move team-a-prod to TMC cluster group team-b",
            SETTINGS,
            moved,
        ),
        timeout,
    )
    .await?;
    // The move's run is in flight once its PUT reached TMC (or it ended before: then the
    // scale cannot queue behind it, which the audit reports).
    let path = format!("/v1alpha1/clusters/{CLUSTER}");
    env.github
        .wait_until(timeout, |gh| {
            let put = env.tmc.faults().log().count(&Method::PUT, &path) > 0;
            let ended = gh
                .statuses(&merge1)
                .iter()
                .any(|s| s.context == tkgops::APPLY_CONTEXT && s.state != "pending");
            (put || ended).then_some(())
        })
        .await
        .ok_or_else(|| SandboxError("the group move's run never reached TMC".into()))?;
    let scaled = file(files, CONFIG).replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 4");
    lock(&told.queued).merged = Some(mark(env));
    let (pr2, merge2) = merge_or_plan(
        env,
        one_file(
            "scale-team-a-prod",
            "Scale team-a-prod to 4 workers",
            CONFIG,
            scaled,
        ),
        timeout,
    )
    .await?;
    let queued = env
        .github
        .wait_until(Duration::from_secs(20), |gh| {
            gh.statuses(&merge2)
                .into_iter()
                .find(|s| {
                    s.context == tkgops::APPLY_CONTEXT
                        && s.description
                            .as_deref()
                            .is_some_and(|d| d.contains("queued behind"))
                })
                .map(|_| ())
        })
        .await
        .is_some();
    println!("==> {APPROVER} cancels PR #{pr2} (queued: {queued})");
    ctx!(
        env.github.add_comment(pr2, APPROVER, "/tkgops cancel"),
        "commenting /tkgops cancel"
    )?;
    let cancelled = env
        .github
        .wait_until(timeout, |gh| {
            gh.statuses(&merge2)
                .into_iter()
                .rev()
                .find(|s| s.context == tkgops::APPLY_CONTEXT && s.state != "pending")
                .map(|s| (s.state, s.description.unwrap_or_default()))
        })
        .await
        .ok_or_else(|| SandboxError("the cancelled run never got a final status".into()))?;
    let reply = env
        .github
        .wait_until(Duration::from_secs(30), |gh| {
            gh.comments(pr2)
                .into_iter()
                .map(|c| c.body)
                .find(|b| b.contains("cancelled before it started"))
        })
        .await
        .unwrap_or_default();
    // TMC answers now: the unknown group fails the move.
    env.tmc.faults().clear();
    let failed = env
        .wait_status(&merge1, tkgops::APPLY_CONTEXT, timeout)
        .await?;
    println!("==> the group move's run finished: {failed}; the scale: {cancelled:?}");
    let failed_at = mark(env);
    {
        let mut q = lock(&told.queued);
        q.failed_apply = failed.clone();
        q.cancelled_apply = cancelled;
        q.cancel_reply = reply;
        q.was_queued = queued;
        q.failed = Some(failed_at);
    }
    lock(&told.phases).push(Phase {
        name: "failed+queued",
        clusters: vec![CLUSTER.to_string()],
        pr: pr1,
        apply: failed,
        start,
        end: failed_at,
    });
    Ok(())
}

/// Opens, plans, approves and merges `c` without waiting for its run. Returns (PR, merge
/// commit SHA). Errors: a plan other than `success` is an error here.
async fn merge_or_plan(
    env: &Environment,
    c: Change<'_>,
    timeout: Duration,
) -> Result<(u64, String), SandboxError> {
    let pr = env.open_pull_request(c.branch, c.title, &c.files)?;
    let head = ctx!(
        git2::Repository::open_bare(&env.remote).and_then(|r| r
            .revparse_single(&format!("refs/heads/{}", c.branch))
            .map(|o| o.id().to_string())),
        "reading the PR head"
    )?;
    let plan = env
        .wait_status(&head, tkgops::PLAN_CONTEXT, timeout)
        .await?;
    if plan != "success" {
        return Err(SandboxError(format!(
            "PR #{pr} ({}): tkgops/plan is {plan}\n{}",
            c.title,
            env.conversation(pr)
        )));
    }
    ctx!(
        env.github.submit_review(pr, APPROVER, "APPROVED"),
        "approving"
    )?;
    let merge = ctx!(env.github.merge_pull_request(pr, APPROVER), "merging")?;
    Ok((pr, merge))
}

/// The fleet: created in one change, then upgraded by a two-wave `apply` schedule.
async fn fleet(env: &Environment, told: &Told, timeout: Duration) -> Result<(), SandboxError> {
    let mut files = Vec::new();
    for (i, name) in FLEET.iter().enumerate() {
        let extra = if i == 0 {
            "\n  fleet: waves\n  tier: canary"
        } else {
            "\n  fleet: waves"
        };
        files.extend(cluster_files(env, name, extra));
    }
    let create = Change {
        branch: "add-fleet",
        title: "Add clusters team-b-prod and team-c-prod",
        files,
        removed: Vec::new(),
        label: None,
        approvers: &[APPROVER],
    };
    if phase(env, told, "fleet-create", &FLEET, create, timeout).await? != "success" {
        return Ok(());
    }
    // The fire: this second (UTC); the bot runs it as soon as the schedule is on main.
    let fire = Utc::now().with_nanosecond(0).unwrap_or_else(Utc::now);
    let cron = fire.format("%S %M %H %d %m * %Y").to_string();
    lock(&told.scheduled).record_branch = tkgops::reconcile::wave::record_branch(SCHEDULE, fire);
    let repo = ctx!(
        git2::Repository::open_bare(&env.remote).and_then(|r| {
            let blob = r
                .revparse_single("refs/heads/main:tkgops.yaml")?
                .peel_to_blob()?;
            Ok(String::from_utf8_lossy(blob.content()).into_owned())
        }),
        "reading tkgops.yaml"
    )?;
    let schedule = format!(
        "schedules:\n  - name: {SCHEDULE}\n    cron: \"{cron}\"\n    window: 10m\n    selector: {{matchLabels: {{fleet: waves}}}}\n    target: latest-minor\n    action: apply\n    waves:\n      - {{name: canary, selector: {{matchLabels: {{tier: canary}}}}, soak: 2s, maxConcurrent: 1}}\n      - {{name: rest, selector: {{}}, maxConcurrent: 5}}\n"
    );
    let start = mark(env);
    let (pr, added) = merge_change(
        env,
        Change {
            branch: "add-schedule",
            title: "Add a two-wave apply schedule",
            files: vec![("tkgops.yaml".into(), format!("{repo}{schedule}"))],
            removed: Vec::new(),
            label: None,
            approvers: &[APPROVER, SECOND_APPROVER],
        },
        timeout,
    )
    .await?;
    if added == "success" {
        let done = env
            .github
            .wait_until(timeout, |gh| {
                gh.issues().into_iter().find_map(|i| {
                    if i.body.contains("cluster(s) upgraded in 2 wave(s)") {
                        Some(true)
                    } else if i.body.contains("⛔") {
                        Some(false)
                    } else {
                        None
                    }
                })
            })
            .await;
        let mut s = lock(&told.scheduled);
        s.finished = done == Some(true);
        s.halted = done == Some(false);
    }
    lock(&told.phases).push(Phase {
        name: "scheduled",
        clusters: FLEET.iter().map(|c| c.to_string()).collect(),
        pr,
        apply: added,
        start,
        end: mark(env),
    });
    Ok(())
}
