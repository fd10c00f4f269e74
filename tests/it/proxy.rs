//! The bot behind an HTTP proxy: the sandbox's create story with every outbound connection of
//! the real `tkgops serve` binary going through proxy.py (from PyPI, installed into `.venv` by
//! `scripts/setup-venv.sh`) on loopback, as `HTTPS_PROXY`/`HTTP_PROXY` tell it, with an empty
//! `NO_PROXY` so that nothing, loopback included, is exempt. proxy.py's access log must show
//! each of the bot's clients: the GitHub API, git, the Kubernetes API, EC2 (moto) and TMC.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tkgops_sandbox::{request_files, Timings, APPROVER, MANAGEMENT_CLUSTER};

use crate::e2e::{head_of, start_env};

/// Where proxy.py's `proxy` executable is: `$TKGOPS_PROXY_PY`, else `.venv/bin/proxy`.
fn proxy_py() -> PathBuf {
    let bin = std::env::var_os("TKGOPS_PROXY_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::support::root().join(".venv/bin/proxy"));
    assert!(
        bin.exists(),
        "proxy.py not found at {}: run scripts/setup-venv.sh (installs proxy.py into .venv) \
         or set TKGOPS_PROXY_PY",
        bin.display()
    );
    bin
}

/// proxy.py listening on 127.0.0.1, logging every request it forwards to `log`. It leads its
/// own process group (proxy.py forks its acceptors), which is killed on drop.
struct ProxyPy {
    child: tokio::process::Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl ProxyPy {
    async fn start() -> ProxyPy {
        let dir = tempfile::tempdir().unwrap();
        let port_file = dir.path().join("port");
        let log = dir.path().join("access.log");
        let mut child = tokio::process::Command::new(proxy_py())
            .args([
                "--hostname",
                "127.0.0.1",
                "--port",
                "0",
                "--log-level",
                "INFO",
            ])
            .arg("--port-file")
            .arg(&port_file)
            .arg("--log-file")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("proxy.py");
        // proxy.py writes the port file once it listens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        let port = loop {
            tick.tick().await;
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "proxy.py exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some(port) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok())
            {
                break port;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "proxy.py did not listen within 30 s"
            );
        };
        ProxyPy {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The requests of the access log: `CONNECT host:port` for tunnels, `METHOD host:port/path`
    /// for plain HTTP requests.
    fn requests(&self) -> Vec<String> {
        access_log_requests(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for ProxyPy {
    fn drop(&mut self) {
        if let Some(pgid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
        }
    }
}

/// The request part of each proxy.py access-log line (`... server.access_log:N - CLIENT -
/// REQUEST - ...`).
fn access_log_requests(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("access_log"))
        .filter_map(|l| l.split(" - ").nth(3).map(str::to_string))
        .collect()
}

/// The config repository's bare remote served over smart HTTPS by `git http-backend` (git's
/// own CGI program), on 127.0.0.1, read-only: the emulated GitHub gives the bot a `file://`
/// remote, which no proxy can see, and libgit2 goes through a proxy for `https://` remotes
/// only (it sends an `http://` remote's requests to the server itself).
struct GitHttp {
    url: String,
    /// The CA that signed the server's certificate (PEM).
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl GitHttp {
    async fn serve(remote: &std::path::Path) -> GitHttp {
        let root = remote.parent().unwrap().to_path_buf();
        let name = remote.file_name().unwrap().to_string_lossy().to_string();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let root = root.clone();
            async move { http_backend(&root, req).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/{name}", listener.local_addr().unwrap());
        let (ca_pem, task) =
            tkgops_emulators::kube::serve_https(listener, "git", app).expect("git over HTTPS");
        GitHttp { url, ca_pem, task }
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One request through `git http-backend` (CGI: the request's method, path and headers in
/// variables, its body on stdin; the response's headers, then its body, on stdout).
async fn http_backend(
    root: &std::path::Path,
    req: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use tokio::io::AsyncWriteExt;
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("GIT_PROTOCOL", header("git-protocol"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&body).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("CGI headers");
    let head = String::from_utf8_lossy(&out.stdout[..split]).to_string();
    let mut status = axum::http::StatusCode::OK;
    let mut headers = axum::http::HeaderMap::new();
    for line in head.lines() {
        let (k, v) = line.split_once(':').unwrap();
        let v = v.trim();
        if k.eq_ignore_ascii_case("status") {
            status = v[..3].parse().unwrap();
        } else {
            headers.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
    }
    (status, headers, out.stdout[split + 4..].to_vec()).into_response()
}

/// `host:port` of `url`.
fn authority(url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        u.host_str().unwrap(),
        u.port_or_known_default().unwrap()
    )
}

fn kubeconfig_server(kubeconfig: &str) -> String {
    let kc: serde_yaml::Value = serde_yaml::from_str(kubeconfig).unwrap();
    kc["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The requests of `log` to `authority`, tunnelled (`CONNECT authority`) or plain
/// (`METHOD authority/path`).
fn to<'a>(log: &'a [String], authority: &str) -> Vec<&'a str> {
    log.iter()
        .map(String::as_str)
        .filter(|r| {
            *r == format!("CONNECT {authority}")
                || r.split_once(' ')
                    .is_some_and(|(_, target)| target.starts_with(&format!("{authority}/")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_client_of_the_bot_goes_through_the_proxy_in_the_create_story() {
    let timings = Timings::default();
    let env = start_env(&timings).await;
    let proxy = ProxyPy::start().await;

    // The bot fetches the config repository from the emulated GitHub over HTTP (not the bare
    // remote's path, which no proxy can see).
    let git = GitHttp::serve(&env.remote).await;
    let mut cfg = env.bot_config(&timings);
    cfg.github.clone_url = Some(git.url.clone());
    let cfg_path = env.workdir.join("bot-proxied.yaml");
    std::fs::write(&cfg_path, serde_yaml::to_string(&cfg).unwrap()).unwrap();
    // libgit2 (OpenSSL) trusts the git server's CA through SSL_CERT_FILE.
    let ca_file = env.workdir.join("git-ca.pem");
    std::fs::write(&ca_file, &git.ca_pem).unwrap();
    let mut cmd = tokio::process::Command::new(crate::support::tkgops_bin());
    cmd.arg("serve").arg("--config").arg(&cfg_path);
    for var in tkgops_providers::proxy::PROXY_VARIABLES {
        cmd.env_remove(var);
    }
    cmd.envs(env.bot_env())
        .env("HTTPS_PROXY", proxy.url())
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "")
        .env("SSL_CERT_FILE", &ca_file)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut bot = cmd.spawn().expect("tkgops serve");

    let (cluster, request) = request_files(None, &env.vpc);
    let pr = env
        .open_pull_request(
            &format!("add-{cluster}"),
            &format!("Add cluster {cluster}"),
            &request,
        )
        .expect("pull request");
    let head = head_of(&env, &format!("add-{cluster}"));
    let plan = env
        .wait_status(&head, tkgops::PLAN_CONTEXT, Duration::from_secs(120))
        .await;
    if plan.is_err() {
        bot.kill().await.ok();
        let out = bot.wait_with_output().await.unwrap();
        panic!(
            "no plan status; the bot said:\n{}\nthe proxy saw: {:#?}",
            String::from_utf8_lossy(&out.stderr),
            proxy.requests()
        );
    }
    assert_eq!(plan.unwrap(), "success", "{}", env.conversation(pr));
    env.github.submit_review(pr, APPROVER, "APPROVED").unwrap();
    let merge = env.github.merge_pull_request(pr, APPROVER).unwrap();
    let apply = env
        .wait_status(&merge, tkgops::APPLY_CONTEXT, Duration::from_secs(300))
        .await
        .expect("apply status");
    assert_eq!(apply, "success", "{}", env.conversation(pr));
    bot.kill().await.ok();

    // proxy.py logs a connection's first request when the connection closes: the bot's
    // keep-alive connections closed when it was killed, and their lines follow.
    let github = authority(&env.github.api_url());
    let api_path = url::Url::parse(&env.github.api_url())
        .unwrap()
        .path()
        .trim_end_matches('/')
        .to_string();
    let git_authority = authority(&git.url);
    let mgmt = env
        .kube
        .cluster(MANAGEMENT_CLUSTER)
        .expect("management cluster");
    let kube = authority(&kubeconfig_server(&mgmt.kubeconfig_yaml()));
    let moto = authority(&env.moto.endpoint_url());
    let tmc = authority(&env.tmc.url());
    type Check<'a> = (&'a str, Box<dyn Fn(&[String]) -> bool + 'a>);
    let checks: Vec<Check> = vec![
        // The GitHub API: plain HTTP requests to the API (reqwest sends http:// requests to
        // the proxy in absolute form, never as a tunnel).
        (
            "the GitHub API",
            Box::new(|log| {
                to(log, &github).iter().any(|r| {
                    let path = r.split_once('/').map_or("", |(_, p)| p);
                    !r.starts_with("CONNECT")
                        && format!("/{path}").starts_with(&format!("{api_path}/"))
                })
            }),
        ),
        // git: the fetches of the config repository (HTTPS: a tunnel).
        (
            "git",
            Box::new(|log| log.contains(&format!("CONNECT {git_authority}"))),
        ),
        // Kubernetes: the management cluster's API server (HTTPS: a tunnel).
        (
            "the Kubernetes API",
            Box::new(|log| log.contains(&format!("CONNECT {kube}"))),
        ),
        // EC2: moto's endpoint.
        ("EC2 (moto)", Box::new(|log| !to(log, &moto).is_empty())),
        // TMC: its client's first request is the CSP token exchange; the TMC API calls that
        // follow share its keep-alive connection, which proxy.py logs by its first request.
        (
            "TMC",
            Box::new(|log| {
                to(log, &tmc)
                    .iter()
                    .any(|r| r.contains("/csp/gateway/am/api/auth/api-tokens/authorize"))
            }),
        ),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let log = proxy.requests();
        let missing: Vec<&str> = checks
            .iter()
            .filter(|(_, seen)| !seen(&log))
            .map(|(what, _)| *what)
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not through the proxy: {missing:?}; its log:\n{}",
            std::fs::read_to_string(&proxy.log).unwrap_or_default()
        );
    }

    drop(proxy);
    env.shutdown().await;
}

#[test]
fn access_log_lines_give_the_request() {
    let log = "\
2026-12-06 19:42:16,157 - pid:6342 [I] plugins.load:89 - Loaded plugin proxy.http.proxy.HttpProxyPlugin
2026-12-06 19:42:16,404 - pid:6386 [I] server.access_log:393 - 127.0.0.1:53492 - GET 127.0.0.1:18777/x - 404 File not found - 520 bytes - 8.29ms
2026-12-06 19:42:16,433 - pid:6386 [I] server.access_log:393 - 127.0.0.1:53500 - CONNECT 127.0.0.1:18777 - 520 bytes - 2.66ms
";
    let requests = access_log_requests(log);
    assert_eq!(
        requests,
        ["GET 127.0.0.1:18777/x", "CONNECT 127.0.0.1:18777"]
    );
    assert_eq!(to(&requests, "127.0.0.1:18777").len(), 2);
    assert!(to(&requests, "127.0.0.1:1877").is_empty());
}
