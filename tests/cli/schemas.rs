//! The JSON Schemas of `schemas/` and README's configuration reference are generated from the
//! Rust types (`tkgops::schemas`) and committed; every example file names its schema in a
//! `yaml-language-server` modeline and passes it.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tkgops::schemas::{schema_files, update_readme, SCHEMA_DIR};

use crate::jsonschema;
use crate::root;

const REGENERATE: &str =
    "regenerate with `TKGOPS_UPDATE_SCHEMAS=1 cargo test -p tkgops --test cli schemas` and commit";

fn updating() -> bool {
    std::env::var("TKGOPS_UPDATE_SCHEMAS").is_ok_and(|v| v == "1")
}

#[test]
fn schemas_and_the_readme_reference_are_up_to_date() {
    let files = schema_files();
    let mut stale = Vec::new();
    for f in &files {
        let path = root().join(SCHEMA_DIR).join(f.file_name);
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        if committed != f.text() {
            if updating() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, f.text()).unwrap();
            } else {
                stale.push(format!("{SCHEMA_DIR}/{}", f.file_name));
            }
        }
    }
    let readme_path = root().join("README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let generated = update_readme(&readme, &files).unwrap_or_else(|e| panic!("{e}"));
    if generated != readme {
        if updating() {
            std::fs::write(&readme_path, &generated).unwrap();
        } else {
            stale.push("README.md (configuration reference tables)".into());
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {} differ from the Rust types: {REGENERATE}",
        stale.join(", ")
    );
}

#[test]
fn the_readme_reference_lists_every_key_of_every_schema() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for f in schema_files() {
        let rows = tkgops::schemas::key_rows(&f.schema);
        assert!(rows.len() >= 5, "{}: {rows:?}", f.file_name);
        for row in rows {
            assert!(
                readme.contains(&format!("| `{}` |", row.path)),
                "README.md does not document {} of {}: {REGENERATE}",
                row.path,
                f.describes
            );
        }
    }
    // Keys the reader looks for, nested in lists, one-of branches and maps.
    for path in [
        "managementClusters[].kubeconfig.secret.key",
        "managementClusters[].aws.roleArn",
        "schedules[].waves[].soak",
        "rules.overrides[].matchLabels",
        "packages[].valuesFrom[].secretRef.name",
        "github.privateKeyFile",
        "leaderElection.renewDeadline",
    ] {
        assert!(readme.contains(&format!("| `{path}` |")), "{path}");
    }
}

/// The schema a tkgops YAML file under `examples/` follows, by its place.
fn schema_for(path: &Path) -> &'static str {
    let name = path.file_name().unwrap().to_str().unwrap();
    let parent = path.parent().unwrap();
    let grandparent = parent.parent().and_then(|p| p.file_name());
    match name {
        "tkgops.yaml" if grandparent.is_some_and(|g| g == "clusters" || g == "requests") => {
            "cluster-tkgops.schema.json"
        }
        "tkgops.yaml" => "tkgops.schema.json",
        "tkgops-bot.yaml" => "bot-config.schema.json",
        other => panic!("no schema for {other}"),
    }
}

/// Every tkgops file under `examples/`: each `tkgops.yaml` and the bot configuration.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p
                .file_name()
                .is_some_and(|n| n == "tkgops.yaml" || n == "tkgops-bot.yaml")
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join("examples"), &mut out);
    out.sort();
    out
}

#[test]
fn every_example_names_its_schema_in_a_modeline_and_passes_it() {
    let files = example_files();
    let kinds: std::collections::BTreeSet<&str> = files.iter().map(|p| schema_for(p)).collect();
    assert_eq!(
        kinds.len(),
        3,
        "one example of each file at least: {files:?}"
    );
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let expected = root().join(SCHEMA_DIR).join(schema_for(path));
        let modeline = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# yaml-language-server: $schema="))
            .unwrap_or_else(|| {
                panic!(
                    "{}: the first line is not `# yaml-language-server: $schema=...`",
                    path.display()
                )
            });
        let named = path.parent().unwrap().join(modeline.trim());
        assert_eq!(
            named.canonicalize().ok(),
            expected.canonicalize().ok(),
            "{}: the modeline names {modeline}",
            path.display()
        );
        let errors = jsonschema::errors(&expected, &jsonschema::yaml_file_as_json(path));
        assert!(errors.is_empty(), "{}: {errors:#?}", path.display());
    }
}

#[test]
fn the_example_bot_configuration_loads() {
    let cfg = tkgops::BotConfig::load(&root().join("examples/tkgops-bot.yaml")).expect("loads");
    assert_eq!(cfg.github.owner, "acme");
}

fn schema(name: &str) -> PathBuf {
    root().join(SCHEMA_DIR).join(name)
}

/// The schemas refuse what the parsers refuse and accept what they accept (the shapes the
/// custom deserializers read: versions as numbers, scalar TKG defaults, one kubeconfig source).
#[test]
fn the_schemas_judge_as_the_parsers_do() {
    let repo = schema("tkgops.schema.json");
    let base = || {
        json!({"managementClusters": [{
            "name": "mc", "kubeconfig": {"file": "/k"}, "tkgVersion": 2.2,
            "defaults": {"AWS_REGION": "us-west-2", "ENABLE_MHC": true, "WORKER_MACHINE_COUNT": 3}
        }]})
    };
    assert_eq!(jsonschema::errors(&repo, &base()), Vec::<String>::new());
    let mut cases: Vec<(&str, Value)> = Vec::new();
    let mut v = base();
    v["approvals"] = json!({});
    cases.push(("an unknown key", v));
    let mut v = base();
    v["managementClusters"][0]["kubeconfig"] = json!({"file": "/k", "env": "KC"});
    cases.push(("two kubeconfig sources", v));
    let mut v = base();
    v["managementClusters"][0]["tkgVersion"] = json!("2.5");
    cases.push(("TKG 2.5", v));
    let mut v = base();
    v["managementClusters"][0]
        .as_object_mut()
        .unwrap()
        .remove("tkgVersion");
    cases.push(("no tkgVersion", v));
    let mut v = base();
    v["rules"] = json!({"severities": {"TKO-CLS-004": "info"}});
    cases.push(("an unknown rule level", v));
    let mut v = base();
    v["schedules"] = json!([{"name": "s", "cron": "0 2 * * SAT", "window": "4h",
        "selector": {"matchLabel": {"env": "prod"}}}]);
    cases.push(("a misspelt selector key", v));
    for (what, v) in cases {
        assert!(
            !jsonschema::errors(&repo, &v).is_empty(),
            "{what} passes: {v}"
        );
    }

    let cluster = schema("cluster-tkgops.schema.json");
    let ok = json!({"managementCluster": "mc", "tkr": "v1.25.7+vmware.2-tkg.1",
        "labels": {"env": "prod", "empty": null}, "upgradePolicy": {"anything": 1}});
    assert_eq!(jsonschema::errors(&cluster, &ok), Vec::<String>::new());
    let bad = json!({"managementCluster": "mc", "tkr": "v1", "packages": [{"nme": "x"}]});
    assert!(jsonschema::errors(&cluster, &bad).len() >= 2, "{bad}");

    let bot = schema("bot-config.schema.json");
    let ok = json!({"github": {"owner": "a", "repo": "b"}, "stateDir": "/s",
        "pollInterval": "30s", "leaderElection": {"enabled": true, "leaseDuration": "15s"}});
    assert_eq!(jsonschema::errors(&bot, &ok), Vec::<String>::new());
    let bad = json!({"github": {"owner": "a"}, "stateDir": "/s", "pollIntervall": "30s"});
    assert!(jsonschema::errors(&bot, &bad).len() >= 2, "{bad}");
}
