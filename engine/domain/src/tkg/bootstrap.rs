//! The ClusterBootstrap the Tanzu CLI renders beside a class-based Cluster on AWS, and the
//! provider configuration objects it points at (tanzu-framework
//! `providers/yttcb/clusterbootstrap.yaml`, with the defaults of
//! `providers/config_default.yaml`).
//!
//! The CLI renders a ClusterBootstrap `<cluster>` only when the TKR's ClusterBootstrapTemplate
//! (Antrea, the AWS EBS CSI driver, kapp-controller) would not do as it is:
//! - `CNI` is not `antrea`: a `CalicoConfig` `<cluster>` (`calico.config.vethMTU: 0`,
//!   `skipCNIBinaries: true`) and `spec.cni.refName: calico*`;
//! - Antrea is customised (any of the `ANTREA_*` settings below differs from its default): an
//!   `AntreaConfig` `<cluster>` with every setting, and `spec.cni.refName: antrea*`;
//! - a proxy is set (`TKG_HTTP_PROXY`, `TKG_HTTPS_PROXY` or `TKG_NO_PROXY`): an `AwsEbsCSIConfig`
//!   `<cluster>` with the proxy as the CLI resolves it ([`super::proxy`]: `noProxy` with the
//!   CLI's additions), 3 controller replicas for the prod plan (else 1), and
//!   `spec.csi.refName: aws-ebs-csi*`.
//!
//! The ClusterBootstrap always names `kapp-controller*` and the additional packages
//! `metrics-server*`, `secretgen-controller*` and `pinniped*`, and carries the annotation
//! `tkg.tanzu.vmware.com/add-missing-fields-from-tkr: <TKR name>`: the addons manager's
//! defaulting webhook completes the wildcard package names and fills the fields it lacks from
//! the TKR's template (`addons/webhooks/clusterbootstrap_webhook.go` `Default`). Its validating
//! webhook refuses a ClusterBootstrap without a CNI (`ValidateCreate`: "package can't be nil"),
//! so `CNI: none` cannot be had on a class-based cluster: the request refuses it.
//!
//! Left out on purpose (not AWS, or not in tkgops's requests): the vSphere CPI/CSI and Azure
//! file CSI objects, kube-vip, NSX-T pod routing, and the `tkg-storageclass` package of a
//! customised default storage class.

use serde::Serialize;
use serde_json::{json, Value};

use crate::request::TkgConfig;

/// The `ANTREA_*` settings the CLI writes to an `AntreaConfig`, with their defaults
/// (`providers/config_default.yaml`) and where they go in `spec.antrea.config`.
pub const ANTREA_SETTINGS: [(&str, AntreaDefault, &str); 10] = [
    (
        "ANTREA_TRAFFIC_ENCAP_MODE",
        AntreaDefault::Text("encap"),
        "trafficEncapMode",
    ),
    ("ANTREA_NO_SNAT", AntreaDefault::Flag(false), "noSNAT"),
    (
        "ANTREA_DISABLE_UDP_TUNNEL_OFFLOAD",
        AntreaDefault::Flag(false),
        "disableUdpTunnelOffload",
    ),
    (
        "ANTREA_PROXY",
        AntreaDefault::Flag(true),
        "featureGates.AntreaProxy",
    ),
    (
        "ANTREA_ENDPOINTSLICE",
        AntreaDefault::Flag(true),
        "featureGates.EndpointSlice",
    ),
    (
        "ANTREA_POLICY",
        AntreaDefault::Flag(true),
        "featureGates.AntreaPolicy",
    ),
    (
        "ANTREA_NODEPORTLOCAL",
        AntreaDefault::Flag(true),
        "featureGates.NodePortLocal",
    ),
    (
        "ANTREA_TRACEFLOW",
        AntreaDefault::Flag(true),
        "featureGates.AntreaTraceflow",
    ),
    (
        "ANTREA_EGRESS",
        AntreaDefault::Flag(true),
        "featureGates.Egress",
    ),
    (
        "ANTREA_FLOWEXPORTER",
        AntreaDefault::Flag(false),
        "featureGates.FlowExporter",
    ),
];

/// The default of one `ANTREA_*` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AntreaDefault {
    /// A boolean setting.
    Flag(bool),
    /// A text setting.
    Text(&'static str),
}

/// What the CLI renders besides the Cluster: the ClusterBootstrap and its provider objects.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// The ClusterBootstrap's `spec.cni.refName` (`antrea*` or `calico*`), `None` when the CNI
    /// comes from the TKR's template (Antrea, not customised).
    pub cni_ref_name: Option<String>,
    /// The `AntreaConfig`'s `spec.antrea.config`, when Antrea is customised.
    pub antrea_config: Option<Value>,
    /// The `CalicoConfig`'s `spec.calico.config`, when `CNI` is `calico`.
    pub calico_config: Option<Value>,
    /// The `AwsEbsCSIConfig`'s `spec.awsEBSCSIDriver`, when a proxy is set.
    pub aws_ebs_csi: Option<Value>,
}

/// A setting the CLI refuses for the ClusterBootstrap: `variable` names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {message}")]
pub struct BootstrapError {
    /// The flat TKG variable.
    pub variable: String,
    /// What is wrong with it.
    pub message: String,
}

fn flag(c: &TkgConfig, key: &str, default: bool) -> Result<bool, BootstrapError> {
    match c.get(key) {
        None => Ok(default),
        Some(_) => c.get_bool(key).ok_or_else(|| BootstrapError {
            variable: key.to_string(),
            message: "is not a boolean (true or false)".into(),
        }),
    }
}

/// Sets `value` at the dotted `path` under `obj` (objects created on the way).
fn put(obj: &mut Value, path: &str, value: Value) {
    let mut cur = obj;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            cur[*p] = value;
            return;
        }
        if cur.get(*p).is_none() {
            cur[*p] = json!({});
        }
        cur = &mut cur[*p];
    }
}

/// What the CLI renders for the cluster configuration `c` (`prod`: the prod plan) besides the
/// Cluster, or `None` when it renders no ClusterBootstrap (Antrea as the TKR ships it, no
/// proxy). `cni` is the request's `CNI` (lower case; default `antrea`).
///
/// Errors: [`BootstrapError`] for `CNI: none` (the addons manager refuses a ClusterBootstrap
/// without a CNI), an unknown `CNI`, and an `ANTREA_*` flag that is not a boolean.
pub fn bootstrap(
    c: &TkgConfig,
    cni: &str,
    prod: bool,
) -> Result<Option<BootstrapSpec>, BootstrapError> {
    let mut out = BootstrapSpec {
        cni_ref_name: None,
        antrea_config: None,
        calico_config: None,
        aws_ebs_csi: None,
    };
    match cni {
        "antrea" => {
            let mut config = json!({});
            let mut customised = false;
            for (key, default, path) in ANTREA_SETTINGS {
                let value = match default {
                    AntreaDefault::Flag(d) => {
                        let v = flag(c, key, d)?;
                        customised |= v != d;
                        json!(v)
                    }
                    AntreaDefault::Text(d) => {
                        let v = c.get(key).filter(|v| !v.is_empty()).unwrap_or(d);
                        customised |= v != d;
                        json!(v)
                    }
                };
                put(&mut config, path, value);
            }
            if customised {
                out.cni_ref_name = Some("antrea*".into());
                out.antrea_config = Some(config);
            }
        }
        "calico" => {
            out.cni_ref_name = Some("calico*".into());
            out.calico_config = Some(json!({"vethMTU": 0, "skipCNIBinaries": true}));
        }
        "none" => {
            return Err(BootstrapError {
                variable: "CNI".into(),
                message: "none is not possible on a class-based cluster: the addons manager refuses a ClusterBootstrap without a CNI (\"package can't be nil\") and fills a missing one from the TKR's template (Antrea); use antrea or calico".into(),
            })
        }
        other => {
            return Err(BootstrapError {
                variable: "CNI".into(),
                message: format!(
                    "provided CNI type '{other}' is not in the available options: antrea, calico, none"
                ),
            })
        }
    }
    // The CSI driver gets the proxy the CLI resolved (proxy.rs: noProxy with the CLI's
    // additions, joined with ','); without `TKG_HTTP_PROXY`, whatever proxy values are set.
    let resolved = super::proxy::proxy_settings(c).map_err(|e| BootstrapError {
        variable: e.variable,
        message: e.message,
    })?;
    let raw = |k: &str| c.get(k).unwrap_or("").to_string();
    let (http, https, no) = match resolved {
        Some(p) => {
            let no = p.no_proxy_joined();
            (p.http_proxy, p.https_proxy, no)
        }
        None => (
            raw("TKG_HTTP_PROXY"),
            raw("TKG_HTTPS_PROXY"),
            raw("TKG_NO_PROXY"),
        ),
    };
    if !(http.is_empty() && https.is_empty() && no.is_empty()) {
        out.aws_ebs_csi = Some(json!({
            "namespace": "kube-system",
            "deploymentReplicas": if prod { 3 } else { 1 },
            "httpProxy": http,
            "httpsProxy": https,
            "noProxy": no,
        }));
    }
    let any = out.cni_ref_name.is_some() || out.aws_ebs_csi.is_some();
    Ok(any.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> TkgConfig {
        crate::request::parse_tkg_config("c.yaml", text.as_bytes()).expect("config")
    }

    #[test]
    fn antrea_as_shipped_and_no_proxy_need_no_bootstrap() {
        assert_eq!(bootstrap(&cfg("CNI: antrea\n"), "antrea", true), Ok(None));
        assert_eq!(
            bootstrap(&cfg("ANTREA_PROXY: true\n"), "antrea", true),
            Ok(None)
        );
    }

    #[test]
    fn customised_antrea_calico_proxy_and_none() {
        let b = bootstrap(&cfg("ANTREA_NO_SNAT: true\n"), "antrea", true)
            .unwrap()
            .unwrap();
        assert_eq!(b.cni_ref_name.as_deref(), Some("antrea*"));
        let a = b.antrea_config.unwrap();
        assert_eq!(a["noSNAT"], true);
        assert_eq!(a["trafficEncapMode"], "encap");
        assert_eq!(a["featureGates"]["AntreaProxy"], true);
        assert_eq!(a["featureGates"]["FlowExporter"], false);

        let b = bootstrap(&cfg("CNI: calico\n"), "calico", false)
            .unwrap()
            .unwrap();
        assert_eq!(b.cni_ref_name.as_deref(), Some("calico*"));
        assert_eq!(b.calico_config.unwrap()["vethMTU"], 0);
        assert!(b.aws_ebs_csi.is_none());

        let b = bootstrap(
            &cfg("TKG_HTTP_PROXY_ENABLED: true\nTKG_HTTP_PROXY: http://p:3128\nTKG_HTTPS_PROXY: http://p:3128\nTKG_NO_PROXY: .corp\n"),
            "antrea",
            true,
        )
        .unwrap()
        .unwrap();
        assert_eq!(b.cni_ref_name, None, "Antrea comes from the TKR");
        let csi = b.aws_ebs_csi.unwrap();
        assert_eq!(csi["deploymentReplicas"], 3);
        assert_eq!(
            csi["noProxy"],
            ".corp,10.0.0.0/16,169.254.0.0/16,127.0.0.1,localhost,.svc,.svc.cluster.local"
        );

        let e = bootstrap(&cfg("CNI: none\n"), "none", true).unwrap_err();
        assert_eq!(e.variable, "CNI");
        assert!(e.message.contains("package can't be nil"));
        let e = bootstrap(&cfg("ANTREA_EGRESS: maybe\n"), "antrea", true).unwrap_err();
        assert_eq!(e.variable, "ANTREA_EGRESS");
    }
}
