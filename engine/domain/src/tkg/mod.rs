//! What a TKG 2.x management cluster is, without credentials: its release ([`TkgVersion`]), the
//! ClusterClass it installs, the TanzuKubernetesReleases it ships, and how the Tanzu CLI turns a
//! flat `VARIABLE: value` file into the class-based `Cluster` ([`variables`]).
//!
//! Source of every fact: `docs/tkg2-class-based.md` (cited as §N below).

pub mod bootstrap;
pub mod proxy;
pub mod variables;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TKG release line that manages class-based workload clusters on AWS: 2.1 to 2.4
/// (docs/tkg2-class-based.md §9; 2.5+ no longer manages AWS workload clusters).
///
/// Parsed from `2.2`, `v2.2`, `2.2.1` or `v2.2.1` (the patch level does not change the facts
/// tkgops plans with); serialized as `2.2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TkgVersion {
    /// TKG 2.1 (tanzu-framework v0.28, CAPI 1.2.8).
    V2_1,
    /// TKG 2.2 (tanzu-framework v0.29, CAPI 1.2.8).
    V2_2,
    /// TKG 2.3 (**[≥2.3 unverified]** in §1; CAPI ≥1.3 assumed).
    V2_3,
    /// TKG 2.4, the last release that manages AWS workload clusters (§9).
    V2_4,
}

/// All supported releases, oldest first.
pub const TKG_VERSIONS: [TkgVersion; 4] = [
    TkgVersion::V2_1,
    TkgVersion::V2_2,
    TkgVersion::V2_3,
    TkgVersion::V2_4,
];

impl TkgVersion {
    /// `2.1` … `2.4`.
    pub fn as_str(self) -> &'static str {
        match self {
            TkgVersion::V2_1 => "2.1",
            TkgVersion::V2_2 => "2.2",
            TkgVersion::V2_3 => "2.3",
            TkgVersion::V2_4 => "2.4",
        }
    }

    /// `(major, minor)`: `(2, 1)` … `(2, 4)`.
    pub fn major_minor(self) -> (u32, u32) {
        match self {
            TkgVersion::V2_1 => (2, 1),
            TkgVersion::V2_2 => (2, 2),
            TkgVersion::V2_3 => (2, 3),
            TkgVersion::V2_4 => (2, 4),
        }
    }

    /// The default AWS ClusterClass the release installs in `tkg-system` and propagates into
    /// every namespace (§1): `tkg-aws-default-v1.0.0` for 2.1 and 2.2 (sourced);
    /// `tkg-aws-default-v1.1.0` for 2.3 and `tkg-aws-default-v1.1.1` for 2.4 (**unverified**,
    /// from the docs' naming pattern; `managementClusters[].clusterClass` overrides it, and the
    /// preflight reads the class on the management cluster).
    pub fn cluster_class(self) -> &'static str {
        match self {
            TkgVersion::V2_1 | TkgVersion::V2_2 => "tkg-aws-default-v1.0.0",
            TkgVersion::V2_3 => "tkg-aws-default-v1.1.0",
            TkgVersion::V2_4 => "tkg-aws-default-v1.1.1",
        }
    }

    /// The TKR versions the release ships, the default first (from the VMware release notes of
    /// each line; the run-time preflight checks them against the `TanzuKubernetesRelease`
    /// objects and their `Compatible` condition, §8). `managementClusters[].tkrs` adds more
    /// (e.g. from a `run.tanzu.vmware.com/additional-compatible-tkrs` ConfigMap).
    pub fn tkrs(self) -> &'static [&'static str] {
        match self {
            TkgVersion::V2_1 => &[
                "v1.24.9+vmware.1-tkg.1",
                "v1.23.15+vmware.1-tkg.1",
                "v1.22.17+vmware.1-tkg.1",
            ],
            TkgVersion::V2_2 => &[
                "v1.25.7+vmware.2-tkg.1",
                "v1.24.11+vmware.1-tkg.1",
                "v1.23.17+vmware.1-tkg.1",
            ],
            TkgVersion::V2_3 => &[
                "v1.26.5+vmware.2-tkg.1",
                "v1.25.10+vmware.2-tkg.1",
                "v1.24.14+vmware.1-tkg.1",
            ],
            TkgVersion::V2_4 => &[
                "v1.27.5+vmware.1-tkg.1",
                "v1.26.8+vmware.1-tkg.1",
                "v1.25.13+vmware.1-tkg.1",
            ],
        }
    }

    /// How many times `tanzu cluster upgrade` tries its patch of `spec.topology.version` while
    /// the TKR resolver cannot resolve the new TKR yet (its 403 "could not resolve TKR/OSImage"),
    /// one try every 30 s: 2.1 tries for 5 min (10 tries); 2.2 keeps trying for up to 30 min
    /// (60 tries), because TKR discovery and kapp-controller's reconciliation each run every
    /// 10 min (docs/tkg2-class-based.md §8 "Patch"; `CC/clusterclient.go:429-430`,
    /// `TF22:tkg/client/upgrade_cluster_clusterclass.go:25-29`). 2.3 and 2.4 are taken to keep
    /// 2.2's budget. Returns the number of tries, the first included.
    pub fn upgrade_patch_tries(self) -> u32 {
        match self {
            TkgVersion::V2_1 => 10,
            _ => 60,
        }
    }

    /// Whether the class declares `additionalImageRegistries` (added in 2.2, §2 last row).
    pub fn has_additional_image_registries(self) -> bool {
        self >= TkgVersion::V2_2
    }

    /// Whether the management cluster's CAPI rejects fields a variable schema does not declare
    /// (CAPI ≥1.3, §4 "unknown nested field"; assumed for 2.3 and 2.4).
    pub fn rejects_unknown_fields(self) -> bool {
        self >= TkgVersion::V2_3
    }
}

impl fmt::Display for TkgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error of [`TkgVersion::from_str`]: the text is not a supported TKG release.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("tkgVersion {0:?} is not a supported TKG release: tkgops manages class-based clusters of TKG 2.1, 2.2, 2.3 and 2.4 on AWS (TKG 2.5+ does not manage AWS workload clusters; TKG 1.x is plan-based)")]
pub struct UnsupportedTkgVersion(pub String);

impl FromStr for TkgVersion {
    type Err = UnsupportedTkgVersion;

    /// Parses `2.2`, `v2.2`, `2.2.1`, `v2.2.1`; errors for anything else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let t = t.strip_prefix('v').unwrap_or(t);
        let mut parts = t.split('.');
        let major = parts.next().and_then(|p| p.parse::<u32>().ok());
        let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
        let patch_ok = parts.next().is_none_or(|p| p.parse::<u32>().is_ok());
        let rest_empty = parts.next().is_none();
        let v = match (major, minor, patch_ok && rest_empty) {
            (Some(2), Some(1), true) => TkgVersion::V2_1,
            (Some(2), Some(2), true) => TkgVersion::V2_2,
            (Some(2), Some(3), true) => TkgVersion::V2_3,
            (Some(2), Some(4), true) => TkgVersion::V2_4,
            _ => return Err(UnsupportedTkgVersion(s.to_string())),
        };
        Ok(v)
    }
}

impl Serialize for TkgVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TkgVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // YAML may give `2.2` as a float.
        let v = serde_yaml::Value::deserialize(d)?;
        let text = match &v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Number(n) => n.to_string(),
            _ => {
                return Err(serde::de::Error::custom(
                    "tkgVersion must be a string like 2.2",
                ))
            }
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// As [`TkgVersion`]'s `Deserialize` reads it: `2.1` … `2.4` as a string (optionally `v`-prefixed,
/// with a patch level) or as a YAML number.
impl schemars::JsonSchema for TkgVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TkgVersion".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A TKG 2.x release that manages AWS workload clusters: 2.1, 2.2, 2.3 or 2.4 (also written v2.2 or 2.2.1).",
            "anyOf": [
                {"type": "string", "pattern": "^v?2\\.[1-4](\\.[0-9]+)?$"},
                {"type": "number", "enum": [2.1, 2.2, 2.3, 2.4]}
            ]
        })
    }
}

/// TKR object name of a TKR version: `+` replaced by `---` (docs/tanzu-apis.md §2.4):
/// `v1.25.7+vmware.2-tkg.1` → `v1.25.7---vmware.2-tkg.1`.
pub fn tkr_name(tkr_version: &str) -> String {
    tkr_version.replace('+', "---")
}

/// Kubernetes version of a TKR version, what the TKR resolver writes into
/// `spec.topology.version` (§1): `v1.25.7+vmware.2-tkg.1` → `v1.25.7+vmware.2`.
pub fn kubernetes_version(tkr_version: &str) -> String {
    match tkr_version.rfind("-tkg.") {
        Some(i) => tkr_version[..i].to_string(),
        None => tkr_version.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_in_every_spelling_and_refuse_the_rest() {
        for s in ["2.2", "v2.2", "2.2.1", "v2.2.0"] {
            assert_eq!(s.parse::<TkgVersion>(), Ok(TkgVersion::V2_2), "{s}");
        }
        for s in ["1.6", "2.5", "v2.5.0", "2", "2.x", "2.2.1.1", ""] {
            assert!(s.parse::<TkgVersion>().is_err(), "{s}");
        }
        let v: TkgVersion = serde_yaml::from_str("2.1").unwrap();
        assert_eq!(v, TkgVersion::V2_1);
        assert_eq!(TkgVersion::V2_2.cluster_class(), "tkg-aws-default-v1.0.0");
        assert_eq!(
            tkr_name("v1.25.7+vmware.2-tkg.1"),
            "v1.25.7---vmware.2-tkg.1"
        );
        assert_eq!(
            kubernetes_version("v1.25.7+vmware.2-tkg.1"),
            "v1.25.7+vmware.2"
        );
    }
}
