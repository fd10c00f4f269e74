//! Integration tests: kube. The Kubernetes API emulator driven by the real `kube::Client`.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    WatchEvent, WatchParams,
};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Discovery, Scope};
use serde_json::json;
use tkgops_emulators::faults::{Fault, FaultAction};
use tkgops_emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};

async fn setup() -> (KubeEmulator, EmulatedCluster, kube::Client) {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let c = emu.add_cluster("mgmt").await.expect("cluster");
    let client = c.client().await.expect("client");
    (emu, c, client)
}

fn api_err(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected kube::Error::Api, got {other:?}"),
    }
}

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut c = ConfigMap::default();
    c.metadata.name = Some(name.to_string());
    c.metadata.labels = Some(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

fn capi_cluster_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Cluster"),
        "clusters",
    )
}

#[tokio::test]
async fn version_and_discovery() {
    let (_emu, c, client) = setup().await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    c.register_capi_types();
    c.register_kapp_types();
    let d = Discovery::new(client.clone()).run().await.unwrap();
    let capi = d
        .groups()
        .find(|g| g.name() == "cluster.x-k8s.io")
        .expect("capi group");
    let (ar, caps) = capi.recommended_kind("Cluster").expect("Cluster kind");
    assert_eq!(ar.plural, "clusters");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    assert!(d.groups().any(|g| g.name() == "packaging.carvel.dev"));
    let core = d.groups().find(|g| g.name() == "").expect("core group");
    assert!(core.recommended_kind("ConfigMap").is_some());
    let (ar, caps) = discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("run.tanzu.vmware.com", "v1alpha3", "TanzuKubernetesRelease"),
    )
    .await
    .unwrap();
    assert_eq!(ar.plural, "tanzukubernetesreleases");
    assert_eq!(caps.scope, Scope::Cluster);
    let (ar, _) = discovery::pinned_kind(&client, &GroupVersionKind::gvk("", "v1", "Secret"))
        .await
        .unwrap();
    assert_eq!(ar.plural, "secrets");
}

#[tokio::test]
async fn typed_crud_and_errors() {
    let (_emu, _c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms
        .create(&PostParams::default(), &cm("a", &[("app", "x")]))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    let rv1 = created.metadata.resource_version.clone().unwrap();
    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["k"], "v");

    // 409 AlreadyExists
    let (code, reason, _) = api_err(
        cms.create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // replace, then stale replace → 409 Conflict
    let mut upd = got.clone();
    upd.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
    let replaced = cms
        .replace("a", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert_ne!(replaced.metadata.resource_version.clone().unwrap(), rv1);
    assert_eq!(replaced.metadata.generation, Some(2));
    let (code, reason, msg) = api_err(
        cms.replace("a", &PostParams::default(), &upd)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{msg}");

    // missing namespace → 404 namespaces "nope" not found
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let (code, reason, msg) = api_err(
        missing
            .create(&PostParams::default(), &cm("a", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, reason.as_str(), msg.as_str()),
        (404, "NotFound", "namespaces \"nope\" not found")
    );
    let (code, _, _) = api_err(cms.get("absent").await.unwrap_err());
    assert_eq!(code, 404);

    // create a namespace, then use it
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("tkg-system".into());
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let tkg: Api<ConfigMap> = Api::namespaced(client.clone(), "tkg-system");
    tkg.create(&PostParams::default(), &cm("b", &[]))
        .await
        .unwrap();
    let all: Api<ConfigMap> = Api::all(client.clone());
    let names: Vec<String> = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, vec!["a".to_string(), "b".to_string()]);

    // Secret stringData → data
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut s = Secret::default();
    s.metadata.name = Some("creds".into());
    s.string_data = Some(BTreeMap::from([("value".to_string(), "hello".to_string())]));
    let s = secrets.create(&PostParams::default(), &s).await.unwrap();
    assert!(s.string_data.is_none());
    assert_eq!(s.data.unwrap()["value"].0, b"hello".to_vec());

    // delete
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_err(cms.get("a").await.unwrap_err()).0, 404);
}

#[tokio::test]
async fn dynamic_crud_and_finalizers() {
    let (_emu, c, client) = setup().await;
    c.register_capi_types();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &capi_cluster_ar());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "wc1", "finalizers": ["cluster.cluster.x-k8s.io"]},
        "spec": {"paused": false}
    }))
    .unwrap();
    let created = api.create(&PostParams::default(), &obj).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    // delete with finalizer: kept with deletionTimestamp
    api.delete("wc1", &DeleteParams::default()).await.unwrap();
    let still = api.get("wc1").await.unwrap();
    assert!(still.metadata.deletion_timestamp.is_some());
    // removing the finalizer (direct API, as a controller would) removes the object
    let gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    c.patch_merge(
        &gvr,
        Some("default"),
        "wc1",
        json!({"metadata": {"finalizers": null}}),
    )
    .unwrap();
    assert_eq!(api_err(api.get("wc1").await.unwrap_err()).0, 404);
    assert!(c.get(&gvr, Some("default"), "wc1").is_none());
    // unknown type → 404
    let unknown =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("nope.io", "v1", "Nope"), "nopes");
    let nope: Api<DynamicObject> = Api::namespaced_with(client, "default", &unknown);
    assert_eq!(
        api_err(nope.list(&ListParams::default()).await.unwrap_err()).0,
        404
    );
}

#[tokio::test]
async fn label_and_field_selectors() {
    let (_emu, _c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for (n, env) in [("a", "prod"), ("b", "dev"), ("c", "qa")] {
        cms.create(
            &PostParams::default(),
            &cm(n, &[("env", env), ("tier", "web")]),
        )
        .await
        .unwrap();
    }
    cms.create(&PostParams::default(), &cm("d", &[]))
        .await
        .unwrap();
    let names = |sel: &'static str| {
        let cms = cms.clone();
        async move {
            cms.list(&ListParams::default().labels(sel))
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    assert_eq!(names("env=prod").await, "a");
    assert_eq!(names("env==dev").await, "b");
    assert_eq!(names("env!=prod").await, "b,c,d");
    assert_eq!(names("env").await, "a,b,c");
    assert_eq!(names("!env").await, "d");
    assert_eq!(names("env in (prod,qa)").await, "a,c");
    assert_eq!(names("env notin (prod,qa)").await, "b,d");
    assert_eq!(names("env in (prod,dev),tier=web").await, "a,b");
    let by_name = cms
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);
    let not_a = cms
        .list(&ListParams::default().fields("metadata.name!=a,metadata.namespace=default"))
        .await
        .unwrap();
    assert_eq!(not_a.items.len(), 3);
    // paging
    let page = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("continue token");
    let rest = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.is_none());

    // `key=value` selectors are answered from the store's label index: it follows relabels,
    // removed labels, deletes and namespaces.
    let relabel = |labels: serde_json::Value| Patch::Merge(json!({"metadata": {"labels": labels}}));
    cms.patch(
        "a",
        &PatchParams::default(),
        &relabel(json!({"env": "dev"})),
    )
    .await
    .unwrap();
    cms.patch(
        "c",
        &PatchParams::default(),
        &relabel(json!({"tier": null})),
    )
    .await
    .unwrap();
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    other
        .create(&PostParams::default(), &cm("e", &[("env", "dev")]))
        .await
        .unwrap();
    assert_eq!(names("env=prod").await, "");
    assert_eq!(names("env=dev").await, "a");
    assert_eq!(names("tier=web").await, "a");
    assert_eq!(names("env=qa,tier=web").await, "");
    assert_eq!(names("env=qa").await, "c");
    let all: Api<ConfigMap> = Api::all(client.clone());
    let everywhere = all
        .list(&ListParams::default().labels("env=dev"))
        .await
        .unwrap();
    assert_eq!(everywhere.items.len(), 2);
}

#[tokio::test]
async fn merge_json_and_strategic_patches() {
    let (_emu, _c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(&PostParams::default(), &cm("p", &[("a", "1")]))
        .await
        .unwrap();
    let pp = PatchParams::default();
    let p = cms
        .patch(
            "p",
            &pp,
            &Patch::Merge(json!({"data": {"x": "1", "k": null}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.data.clone().unwrap(),
        BTreeMap::from([("x".to_string(), "1".to_string())])
    );
    // kube's `Patch::Json` needs its `jsonpatch` feature; send the RFC 6902 body raw.
    let json_patch = |ops: serde_json::Value| {
        http::Request::patch("/api/v1/namespaces/default/configmaps/p")
            .header("content-type", "application/json-patch+json")
            .body(serde_json::to_vec(&ops).unwrap())
            .unwrap()
    };
    let p: ConfigMap = client
        .request(json_patch(json!([
            {"op": "add", "path": "/data/y", "value": "2"},
            {"op": "replace", "path": "/metadata/labels/a", "value": "2"}
        ])))
        .await
        .unwrap();
    assert_eq!(p.data.clone().unwrap()["y"], "2");
    assert_eq!(p.metadata.labels.clone().unwrap()["a"], "2");
    let p = cms
        .patch("p", &pp, &Patch::Strategic(json!({"data": {"z": "3"}})))
        .await
        .unwrap();
    assert_eq!(p.data.clone().unwrap().len(), 3);
    // failing JSON patch test op → 422
    let bad = json_patch(json!([{"op": "test", "path": "/data/x", "value": "nope"}]));
    let (code, reason, _) = api_err(client.request::<ConfigMap>(bad).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    // merge patch with a stale resourceVersion → 409
    let (code, _, _) = api_err(
        cms.patch(
            "p",
            &pp,
            &Patch::Merge(json!({"metadata": {"resourceVersion": "1"}, "data": {"q": "1"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 409);
    // patching a missing object → 404
    assert_eq!(
        api_err(
            cms.patch("nope", &pp, &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn server_side_apply() {
    let (_emu, c, client) = setup().await;
    c.register_capi_types();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &capi_cluster_ar());
    let bot = PatchParams::apply("tkgops");
    let cfg = json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "wc1", "labels": {"tier": "dev"}},
        "spec": {"topology": {"version": "v1.33.1", "workers": {"machineDeployments": [{"name": "md-0", "replicas": 2}]}}, "paused": false}
    });
    // create via apply
    let o = api.patch("wc1", &bot, &Patch::Apply(&cfg)).await.unwrap();
    let rv = o.metadata.resource_version.clone().unwrap();
    assert_eq!(o.metadata.generation, Some(1));
    let mf = o.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf.len(), 1);
    assert_eq!(mf[0].manager.as_deref(), Some("tkgops"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    assert_eq!(mf[0].fields_type.as_deref(), Some("FieldsV1"));
    let fv1 = serde_json::to_value(mf[0].fields_v1.clone().unwrap()).unwrap();
    assert!(
        fv1.pointer("/f:spec/f:topology/f:version").is_some(),
        "{fv1}"
    );

    // identical re-apply: no change at all
    let again = api.patch("wc1", &bot, &Patch::Apply(&cfg)).await.unwrap();
    assert_eq!(
        again.metadata.resource_version.as_deref(),
        Some(rv.as_str())
    );
    assert_eq!(again.metadata.generation, Some(1));

    // omitted owned field is removed
    let mut cfg2 = cfg.clone();
    cfg2["spec"].as_object_mut().unwrap().remove("paused");
    let o = api.patch("wc1", &bot, &Patch::Apply(&cfg2)).await.unwrap();
    assert!(o.data.pointer("/spec/paused").is_none());
    assert_eq!(o.metadata.generation, Some(2));

    // another manager setting a different value → 409 Conflict unless forced
    let other = json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": {"name": "wc1"},
        "spec": {"topology": {"version": "v1.32.0"}}});
    let (code, reason, msg) = api_err(
        api.patch("wc1", &PatchParams::apply("kubectl"), &Patch::Apply(&other))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert!(
        msg.contains("Apply failed with 1 conflict")
            && msg.contains("\"tkgops\"")
            && msg.contains(".spec.topology.version"),
        "{msg}"
    );
    // same value from another manager: shared ownership, no conflict
    let same = json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "metadata": {"name": "wc1"},
        "spec": {"topology": {"version": "v1.33.1"}}});
    api.patch("wc1", &PatchParams::apply("viewer"), &Patch::Apply(&same))
        .await
        .unwrap();
    // forced
    let o = api
        .patch(
            "wc1",
            &PatchParams::apply("kubectl").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(
        o.data.pointer("/spec/topology/version"),
        Some(&json!("v1.32.0"))
    );
    let mf = o.metadata.managed_fields.clone().unwrap();
    assert!(mf.iter().any(|e| e.manager.as_deref() == Some("kubectl")));
    // the bot lost .spec.topology.version: now the bot's re-apply conflicts with kubectl
    let (code, _, msg) = api_err(
        api.patch("wc1", &bot, &Patch::Apply(&cfg2))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(msg.contains("\"kubectl\""), "{msg}");

    // 422 without fieldManager (raw request; kube's PatchParams would refuse client-side)
    let req =
        http::Request::patch("/apis/cluster.x-k8s.io/v1beta1/namespaces/default/clusters/wc1")
            .header("content-type", "application/apply-patch+yaml")
            .body(serde_json::to_vec(&cfg).unwrap())
            .unwrap();
    let (code, reason, _) = api_err(client.request::<serde_json::Value>(req).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"));

    // YAML body
    let yaml = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y\ndata:\n  a: b\n";
    let req = http::Request::patch("/api/v1/namespaces/default/configmaps/y?fieldManager=yamlmgr")
        .header("content-type", "application/apply-patch+yaml")
        .body(yaml.as_bytes().to_vec())
        .unwrap();
    let v: serde_json::Value = client.request(req).await.unwrap();
    assert_eq!(v.pointer("/data/a"), Some(&json!("b")));

    // apply into a missing namespace → 404
    let missing: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "nope", &capi_cluster_ar());
    assert_eq!(
        api_err(
            missing
                .patch("wc1", &bot, &Patch::Apply(&cfg))
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}

#[tokio::test]
async fn status_subresource_isolation() {
    let (_emu, c, client) = setup().await;
    c.register_capi_types();
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &capi_cluster_ar());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster",
        "metadata": {"name": "s1"}, "spec": {"paused": false}, "status": {"phase": "Ignored"}
    }))
    .unwrap();
    let o = api.create(&PostParams::default(), &obj).await.unwrap();
    assert!(
        o.data.get("status").is_none(),
        "status is dropped on create"
    );
    // patch_status changes only status
    let o = api
        .patch_status(
            "s1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}, "status": {"phase": "Provisioning"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        o.data.pointer("/status/phase"),
        Some(&json!("Provisioning"))
    );
    assert_eq!(o.data.pointer("/spec/paused"), Some(&json!(false)));
    assert_eq!(
        o.metadata.generation,
        Some(1),
        "status writes keep generation"
    );
    // replace ignores status
    let mut upd = o.clone();
    upd.data["status"] = json!({"phase": "Hacked"});
    upd.data["spec"]["paused"] = json!(true);
    let o = api
        .replace("s1", &PostParams::default(), &upd)
        .await
        .unwrap();
    assert_eq!(
        o.data.pointer("/status/phase"),
        Some(&json!("Provisioning"))
    );
    assert_eq!(o.data.pointer("/spec/paused"), Some(&json!(true)));
    assert_eq!(o.metadata.generation, Some(2));
    // replace_status
    let mut st = o.clone();
    st.data["status"] = json!({"phase": "Provisioned"});
    let o = api
        .replace_status("s1", &PostParams::default(), &st)
        .await
        .unwrap();
    assert_eq!(o.data.pointer("/status/phase"), Some(&json!("Provisioned")));
    assert_eq!(o.metadata.generation, Some(2));
    // SSA on status: the phase is owned by the earlier Update writer, so a non-forced apply of a
    // different value conflicts (as on a real API server); controllers force.
    let status_cfg = json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "status": {"phase": "Ready"}});
    let (code, _, _) = api_err(
        api.patch_status(
            "s1",
            &PatchParams::apply("capi-controller"),
            &Patch::Apply(&status_cfg),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 409);
    let o = api
        .patch_status(
            "s1",
            &PatchParams::apply("capi-controller").force(),
            &Patch::Apply(json!({"apiVersion": "cluster.x-k8s.io/v1beta1", "kind": "Cluster", "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(o.data.pointer("/status/phase"), Some(&json!("Ready")));
    // direct update_status
    let gvr = Gvr::new("cluster.x-k8s.io", "v1beta1", "clusters");
    let v = c
        .update_status(&gvr, Some("default"), "s1", json!({"phase": "Deleting"}))
        .unwrap();
    assert_eq!(v.pointer("/metadata/generation"), Some(&json!(2)));
    assert_eq!(
        api.get_status("s1")
            .await
            .unwrap()
            .data
            .pointer("/status/phase"),
        Some(&json!("Deleting"))
    );
    // configmaps have no status subresource
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    cms.create(&PostParams::default(), &cm("x", &[]))
        .await
        .unwrap();
    assert_eq!(api_err(cms.get_status("x").await.unwrap_err()).0, 404);
}

/// A LIST read in pages is one snapshot, as the real API server serves it: objects written
/// between two pages keep their listed state in the later pages, every page reports the first
/// page's resourceVersion, and a watch from it delivers the writes. (An emulator that cut each
/// page from the live store lost those writes: the 1,000-cluster fleet stall.) A token of a
/// snapshot no longer kept answers 410, and a token only continues its own LIST.
#[tokio::test]
async fn paged_lists_are_one_snapshot_and_a_watch_from_it_loses_nothing() {
    let (_emu, _c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for n in ["a", "b", "c", "d"] {
        cms.create(&PostParams::default(), &cm(n, &[("app", "x")]))
            .await
            .unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    let token = first.metadata.continue_.clone().expect("continue token");
    // Written after the first page: `a` was served already, `d` is on the next page, `e` is new.
    let patch = Patch::Merge(json!({"data": {"k": "v2"}}));
    cms.patch("a", &PatchParams::default(), &patch)
        .await
        .unwrap();
    cms.patch("d", &PatchParams::default(), &patch)
        .await
        .unwrap();
    cms.create(&PostParams::default(), &cm("e", &[]))
        .await
        .unwrap();
    let rest = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.metadata.resource_version.as_deref(), Some(rv.as_str()));
    assert!(rest.metadata.continue_.is_none());
    let listed: Vec<(String, String)> = rest
        .items
        .iter()
        .map(|c| {
            (
                c.metadata.name.clone().unwrap(),
                c.data.clone().unwrap()["k"].clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![("c".into(), "v".into()), ("d".into(), "v".into())],
        "the later page is cut from the first page's snapshot"
    );
    let mut watch = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match watch.try_next().await.unwrap().expect("event") {
            WatchEvent::Added(o) | WatchEvent::Modified(o) => seen.push(format!(
                "{} {}",
                o.metadata.name.unwrap(),
                o.data.unwrap()["k"]
            )),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec!["a v2", "d v2", "e v"]);
    // A token continues only its own LIST.
    let other = cms
        .list(&ListParams::default().limit(2).labels("app=x"))
        .await
        .unwrap();
    let wrong = cms
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(other.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap_err();
    assert_eq!(api_err(wrong).0, 400);
    // The emulator keeps 64 open paged LISTs: the oldest token then answers 410 Expired.
    for _ in 0..64 {
        cms.list(&ListParams::default().limit(1)).await.unwrap();
    }
    let expired = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap_err();
    assert_eq!(api_err(expired).0, 410);
}

#[tokio::test]
async fn watch_events_and_expiry() {
    let (_emu, c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    cms.create(&PostParams::default(), &cm("w", &[]))
        .await
        .unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "v2"}})),
    )
    .await
    .unwrap();
    cms.delete("w", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match stream.try_next().await.unwrap().expect("event") {
            WatchEvent::Added(o) => kinds.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => kinds.push(format!("MODIFIED {}", o.data.unwrap()["k"])),
            WatchEvent::Deleted(o) => kinds.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("error event {e:?}"),
        }
    }
    assert_eq!(kinds, vec!["ADDED w", "MODIFIED v2", "DELETED w"]);

    // replay from an old-but-retained RV
    let mut replay = cms
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .unwrap()
        .boxed();
    assert!(matches!(
        replay.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));

    // bookmarks with label selector
    let mut wp = WatchParams::default().timeout(3).labels("app=none");
    wp.bookmarks = true;
    let mut bm = cms.watch(&wp, &rv).await.unwrap().boxed();
    assert!(matches!(
        bm.try_next().await.unwrap(),
        Some(WatchEvent::Bookmark(_))
    ));

    // push the RV out of the 1000-event window → 410
    let gvr = Gvr::new("", "v1", "configmaps");
    for i in 0..1005 {
        c.create(
            &gvr,
            json!({"metadata": {"name": format!("bulk-{i}"), "namespace": "default"}}),
        )
        .unwrap();
    }
    let mut old = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match old.try_next().await.unwrap() {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410 error event, got {other:?}"),
    }
}

#[tokio::test]
async fn direct_api_events_reach_http_watch() {
    let (_emu, c, client) = setup().await;
    c.register_kapp_types();
    let gvr = Gvr::new("packaging.carvel.dev", "v1alpha1", "packageinstalls");
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("packaging.carvel.dev", "v1alpha1", "PackageInstall"),
        "packageinstalls",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let mut sub = c.subscribe();
    let rv = c.resource_version().to_string();
    let mut stream = api
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .unwrap()
        .boxed();
    let created = c.create(&gvr, json!({"metadata": {"name": "pkgi", "namespace": "default"}, "spec": {"packageRef": {"refName": "x"}}})).unwrap();
    assert_eq!(created["kind"], "PackageInstall");
    c.update_status(
        &gvr,
        Some("default"),
        "pkgi",
        json!({"friendlyDescription": "Reconcile succeeded"}),
    )
    .unwrap();
    let e1 = sub.recv().await.unwrap();
    assert_eq!((e1.kind.as_str(), e1.gvr.clone()), ("ADDED", gvr.clone()));
    let e2 = sub.recv().await.unwrap();
    assert_eq!(e2.kind, "MODIFIED");
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(WatchEvent::Added(_))
    ));
    match stream.try_next().await.unwrap() {
        Some(WatchEvent::Modified(o)) => assert_eq!(
            o.data.pointer("/status/friendlyDescription"),
            Some(&json!("Reconcile succeeded"))
        ),
        other => panic!("expected MODIFIED, got {other:?}"),
    }
    c.delete(&gvr, Some("default"), "pkgi").unwrap();
    assert!(matches!(
        stream.try_next().await.unwrap(),
        Some(WatchEvent::Deleted(_))
    ));
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        0
    );
}

#[tokio::test]
async fn clusters_isolated_by_token() {
    tkgops_providers::install_crypto_provider();
    let emu = KubeEmulator::new();
    let a = emu.add_cluster("mgmt").await.unwrap();
    let b = emu.add_cluster("wc1").await.unwrap();
    assert!(emu.add_cluster("wc1").await.is_err());
    assert_eq!(
        emu.cluster_names(),
        vec!["mgmt".to_string(), "wc1".to_string()]
    );
    assert!(emu.cluster("wc1").is_some());
    assert_ne!(a.token(), b.token());
    assert!(b
        .kubeconfig_yaml()
        .contains("current-context: wc1-admin@wc1"));
    let ca = a.client().await.unwrap();
    let cb = b.client().await.unwrap();
    Api::<ConfigMap>::namespaced(ca.clone(), "default")
        .create(&PostParams::default(), &cm("only-a", &[]))
        .await
        .unwrap();
    assert_eq!(
        Api::<ConfigMap>::namespaced(cb, "default")
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    // a kubeconfig with the wrong token → 401
    let wrong = a.kubeconfig_yaml().replace(&a.token(), &b.token());
    let kc = kube::config::Kubeconfig::from_yaml(&wrong).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    let bad = kube::Client::try_from(cfg).unwrap();
    let (code, reason, _) = api_err(
        Api::<ConfigMap>::namespaced(bad, "default")
            .list(&ListParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn https_only_with_the_emulator_ca() {
    let (emu, c, _client) = setup().await;
    let url = c.url();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    assert_eq!(c.ca_pem(), emu.ca_pem());
    assert!(c.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
    let auth = format!("Bearer {}", c.token());

    // Raw HTTPS trusting the emulator's CA: the certificate is valid for 127.0.0.1 and localhost.
    let trusting = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(c.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    for base in [url.clone(), url.replace("127.0.0.1", "localhost")] {
        let resp = trusting
            .get(format!("{base}/version"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {base}/version: {e:?}"));
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["major"], "1");
    }
    // The token is still required over HTTPS.
    let resp = trusting.get(format!("{url}/version")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // Without the CA (the platform's roots), verification fails before any request is served.
    let seen = c.faults().log().all().len();
    let err = reqwest::Client::new()
        .get(format!("{url}/version"))
        .header("authorization", &auth)
        .send()
        .await
        .expect_err("an unknown CA must fail");
    assert!(err.is_connect(), "{err:?}");
    // Another emulator's CA does not fit either.
    let other = KubeEmulator::new();
    let wrong = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(other.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    wrong
        .get(format!("{url}/version"))
        .header("authorization", &auth)
        .send()
        .await
        .expect_err("another emulator's CA must fail");
    // Plain HTTP to the same port gets no HTTP answer.
    let plain = reqwest::Client::new();
    plain
        .get(format!("{}/version", url.replace("https://", "http://")))
        .header("authorization", &auth)
        .send()
        .await
        .expect_err("plain HTTP must fail");
    assert_eq!(
        c.faults().log().all().len(),
        seen,
        "none of them reached the API"
    );
}

#[tokio::test]
async fn dropped_connection_over_https() {
    let (_emu, c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    c.faults().inject(Fault::new(
        Some(http::Method::GET),
        "/api/v1/namespaces/default/configmaps",
        FaultAction::Drop,
        Some(1),
    ));
    // The response head arrives, then the TLS connection dies mid-body: a transport error, not
    // an API Status.
    let err = cms.list(&ListParams::default()).await.unwrap_err();
    assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    assert!(c.faults().log().all().iter().any(|r| r.faulted));
    // The next request gets a fresh connection and a normal answer.
    assert!(cms.list(&ListParams::default()).await.is_ok());
}

#[tokio::test]
async fn fault_injection_and_write_audit() {
    let (_emu, c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    c.faults().inject(Fault::new(
        Some(http::Method::POST),
        "/api/v1/namespaces/default/configmaps",
        FaultAction::Status { code: 500, body: r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"boom","reason":"InternalError","code":500}"#.into() },
        Some(1),
    ));
    let (code, _, _) = api_err(
        cms.create(&PostParams::default(), &cm("f", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 500);
    cms.create(&PostParams::default(), &cm("f", &[]))
        .await
        .unwrap();
    cms.patch(
        "f",
        &PatchParams::apply("tkgops"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.patch(
        "f",
        &PatchParams::apply("tkgops"),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"k": "v"}})),
    )
    .await
    .unwrap();
    cms.delete("f", &DeleteParams::default()).await.unwrap();
    let w = c.writes();
    let summary: Vec<(String, bool, Option<String>)> = w
        .iter()
        .map(|r| (r.verb.clone(), r.changed, r.field_manager.clone()))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("create".to_string(), true, None),
            ("apply".to_string(), true, Some("tkgops".to_string())),
            ("apply".to_string(), false, Some("tkgops".to_string())),
            ("delete".to_string(), true, None),
        ]
    );
    assert_eq!(w[0].namespace.as_deref(), Some("default"));
    assert_eq!(w[0].name, "f");
    assert!(c.faults().log().all().iter().any(|r| r.faulted));
}

#[tokio::test]
async fn crd_created_via_api_registers_type() {
    let (_emu, _c, client) = setup().await;
    let crds = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &crds);
    let crd: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &crd).await.unwrap();
    let (ar, _) = discovery::pinned_kind(
        &client,
        &GroupVersionKind::gvk("example.com", "v1", "Widget"),
    )
    .await
    .unwrap();
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    let w: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}),
    )
    .unwrap();
    widgets.create(&PostParams::default(), &w).await.unwrap();
    assert_eq!(
        widgets
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn dry_run_delete_collection_namespace_cascade_and_direct_apply() {
    let (_emu, c, client) = setup().await;
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("tmp".into());
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "tmp");
    // dry run does not store
    cms.create(
        &PostParams {
            dry_run: true,
            ..Default::default()
        },
        &cm("dry", &[]),
    )
    .await
    .unwrap();
    assert_eq!(api_err(cms.get("dry").await.unwrap_err()).0, 404);
    for n in ["a", "b", "c"] {
        cms.create(
            &PostParams::default(),
            &cm(n, &[("grp", if n == "c" { "keep" } else { "drop" })]),
        )
        .await
        .unwrap();
    }
    let gone = cms
        .delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("grp=drop"),
        )
        .await
        .unwrap();
    assert_eq!(gone.left().expect("list of deleted objects").items.len(), 2);
    assert_eq!(
        cms.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    // deleting the namespace deletes its contents
    nss.delete("tmp", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        c.list(&Gvr::new("", "v1", "configmaps"), Some("tmp")).len(),
        0
    );
    assert_eq!(api_err(nss.get("tmp").await.unwrap_err()).0, 404);

    // direct apply: create, idempotent, conflict with an HTTP manager unless forced
    let gvr = Gvr::new("", "v1", "configmaps");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "namespace": "default"}, "data": {"x": "1"}});
    let v1 = c.apply(&gvr, cfg.clone(), "ctrl", false).unwrap();
    let v2 = c.apply(&gvr, cfg, "ctrl", false).unwrap();
    assert_eq!(
        v1["metadata"]["resourceVersion"],
        v2["metadata"]["resourceVersion"]
    );
    let dcms: Api<ConfigMap> = Api::namespaced(client, "default");
    dcms.patch(
        "d",
        &PatchParams::apply("bot").force(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"x": "2"}})),
    )
    .await
    .unwrap();
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "namespace": "default"}, "data": {"x": "3"}});
    let err = c.apply(&gvr, other.clone(), "ctrl", false).unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert_eq!(
        c.apply(&gvr, other, "ctrl", true).unwrap()["data"]["x"],
        "3"
    );
}

/// A DELETE's `DeleteOptions` body is honoured as the API server honours it: a `uid` (or
/// `resourceVersion`) precondition that does not match the stored object answers 409 Conflict
/// with the API server's message and deletes nothing (a same-named object recreated meanwhile
/// survives); a matching one deletes; `dryRun: ["All"]` in the body (how kube-rs sends it)
/// stores nothing.
#[tokio::test]
async fn delete_preconditions_and_body_dry_run_are_honoured() {
    use kube::api::Preconditions;
    let (_emu, _c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let first = cms
        .create(&PostParams::default(), &cm("payments", &[]))
        .await
        .unwrap();
    let old_uid = first.metadata.uid.clone().unwrap();
    // Recreated meanwhile: same name, another uid.
    cms.delete("payments", &DeleteParams::default())
        .await
        .unwrap();
    let second = cms
        .create(&PostParams::default(), &cm("payments", &[]))
        .await
        .unwrap();
    let new_uid = second.metadata.uid.clone().unwrap();
    assert_ne!(old_uid, new_uid);

    let with = |uid: Option<&str>, rv: Option<&str>| DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.map(str::to_string),
            resource_version: rv.map(str::to_string),
        }),
        ..DeleteParams::default()
    };
    let (code, reason, message) = api_err(
        cms.delete("payments", &with(Some(&old_uid), None))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));
    assert_eq!(
        message,
        format!(
            "Operation cannot be fulfilled on configmaps \"payments\": StorageError: invalid object, Code: 4, Key: /registry/configmaps/default/payments, ResourceVersion: 0, AdditionalErrorMsg: Precondition failed: UID in precondition: {old_uid}, UID in object meta: {new_uid}"
        )
    );
    let stale_rv = first.metadata.resource_version.clone().unwrap();
    let (code, _, message) = api_err(
        cms.delete("payments", &with(None, Some(&stale_rv)))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(
        message.contains("Precondition failed: ResourceVersion in precondition"),
        "{message}"
    );
    let kept = cms
        .get("payments")
        .await
        .expect("the recreated object survives");
    assert_eq!(kept.metadata.uid.as_deref(), Some(new_uid.as_str()));
    assert!(kept.metadata.deletion_timestamp.is_none());

    // A dry run in the body stores nothing, even with a matching precondition.
    let dry = DeleteParams {
        dry_run: true,
        ..with(Some(&new_uid), None)
    };
    cms.delete("payments", &dry).await.unwrap();
    assert!(cms.get_opt("payments").await.unwrap().is_some());

    // The matching uid deletes; then the precondition meets a missing object: 404.
    cms.delete("payments", &with(Some(&new_uid), None))
        .await
        .unwrap();
    assert!(cms.get_opt("payments").await.unwrap().is_none());
    let (code, _, _) = api_err(
        cms.delete("payments", &with(Some(&new_uid), None))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404);
}
