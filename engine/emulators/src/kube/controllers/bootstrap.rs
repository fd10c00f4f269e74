//! The addons manager's ClusterBootstrap webhooks (tanzu-framework
//! `addons/webhooks/clusterbootstrap_webhook.go`), and the core packages of the emulated TKRs.
//!
//! **Defaulting** (`Default`), for a ClusterBootstrap without `ownerReferences` (not yet
//! reconciled) that carries the annotation `tkg.tanzu.vmware.com/add-missing-fields-from-tkr`:
//! - an empty annotation value is denied ("invalid value for annotation …"), a TKR that does
//!   not exist too;
//! - wildcard package names (`calico*`, `antrea*`, `aws-ebs-csi*`, `kapp-controller*`) are
//!   completed to the TKR's package (`CompleteCBPackageRefNamesFromTKR`);
//! - fields the object lacks are filled from the TKR's ClusterBootstrapTemplate (Antrea, the
//!   AWS EBS CSI driver, kapp-controller), without their `valuesFrom`
//!   (`AddMissingSpecFieldsFromTemplate`).
//!
//! **Validation** (`ValidateCreate`): `spec.cni` and `spec.kapp` must be set ("package can't be
//! nil"), every core package's `refName` must be a package the TKR ships, and a
//! `valuesFrom.providerRef` must name an object that exists in the ClusterBootstrap's namespace.
//! Denials are 422 Invalid with the `field.Invalid` messages of the webhook.
//!
//! Leniency left: additional packages' names are not completed nor checked (the emulated
//! management cluster has no Package objects); a ClusterBootstrap the emulated addons manager
//! created itself (it has `ownerReferences`) is not validated, as its provider objects are not
//! cloned.

use serde_json::{json, Value};

use super::super::store::{Admission, ApiError, State};
use super::super::Gvr;
use super::util::{gvr_cluster_bootstrap, gvr_tkr};

/// A core package of the emulated TKRs: (package name, version, provider API group, provider
/// kind).
pub(crate) type CorePackage = (&'static str, &'static str, &'static str, &'static str);

/// kapp-controller, the `kapp` of every ClusterBootstrap.
pub(crate) const KAPP_CONTROLLER_PKG: CorePackage = (
    "kapp-controller.tanzu.vmware.com",
    "0.41.7+vmware.1-tkg.1",
    "run.tanzu.vmware.com",
    "KappControllerConfig",
);
/// Antrea, the CNI of the TKRs' ClusterBootstrapTemplate on AWS.
pub(crate) const ANTREA_PKG: CorePackage = (
    "antrea.tanzu.vmware.com",
    "1.9.0+vmware.2-tkg.1-advanced",
    "cni.tanzu.vmware.com",
    "AntreaConfig",
);
/// Calico, the other CNI the TKRs ship.
pub(crate) const CALICO_PKG: CorePackage = (
    "calico.tanzu.vmware.com",
    "3.24.1+vmware.1-tkg.1",
    "cni.tanzu.vmware.com",
    "CalicoConfig",
);
/// The AWS EBS CSI driver, the CSI of the template on AWS.
pub(crate) const EBS_CSI_PKG: CorePackage = (
    "aws-ebs-csi-driver.tanzu.vmware.com",
    "1.8.0+vmware.2-tkg.1",
    "csi.tanzu.vmware.com",
    "AwsEbsCSIConfig",
);

/// The packages a ClusterBootstrap's core fields may name (what the emulated TKRs ship).
const SHIPPED: [CorePackage; 4] = [KAPP_CONTROLLER_PKG, ANTREA_PKG, CALICO_PKG, EBS_CSI_PKG];

/// The annotation that asks the defaulting webhook to fill the ClusterBootstrap from a TKR.
pub(crate) const ADD_MISSING_FIELDS: &str = "tkg.tanzu.vmware.com/add-missing-fields-from-tkr";

/// The `refName` of `pkg`: `<package name>.<version>`.
pub(crate) fn ref_name(pkg: CorePackage) -> String {
    format!("{}.{}", pkg.0, pkg.1)
}

/// The shipped package a core field's `refName` names: a full name, or a wildcard whose prefix
/// (before `*`) starts the package name (`calico*`).
pub(crate) fn shipped_package(refname: &str) -> Option<CorePackage> {
    SHIPPED
        .into_iter()
        .find(|p| match refname.strip_suffix('*') {
            Some(prefix) => p.0.starts_with(prefix),
            None => refname == ref_name(*p),
        })
}

/// The Kubernetes plural of a provider kind the ClusterBootstrap may point at.
fn provider_gvr(api_group: &str, kind: &str) -> Option<Gvr> {
    let plural = match kind {
        "AntreaConfig" => "antreaconfigs",
        "CalicoConfig" => "calicoconfigs",
        "AwsEbsCSIConfig" => "awsebscsiconfigs",
        "KappControllerConfig" => "kappcontrollerconfigs",
        _ => return None,
    };
    Some(Gvr::new(api_group, "v1alpha1", plural))
}

/// The ClusterBootstrap webhooks (module docs).
pub(crate) struct ClusterBootstrapAdmission;

const MUTATING: &str = "clusterbootstrap.mutating.vmware.com";
const VALIDATING: &str = "clusterbootstrap.validating.vmware.com";

fn denied(webhook: &str, code: u16, reason: &'static str, msg: String) -> ApiError {
    ApiError::new(
        code,
        reason,
        format!("admission webhook \"{webhook}\" denied the request: {msg}"),
    )
}

impl ClusterBootstrapAdmission {
    /// `Default`: completes wildcard names and fills missing fields from the TKR.
    fn default(&self, st: &State, obj: &mut Value) -> Result<(), ApiError> {
        let owned = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|o| !o.is_empty());
        let tkr = obj
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(ADD_MISSING_FIELDS))
            .and_then(Value::as_str)
            .map(str::to_string);
        let (false, Some(tkr)) = (owned, tkr) else {
            return Ok(());
        };
        if tkr.is_empty() {
            return Err(denied(
                MUTATING,
                403,
                "Forbidden",
                format!("invalid value for annotation: {ADD_MISSING_FIELDS}. The value needs to be the name of TanzuKubernetesRelease"),
            ));
        }
        if st.get(&gvr_tkr(), None, &tkr).is_err() {
            return Err(denied(
                MUTATING,
                403,
                "Forbidden",
                format!("tanzukubernetesreleases.run.tanzu.vmware.com \"{tkr}\" not found"),
            ));
        }
        let spec = &mut obj["spec"];
        if !spec.is_object() {
            *spec = json!({});
        }
        for field in ["cni", "csi", "kapp"] {
            if let Some(name) = spec
                .pointer(&format!("/{field}/refName"))
                .and_then(Value::as_str)
            {
                if name.ends_with('*') {
                    if let Some(p) = shipped_package(name) {
                        spec[field]["refName"] = json!(ref_name(p));
                    }
                }
            }
        }
        for (field, pkg) in [
            ("cni", ANTREA_PKG),
            ("csi", EBS_CSI_PKG),
            ("kapp", KAPP_CONTROLLER_PKG),
        ] {
            if spec.get(field).is_none_or(Value::is_null) {
                spec[field] = json!({"refName": ref_name(pkg)});
            }
        }
        if spec.get("additionalPackages").is_none_or(Value::is_null) {
            spec["additionalPackages"] = json!([]);
        }
        Ok(())
    }

    /// `ValidateCreate`/`ValidateUpdate`: core packages set and shipped, provider objects there.
    fn validate(&self, st: &State, obj: &Value) -> Result<(), ApiError> {
        let owned = obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .is_some_and(|o| !o.is_empty());
        if owned {
            return Ok(());
        }
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let ns = obj
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let mut errs: Vec<(String, String)> = Vec::new();
        for (field, required) in [
            ("cni", true),
            ("kapp", true),
            ("csi", false),
            ("cpi", false),
        ] {
            let path = format!("spec.{field}");
            let pkg = obj
                .pointer(&format!("/spec/{field}"))
                .filter(|v| !v.is_null());
            let Some(pkg) = pkg else {
                if required {
                    errs.push((path, "Invalid value: \"null\": package can't be nil".into()));
                }
                continue;
            };
            let refname = pkg.get("refName").and_then(Value::as_str).unwrap_or("");
            if shipped_package(refname).is_none_or(|_| refname.ends_with('*')) {
                errs.push((
                    format!("{path}.refName"),
                    format!(
                        "Invalid value: \"{refname}\": package \"{refname}\" is not one the TKR ships"
                    ),
                ));
                continue;
            }
            if let Some(p) = pkg.pointer("/valuesFrom/providerRef") {
                let group = p.get("apiGroup").and_then(Value::as_str).unwrap_or("");
                let kind = p.get("kind").and_then(Value::as_str).unwrap_or("");
                let target = p.get("name").and_then(Value::as_str).unwrap_or("");
                let found = provider_gvr(group, kind)
                    .is_some_and(|gvr| st.get(&gvr, Some(ns), target).is_ok());
                if !found {
                    errs.push((
                        format!("{path}.valuesFrom.ProviderRef"),
                        format!(
                            "Invalid value: {p}: {}.{group} \"{target}\" not found",
                            kind.to_ascii_lowercase()
                        ),
                    ));
                }
            }
        }
        if errs.is_empty() {
            return Ok(());
        }
        let rendered: Vec<String> = errs.iter().map(|(p, m)| format!("{p}: {m}")).collect();
        let list = if rendered.len() == 1 {
            rendered[0].clone()
        } else {
            format!("[{}]", rendered.join(", "))
        };
        let causes = errs
            .iter()
            .map(|(p, m)| json!({"reason": "FieldValueInvalid", "message": m, "field": p}))
            .collect();
        let mut e = denied(
            VALIDATING,
            422,
            "Invalid",
            format!("ClusterBootstrap.run.tanzu.vmware.com \"{name}\" is invalid: {list}"),
        )
        .with_causes(&gvr_cluster_bootstrap(), name, causes);
        e.details["kind"] = json!("ClusterBootstrap");
        Err(e)
    }
}

impl Admission for ClusterBootstrapAdmission {
    fn admit(&self, st: &State, _old: Option<&Value>, mut obj: Value) -> Result<Value, ApiError> {
        self.default(st, &mut obj)?;
        self.validate(st, &obj)?;
        Ok(obj)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_name_the_shipped_packages() {
        assert_eq!(shipped_package("calico*"), Some(CALICO_PKG));
        assert_eq!(shipped_package("antrea*"), Some(ANTREA_PKG));
        assert_eq!(shipped_package("aws-ebs-csi*"), Some(EBS_CSI_PKG));
        assert_eq!(
            shipped_package("calico.tanzu.vmware.com.3.24.1+vmware.1-tkg.1"),
            Some(CALICO_PKG)
        );
        assert_eq!(shipped_package("flannel*"), None);
    }
}
