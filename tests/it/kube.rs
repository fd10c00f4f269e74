//! Integration tests: kube. The Kubernetes API emulator driven by the real `kube::Client`.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Discovery, Scope};
use serde_json::json;
use tkgops::emulators::faults::{Fault, FaultAction};
use tkgops::emulators::kube::{EmulatedCluster, Gvr, KubeEmulator};

async fn setup() -> (KubeEmulator, EmulatedCluster, kube::Client) {
    tkgops::install_crypto_provider();
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
    c.metadata.labels = Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
    c.data = Some(BTreeMap::from([("k".to_string(), "v".to_string())]));
    c
}

fn capi_cluster_ar() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta1", "Cluster"), "clusters")
}

#[tokio::test]
async fn version_and_discovery() {
    let (_emu, c, client) = setup().await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(v.major, "1");
    c.register_capi_types();
    c.register_kapp_types();
    let d = Discovery::new(client.clone()).run().await.unwrap();
    let capi = d.groups().find(|g| g.name() == "cluster.x-k8s.io").expect("capi group");
    let (ar, caps) = capi.recommended_kind("Cluster").expect("Cluster kind");
    assert_eq!(ar.plural, "clusters");
    assert_eq!(caps.scope, Scope::Namespaced);
    assert!(caps.subresources.iter().any(|(s, _)| s.plural == "status"));
    assert!(d.groups().any(|g| g.name() == "packaging.carvel.dev"));
    let core = d.groups().find(|g| g.name() == "").expect("core group");
    assert!(core.recommended_kind("ConfigMap").is_some());
    let (ar, caps) = discovery::pinned_kind(&client, &GroupVersionKind::gvk("run.tanzu.vmware.com", "v1alpha3", "TanzuKubernetesRelease"))
        .await
        .unwrap();
    assert_eq!(ar.plural, "tanzukubernetesreleases");
    assert_eq!(caps.scope, Scope::Cluster);
    let (ar, _) = discovery::pinned_kind(&client, &GroupVersionKind::gvk("", "v1", "Secret")).await.unwrap();
    assert_eq!(ar.plural, "secrets");
}

#[tokio::test]
async fn typed_crud_and_errors() {
    let (_emu, _c, client) = setup().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let created = cms.create(&PostParams::default(), &cm("a", &[("app", "x")])).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    let rv1 = created.metadata.resource_version.clone().unwrap();
    let got = cms.get("a").await.unwrap();
    assert_eq!(got.data.as_ref().unwrap()["k"], "v");

    // 409 AlreadyExists
    let (code, reason, _) = api_err(cms.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // replace, then stale replace → 409 Conflict
    let mut upd = got.clone();
    upd.data = Some(BTreeMap::from([("k".to_string(), "v2".to_string())]));
    let replaced = cms.replace("a", &PostParams::default(), &upd).await.unwrap();
    assert_ne!(replaced.metadata.resource_version.clone().unwrap(), rv1);
    assert_eq!(replaced.metadata.generation, Some(2));
    let (code, reason, msg) = api_err(cms.replace("a", &PostParams::default(), &upd).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (409, "Conflict"), "{msg}");

    // missing namespace → 404 namespaces "nope" not found
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nope");
    let (code, reason, msg) = api_err(missing.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err());
    assert_eq!((code, reason.as_str(), msg.as_str()), (404, "NotFound", "namespaces \"nope\" not found"));
    let (code, _, _) = api_err(cms.get("absent").await.unwrap_err());
    assert_eq!(code, 404);

    // create a namespace, then use it
    let nss: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("tkg-system".into());
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let tkg: Api<ConfigMap> = Api::namespaced(client.clone(), "tkg-system");
    tkg.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
    let all: Api<ConfigMap> = Api::all(client.clone());
    let names: Vec<String> = all.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|c| c.metadata.name).collect();
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
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &capi_cluster_ar());
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
    c.patch_merge(&gvr, Some("default"), "wc1", json!({"metadata": {"finalizers": null}})).unwrap();
    assert_eq!(api_err(api.get("wc1").await.unwrap_err()).0, 404);
    assert!(c.get(&gvr, Some("default"), "wc1").is_none());
    // unknown type → 404
    let unknown = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("nope.io", "v1", "Nope"), "nopes");
    let nope: Api<DynamicObject> = Api::namespaced_with(client, "default", &unknown);
    assert_eq!(api_err(nope.list(&ListParams::default()).await.unwrap_err()).0, 404);
}
