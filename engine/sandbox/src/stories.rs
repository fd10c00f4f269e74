//! The day-2 stories of `tkgops-sandbox --story NAME` (issue 8 item 9): each creates the
//! example cluster through a pull request, then changes it through a second one (or a
//! schedule), drives the whole flow against the emulators and moto, prints the pull request and
//! issue conversations, and succeeds only when the change ran.
//!
//! The scheduled stories run the bot on a simulated clock (set to just after the schedule's
//! next fire), so they finish in seconds.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::{
    request_files, Environment, SandboxArgs, SandboxBot, SandboxError, APPROVER, AUTHOR,
    SECOND_APPROVER,
};

/// What the sandbox tells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Story {
    /// A pull request adds the example cluster; the merge creates it.
    #[default]
    Create,
    /// Created at TKR v1.24.11, upgraded to v1.25.7 by a pull request.
    Upgrade,
    /// The workers go from 3 to 6 (`WORKER_MACHINE_COUNT`).
    Scale,
    /// fluent-bit is added to the cluster's packages.
    Packages,
    /// The cluster moves from TMC cluster group `team-a` to `team-b`.
    TmcGroup,
    /// The cluster's folder is removed, with the `tkgops/allow-delete` label and two approvals.
    Delete,
    /// A `propose` schedule opens the bump pull request; its merge upgrades the cluster.
    ScheduledPropose,
    /// An `apply` schedule with two waves over team-a-prod (the canary) and team-b-prod: the
    /// canary upgrades and soaks 30 minutes, then the rest; the fleet dashboard and the record
    /// pull request show it.
    ScheduledApply,
}

/// The TKR day-2 stories that upgrade start from: TKG 2.2 offers a newer minor (v1.25.7).
pub const UPGRADABLE_TKR: &str = "v1.24.11+vmware.1-tkg.1";
/// The example request's TKR (the newest of TKG 2.2).
pub const EXAMPLE_TKR: &str = "v1.25.7+vmware.2-tkg.1";

const SETTINGS: &str = "clusters/team-a-prod/tkgops.yaml";
const CONFIG: &str = "clusters/team-a-prod/cluster-config.yaml";

/// A pull request to open in a story.
pub(crate) struct Change<'a> {
    pub(crate) branch: &'a str,
    pub(crate) title: &'a str,
    pub(crate) files: Vec<(String, String)>,
    /// Files removed instead (a delete).
    pub(crate) removed: Vec<String>,
    pub(crate) label: Option<&'a str>,
    pub(crate) approvers: &'a [&'a str],
}

fn head_of(env: &Environment, branch: &str) -> Result<String, SandboxError> {
    ctx!(
        git2::Repository::open_bare(&env.remote).and_then(|r| r
            .revparse_single(&format!("refs/heads/{branch}"))
            .map(|o| o.id().to_string())),
        "reading the PR head"
    )
}

/// Opens `c`, waits for its plan, approves and merges it, waits for the run; prints the
/// conversation. Returns (PR number, `tkgops/apply` state of the merge commit).
pub(crate) async fn merge_change(
    env: &Environment,
    c: Change<'_>,
    timeout: Duration,
) -> Result<(u64, String), SandboxError> {
    println!("==> {AUTHOR} opens a pull request: {}", c.title);
    let pr = if c.removed.is_empty() {
        env.open_pull_request(c.branch, c.title, &c.files)?
    } else {
        let paths: Vec<&str> = c.removed.iter().map(String::as_str).collect();
        ctx!(
            tkgops_emulators::git_remote::remove_on_branch(
                &env.remote,
                "main",
                c.branch,
                c.title,
                &paths
            ),
            "committing the removal"
        )?;
        ctx!(
            env.github.open_pull_request(c.branch, c.title, "", AUTHOR),
            "opening the PR"
        )?
    };
    if let Some(label) = c.label {
        println!("==> {APPROVER} adds the label {label}");
        ctx!(env.github.add_label(pr, APPROVER, label), "labelling")?;
    }
    let head = head_of(env, c.branch)?;
    let plan = wait_plan(env, &head, c.label.is_some()).await?;
    println!("==> plan posted on PR #{pr} (tkgops/plan: {plan})\n");
    println!("{}", env.conversation(pr));
    if plan != "success" {
        return Ok((pr, plan));
    }
    for a in c.approvers {
        println!("==> {a} approves PR #{pr}");
        ctx!(env.github.submit_review(pr, a, "APPROVED"), "approving")?;
    }
    println!("==> {APPROVER} merges PR #{pr}");
    let merge = ctx!(env.github.merge_pull_request(pr, APPROVER), "merging")?;
    let apply = env
        .wait_status(&merge, tkgops::APPLY_CONTEXT, timeout)
        .await?;
    println!("==> run finished (tkgops/apply: {apply}); the PR conversation:\n");
    println!("{}", env.conversation(pr));
    Ok((pr, apply))
}

/// The plan status of `head`; with a label added after opening, the status that follows the
/// re-plan (the first plan may predate the label).
async fn wait_plan(env: &Environment, head: &str, labelled: bool) -> Result<String, SandboxError> {
    if !labelled {
        return env
            .wait_status(head, tkgops::PLAN_CONTEXT, Duration::from_secs(120))
            .await;
    }
    env.github
        .wait_until(Duration::from_secs(120), |gh| {
            gh.statuses(head)
                .into_iter()
                .find(|s| s.context == tkgops::PLAN_CONTEXT && s.state == "success")
                .map(|s| s.state)
        })
        .await
        .ok_or_else(|| SandboxError("the labelled pull request was never planned".into()))
}

/// Runs `story` (any but [`Story::Create`]) in a started environment with the bot running.
/// Returns whether it succeeded.
///
/// Errors: [`SandboxError`] when git, the emulators or a wait fail.
pub async fn day2(
    env: &Environment,
    bot: &SandboxBot,
    story: Story,
    args: &SandboxArgs,
) -> Result<bool, SandboxError> {
    let timeout = Duration::from(args.timeout);
    let (cluster, files) = request_files(None, &env.vpc);
    let start_tkr = match story {
        Story::Upgrade | Story::ScheduledPropose | Story::ScheduledApply => UPGRADABLE_TKR,
        _ => EXAMPLE_TKR,
    };
    let files: Vec<(String, String)> = files
        .into_iter()
        .map(|(p, c)| (p, c.replace(EXAMPLE_TKR, start_tkr)))
        .collect();
    // The apply story's fleet: team-a-prod is the canary, team-b-prod is the rest.
    let created: Vec<(String, String)> = match story {
        Story::ScheduledApply => ["team-a-prod", "team-b-prod"]
            .iter()
            .flat_map(|name| {
                files.iter().map(move |(p, c)| {
                    let extra = if *name == "team-a-prod" {
                        "\n  tier: canary"
                    } else {
                        ""
                    };
                    (
                        p.replace("team-a-prod", name),
                        c.replace("team-a-prod", name)
                            .replace("  team: team-a", &format!("  team: team-a{extra}")),
                    )
                })
            })
            .collect(),
        _ => files.clone(),
    };
    let file = |path: &str| {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    };
    let names = if story == Story::ScheduledApply {
        format!("{cluster} and team-b-prod are")
    } else {
        format!("{cluster} is")
    };
    println!("==> first, {names} created at TKR {start_tkr}");
    let (_, created) = merge_change(
        env,
        Change {
            branch: "add-team-a-prod",
            title: "Add cluster team-a-prod",
            files: created,
            removed: Vec::new(),
            label: None,
            approvers: &[APPROVER],
        },
        timeout,
    )
    .await?;
    if created != "success" {
        println!("==> creating the cluster failed: the story stops");
        return Ok(false);
    }
    let one = &[APPROVER][..];
    let two = &[APPROVER, SECOND_APPROVER][..];
    let settings = file(SETTINGS);
    let change = |branch, title, path: &str, text: String| Change {
        branch,
        title,
        files: vec![(path.to_string(), text)],
        removed: Vec::new(),
        label: None,
        approvers: one,
    };
    let outcome = match story {
        Story::Create => return Err(SandboxError("the create story is not a day-2 story".into())),
        Story::Upgrade => {
            merge_change(
                env,
                change(
                    "upgrade-team-a-prod",
                    "Upgrade team-a-prod to v1.25.7",
                    SETTINGS,
                    settings.replace(UPGRADABLE_TKR, EXAMPLE_TKR),
                ),
                timeout,
            )
            .await?
            .1
        }
        Story::Scale => {
            merge_change(
                env,
                change(
                    "scale-team-a-prod",
                    "Scale team-a-prod to 6 workers",
                    CONFIG,
                    file(CONFIG).replace("WORKER_MACHINE_COUNT: 3", "WORKER_MACHINE_COUNT: 6"),
                ),
                timeout,
            )
            .await?
            .1
        }
        Story::Packages => {
            merge_change(
                env,
                change(
                    "fluent-bit-team-a-prod",
                    "Add fluent-bit to team-a-prod",
                    SETTINGS,
                    settings.replace("labels:\n", "  - name: fluent-bit\nlabels:\n"),
                ),
                timeout,
            )
            .await?
            .1
        }
        Story::TmcGroup => {
            merge_change(
                env,
                change(
                    "team-b-team-a-prod",
                    "Move team-a-prod to TMC cluster group team-b",
                    SETTINGS,
                    settings.replace("clusterGroup: team-a", "clusterGroup: team-b"),
                ),
                timeout,
            )
            .await?
            .1
        }
        Story::Delete => {
            merge_change(
                env,
                Change {
                    branch: "delete-team-a-prod",
                    title: "Delete team-a-prod",
                    files: Vec::new(),
                    removed: files.iter().map(|(p, _)| p.clone()).collect(),
                    label: Some(tkgops_domain::request::ALLOW_DELETE_LABEL),
                    approvers: two,
                },
                timeout,
            )
            .await?
            .1
        }
        Story::ScheduledPropose | Story::ScheduledApply => {
            return scheduled(env, bot, story, two, timeout).await;
        }
    };
    println!("==> final state\n{}", env.final_state(&cluster, "default"));
    print_summaries(env, bot);
    Ok(outcome == "success")
}

/// The summary lines of a story: AWS actions, Kubernetes access and GitHub routes by tkgops.
fn print_summaries(env: &Environment, bot: &SandboxBot) {
    println!("==> {}", env.aws_actions_summary());
    println!("==> {}", env.kube_access_summary());
    println!("==> {}", env.github_routes_summary(bot));
}

/// The scheduled stories: a pull request adds the schedule (a policy change: two approvals);
/// the bot's clock jumps to just after the next fire.
async fn scheduled(
    env: &Environment,
    bot: &SandboxBot,
    story: Story,
    approvers: &[&str],
    timeout: Duration,
) -> Result<bool, SandboxError> {
    let repo = main_file(env, "tkgops.yaml")?;
    let schedule = match story {
        Story::ScheduledPropose => {
            "schedules:\n  - name: weekly-minor\n    cron: \"0 2 * * SAT\"\n    timezone: Europe/Berlin\n    window: 4h\n    selector: {matchLabels: {env: prod}}\n    target: latest-minor\n    action: propose\n"
        }
        _ => {
            "schedules:\n  - name: weekly-apply\n    cron: \"0 2 * * SAT\"\n    timezone: Europe/Berlin\n    window: 4h\n    selector: {matchLabels: {env: prod}}\n    target: latest-minor\n    action: apply\n    waves:\n      - {name: canary, selector: {matchLabels: {tier: canary}}, soak: 30m, maxConcurrent: 1}\n      - {name: rest, selector: {}, maxConcurrent: 5}\n"
        }
    };
    let (_, added) = merge_change(
        env,
        Change {
            branch: "add-schedule",
            title: "Add an upgrade schedule",
            files: vec![("tkgops.yaml".into(), format!("{repo}{schedule}"))],
            removed: Vec::new(),
            label: None,
            approvers,
        },
        timeout,
    )
    .await?;
    if added != "success" {
        return Ok(false);
    }
    // The simulated clock: 2 minutes after the schedule's next fire.
    let rc = ctx!(
        tkgops_domain::request::parse_repo_config(
            "tkgops.yaml",
            main_file(env, "tkgops.yaml")?.as_bytes()
        )
        .map_err(|f| format!("{f:?}")),
        "reading the schedule back"
    )?;
    let s = rc
        .schedules
        .first()
        .ok_or_else(|| SandboxError("the schedule is not on main".into()))?;
    let fire = s
        .next_fire(Utc::now())
        .ok_or_else(|| SandboxError("the schedule never fires".into()))?;
    let clock: Arc<Mutex<DateTime<Utc>>> =
        Arc::new(Mutex::new(fire + chrono::Duration::minutes(2)));
    let c = clock.clone();
    bot.bot.set_clock(Arc::new(move || {
        *c.lock().unwrap_or_else(|e| e.into_inner())
    }));
    println!(
        "==> the bot's clock jumps to 2 minutes after the next fire of {} ({fire})",
        s.name
    );
    match story {
        Story::ScheduledPropose => {
            let pr = env
                .github
                .wait_until(timeout, |gh| {
                    gh.pull_requests()
                        .into_iter()
                        .find(|p| p.head_ref.starts_with("tkgops/schedule/"))
                })
                .await
                .ok_or_else(|| SandboxError("the schedule opened no pull request".into()))?;
            println!("==> the schedule opened PR #{}: {}", pr.number, pr.title);
            let listed = format!("(#{})", pr.number);
            env.github
                .wait_until(timeout, |gh| {
                    gh.issues().into_iter().find(|i| i.body.contains(&listed))
                })
                .await;
            print_dashboard(env);
            let head = head_of(env, &pr.head_ref)?;
            let plan = wait_plan(env, &head, false).await?;
            println!(
                "==> plan posted on PR #{} (tkgops/plan: {plan})\n",
                pr.number
            );
            println!("{}", env.conversation(pr.number));
            ctx!(
                env.github.submit_review(pr.number, APPROVER, "APPROVED"),
                "approving"
            )?;
            println!("==> {APPROVER} approves and merges PR #{}", pr.number);
            let merge = ctx!(
                env.github.merge_pull_request(pr.number, APPROVER),
                "merging"
            )?;
            let apply = env
                .wait_status(&merge, tkgops::APPLY_CONTEXT, timeout)
                .await?;
            println!("==> run finished (tkgops/apply: {apply}); the PR conversation:\n");
            println!("{}", env.conversation(pr.number));
            println!(
                "==> final state\n{}",
                env.final_state("team-a-prod", "default")
            );
            print_summaries(env, bot);
            Ok(apply == "success")
        }
        _ => {
            let pr = env
                .github
                .wait_until(timeout, |gh| {
                    gh.pull_requests().into_iter().find(|p| {
                        p.head_ref
                            .starts_with("tkgops/schedule/weekly-apply/apply-")
                    })
                })
                .await
                .ok_or_else(|| SandboxError("the schedule opened no record pull request".into()))?;
            println!(
                "==> the fire started the canary wave and opened the record PR #{}: {}",
                pr.number, pr.title
            );
            let soaking = env
                .github
                .wait_until(timeout, |gh| {
                    gh.issues().into_iter().find(|i| {
                        i.body.contains("| canary | soaking until") || i.body.contains("⛔")
                    })
                })
                .await
                .ok_or_else(|| SandboxError("the canary wave never soaked".into()))?;
            print_dashboard(env);
            if soaking.body.contains("⛔") {
                println!("==> the canary wave halted: the story stops");
                return Ok(false);
            }
            let later = {
                let mut c = clock.lock().unwrap_or_else(|e| e.into_inner());
                *c += chrono::Duration::minutes(31);
                *c
            };
            println!("==> the canary soaked healthy; the bot's clock jumps 31 minutes to {later}");
            let done = env
                .github
                .wait_until(timeout, |gh| {
                    gh.issues().into_iter().find(|i| {
                        i.body.contains("cluster(s) upgraded in 2 wave(s)") || i.body.contains("⛔")
                    })
                })
                .await
                .ok_or_else(|| SandboxError("the rest wave never finished".into()))?;
            print_dashboard(env);
            // The publisher coalesces comment edits: wait for both waves' final comments.
            env.github
                .wait_until(timeout, |gh| {
                    let finals = gh
                        .comments(pr.number)
                        .into_iter()
                        .filter(|c| {
                            c.body.contains("<!-- tkgops:scheduled-run:")
                                && c.body.lines().nth(1).is_some_and(|l| {
                                    l.ends_with("✅ succeeded") || l.ends_with("❌ failed")
                                })
                        })
                        .count();
                    (finals == 2).then_some(())
                })
                .await;
            println!("==> the waves finished; the PR conversation:\n");
            println!("{}", env.conversation(pr.number));
            for name in ["team-a-prod", "team-b-prod"] {
                println!("==> final state\n{}", env.final_state(name, "default"));
            }
            print_summaries(env, bot);
            Ok(!done.body.contains("⛔"))
        }
    }
}

fn print_dashboard(env: &Environment) {
    for i in env.github.issues() {
        println!(
            "----- issue #{} by {}: {} -----\n{}",
            i.number, i.author, i.title, i.body
        );
    }
}

/// The text of `path` on the config repository's `main`.
fn main_file(env: &Environment, path: &str) -> Result<String, SandboxError> {
    let repo = ctx!(
        git2::Repository::open_bare(&env.remote),
        "opening the repository"
    )?;
    let text = repo
        .revparse_single(&format!("refs/heads/main:{path}"))
        .ok()
        .and_then(|o| o.peel_to_blob().ok())
        .map(|b| String::from_utf8_lossy(b.content()).into_owned())
        .ok_or_else(|| SandboxError(format!("{path} is not on main")))?;
    Ok(text)
}
