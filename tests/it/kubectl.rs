//! Integration tests: kubectl. The real `kubectl` drives an emulated management cluster over
//! HTTPS through a kubeconfig file, as a person using `scripts/sandbox.sh --serve` would.
//!
//! When `kubectl` is not on `PATH`, each test prints `SKIPPED: kubectl not on PATH` to stderr and
//! returns (it then proves nothing); CI machines have it (`/usr/bin/kubectl`).
//!
//! Every `kubectl` run is bounded by [`RUN_TIMEOUT`]; `kubectl get -w` and `kubectl wait` are
//! spawned, and the change they wait for is made only after they show they are watching (their
//! first output line, or their watch request in the emulator's request log).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use tkgops_emulators::kube::controllers::{
    seed_management_cluster, start_controllers, ControllerOptions, Controllers,
};
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};

/// Upper bound for one `kubectl` invocation (a hang fails the test instead of hanging CI).
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn gvr_cm() -> Gvr {
    Gvr::new("", "v1", "configmaps")
}

fn gvr_cluster() -> Gvr {
    Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters")
}

/// The `kubectl` binary on `PATH`, or `None` after printing the skip message.
pub(crate) fn kubectl() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        eprintln!("SKIPPED: kubectl not on PATH; this kubectl test proves nothing here");
    }
    found
}

/// A kubectl bound to one kubeconfig file in its own temporary HOME (so its discovery cache is
/// private to the test).
pub(crate) struct Kubectl {
    bin: PathBuf,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

impl Kubectl {
    pub(crate) fn new(bin: PathBuf, kubeconfig_yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_yaml).expect("write kubeconfig");
        Kubectl {
            bin,
            dir,
            kubeconfig,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.dir.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl args…` to completion (bounded by [`RUN_TIMEOUT`]).
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[]).await
    }

    /// [`Self::run`] with extra environment variables (e.g. `KUBE_EDITOR`).
    pub(crate) async fn run_env(&self, args: &[&str], envs: &[(&str, &str)]) -> Output {
        let mut cmd = self.command(args);
        cmd.envs(envs.iter().copied());
        let child = cmd.spawn().expect("spawn kubectl");
        tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish within {RUN_TIMEOUT:?}"))
            .expect("kubectl output")
    }

    /// Runs `kubectl args…` and returns its stdout; panics with stderr on a non-zero exit.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "kubectl {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// Runs `kubectl args…` and parses its stdout as JSON.
    pub(crate) async fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}:\n{out}"))
    }

    pub(crate) fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).expect("write manifest");
        path
    }
}

/// An emulated management cluster set up as in the controller tests (Cluster API types and
/// catalog seeded, simulated controllers running).
struct Env {
    _emu: KubeEmulator,
    mgmt: EmulatedCluster,
    _ctrl: Controllers,
}

async fn env() -> Env {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mgmt").await.expect("management cluster");
    seed_management_cluster(&mgmt).expect("seed");
    let ctrl = start_controllers(
        &emu,
        "mgmt",
        ControllerOptions {
            tick: Duration::from_millis(20),
            standard_packages: true,
        },
    );
    Env {
        _emu: emu,
        mgmt,
        _ctrl: ctrl,
    }
}

fn names(list: &Value) -> BTreeSet<String> {
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn configmap(name: &str, labels: Value, data: Value) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "data": data})
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test]
async fn kubectl_get_and_list_with_selectors() {
    let Some(bin) = kubectl() else { return };
    let env = env().await;
    let k = Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    for (name, app, tier) in [
        ("web-1", "web", "front"),
        ("web-2", "web", "back"),
        ("db-1", "db", "back"),
    ] {
        env.mgmt
            .create(
                &gvr_cm(),
                configmap(
                    name,
                    json!({"app": app, "tier": tier}),
                    json!({"name": name}),
                ),
            )
            .unwrap();
    }

    let web = k
        .json(&[
            "get",
            "configmaps",
            "-n",
            "default",
            "-l",
            "app=web",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(web["kind"], "List");
    assert_eq!(names(&web), set(&["web-1", "web-2"]));
    let back_not_db = k
        .json(&[
            "get",
            "cm",
            "-n",
            "default",
            "-l",
            "tier=back,app!=db",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(names(&back_not_db), set(&["web-2"]));
    let set_based = k
        .json(&[
            "get",
            "cm",
            "-A",
            "-l",
            "app in (web,db),tier notin (front)",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(names(&set_based), set(&["web-2", "db-1"]));

    // One object, as stored.
    let one = k
        .json(&["get", "configmap", "db-1", "-n", "default", "-o", "json"])
        .await;
    let stored = env.mgmt.get(&gvr_cm(), Some("default"), "db-1").unwrap();
    assert_eq!(one["data"], json!({"name": "db-1"}));
    assert_eq!(one["metadata"]["uid"], stored["metadata"]["uid"]);
    assert_eq!(
        one["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );

    // A missing object: kubectl reports the API's NotFound.
    let missing = k.run(&["get", "cm", "nope", "-n", "default"]).await;
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains(r#"configmaps "nope" not found"#),
        "{}",
        stderr(&missing)
    );

    // Custom resources through discovery: the seeded ClusterClasses and cluster-scoped TKRs
    // (short name `tkr`), exactly what the emulator stores.
    let ccs = k.json(&["get", "clusterclasses", "-A", "-o", "json"]).await;
    let stored: BTreeSet<String> = env
        .mgmt
        .list(
            &Gvr::new("cluster.x-k8s.io", "v1beta1", "clusterclasses"),
            None,
        )
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!stored.is_empty());
    assert_eq!(names(&ccs), stored);
    let tkrs = k.json(&["get", "tkr", "-o", "json"]).await;
    let stored: BTreeSet<String> = env
        .mgmt
        .list(
            &Gvr::new(
                "run.tanzu.vmware.com",
                "v1alpha3",
                "tanzukubernetesreleases",
            ),
            None,
        )
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert!(!stored.is_empty());
    assert_eq!(names(&tkrs), stored);

    // The default (table) output names the objects.
    let table = k.ok(&["get", "cm", "-n", "default", "-l", "app=db"]).await;
    assert!(
        table.contains("db-1") && !table.contains("web-1"),
        "{table}"
    );
}

const SSA_MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: ssa
  namespace: default
data:
  color: COLOR
";

#[tokio::test]
async fn kubectl_server_side_apply_conflict_and_dry_run() {
    let Some(bin) = kubectl() else { return };
    let env = env().await;
    let k = Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    let blue = k.write("blue.yaml", &SSA_MANIFEST.replace("COLOR", "blue"));
    let red = k.write("red.yaml", &SSA_MANIFEST.replace("COLOR", "red"));
    let path = |p: &Path| p.to_str().unwrap().to_string();

    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--field-manager=alice",
            "-f",
            &path(&blue),
        ])
        .await;
    assert!(out.contains("configmap/ssa serverside-applied"), "{out}");
    let stored = env
        .mgmt
        .get(&gvr_cm(), Some("default"), "ssa")
        .expect("applied");
    assert_eq!(stored["data"]["color"], "blue");
    let managers: Vec<&str> = stored["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert_eq!(managers, vec!["alice"]);
    // kubectl found the PATCH operation's `fieldValidation` parameter in /openapi/v3 and left
    // validation to the server instead of downloading schemas.
    let patch = env
        .mgmt
        .faults()
        .log()
        .all()
        .into_iter()
        .find(|r| r.method == http::Method::PATCH)
        .expect("kubectl's apply PATCH");
    assert_eq!(patch.path, "/api/v1/namespaces/default/configmaps/ssa");
    assert!(
        patch.query.contains("fieldManager=alice"),
        "{}",
        patch.query
    );
    assert!(
        patch.query.contains("fieldValidation=Strict"),
        "{}",
        patch.query
    );

    // Another manager changing alice's field: a conflict naming alice and the field.
    let conflict = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=bob",
            "-f",
            &path(&red),
        ])
        .await;
    assert!(!conflict.status.success(), "bob's apply must conflict");
    let err = stderr(&conflict);
    assert!(err.contains("Apply failed with 1 conflict"), "{err}");
    assert!(err.contains(r#"conflict with "alice""#), "{err}");
    assert!(err.contains(".data.color"), "{err}");
    assert_eq!(
        env.mgmt.get(&gvr_cm(), Some("default"), "ssa").unwrap()["data"]["color"],
        "blue"
    );

    // A server-side dry run of a new object: answered, never stored.
    let dry = k.write(
        "dry.yaml",
        &SSA_MANIFEST.replace("name: ssa", "name: ssa-dry"),
    );
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=alice",
            "-f",
            &path(&dry),
        ])
        .await;
    assert!(
        out.contains("configmap/ssa-dry serverside-applied (server dry run)"),
        "{out}"
    );
    assert!(env
        .mgmt
        .get(&gvr_cm(), Some("default"), "ssa-dry")
        .is_none());
    // …and of bob's change with --force-conflicts: the live object keeps alice's value.
    let out = k
        .ok(&[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
            "--field-manager=bob",
            "-f",
            &path(&red),
        ])
        .await;
    assert!(out.contains("(server dry run)"), "{out}");
    assert_eq!(
        env.mgmt.get(&gvr_cm(), Some("default"), "ssa").unwrap()["data"]["color"],
        "blue"
    );

    // Forced for real, bob takes the field.
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=bob",
        "-f",
        &path(&red),
    ])
    .await;
    assert_eq!(
        env.mgmt.get(&gvr_cm(), Some("default"), "ssa").unwrap()["data"]["color"],
        "red"
    );
}

/// kubernetes/kubernetes#107417 with the real kubectl: an apply, a merge patch and the first
/// apply again, all by field manager `tkgops`. The patch is an `Update`: another manager than
/// the `Apply` of the same name, so the second apply conflicts with it, as on a real API server.
#[tokio::test]
async fn kubectl_an_apply_conflicts_with_a_patch_by_the_same_field_manager() {
    let Some(bin) = kubectl() else { return };
    let env = env().await;
    let k = Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    let blue = k.write("blue.yaml", &SSA_MANIFEST.replace("COLOR", "blue"));
    let blue = blue.to_str().unwrap();
    k.ok(&[
        "apply",
        "--server-side",
        "--field-manager=tkgops",
        "-f",
        blue,
    ])
    .await;
    k.ok(&[
        "patch",
        "configmap",
        "ssa",
        "--type=merge",
        "--field-manager=tkgops",
        "-p",
        r#"{"data":{"color":"red"}}"#,
    ])
    .await;
    let slots = |obj: &Value| -> Vec<(String, String)> {
        obj["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["manager"].as_str().unwrap().to_string(),
                    m["operation"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let patched = env.mgmt.get(&gvr_cm(), Some("default"), "ssa").unwrap();
    assert!(
        slots(&patched).contains(&("tkgops".into(), "Update".into())),
        "{:?}",
        slots(&patched)
    );

    let again = k
        .run(&[
            "apply",
            "--server-side",
            "--field-manager=tkgops",
            "-f",
            blue,
        ])
        .await;
    assert!(
        !again.status.success(),
        "the apply must conflict with the patch"
    );
    let err = stderr(&again);
    assert!(err.contains("Apply failed with 1 conflict"), "{err}");
    assert!(err.contains(r#"conflict with "tkgops""#), "{err}");
    assert!(err.contains(".data.color"), "{err}");
    assert_eq!(
        env.mgmt.get(&gvr_cm(), Some("default"), "ssa").unwrap()["data"]["color"],
        "red"
    );

    // Forced, the Apply entry takes the field back from the Update entry.
    k.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=tkgops",
        "-f",
        blue,
    ])
    .await;
    let forced = env.mgmt.get(&gvr_cm(), Some("default"), "ssa").unwrap();
    assert_eq!(forced["data"]["color"], "blue");
    assert_eq!(
        slots(&forced),
        [("tkgops".to_string(), "Apply".to_string())]
    );
}

/// Reads `stdout` lines of a spawned kubectl into a channel.
fn lines(child: &mut tokio::process::Child) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next_line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, what: &str) -> String {
    tokio::time::timeout(RUN_TIMEOUT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|| panic!("kubectl exited before printing {what}"))
}

#[tokio::test]
async fn kubectl_get_watch_prints_changes() {
    let Some(bin) = kubectl() else { return };
    let env = env().await;
    let k = Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    env.mgmt
        .create(
            &gvr_cm(),
            configmap("watched", json!({"watch": "me"}), json!({"v": "1"})),
        )
        .unwrap();
    env.mgmt
        .create(
            &gvr_cm(),
            configmap("ignored", json!({"watch": "not-me"}), json!({"v": "1"})),
        )
        .unwrap();
    // A list with a label selector: kubectl prints the listed objects, then watches from the
    // list's resourceVersion, so a change made right after the first line is never missed.
    let mut child = k
        .command(&[
            "get",
            "configmaps",
            "-n",
            "default",
            "-l",
            "watch=me",
            "-w",
            "-o",
            r#"jsonpath={.metadata.name}={.data.v}{"\n"}"#,
        ])
        .spawn()
        .expect("spawn kubectl get -w");
    let mut rx = lines(&mut child);
    assert_eq!(next_line(&mut rx, "the listed object").await, "watched=1");
    env.mgmt
        .patch_merge(
            &gvr_cm(),
            Some("default"),
            "ignored",
            json!({"data": {"v": "2"}}),
        )
        .unwrap();
    env.mgmt
        .patch_merge(
            &gvr_cm(),
            Some("default"),
            "watched",
            json!({"data": {"v": "2"}}),
        )
        .unwrap();
    assert_eq!(next_line(&mut rx, "the change").await, "watched=2");
    child.kill().await.expect("stop kubectl get -w");
}

#[tokio::test]
async fn kubectl_wait_for_ready_condition() {
    let Some(bin) = kubectl() else { return };
    tkgops_providers::install_crypto_provider();
    // No controllers here: the test itself makes the Cluster Ready, so it depends only on the
    // API (list + watch with a field selector), not on what the simulated controllers accept.
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mgmt").await.expect("management cluster");
    mgmt.register_capi_types();
    mgmt.create(
        &gvr_cluster(),
        json!({"metadata": {"name": "wc1", "namespace": "default"}, "spec": {}}),
    )
    .unwrap();
    mgmt.update_status(
        &gvr_cluster(),
        Some("default"),
        "wc1",
        json!({"phase": "Provisioning", "conditions": [{"type": "Ready", "status": "False", "reason": "WaitingForControlPlane", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
    )
    .unwrap();
    let k = Kubectl::new(bin, &mgmt.kubeconfig_yaml());

    // Not Ready: a short wait times out.
    let out = k
        .run(&[
            "wait",
            "--for=condition=Ready",
            "cluster/wc1",
            "-n",
            "default",
            "--timeout=1s",
        ])
        .await;
    assert!(
        !out.status.success(),
        "wait must time out while Ready=False"
    );
    assert!(
        stderr(&out).contains("timed out waiting for the condition"),
        "{}",
        stderr(&out)
    );

    // Waiting: once kubectl watches the Cluster, the condition flips and kubectl returns.
    let watches_before = watch_requests(&mgmt);
    assert!(watches_before > 0, "the timed-out wait watched too");
    let child = k
        .command(&[
            "wait",
            "--for=condition=Ready",
            "cluster/wc1",
            "-n",
            "default",
            "--timeout=60s",
        ])
        .spawn()
        .expect("spawn kubectl wait");
    mgmt.faults()
        .log()
        .wait_for(RUN_TIMEOUT, |_| watch_requests(&mgmt) > watches_before)
        .await
        .expect("kubectl wait watches the Cluster");
    mgmt.update_status(
        &gvr_cluster(),
        Some("default"),
        "wc1",
        json!({"phase": "Provisioned", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:01:00Z"}]}),
    )
    .unwrap();
    let out = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .expect("kubectl wait returns")
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cluster.cluster.x-k8s.io/wc1 condition met"
    );
}

/// How many watch requests on Clusters in `default` the cluster has seen.
fn watch_requests(c: &EmulatedCluster) -> usize {
    c.faults()
        .log()
        .all()
        .iter()
        .filter(|r| {
            r.path == "/apis/cluster.x-k8s.io/v1beta1/namespaces/default/clusters"
                && r.query.contains("watch=true")
        })
        .count()
}

#[tokio::test]
async fn kubectl_verifies_the_ca_and_needs_the_token() {
    let Some(bin) = kubectl() else { return };
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let c = emu.add_cluster("mgmt").await.expect("cluster");
    let good = c.kubeconfig_yaml();
    assert!(good.contains("certificate-authority-data: "), "{good}");
    assert!(good.contains(&format!("server: {}", c.url())), "{good}");
    assert!(c.url().starts_with("https://127.0.0.1:"));
    let ns = Kubectl::new(bin.clone(), &good)
        .json(&["get", "namespaces", "-o", "json"])
        .await;
    assert!(names(&ns).contains("kube-system"));

    // Without the token: the API answers 401 and kubectl says so (in client-go's words for a
    // 401 during discovery, as with a real API server).
    let no_token = good.replace(&format!("token: {}", c.token()), "username: nobody");
    assert_ne!(no_token, good);
    let out = Kubectl::new(bin.clone(), &no_token)
        .run(&["get", "namespaces"])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("You must be logged in to the server"),
        "{}",
        stderr(&out)
    );

    // Another emulator's CA: the TLS handshake fails verification.
    let other = KubeEmulator::new();
    assert_ne!(other.ca_pem(), emu.ca_pem());
    let b64 = |pem: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(pem)
    };
    let wrong_ca = good.replace(&b64(&emu.ca_pem()), &b64(&other.ca_pem()));
    assert_ne!(wrong_ca, good);
    let out = Kubectl::new(bin.clone(), &wrong_ca)
        .run(&["get", "namespaces"])
        .await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("certificate signed by unknown authority"),
        "{}",
        stderr(&out)
    );

    // Plain HTTP to the same port: no answer kubectl can use.
    let plain = good.replace("https://", "http://");
    let seen = c.faults().log().all().len();
    let out = Kubectl::new(bin, &plain).run(&["get", "namespaces"]).await;
    assert!(!out.status.success(), "plain HTTP must fail");
    assert_eq!(
        c.faults().log().all().len(),
        seen,
        "no plain-HTTP request may reach the API"
    );
}

/// The requests kubectl sent with a protobuf body (`Content-Type:
/// application/vnd.kubernetes.protobuf`), as `METHOD path`.
fn protobuf_writes(c: &EmulatedCluster) -> Vec<String> {
    c.faults()
        .log()
        .all()
        .iter()
        .filter(|r| r.content_type == "application/vnd.kubernetes.protobuf")
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

/// kubectl's typed commands (`create namespace`, `create configmap`, `create secret`) send
/// protobuf and ask for protobuf answers, as client-go's typed clients do for built-in kinds;
/// `get`, `replace -f`, `edit` and `delete` then work on what they created, and an error comes
/// back as a protobuf `Status` kubectl prints like a real server's.
#[tokio::test]
async fn kubectl_create_replace_edit_delete_built_in_kinds_over_protobuf() {
    let Some(bin) = kubectl() else { return };
    let env = env().await;
    let k = Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    let gvr_ns = Gvr::new("", "v1", "namespaces");
    let gvr_secret = Gvr::new("", "v1", "secrets");

    let out = k.ok(&["create", "namespace", "x"]).await;
    assert_eq!(out.trim(), "namespace/x created");
    let ns = k.json(&["get", "namespace", "x", "-o", "json"]).await;
    assert_eq!(ns["status"]["phase"], "Active");
    assert_eq!(ns["spec"]["finalizers"], json!(["kubernetes"]));
    assert_eq!(ns["metadata"]["generation"], 1);
    assert!(
        ns["metadata"].get("generateName").is_none() && ns["metadata"].get("namespace").is_none(),
        "empty protobuf fields are not JSON fields: {ns}"
    );
    let out = k
        .ok(&["create", "configmap", "c1", "-n", "x", "--from-literal=a=z"])
        .await;
    assert_eq!(out.trim(), "configmap/c1 created");
    let out = k
        .ok(&[
            "create",
            "secret",
            "generic",
            "s1",
            "-n",
            "x",
            "--from-literal=password=hunter2",
        ])
        .await;
    assert_eq!(out.trim(), "secret/s1 created");
    let secret = env.mgmt.get(&gvr_secret, Some("x"), "s1").expect("stored");
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        protobuf_writes(&env.mgmt),
        vec![
            "POST /api/v1/namespaces",
            "POST /api/v1/namespaces/x/configmaps",
            "POST /api/v1/namespaces/x/secrets",
        ]
    );
    let cm = k.json(&["get", "cm", "c1", "-n", "x", "-o", "json"]).await;
    assert_eq!(cm["data"], json!({"a": "z"}));

    // An error answered in protobuf: kubectl prints the Status as from a real server.
    let again = k.run(&["create", "namespace", "x"]).await;
    assert!(!again.status.success());
    assert_eq!(
        stderr(&again).trim(),
        r#"Error from server (AlreadyExists): namespaces "x" already exists"#
    );
    let posts = env
        .mgmt
        .faults()
        .log()
        .all()
        .into_iter()
        .filter(|r| r.method == http::Method::POST && r.path == "/api/v1/namespaces")
        .collect::<Vec<_>>();
    assert_eq!(posts.len(), 2);
    assert!(
        posts[1]
            .accept
            .starts_with("application/vnd.kubernetes.protobuf"),
        "{}",
        posts[1].accept
    );

    // replace -f
    let manifest = k.write(
        "c1.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c1\n  namespace: x\ndata:\n  a: replaced\n",
    );
    let out = k.ok(&["replace", "-f", manifest.to_str().unwrap()]).await;
    assert_eq!(out.trim(), "configmap/c1 replaced");
    assert_eq!(
        env.mgmt.get(&gvr_cm(), Some("x"), "c1").unwrap()["data"],
        json!({"a": "replaced"})
    );

    // edit, through an editor script that rewrites the file kubectl hands it
    let editor = k.write(
        "editor.sh",
        "#!/bin/sh\nsed -i 's/^  a: replaced$/  a: edited/' \"$1\"\n",
    );
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = k
        .run_env(
            &["edit", "configmap", "c1", "-n", "x"],
            &[("KUBE_EDITOR", editor.to_str().unwrap())],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configmap/c1 edited"
    );
    assert_eq!(
        env.mgmt.get(&gvr_cm(), Some("x"), "c1").unwrap()["data"],
        json!({"a": "edited"})
    );

    // delete
    let out = k.ok(&["delete", "secret", "s1", "-n", "x"]).await;
    assert_eq!(out.trim(), r#"secret "s1" deleted"#);
    let out = k.ok(&["delete", "namespace", "x"]).await;
    assert_eq!(out.trim(), r#"namespace "x" deleted"#);
    assert!(env.mgmt.get(&gvr_ns, None, "x").is_none());
    assert!(env.mgmt.get(&gvr_cm(), Some("x"), "c1").is_none());
}

const CM_WITH_UNKNOWN_FIELD: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: NAME
  namespace: default
data:
  a: b
extra: 1
";

const CLUSTER_WITH_UNKNOWN_FIELD: &str = "apiVersion: cluster.x-k8s.io/v1beta1
kind: Cluster
metadata:
  name: NAME
  namespace: default
spec:
  paused: true
  clusterNetwork:
    pods:
      cidrBlocks: [100.96.0.0/11]
    podz: 1
";

/// `kubectl apply --validate=strict|warn|ignore` sends `fieldValidation=Strict|Warn|Ignore`:
/// a field the type's schema does not declare (a ConfigMap's, from the Kubernetes OpenAPI
/// schema; a Cluster's, from its CRD's openAPIV3Schema) fails the write under Strict with the
/// API server's strict decoding error, is reported as a warning under Warn and dropped
/// silently under Ignore; the stored object never has it.
#[tokio::test]
async fn kubectl_apply_validate_strict_warn_ignore() {
    let Some(bin) = kubectl() else { return };
    tkgops_providers::install_crypto_provider();
    // No admission here: the Cluster written is checked only against its schema.
    let emu = KubeEmulator::new();
    let mgmt = emu.add_cluster("mgmt").await.expect("management cluster");
    mgmt.register_capi_types();
    let k = Kubectl::new(bin, &mgmt.kubeconfig_yaml());
    let cases = [
        (
            gvr_cm(),
            CM_WITH_UNKNOWN_FIELD,
            "configmap",
            r#"ConfigMap in version "v1" cannot be handled as a ConfigMap: strict decoding error: unknown field "extra""#,
            r#"unknown field "extra""#,
        ),
        (
            gvr_cluster(),
            CLUSTER_WITH_UNKNOWN_FIELD,
            "cluster.cluster.x-k8s.io",
            r#"Cluster in version "v1beta1" cannot be handled as a Cluster: strict decoding error: unknown field "spec.clusterNetwork.podz""#,
            r#"unknown field "spec.clusterNetwork.podz""#,
        ),
    ];
    for (gvr, manifest, printed, strict_error, warning) in cases {
        let file = |name: &str| {
            let p = k.write(&format!("{name}.yaml"), &manifest.replace("NAME", name));
            p.to_str().unwrap().to_string()
        };
        let strict = k
            .run(&["apply", "--validate=strict", "-f", &file("strict")])
            .await;
        assert!(!strict.status.success(), "{printed}: Strict must refuse");
        let err = stderr(&strict);
        assert!(err.contains("Error from server (BadRequest)"), "{err}");
        assert!(err.contains(strict_error), "{err}");
        assert!(mgmt.get(&gvr, Some("default"), "strict").is_none());

        let warn = k
            .run(&["apply", "--validate=warn", "-f", &file("warn")])
            .await;
        assert!(warn.status.success(), "{}", stderr(&warn));
        assert_eq!(
            String::from_utf8_lossy(&warn.stdout).trim(),
            format!("{printed}/warn created")
        );
        assert_eq!(stderr(&warn).trim(), format!("Warning: {warning}"));

        let ignore = k
            .run(&["apply", "--validate=ignore", "-f", &file("ignore")])
            .await;
        assert!(ignore.status.success(), "{}", stderr(&ignore));
        assert_eq!(
            String::from_utf8_lossy(&ignore.stdout).trim(),
            format!("{printed}/ignore created")
        );
        assert_eq!(stderr(&ignore), "", "Ignore drops the field silently");

        for name in ["warn", "ignore"] {
            let stored = mgmt.get(&gvr, Some("default"), name).expect("stored");
            assert!(stored.get("extra").is_none(), "{stored}");
            assert!(
                stored
                    .pointer("/spec/clusterNetwork")
                    .is_none_or(|n| n.get("podz").is_none() && n.get("pods").is_some()),
                "{stored}"
            );
        }
    }
    assert_eq!(
        mgmt.get(&gvr_cm(), Some("default"), "warn").unwrap()["data"],
        json!({"a": "b"})
    );

    // Server-side apply needs every field declared, whatever --validate says: the API server's
    // typed conversion fails (a 500 without a reason, printed as "Error from server").
    let ssa = k
        .run(&[
            "apply",
            "--server-side",
            "--validate=ignore",
            "-f",
            &k.write(
                "ssa.yaml",
                &CLUSTER_WITH_UNKNOWN_FIELD.replace("NAME", "ssa"),
            )
            .to_string_lossy(),
        ])
        .await;
    assert!(!ssa.status.success());
    assert!(
        stderr(&ssa).contains("failed to create typed patch object (default/ssa; cluster.x-k8s.io/v1beta1, Kind=Cluster): .spec.clusterNetwork.podz: field not declared in schema"),
        "{}",
        stderr(&ssa)
    );
    assert!(mgmt.get(&gvr_cluster(), Some("default"), "ssa").is_none());
}

/// `kubectl explain` reads the schemas in `/openapi/v3`: a built-in kind's field and the
/// Cluster API CRD's nested fields are documented.
#[tokio::test]
async fn kubectl_explain_prints_field_documentation() {
    let Some(bin) = kubectl() else { return };
    let env = env().await;
    let k = Kubectl::new(bin, &env.mgmt.kubeconfig_yaml());
    let out = k.ok(&["explain", "configmap.data"]).await;
    assert!(out.contains("KIND:       ConfigMap"), "{out}");
    assert!(out.contains("FIELD: data <map[string]string>"), "{out}");
    assert!(
        out.contains("Data contains the configuration data."),
        "{out}"
    );
    let out = k.ok(&["explain", "clusters.spec.topology"]).await;
    assert!(out.contains("GROUP:      cluster.x-k8s.io"), "{out}");
    assert!(out.contains("FIELD: topology <Object>"), "{out}");
    assert!(out.contains("The managed topology of the Cluster"), "{out}");
    for field in [
        "class\t<string> -required-",
        "version\t<string> -required-",
        "workers\t<Object>",
        "variables\t<[]Object>",
    ] {
        assert!(out.contains(field), "{field:?} in:\n{out}");
    }
    let out = k
        .ok(&[
            "explain",
            "cluster.spec.topology.workers.machineDeployments.replicas",
        ])
        .await;
    assert!(out.contains("FIELD: replicas <integer>"), "{out}");
}
