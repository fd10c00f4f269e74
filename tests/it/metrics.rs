//! The bot's Prometheus metrics (`GET /metrics`, README "Metrics and alerts"): a create story
//! moves the counters, and the chart's alert rules and Grafana dashboard parse as PromQL and
//! name only metrics the bot serves.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};
use promql_parser::parser::Expr;
use promql_parser::util::{walk_expr, ExprVisitor};
use tkgops_emulators::github::WebhookTarget;
use tkgops_sandbox::{request_files, APPROVER, AUTHOR};

use crate::e2e::{set_aws_env, start_env};
use crate::trust::{merge, open_and_plan};

const CLUSTER: &str = "team-a-prod";

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/tkgops")
}

/// `GET /metrics` of the bot at `addr`, parsed.
async fn scrape(addr: std::net::SocketAddr) -> Scrape {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

/// The value of the sample `name` whose labels include every pair of `labels` (counters,
/// gauges and untyped samples such as a histogram's `_count`); `None` when there is none.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .find(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .and_then(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Every metric name of the exposition, a histogram's `_bucket`, `_sum` and `_count` included.
fn names(s: &Scrape) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for x in &s.samples {
        names.insert(x.metric.clone());
        if matches!(x.value, Value::Histogram(_)) {
            names.insert(format!("{}_bucket", x.metric));
        }
    }
    names
}

/// The metric names a PromQL expression selects.
fn selected_names(expr: &str) -> Result<BTreeSet<String>, String> {
    struct Names(BTreeSet<String>);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            let vs = match e {
                Expr::VectorSelector(vs) => Some(vs),
                Expr::MatrixSelector(ms) => Some(&ms.vs),
                _ => None,
            };
            if let Some(vs) = vs {
                let name = vs.name.clone().ok_or("a selector without a metric name")?;
                self.0.insert(name);
            }
            Ok(true)
        }
    }
    let parsed = promql_parser::parser::parse(expr)?;
    let mut v = Names(BTreeSet::new());
    walk_expr(&mut v, &parsed)?;
    Ok(v.0)
}

/// Every (where, PromQL expression) of the chart's alert rules and Grafana dashboard.
fn shipped_expressions() -> Vec<(String, String)> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("rules/alerts.yaml")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().expect("an alert name");
            let expr = rule["expr"].as_str().expect("an expr");
            out.push((format!("alert {name}"), expr.to_string()));
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/tkgops.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            out.push((
                format!("panel {title:?}"),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

/// The metrics README "Metrics and alerts" lists (the first column of its table).
fn readme_metrics() -> BTreeSet<String> {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let section = readme
        .split("## Metrics and alerts")
        .nth(1)
        .expect("README has a Metrics and alerts section");
    section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("tkgops_"))
        .map(String::from)
        .collect()
}

#[test]
fn alert_rules_and_dashboard_parse_as_promql_and_name_documented_metrics() {
    let documented = readme_metrics();
    assert!(documented.len() >= 15, "{documented:?}");
    let exprs = shipped_expressions();
    assert!(
        exprs
            .iter()
            .filter(|(w, _)| w.starts_with("alert "))
            .count()
            >= 7,
        "{exprs:?}"
    );
    for (at, expr) in &exprs {
        let names = selected_names(expr).unwrap_or_else(|e| panic!("{at}: {expr}: {e}"));
        assert!(!names.is_empty(), "{at}: {expr} selects no metric");
        for name in names {
            let base = ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                documented.contains(&name) || documented.contains(base),
                "{at}: {name} is not in README's metrics table"
            );
        }
    }
    // A broken expression is refused (the parser is not a no-op).
    assert!(selected_names("rate(tkgops_polls_total[5m]").is_err());
}

/// A create story in the emulated world, webhooks on: `/metrics` before and after shows the
/// run started and finished, its steps timed, the deliveries accepted, the poll times, the
/// trusted policy and the cluster under its TKR; every metric an alert rule or the dashboard
/// names is served (but the few that need a queue, a halt or a schedule).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_story_moves_the_metrics() {
    let timings = tkgops_sandbox::Timings::default();
    let env = start_env(&timings).await;
    set_aws_env(&env);
    let cfg = env.bot_config(&timings);
    let creds = tkgops::serve::Credentials {
        github_token: tkgops_sandbox::GITHUB_TOKEN.into(),
        tmc_token: Some(tkgops_sandbox::TMC_TOKEN.into()),
    };
    let bot = Arc::new(tkgops::serve::build_with(&cfg, creds).await.expect("bot"));
    let (stop_http, http_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, http) = tkgops::serve::start_http_with(
        &bot,
        "127.0.0.1:0",
        tkgops::secrets::RotatingSecret::fixed(Some(env.webhook_secret.clone())),
        async move {
            let _ = http_rx.await;
        },
    )
    .await
    .expect("http");
    env.github.set_webhook(Some(WebhookTarget::new(
        &format!("http://{addr}/webhooks/github"),
        &env.webhook_secret,
    )));

    let before = scrape(addr).await;
    let started = ("workflow", "create-cluster");
    assert_eq!(
        value(&before, "tkgops_runs_started_total", &[started]),
        None
    );
    assert_eq!(
        value(
            &before,
            "tkgops_webhook_deliveries_total",
            &[("result", "accepted")]
        ),
        Some(0.0)
    );
    assert_eq!(
        value(
            &before,
            "tkgops_last_successful_poll_timestamp_seconds",
            &[]
        ),
        None,
        "no poll yet"
    );
    let story_began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let (stop_run, run_rx) = tokio::sync::oneshot::channel::<()>();
    let b = bot.clone();
    let run = tokio::spawn(async move {
        b.run(timings.poll, Duration::from_secs(2), async move {
            let _ = run_rx.await;
        })
        .await
    });
    let (pr, _, plan) = open_and_plan(&env, AUTHOR, &[]).await;
    assert_eq!(plan, "success");
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let (apply, comment) = merge(&env, pr, APPROVER).await;
    assert_eq!(apply, "success", "{comment}");
    // The poll loop stops; one more poll counts the deployed cluster (its run's success was
    // written before the status said so).
    let _ = stop_run.send(());
    run.await.unwrap();
    bot.poll_once().await.expect("a poll");

    let after = scrape(addr).await;
    assert_eq!(
        value(&after, "tkgops_runs_started_total", &[started]),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "tkgops_runs_finished_total",
            &[started, ("outcome", "succeeded")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &after,
            "tkgops_runs_finished_total",
            &[started, ("outcome", "failed")]
        ),
        None
    );
    let timed = value(
        &after,
        "tkgops_step_duration_seconds_count",
        &[("kind", "kube.wait-cluster"), ("outcome", "succeeded")],
    );
    assert!(timed.is_some_and(|n| n >= 1.0), "{timed:?}");
    let attempts = value(
        &after,
        "tkgops_step_attempts_total",
        &[("kind", "kube.wait-cluster"), ("outcome", "succeeded")],
    );
    assert!(attempts.is_some_and(|n| n >= 1.0), "{attempts:?}");
    let accepted = value(
        &after,
        "tkgops_webhook_deliveries_total",
        &[("result", "accepted")],
    )
    .unwrap();
    assert!(accepted > 0.0, "webhook deliveries accepted: {accepted}");
    let last_poll = value(&after, "tkgops_last_successful_poll_timestamp_seconds", &[]).unwrap();
    assert!(last_poll >= story_began, "{last_poll} < {story_began}");
    assert!(value(&after, "tkgops_polls_total", &[("result", "ok")]).unwrap() >= 2.0);
    assert_eq!(value(&after, "tkgops_policy_trusted", &[]), Some(1.0));
    let remaining = value(&after, "tkgops_github_rate_limit_remaining", &[]).unwrap();
    assert!(remaining > 0.0, "{remaining}");
    assert!(value(&after, "tkgops_github_content_writes_total", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&after, "tkgops_oldest_queued_run_age_seconds", &[]),
        Some(0.0)
    );
    // The cluster counts under the TKR of its tkgops.yaml.
    let (_, files) = request_files(None, &env.vpc);
    let path = format!("clusters/{CLUSTER}/tkgops.yaml");
    let (_, settings) = files.iter().find(|(p, _)| *p == path).expect(&path);
    let tkr = tkgops_domain::request::parse_cluster_settings(&path, settings.as_bytes())
        .expect("the example's settings")
        .tkr;
    assert_eq!(
        value(&after, "tkgops_clusters", &[("tkr", tkr.as_str())]),
        Some(1.0),
        "{:?}",
        after
            .samples
            .iter()
            .filter(|s| s.metric == "tkgops_clusters")
            .collect::<Vec<_>>()
    );

    // Every metric the alert rules and the dashboard name is served, but those that show only
    // with a queued run (per cluster).
    const NEED_A_QUEUE: &[&str] = &["tkgops_runs_queued"];
    let served = names(&after);
    for (at, expr) in shipped_expressions() {
        for name in selected_names(&expr).unwrap() {
            if NEED_A_QUEUE.contains(&name.as_str()) {
                continue;
            }
            assert!(
                served.contains(&name),
                "{at}: {name} is not served:\n{served:?}"
            );
        }
    }
    // No secret in the exposition.
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for secret in [
        tkgops_sandbox::GITHUB_TOKEN,
        tkgops_sandbox::TMC_TOKEN,
        env.webhook_secret.as_str(),
    ] {
        assert!(!text.contains(secret));
    }
    let _ = stop_http.send(());
    http.await.unwrap();
}
