//! The TKG 1.6 standard package table (reference `docs/tanzu-apis.md` §4.4).

/// One package of the TKG 1.6 `tanzu-standard` package repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandardPackage {
    /// Short name used in tkgops settings (`contour`).
    pub name: &'static str,
    /// kapp-controller `packageRef.refName` (`contour.tanzu.vmware.com`).
    pub ref_name: &'static str,
    /// Version in the TKG 1.6 repository (`v1.6.0` tag), used as the exact
    /// `versionSelection.constraints`.
    pub version: &'static str,
    /// Namespace the guides install it into; `None` when no guide names one (tkgops then uses
    /// `tanzu-packages`, SIVT's single namespace).
    pub namespace: Option<&'static str>,
}

/// TKG 1.6 standard packages: the first six rows from TVS-AG `tkg-vsphere-vds-airgap.md`
/// (`tanzu package available list` against repo `v1.6.0`); external-dns, multus-cni and
/// whereabouts from public TKG 1.6 walkthroughs (corroborated, not pinned).
pub const TKG16_STANDARD_PACKAGES: &[StandardPackage] = &[
    StandardPackage {
        name: "cert-manager",
        ref_name: "cert-manager.tanzu.vmware.com",
        version: "1.7.2+vmware.1-tkg.1",
        namespace: Some("cert-manager"),
    },
    StandardPackage {
        name: "contour",
        ref_name: "contour.tanzu.vmware.com",
        version: "1.20.2+vmware.1-tkg.1",
        namespace: Some("tanzu-system-ingress"),
    },
    StandardPackage {
        name: "fluent-bit",
        ref_name: "fluent-bit.tanzu.vmware.com",
        version: "1.8.15+vmware.1-tkg.1",
        namespace: Some("tanzu-system-logging"),
    },
    StandardPackage {
        name: "prometheus",
        ref_name: "prometheus.tanzu.vmware.com",
        version: "2.36.2+vmware.1-tkg.1",
        namespace: Some("tanzu-system-monitoring"),
    },
    StandardPackage {
        name: "grafana",
        ref_name: "grafana.tanzu.vmware.com",
        version: "7.5.16+vmware.1-tkg.1",
        namespace: Some("tanzu-system-dashboards"),
    },
    StandardPackage {
        name: "harbor",
        ref_name: "harbor.tanzu.vmware.com",
        version: "2.5.3+vmware.1-tkg.1",
        namespace: Some("tanzu-system-registry"),
    },
    StandardPackage {
        name: "external-dns",
        ref_name: "external-dns.tanzu.vmware.com",
        version: "0.11.0+vmware.1-tkg.2",
        namespace: Some("tanzu-system-service-discovery"),
    },
    StandardPackage {
        name: "multus-cni",
        ref_name: "multus-cni.tanzu.vmware.com",
        version: "3.8.0+vmware.1-tkg.1",
        namespace: None,
    },
    StandardPackage {
        name: "whereabouts",
        ref_name: "whereabouts.tanzu.vmware.com",
        version: "0.5.1+vmware.2-tkg.1",
        namespace: None,
    },
];

/// Fixed install order of the standard packages (SIVT `deploy_tkg_extensions.sh`:
/// cert-manager → contour → fluent-bit → prometheus → grafana → harbor); other packages follow
/// by name.
pub const PACKAGE_INSTALL_ORDER: &[&str] = &[
    "cert-manager",
    "contour",
    "fluent-bit",
    "prometheus",
    "grafana",
    "harbor",
];

/// Which standard packages need which (reference `docs/tanzu-apis.md` §4.4: "deploying Contour is a
/// prerequisite for Prometheus, Grafana and Harbor"; contour needs cert-manager): pairs
/// `(package, needs)` by short name. Installs follow [`PACKAGE_INSTALL_ORDER`], which respects
/// them; removals go in reverse.
pub const PACKAGE_DEPENDENCIES: &[(&str, &str)] = &[
    ("contour", "cert-manager"),
    ("prometheus", "contour"),
    ("grafana", "contour"),
    ("harbor", "contour"),
];

/// The namespace for packages with none configured and none in the table (SIVT convention).
pub(crate) const DEFAULT_PACKAGE_NAMESPACE: &str = "tanzu-packages";

/// The standard package with short `name` (e.g. `contour`) or `refName`
/// (`contour.tanzu.vmware.com`); `None` when not a TKG 1.6 standard package.
pub fn standard_package(name: &str) -> Option<&'static StandardPackage> {
    TKG16_STANDARD_PACKAGES
        .iter()
        .find(|p| p.name == name || p.ref_name == name)
}

/// Sort key of a package name in install order: the fixed order first, then by name.
pub(crate) fn order_key(name: &str) -> (usize, String) {
    let idx = PACKAGE_INSTALL_ORDER
        .iter()
        .position(|p| *p == name)
        .unwrap_or(PACKAGE_INSTALL_ORDER.len());
    (idx, name.to_string())
}
