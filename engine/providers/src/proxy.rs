//! Outbound proxies from the environment, by curl's rules.
//!
//! `HTTPS_PROXY` (for `https://` destinations), `HTTP_PROXY` (for `http://` ones), `ALL_PROXY`
//! (for both, when the scheme's own variable is unset) and `NO_PROXY`, each upper-case first,
//! then lower-case. `NO_PROXY` is a comma-separated list of host names (a name matches itself
//! and its subdomains; a leading `.` or `*.` is the same), IP addresses, CIDR ranges, or `*`
//! for every host. Nothing is exempt unless it is listed: loopback too.
//!
//! The decision is [`hyper_util`]'s proxy matcher, the one reqwest (the GitHub API and TMC
//! clients) and the AWS SDK apply to their own requests, so the Kubernetes and git clients,
//! which get their proxy from [`proxy_for`], follow the same rules.
//!
//! A proxy URL may carry credentials (`http://user:password@proxy:3128`): [`ProxyUrl`] never
//! shows them (its `Debug` and [`ProxyUrl::redacted`] drop the user information).

use hyper_util::client::proxy::matcher::Matcher;

/// The proxy variables [`ProxyEnv::from_env`] reads, in order of precedence per setting.
pub const PROXY_VARIABLES: [&str; 8] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A proxy URL as configured, credentials included. Its `Debug` is [`ProxyUrl::redacted`].
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(String);

impl ProxyUrl {
    /// The URL with its credentials, for the client that connects through it. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL without user information (`http://proxy:3128`), safe to log.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                let _ = u.set_username("");
                let _ = u.set_password(None);
                u.to_string()
            }
            Err(_) => "<unparsable proxy URL>".into(),
        }
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The proxy settings of a process: which proxy, if any, each destination goes through.
pub struct ProxyEnv {
    http: Option<String>,
    https: Option<String>,
    matcher: Matcher,
}

impl std::fmt::Debug for ProxyEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The matcher's own Debug never shows credentials; the raw URLs may hold some.
        f.debug_struct("ProxyEnv")
            .field("matcher", &self.matcher)
            .finish()
    }
}

impl ProxyEnv {
    /// The settings of this process's environment (see the module documentation). As curl
    /// and hyper-util do, a process run as a CGI script (`REQUEST_METHOD` set) uses no proxy,
    /// since `HTTP_PROXY` is then a request header.
    pub fn from_env() -> ProxyEnv {
        if std::env::var_os("REQUEST_METHOD").is_some() {
            return ProxyEnv::from_vars(|_| None);
        }
        ProxyEnv::from_vars(|name| std::env::var(name).ok())
    }

    /// The settings `var` gives (a variable's value, `None` when unset); what
    /// [`ProxyEnv::from_env`] does with the process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> ProxyEnv {
        // The first variable that is set wins, even when empty (an empty HTTPS_PROXY turns the
        // proxy off rather than falling through to https_proxy), as in hyper-util.
        let first = |names: &[&str]| names.iter().find_map(|n| var(n));
        let usable = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let all = usable(first(&["ALL_PROXY", "all_proxy"]));
        let http = usable(first(&["HTTP_PROXY", "http_proxy"])).or_else(|| all.clone());
        let https = usable(first(&["HTTPS_PROXY", "https_proxy"])).or(all);
        let no = first(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
        let mut builder = Matcher::builder().no(no);
        if let Some(h) = &http {
            builder = builder.http(h.clone());
        }
        if let Some(h) = &https {
            builder = builder.https(h.clone());
        }
        ProxyEnv {
            http,
            https,
            matcher: builder.build(),
        }
    }

    /// The proxy a request to `destination` (an `http://` or `https://` URL) goes through, or
    /// `None` when it connects directly: no proxy for its scheme, a host `NO_PROXY` lists, a
    /// proxy URL that does not parse (hyper-util ignores it too), or not an HTTP(S) URL.
    pub fn proxy_for(&self, destination: &str) -> Option<ProxyUrl> {
        let uri: http::Uri = destination.parse().ok()?;
        self.matcher.intercept(&uri)?;
        let raw = match uri.scheme_str() {
            Some("https") => self.https.as_ref(),
            Some("http") => self.http.as_ref(),
            _ => None,
        }?;
        // A proxy URL without a scheme is an http:// one (curl's rule, and hyper-util's).
        let url = if raw.contains("://") {
            raw.clone()
        } else {
            format!("http://{raw}")
        };
        Some(ProxyUrl(url))
    }
}

/// The proxy a request to `destination` goes through under this process's environment (see
/// [`ProxyEnv::from_env`] and [`ProxyEnv::proxy_for`]).
pub fn proxy_for(destination: &str) -> Option<ProxyUrl> {
    ProxyEnv::from_env().proxy_for(destination)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_vars(move |n| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    fn via(e: &ProxyEnv, dst: &str) -> Option<String> {
        e.proxy_for(dst).map(|p| p.expose().to_string())
    }

    #[test]
    fn each_scheme_uses_its_own_variable_then_all_proxy() {
        let e = env(&[
            ("HTTPS_PROXY", "http://s:3128"),
            ("http_proxy", "http://h:3128"),
        ]);
        assert_eq!(
            via(&e, "https://api.github.com/x").as_deref(),
            Some("http://s:3128")
        );
        assert_eq!(
            via(&e, "http://moto:5000/").as_deref(),
            Some("http://h:3128")
        );
        let e = env(&[("ALL_PROXY", "http://a:1"), ("HTTP_PROXY", "http://h:2")]);
        assert_eq!(via(&e, "https://x/").as_deref(), Some("http://a:1"));
        assert_eq!(via(&e, "http://x/").as_deref(), Some("http://h:2"));
        assert_eq!(via(&env(&[]), "https://x/"), None);
    }

    #[test]
    fn upper_case_wins_and_an_empty_variable_turns_the_proxy_off() {
        let e = env(&[
            ("HTTPS_PROXY", "http://up:1"),
            ("https_proxy", "http://low:1"),
        ]);
        assert_eq!(via(&e, "https://x/").as_deref(), Some("http://up:1"));
        let e = env(&[("HTTPS_PROXY", ""), ("https_proxy", "http://low:1")]);
        assert_eq!(via(&e, "https://x/"), None);
        let e = env(&[("https_proxy", "proxy.corp:3128")]);
        assert_eq!(
            via(&e, "https://x/").as_deref(),
            Some("http://proxy.corp:3128")
        );
    }

    #[test]
    fn no_proxy_exempts_names_subdomains_addresses_and_ranges_but_not_loopback_by_itself() {
        let e = env(&[
            ("HTTPS_PROXY", "http://p:3128"),
            ("NO_PROXY", "corp.example, .svc,10.0.0.0/8, 192.168.1.7"),
        ]);
        for direct in [
            "https://corp.example/",
            "https://git.corp.example/",
            "https://kubernetes.default.svc/",
            "https://10.1.2.3:6443/",
            "https://192.168.1.7/",
        ] {
            assert_eq!(via(&e, direct), None, "{direct}");
        }
        for proxied in [
            "https://example.com/",
            "https://notcorp.example/",
            "https://127.0.0.1:6443/",
            "https://localhost/",
        ] {
            assert!(via(&e, proxied).is_some(), "{proxied}");
        }
        let e = env(&[("HTTPS_PROXY", "http://p:3128"), ("no_proxy", "*")]);
        assert_eq!(via(&e, "https://anything/"), None);
        let e = env(&[("HTTPS_PROXY", "http://p:3128"), ("NO_PROXY", "")]);
        assert!(via(&e, "https://127.0.0.1/").is_some());
    }

    #[test]
    fn credentials_are_kept_for_the_client_and_never_shown() {
        let e = env(&[("HTTPS_PROXY", "http://ops:s3cr%40t@p:3128")]);
        let p = e.proxy_for("https://x/").unwrap();
        assert_eq!(p.expose(), "http://ops:s3cr%40t@p:3128");
        assert_eq!(p.redacted(), "http://p:3128/");
        assert!(!format!("{p:?}").contains("s3cr"));
        assert!(!format!("{e:?}").contains("s3cr"));
    }
}
