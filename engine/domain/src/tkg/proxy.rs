//! The Tanzu CLI's proxy rules for a workload cluster: when a proxy is on, what it requires, and
//! what the CLI adds to `noProxy` before it renders the `proxy` ClusterClass variable and the
//! AWS EBS CSI driver's configuration.
//!
//! Source: tanzu-framework `tkg/client/validate.go` (`ConfigureAndValidateHTTPProxyConfiguration`,
//! `getFullTKGNoProxy`, `updateProviderSpecificNoProxy`), called for a workload cluster before
//! the IP-family defaults are filled in; `tkg/tkgconfigproviders` (`CheckAndGetProxyURL`);
//! `providers/config_default.yaml` (no `TKG_HTTP_PROXY_ENABLED` default; `AWS_VPC_CIDR`
//! defaults to `10.0.0.0/16`); `providers/yttcc/lib/config_variable_association.star` (the
//! `proxy` variable is emitted whenever `TKG_HTTP_PROXY` is not empty).

use super::variables::VariableError;
use crate::request::TkgConfig;

/// What the CLI adds to every proxied cluster's `noProxy` (`getFullTKGNoProxy`), then, on AWS,
/// the link-local range (`updateProviderSpecificNoProxy`).
const ALWAYS_NO_PROXY: [&str; 4] = [".svc.cluster.local", ".svc", "localhost", "127.0.0.1"];
/// AWS: the instance metadata service's link-local range (`constants.LinkLocalAddress`).
const AWS_LINK_LOCAL: &str = "169.254.0.0/16";
/// `AWS_VPC_CIDR`'s default in `config_default.yaml`.
const DEFAULT_VPC_CIDR: &str = "10.0.0.0/16";

/// The proxy a cluster's nodes and packages use, as the CLI resolves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// `TKG_HTTP_PROXY`.
    pub http_proxy: String,
    /// `TKG_HTTPS_PROXY` (empty only when `TKG_HTTP_PROXY_ENABLED` is `false`, where the CLI
    /// renders whatever is set without checking it).
    pub https_proxy: String,
    /// `TKG_NO_PROXY` split on `,` with whitespace removed, followed (when the proxy is
    /// enabled) by what the CLI adds, without duplicates. The CLI joins a Go map, so its order
    /// is random; tkgops keeps the user's order and then appends the additions in a fixed order,
    /// so a plan is reproducible.
    pub no_proxy: Vec<String>,
}

impl ProxySettings {
    /// `no_proxy` joined with `,`, as the flat `TKG_NO_PROXY` the CLI passes on (for example
    /// to the `AwsEbsCSIConfig`).
    pub fn no_proxy_joined(&self) -> String {
        self.no_proxy.join(",")
    }
}

fn err(variable: &str, message: impl Into<String>) -> VariableError {
    VariableError {
        variable: variable.to_string(),
        message: message.into(),
    }
}

/// `CheckAndGetProxyURL`: a proxy URL needs a scheme and a host.
fn check_url(variable: &str, value: &str) -> Result<(), VariableError> {
    let parsed = url::Url::parse(value).map_err(|e| {
        err(
            variable,
            format!("error validating {variable}: {value:?} is not a URL ({e})"),
        )
    })?;
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(err(
            variable,
            format!("error validating {variable}: hostname is missing from the proxy URL"),
        ));
    }
    Ok(())
}

fn push_unique(list: &mut Vec<String>, item: &str) {
    if !item.is_empty() && !list.iter().any(|x| x == item) {
        list.push(item.to_string());
    }
}

/// The proxy of flat file `c`, or `None` when `TKG_HTTP_PROXY` is unset or empty.
///
/// Rules (module sources):
/// - `TKG_HTTP_PROXY` set without `TKG_HTTP_PROXY_ENABLED` is refused: the CLI fails with
///   "cannot get TKG_HTTP_PROXY_ENABLED".
/// - `TKG_HTTP_PROXY_ENABLED: true` requires `TKG_HTTP_PROXY` and `TKG_HTTPS_PROXY`, each a URL
///   with a scheme and a host; `TKG_NO_PROXY` may not contain `*`. `noProxy` then gains
///   `SERVICE_CIDR` and `CLUSTER_CIDR` (when set in the file), `::1` for `TKG_IP_FAMILY: ipv6`,
///   `AWS_VPC_CIDR` (default `10.0.0.0/16`), `169.254.0.0/16`, `localhost`, `127.0.0.1`,
///   `.svc` and `.svc.cluster.local`.
/// - `TKG_HTTP_PROXY_ENABLED: false` skips those checks and additions, but the CLI still renders
///   `TKG_HTTP_PROXY` when it is set; tkgops does the same, and still requires `TKG_HTTPS_PROXY`,
///   which the `proxy` variable's schema requires.
///
/// Errors: a [`VariableError`] naming the flat variable at fault.
pub fn proxy_settings(c: &TkgConfig) -> Result<Option<ProxySettings>, VariableError> {
    let enabled_var = "TKG_HTTP_PROXY_ENABLED";
    let enabled = match c.get(enabled_var) {
        None => None,
        Some(_) => Some(
            c.get_bool(enabled_var)
                .ok_or_else(|| err(enabled_var, "must be true or false"))?,
        ),
    };
    let http = c.get("TKG_HTTP_PROXY");
    let https = c.get("TKG_HTTPS_PROXY");
    let user_no_proxy: Vec<String> = c
        .get("TKG_NO_PROXY")
        .map(|v| {
            let compact: String = v.chars().filter(|ch| !ch.is_whitespace()).collect();
            compact
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    match enabled {
        None => match http {
            None => Ok(None),
            Some(_) => Err(err(
                enabled_var,
                "cannot get TKG_HTTP_PROXY_ENABLED: set TKG_HTTP_PROXY_ENABLED: true to use TKG_HTTP_PROXY (the Tanzu CLI refuses a proxy without it)",
            )),
        },
        Some(false) => {
            let Some(http) = http else { return Ok(None) };
            let https = https.ok_or_else(|| {
                err(
                    "TKG_HTTPS_PROXY",
                    "is required with TKG_HTTP_PROXY (the proxy variable requires httpProxy and httpsProxy)",
                )
            })?;
            Ok(Some(ProxySettings {
                http_proxy: http.to_string(),
                https_proxy: https.to_string(),
                no_proxy: user_no_proxy,
            }))
        }
        Some(true) => {
            let http = http.ok_or_else(|| {
                err(
                    "TKG_HTTP_PROXY",
                    "cannot get TKG_HTTP_PROXY: it is required when TKG_HTTP_PROXY_ENABLED is true",
                )
            })?;
            check_url("TKG_HTTP_PROXY", http)?;
            let https = https.ok_or_else(|| {
                err(
                    "TKG_HTTPS_PROXY",
                    "cannot get TKG_HTTPS_PROXY: it is required when TKG_HTTP_PROXY_ENABLED is true",
                )
            })?;
            check_url("TKG_HTTPS_PROXY", https)?;
            if user_no_proxy.iter().any(|s| s.contains('*')) {
                return Err(err("TKG_NO_PROXY", "invalid string '*' in TKG_NO_PROXY"));
            }
            let mut no_proxy = Vec::new();
            for s in &user_no_proxy {
                push_unique(&mut no_proxy, s);
            }
            for var in ["SERVICE_CIDR", "CLUSTER_CIDR"] {
                for cidr in c.get(var).unwrap_or("").split(',') {
                    push_unique(&mut no_proxy, cidr.trim());
                }
            }
            if c.get("TKG_IP_FAMILY") == Some("ipv6") {
                push_unique(&mut no_proxy, "::1");
            }
            push_unique(
                &mut no_proxy,
                c.get("AWS_VPC_CIDR").unwrap_or(DEFAULT_VPC_CIDR),
            );
            push_unique(&mut no_proxy, AWS_LINK_LOCAL);
            for s in ALWAYS_NO_PROXY.iter().rev() {
                push_unique(&mut no_proxy, s);
            }
            Ok(Some(ProxySettings {
                http_proxy: http.to_string(),
                https_proxy: https.to_string(),
                no_proxy,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> TkgConfig {
        crate::request::parse_tkg_config("c.yaml", text.as_bytes()).expect("config")
    }

    #[test]
    fn no_proxy_without_http_proxy() {
        assert_eq!(proxy_settings(&cfg("CNI: antrea\n")).unwrap(), None);
        assert_eq!(
            proxy_settings(&cfg("TKG_HTTP_PROXY_ENABLED: false\n")).unwrap(),
            None
        );
    }

    #[test]
    fn a_proxy_without_the_enabled_flag_is_refused() {
        let e = proxy_settings(&cfg(
            "TKG_HTTP_PROXY: http://p:3128\nTKG_HTTPS_PROXY: http://p:3128\n",
        ))
        .unwrap_err();
        assert_eq!(e.variable, "TKG_HTTP_PROXY_ENABLED");
        assert!(e.message.contains("cannot get TKG_HTTP_PROXY_ENABLED"));
    }

    #[test]
    fn an_enabled_proxy_gains_what_the_cli_adds_to_no_proxy() {
        let p = proxy_settings(&cfg(
            "TKG_HTTP_PROXY_ENABLED: true\nTKG_HTTP_PROXY: http://p:3128\nTKG_HTTPS_PROXY: http://p:3128\nTKG_NO_PROXY: \" .corp, 10.1.0.0/16\"\nSERVICE_CIDR: 100.64.0.0/13\nAWS_VPC_CIDR: 10.1.0.0/16\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(
            p.no_proxy,
            [
                ".corp",
                "10.1.0.0/16",
                "100.64.0.0/13",
                "169.254.0.0/16",
                "127.0.0.1",
                "localhost",
                ".svc",
                ".svc.cluster.local"
            ]
        );
        // Without AWS_VPC_CIDR, config_default's 10.0.0.0/16 is added.
        let p = proxy_settings(&cfg(
            "TKG_HTTP_PROXY_ENABLED: true\nTKG_HTTP_PROXY: http://p:3128\nTKG_HTTPS_PROXY: http://p:3128\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.no_proxy[0], "10.0.0.0/16");
    }

    #[test]
    fn an_enabled_proxy_needs_both_urls_and_no_wildcard() {
        let base = "TKG_HTTP_PROXY_ENABLED: true\n";
        let e = proxy_settings(&cfg(base)).unwrap_err();
        assert_eq!(e.variable, "TKG_HTTP_PROXY");
        let e =
            proxy_settings(&cfg(&format!("{base}TKG_HTTP_PROXY: http://p:3128\n"))).unwrap_err();
        assert_eq!(e.variable, "TKG_HTTPS_PROXY");
        let e = proxy_settings(&cfg(&format!(
            "{base}TKG_HTTP_PROXY: p:3128\nTKG_HTTPS_PROXY: http://p:3128\n"
        )))
        .unwrap_err();
        assert_eq!(e.variable, "TKG_HTTP_PROXY");
        let e = proxy_settings(&cfg(&format!(
            "{base}TKG_HTTP_PROXY: http://p:3128\nTKG_HTTPS_PROXY: http://p:3128\nTKG_NO_PROXY: \"*.corp\"\n"
        )))
        .unwrap_err();
        assert_eq!(e.message, "invalid string '*' in TKG_NO_PROXY");
    }

    #[test]
    fn a_disabled_proxy_is_rendered_as_written() {
        let p = proxy_settings(&cfg(
            "TKG_HTTP_PROXY_ENABLED: false\nTKG_HTTP_PROXY: http://p:3128\nTKG_HTTPS_PROXY: http://p:3128\nTKG_NO_PROXY: .corp\n",
        ))
        .unwrap()
        .unwrap();
        assert_eq!(p.no_proxy, [".corp"]);
    }
}
