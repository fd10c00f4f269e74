//! What an operator sees of a running bot: the real `tkgops serve --log-format json` runs the
//! create story; its log lines are JSON objects naming the run, the step, the pull request and
//! the merge commit they are about; `tkgops runs` reads the run history from the bot's admin
//! endpoint while it runs, and from the journal once it stopped; `tkgops journal export`
//! writes the same runs as JSON lines.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tkgops_sandbox::{request_files, Timings, APPROVER};
use tokio::io::AsyncReadExt;

use crate::e2e::{head_of, start_env};

/// A loopback port free a moment ago (the bot binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `tkgops ARGS` and returns its standard output; panics on a non-zero exit.
async fn tkgops(args: &[&str]) -> String {
    let out = tokio::process::Command::new(crate::support::tkgops_bin())
        .args(args)
        .output()
        .await
        .expect("tkgops");
    assert!(
        out.status.success(),
        "tkgops {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The value of field `name` in the log line `line`: on the event, else on the innermost span
/// that has it.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a Value> {
    line.get(name).or_else(|| {
        line["spans"]
            .as_array()?
            .iter()
            .rev()
            .find_map(|s| s.get(name))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_logs_and_the_run_history_of_a_running_bot() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let mut cfg = env.bot_config(&timings);
    cfg.admin_listen = Some(admin.clone());
    let state_dir = cfg.state_dir.clone();
    let cfg_path = env.workdir.join("bot-json-logs.yaml");
    std::fs::write(&cfg_path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    let mut bot = tokio::process::Command::new(crate::support::tkgops_bin())
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&cfg_path)
        .envs(env.bot_env())
        .env("RUST_LOG", "info")
        .env_remove("TKGOPS_LOG_FORMAT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("tkgops serve");
    let mut stderr = bot.stderr.take().unwrap();
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });

    let (cluster, request) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request(
            &format!("add-{cluster}"),
            &format!("Add cluster {cluster}"),
            &request,
        )
        .expect("pull request");
    let head = head_of(&env, &format!("add-{cluster}"));
    let plan = env
        .wait_status(&head, tkgops::PLAN_CONTEXT, Duration::from_secs(120))
        .await
        .expect("plan status");
    assert_eq!(plan, "success", "{}", env.conversation(pr));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, tkgops::APPLY_CONTEXT, Duration::from_secs(300))
        .await
        .expect("apply status");
    assert_eq!(apply, "success", "{}", env.conversation(pr));

    // The run history, from the running bot's admin endpoint.
    let url = format!("http://{admin}");
    let listed: Value = serde_json::from_str(
        &tkgops(&[
            "runs",
            "list",
            "--url",
            &url,
            "--cluster",
            &cluster,
            "--output",
            "json",
        ])
        .await,
    )
    .unwrap();
    let runs = listed.as_array().expect("a list of runs");
    assert_eq!(runs.len(), 1, "{listed:#}");
    let run = &runs[0];
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["commitSha"].as_str(), Some(merge.as_str()), "{run:#}");
    let run_id = run["id"].as_str().unwrap().to_string();
    let shown = tkgops(&["runs", "show", &run_id, "--url", &url]).await;
    for step in run["steps"].as_array().unwrap() {
        let id = step["spec"]["id"].as_str().unwrap();
        assert!(shown.contains(id), "{id} not in:\n{shown}");
    }
    assert!(shown.contains(&merge[..7]), "{shown}");

    bot.kill().await.ok();
    let _ = bot.wait().await;
    let log = log.await.unwrap();

    // Every line is one JSON object; the run's events name the run, the cluster and the step,
    // the merge's name the pull request and the merge commit.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let in_step = lines.iter().find(|l| {
        field(l, "run_id").and_then(Value::as_str) == Some(run_id.as_str())
            && field(l, "step").is_some()
    });
    let in_step = in_step.unwrap_or_else(|| panic!("no event inside a step of {run_id}:\n{log}"));
    assert_eq!(
        field(in_step, "cluster").and_then(Value::as_str),
        Some(cluster.as_str()),
        "{in_step}"
    );
    assert!(
        lines.iter().any(|l| {
            field(l, "merge_commit").and_then(Value::as_str) == Some(merge.as_str())
                && field(l, "pr").and_then(Value::as_u64) == Some(pr)
        }),
        "no event of the merge of #{pr}:\n{log}"
    );
    assert!(
        lines.iter().any(|l| {
            field(l, "head").and_then(Value::as_str) == Some(head.as_str())
                && field(l, "pr").and_then(Value::as_u64) == Some(pr)
        }),
        "no event of the plan of #{pr}:\n{log}"
    );

    // Once the bot stopped: the journal itself, and its export.
    let state_dir = state_dir.to_str().unwrap();
    let closed = tkgops(&["runs", "list", "--state-dir", state_dir, "--output", "json"]).await;
    let closed: Value = serde_json::from_str(&closed).unwrap();
    assert!(
        closed
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["id"] == run["id"] && r["state"] == "succeeded"),
        "{closed:#}"
    );
    let export = tkgops(&["journal", "export", "--state-dir", state_dir]).await;
    let exported: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(exported.len(), closed.as_array().unwrap().len());
    assert!(exported.iter().any(|r| r["id"] == run["id"]));
}
