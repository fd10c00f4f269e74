//! Integration tests of the `tkgops-sandbox` binary as a user runs it (`scripts/sandbox.sh`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

use crate::support::root;

fn sandbox(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tkgops-sandbox"))
        .args(args)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .output()
        .expect("running tkgops-sandbox")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn sandbox_tells_the_whole_story() {
    let o = sandbox(&["--exit"]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "sandbox failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("tkgops/apply: success"), "{out}");
    assert!(
        out.contains("TMC cluster team-a-prod: phase READY, health HEALTHY"),
        "{out}"
    );
    assert!(
        out.contains("PackageInstall cert-manager/cert-manager: ReconcileSucceeded"),
        "{out}"
    );
    // The bot received the emulated GitHub's signed webhooks and accepted every one.
    let re = regex::Regex::new(r"webhooks: (\d+) delivered to the bot, (\d+) accepted").unwrap();
    let caps = re.captures(&out).unwrap_or_else(|| panic!("{out}"));
    let delivered: u32 = caps[1].parse().unwrap();
    assert!(
        delivered >= 4,
        "opened, review, closed, push at least: {out}"
    );
    assert_eq!(&caps[1], &caps[2], "{out}");
}

#[test]
fn sandbox_with_an_invalid_request_stops_at_the_plan() {
    let o = sandbox(&[
        "--exit",
        "--request",
        "tests/fixtures/samples/01-tkg16-aws-mgmt-cluster-config.yaml",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("tkgops/plan: failure"), "{out}");
    assert!(
        out.contains("TKO-CLS-004"),
        "the rule is named on the PR: {out}"
    );
    assert!(out.contains("nothing is merged or executed"), "{out}");
}

#[test]
fn sandbox_with_a_valid_prod_request_succeeds() {
    let o = sandbox(&[
        "--exit",
        "--request",
        "examples/requests/team-a-prod/cluster-config.yaml",
    ]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("tkgops/apply: success"), "{out}");
}

/// TKG's example prod request rewritten for a new VPC: no `AWS_VPC_ID`, no subnet IDs, no
/// `AWS_VPC_CIDR` (TKG's default `10.0.0.0/16`), node CIDRs by default.
fn new_vpc_request(dir: &Path) -> PathBuf {
    let example =
        std::fs::read_to_string(root().join("examples/requests/team-a-prod/cluster-config.yaml"))
            .unwrap();
    let text: String = example
        .lines()
        .filter(|l| {
            ![
                "AWS_VPC_ID:",
                "AWS_VPC_CIDR:",
                "AWS_PRIVATE_SUBNET_ID",
                "AWS_PUBLIC_SUBNET_ID",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| l.replace("team-a-prod", "team-b-new-vpc") + "\n")
        .collect();
    assert!(!text.contains("AWS_VPC"), "{text}");
    let path = dir.join("new-vpc.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn sandbox_with_a_valid_new_vpc_request_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let request = new_vpc_request(dir.path());
    let o = sandbox(&["--exit", "--request", request.to_str().unwrap()]);
    let out = stdout(&o);
    assert!(
        o.status.success(),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The preflight checked a new VPC (TKG's default CIDR) against the sandbox's own VPC.
    assert!(
        out.contains("| ✅ succeeded | ") && out.contains("new VPC;"),
        "{out}"
    );
    assert!(out.contains("tkgops/apply: success"), "{out}");
    assert!(
        out.contains("Cluster default/team-b-new-vpc: phase Provisioned"),
        "{out}"
    );
}

/// `tkgops-sandbox --serve` running in `workdir`, stdout piped (stderr to `workdir/stderr.log`).
fn serve(workdir: &Path) -> Child {
    std::fs::create_dir_all(workdir).unwrap();
    Command::new(env!("CARGO_BIN_EXE_tkgops-sandbox"))
        .args(["--serve", "--workdir"])
        .arg(workdir)
        .current_dir(root())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(workdir.join("stderr.log")).unwrap())
        .spawn()
        .expect("running tkgops-sandbox --serve")
}

/// Waits (at most `timeout`) for `child` to exit; kills it and fails the test otherwise.
fn wait_exit(child: Child, timeout: Duration) -> std::process::ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let mut child = child;
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("tkgops-sandbox (pid {pid}) did not exit within {timeout:?}");
        }
    }
}

/// The pids of the processes whose parent is `parent` (from `/proc/*/stat`).
fn children_of(parent: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            let cmdline = std::fs::read(entry.path().join("cmdline"))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            out.push((pid, cmdline));
        }
    }
    out
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} missing in {v:#}"))
}

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("running git");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Starts `--serve`, checks the env file and that it can be driven (API with each user's
/// token, git clone and push), then sends `signal` and checks that the sandbox exits cleanly
/// and moto is gone.
fn serve_then_stop_with(signal: &str) {
    let dir = tempfile::tempdir().unwrap();
    let workdir = dir.path().join("sandbox");
    let mut child = serve(&workdir);
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    // Lines of stdout as they come; the channel closes at EOF.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = match rx.recv_timeout(Duration::from_secs(180)) {
        Ok(line) => line,
        other => {
            // SIGTERM lets the sandbox stop moto; wait_exit falls back to SIGKILL.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            wait_exit(child, Duration::from_secs(30));
            panic!(
                "no `sandbox env:` line ({other:?}); stderr:\n{}",
                std::fs::read_to_string(workdir.join("stderr.log")).unwrap_or_default()
            );
        }
    };
    let path = first
        .strip_prefix("sandbox env: ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    assert_eq!(Path::new(path), workdir.join("sandbox-env.json"));
    let env: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();

    // Every field a person needs.
    let api = str_at(&env, "/github/apiUrl").to_string();
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    assert_eq!(str_at(&env, "/github/repository"), "acme/tkg-clusters");
    let git_url = str_at(&env, "/github/gitUrl").to_string();
    let webhook_url = str_at(&env, "/github/webhookUrl");
    assert!(
        webhook_url.starts_with("http://127.0.0.1:") && webhook_url.ends_with("/webhooks/github"),
        "{webhook_url}"
    );
    assert!(str_at(&env, "/github/webhookSecret").len() > 24);
    let users = env
        .pointer("/github/users")
        .and_then(Value::as_object)
        .unwrap();
    let mut logins: Vec<&str> = users.keys().map(String::as_str).collect();
    logins.sort();
    assert_eq!(
        logins,
        vec!["alice", "bob", "outsider", "platform-dev", "reader"]
    );
    // Each user's repository role: `reader` reads (comments and reviews only).
    for (login, role) in [
        ("alice", "write"),
        ("outsider", "write"),
        ("platform-dev", "write"),
        ("reader", "read"),
    ] {
        assert_eq!(str_at(&env, &format!("/github/roles/{login}")), role);
    }
    let kubeconfig = str_at(&env, "/managementClusters/mc-aws-1/kubeconfig");
    assert!(
        std::fs::read_to_string(kubeconfig)
            .unwrap()
            .contains("clusters:"),
        "{kubeconfig}"
    );
    assert!(str_at(&env, "/tmc/url").starts_with("http://127.0.0.1:"));
    let moto_url = str_at(&env, "/ec2/endpointUrl").to_string();
    assert_eq!(str_at(&env, "/ec2/region"), "us-west-2");
    assert!(str_at(&env, "/ec2/vpc/id").starts_with("vpc-"));
    // Clear of TKG's default networks for a new VPC (10.0.0.0/16, 100.64.0.0/10).
    assert_eq!(str_at(&env, "/ec2/vpc/cidr"), "10.1.0.0/16");
    let subnets = env
        .pointer("/ec2/vpc/privateSubnets")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(subnets.len(), 3);
    for s in subnets {
        assert!(str_at(s, "/az").starts_with("us-west-2"));
        assert!(str_at(s, "/id").starts_with("subnet-"));
    }

    // The API answers each user's token as that user (and refuses others).
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let http = reqwest::Client::new();
        for (login, token) in users {
            let me: Value = http
                .get(format!("{api}/user"))
                .header(
                    "authorization",
                    format!("token {}", token.as_str().unwrap()),
                )
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(me["login"], login.as_str());
        }
        let refused = http
            .get(format!("{api}/user"))
            .header("authorization", "token nope")
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status().as_u16(), 401);
        let health = http
            .get(format!("{}/healthz", str_at(&env, "/bot/url")))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status().as_u16(), 200);
    });

    // Plain git clones and pushes.
    let clone = dir.path().join("clone");
    git(
        dir.path(),
        &["clone", "--quiet", &git_url, clone.to_str().unwrap()],
    );
    assert!(clone.join("tkgops.yaml").exists());
    std::fs::write(clone.join("NOTES.md"), "pushed by the test\n").unwrap();
    git(&clone, &["checkout", "--quiet", "-b", "notes"]);
    git(&clone, &["add", "NOTES.md"]);
    git(
        &clone,
        &[
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.com",
            "commit",
            "--quiet",
            "-m",
            "notes",
        ],
    );
    git(&clone, &["push", "--quiet", "origin", "notes"]);
    let remote = git(&clone, &["ls-remote", "origin", "refs/heads/notes"]);
    let local = git(&clone, &["rev-parse", "HEAD"]);
    assert!(remote.starts_with(local.trim()), "{remote} vs {local}");

    // moto is a child of the sandbox, listening on its endpoint.
    let moto: Vec<_> = children_of(pid)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("moto"))
        .collect();
    assert_eq!(moto.len(), 1, "{moto:?}");
    let (moto_pid, _) = moto[0].clone();
    let moto_addr = moto_url.trim_start_matches("http://").to_string();
    assert!(std::net::TcpStream::connect(&moto_addr).is_ok());

    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = wait_exit(child, Duration::from_secs(60));
    // The process is gone: the rest of stdout is whatever is left before EOF.
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        status.success(),
        "exit {status:?} after SIG{signal}; stderr:\n{}",
        std::fs::read_to_string(workdir.join("stderr.log")).unwrap_or_default()
    );
    assert!(
        rest.is_empty(),
        "exactly one line on stdout, then: {rest:?}"
    );
    let proc_dir = PathBuf::from(format!("/proc/{moto_pid}"));
    assert!(
        !proc_dir.exists(),
        "moto (pid {moto_pid}) still exists after SIG{signal}: {:?}",
        std::fs::read_to_string(proc_dir.join("stat")).ok()
    );
    assert!(std::net::TcpStream::connect(&moto_addr).is_err());
}

#[test]
fn sandbox_serve_writes_its_env_and_stops_moto_on_sigterm() {
    serve_then_stop_with("TERM");
}

#[test]
fn sandbox_serve_stops_moto_on_sigint() {
    serve_then_stop_with("INT");
}

/// Runs `tkgops-sandbox --story NAME --exit`; returns (exit code, stdout).
fn story(name: &str) -> (Option<i32>, String) {
    let o = sandbox(&["--story", name, "--exit"]);
    let out = stdout(&o);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    (o.status.code(), format!("{out}\n----- stderr -----\n{err}"))
}

/// The last bot comment printed for the day-2 pull request: the text between the last
/// "the PR conversation:" and the next "==>" line.
fn final_run_comment(out: &str) -> String {
    let start = out
        .rfind("the PR conversation:\n")
        .map(|i| i + "the PR conversation:\n".len())
        .unwrap_or_else(|| panic!("no conversation: {out}"));
    let rest = &out[start..];
    let end = rest.find("\n==> ").unwrap_or(rest.len());
    rest[..end].trim().to_string()
}

#[test]
fn sandbox_story_upgrade_rolls_every_machine_to_the_new_version() {
    let (code, out) = story("upgrade");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("first, team-a-prod is created at TKR v1.24.11+vmware.1-tkg.1"),
        "{out}"
    );
    let re = regex::Regex::new(
        r"KubeadmControlPlane team-a-prod-\w+: version v1\.25\.7\+vmware\.2, 3/3 ready",
    )
    .unwrap();
    assert!(re.is_match(&out), "{out}");
    let mds = regex::Regex::new(
        r"MachineDeployment team-a-prod-md-\d-\w+: version v1\.25\.7\+vmware\.2, 1/1 ready",
    )
    .unwrap();
    assert_eq!(mds.find_iter(&out).count(), 3, "{out}");
    crate::support::assert_golden("story-upgrade.md", &final_run_comment(&out));
}

#[test]
fn sandbox_story_scale_adds_workers() {
    let (code, out) = story("scale");
    assert_eq!(code, Some(0), "{out}");
    let mds = regex::Regex::new(
        r"MachineDeployment team-a-prod-md-\d-\w+: version v1\.25\.7\+vmware\.2, 2/2 ready",
    )
    .unwrap();
    assert_eq!(mds.find_iter(&out).count(), 3, "{out}");
    crate::support::assert_golden("story-scale.md", &final_run_comment(&out));
}

#[test]
fn sandbox_story_packages_installs_fluent_bit() {
    let (code, out) = story("packages");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("PackageInstall tanzu-system-logging/fluent-bit: ReconcileSucceeded"),
        "{out}"
    );
    crate::support::assert_golden("story-packages.md", &final_run_comment(&out));
}

#[test]
fn sandbox_story_tmc_group_moves_the_cluster() {
    let (code, out) = story("tmc-group");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("TMC cluster team-a-prod: phase READY, health HEALTHY, cluster group team-b"),
        "{out}"
    );
    crate::support::assert_golden("story-tmc-group.md", &final_run_comment(&out));
}

#[test]
fn sandbox_story_delete_removes_the_cluster_with_the_label_and_two_approvals() {
    let (code, out) = story("delete");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("adds the label tkgops/allow-delete"), "{out}");
    assert!(out.contains("bob approves PR #2"), "{out}");
    assert!(
        out.contains("Cluster default/team-a-prod: not found on mc-aws-1")
            && out.contains("TMC cluster team-a-prod: not attached"),
        "{out}"
    );
    crate::support::assert_golden("story-delete.md", &final_run_comment(&out));
    // Issue 19, permissions: the story creates the cluster in an existing VPC (preflight reads,
    // subnet tags) and deletes it (the cluster tag removed): every AWS action tkgops sent,
    // recorded by moto itself, is what deploy/aws/iam-policy.json allows, no more, no less.
    assert_eq!(
        aws_actions_sent(&out),
        iam_policy_actions(),
        "deploy/aws/iam-policy.json must allow exactly the actions tkgops calls:\n{out}"
    );
}

/// The AWS actions of the sandbox's `==> aws actions by tkgops: …` line.
fn aws_actions_sent(out: &str) -> std::collections::BTreeSet<String> {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("==> aws actions by tkgops: "))
        .unwrap_or_else(|| panic!("no AWS actions line: {out}"));
    line.split(", ")
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every action `deploy/aws/iam-policy.json` allows.
fn iam_policy_actions() -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("deploy/aws/iam-policy.json")).expect("policy");
    let policy: Value = serde_json::from_str(&text).expect("policy JSON");
    let mut actions = std::collections::BTreeSet::new();
    for st in policy["Statement"].as_array().expect("statements") {
        assert_eq!(st["Effect"], "Allow", "{st}");
        for a in st["Action"].as_array().expect("actions") {
            actions.insert(a.as_str().expect("action").to_string());
        }
    }
    actions
}

#[test]
fn sandbox_story_scheduled_propose_opens_the_bump_and_its_merge_upgrades() {
    let (code, out) = story("scheduled-propose");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("the schedule opened PR #4: Upgrade 1 cluster(s) to TKR v1.25.7+vmware.2-tkg.1 (schedule weekly-minor)"),
        "{out}"
    );
    assert!(
        out.contains("----- issue #3 by tkgops[bot]: tkgops fleet dashboard -----")
            && out.contains("| `weekly-minor` | propose | latest-minor |")
            && out.contains("1 bump(s) proposed (#4)"),
        "{out}"
    );
    let re = regex::Regex::new(
        r"KubeadmControlPlane team-a-prod-\w+: version v1\.25\.7\+vmware\.2, 3/3 ready",
    )
    .unwrap();
    assert!(re.is_match(&out), "{out}");
    crate::support::assert_golden("story-scheduled-propose.md", &final_run_comment(&out));
}

#[test]
fn sandbox_story_scheduled_apply_upgrades_the_canary_then_the_rest() {
    let (code, out) = story("scheduled-apply");
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(
            "first, team-a-prod and team-b-prod are created at TKR v1.24.11+vmware.1-tkg.1"
        ),
        "{out}"
    );
    assert!(
        out.contains("| canary | soaking until")
            && out.contains("| rest | pending | ⏸️ `team-b-prod` → `v1.25.7+vmware.2-tkg.1` |"),
        "{out}"
    );
    assert!(
        out.contains("2/2 cluster(s) upgraded in 2 wave(s)"),
        "{out}"
    );
    for cluster in ["team-a-prod", "team-b-prod"] {
        let re = regex::Regex::new(&format!(
            r"KubeadmControlPlane {cluster}-\w+: version v1\.25\.7\+vmware\.2, 3/3 ready"
        ))
        .unwrap();
        assert!(re.is_match(&out), "{cluster}: {out}");
    }
    // The golden: each wave's run comment on the record pull request (its plan comment
    // follows the branch head, which moves as waves start).
    let conversation = final_run_comment(&out);
    let waves: Vec<String> = conversation
        .split("----- comment by ")
        .filter(|c| c.contains("<!-- tkgops:scheduled-run:"))
        .map(|c| format!("----- comment by {}\n", c.trim()))
        .collect();
    assert_eq!(waves.len(), 2, "{out}");
    let waves = waves.concat();
    crate::support::assert_golden("story-scheduled-apply.md", &waves);
}
