//! The run history for operators: `tkgops runs list|show`, `tkgops journal export` and the
//! bot's read-only admin endpoint (`GET /admin/runs`, `GET /admin/runs/{id}`).
//!
//! The commands read either a journal no bot has open ([`open_closed_journal`]: the sled
//! store under `stateDir/journal`, opened directly; a running bot holds sled's file lock, and
//! the command then tells to use `--url`), or a running bot's admin endpoint
//! ([`admin_router`], served on `adminListen`, by default `127.0.0.1:8081`, never on the
//! webhook listener). Both give the engine's [`RunRecord`]s: steps, attempts, errors, times,
//! the origin (the pull request, `github:pr/N`, or the schedule) and the commit.
//!
//! Runs hold no secrets: step inputs and outputs are secret-free by the executor contract,
//! and the store truncates error strings (which the redaction of logs and comments does not
//! see) to 2 KiB; an export is safe to keep for audit as far as the bot's own credentials go.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use tkgops_engine::store::{RunFilter, RunRecord, RunState, SledStore, Store, StoreError};

/// Errors of the history commands.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// No journal under the state directory.
    #[error("no journal at {0} (is --state-dir the bot's stateDir?)")]
    NoJournal(PathBuf),
    /// A running bot holds the journal (sled's file lock): ask it through its admin endpoint.
    #[error(
        "the journal at {0} is open by a running bot (it holds the journal's lock); ask the bot \
         instead: --url http://127.0.0.1:8081 (its adminListen)"
    )]
    Locked(PathBuf),
    /// The journal could not be read.
    #[error("journal: {0}")]
    Store(#[from] StoreError),
    /// The admin endpoint could not be reached or answered an error.
    #[error("admin endpoint {url}: {message}")]
    Http {
        /// The URL asked.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// No run with this id.
    #[error("no run {0}")]
    NotFound(String),
    /// Output could not be written.
    #[error("writing: {0}")]
    Io(#[from] std::io::Error),
}

/// Opens the journal of `state_dir` (`state_dir/journal`) that no bot has open. Opening a
/// journal of an older store schema migrates it in place, as the bot would.
///
/// Errors: [`HistoryError::NoJournal`] when there is none, [`HistoryError::Locked`] when a
/// process holds it (after the store's lock wait, 5 s), [`HistoryError::Store`] otherwise
/// (among them a journal of a newer schema).
pub fn open_closed_journal(state_dir: &Path) -> Result<SledStore, HistoryError> {
    let path = state_dir.join("journal");
    if !path.join("conf").exists() && !path.join("db").exists() {
        return Err(HistoryError::NoJournal(path));
    }
    SledStore::open(&path).map_err(|e| match e {
        StoreError::Sled(sled::Error::Io(io))
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("could not acquire lock") =>
        {
            HistoryError::Locked(path)
        }
        e => HistoryError::Store(e),
    })
}

/// Where the history is read from.
pub enum Source {
    /// A journal no bot has open.
    Journal(Arc<dyn Store>),
    /// A bot's admin endpoint (base URL, e.g. `http://127.0.0.1:8081`).
    Url(String),
}

impl Source {
    /// The runs passing `filter`, in submission order.
    ///
    /// Errors: [`HistoryError::Store`], [`HistoryError::Http`].
    pub async fn list(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, HistoryError> {
        match self {
            Source::Journal(store) => Ok(store.list_runs(filter).await?),
            Source::Url(base) => {
                let mut query = Vec::new();
                if let Some(c) = &filter.cluster {
                    query.push(("cluster", c.clone()));
                }
                if let Some(s) = filter.state {
                    query.push(("state", state_name(s).to_string()));
                }
                let url = format!("{}/admin/runs", base.trim_end_matches('/'));
                get_json(&url, &query)
                    .await?
                    .ok_or_else(|| HistoryError::Http {
                        url,
                        message: "404".into(),
                    })
            }
        }
    }

    /// The run `id`.
    ///
    /// Errors: [`HistoryError::NotFound`], [`HistoryError::Store`], [`HistoryError::Http`].
    pub async fn get(&self, id: &str) -> Result<RunRecord, HistoryError> {
        let found = match self {
            Source::Journal(store) => store.get_run(id).await?,
            Source::Url(base) => {
                let url = format!("{}/admin/runs/{}", base.trim_end_matches('/'), encode(id));
                get_json(&url, &[]).await?
            }
        };
        found.ok_or_else(|| HistoryError::NotFound(id.to_string()))
    }
}

/// `id` percent-encoded for a path segment (run ids hold `@` and `#`).
fn encode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// GET `url` with `query`: the decoded JSON body, `None` on 404.
async fn get_json<T: serde::de::DeserializeOwned>(
    url: &str,
    query: &[(&str, String)],
) -> Result<Option<T>, HistoryError> {
    let http = |message: String| HistoryError::Http {
        url: url.to_string(),
        message,
    };
    let resp = reqwest::Client::new()
        .get(url)
        .query(query)
        .send()
        .await
        .map_err(|e| http(e.to_string()))?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(http(format!("{status}: {}", body.trim())));
    }
    resp.json().await.map(Some).map_err(|e| http(e.to_string()))
}

/// The name of `state` in the journal and on the command line (`queued`, `running`,
/// `succeeded`, `failed`, `cancelled`).
pub fn state_name(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "queued",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
    }
}

/// The state named `name` ([`state_name`]), or `None`.
pub fn parse_state(name: &str) -> Option<RunState> {
    [
        RunState::Queued,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ]
    .into_iter()
    .find(|s| state_name(*s) == name.to_ascii_lowercase())
}

/// `to - from` as `1h 2m 3s` (whole seconds), or `-` when `to` is `None`.
fn duration(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> String {
    match (from, to) {
        (Some(f), Some(t)) => {
            let secs = (t - f).num_seconds().max(0) as u64;
            humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
        }
        _ => "-".to_string(),
    }
}

fn time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
    )
}

/// The runs as a table, one line each: id, cluster, workflow, state, steps done/total, origin,
/// commit (12 characters), creation time (UTC), duration (creation to end).
pub fn render_list(runs: &[RunRecord]) -> String {
    let header = [
        "RUN", "CLUSTER", "WORKFLOW", "STATE", "STEPS", "ORIGIN", "COMMIT", "CREATED", "DURATION",
    ];
    let rows: Vec<[String; 9]> = runs
        .iter()
        .map(|r| {
            let done = r.steps.iter().filter(|s| s.state.is_terminal()).count();
            [
                r.id.clone(),
                r.cluster.clone(),
                r.workflow.clone(),
                state_name(r.state).to_string(),
                format!("{done}/{}", r.steps.len()),
                r.origin.clone().unwrap_or_else(|| "-".into()),
                r.commit_sha.chars().take(12).collect(),
                time(Some(r.created_at)),
                duration(Some(r.created_at), r.finished_at),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(text.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    out
}

/// One run in full: its fields, then each step with its state, times, duration, error and
/// every attempt (number, outcome, start, duration, error).
pub fn render_show(r: &RunRecord) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    field("run", r.id.clone());
    field("cluster", r.cluster.clone());
    field("workflow", r.workflow.clone());
    field("state", state_name(r.state).into());
    field("origin", r.origin.clone().unwrap_or_else(|| "-".into()));
    field("commit", r.commit_sha.clone());
    field("seq", r.seq.to_string());
    field("created", time(Some(r.created_at)));
    field("updated", time(Some(r.updated_at)));
    field("finished", time(r.finished_at));
    field("duration", duration(Some(r.created_at), r.finished_at));
    if let Some(e) = &r.error {
        field("error", e.clone());
    }
    if let Some(n) = &r.note {
        field("note", n.clone());
    }
    out.push_str("steps:\n");
    for (i, s) in r.steps.iter().enumerate() {
        out.push_str(&format!(
            "  {}. {} ({}): {}, started {}, finished {}, took {}\n",
            i + 1,
            s.spec.id,
            s.spec.title,
            format!("{:?}", s.state).to_lowercase(),
            time(s.started_at),
            time(s.finished_at),
            duration(s.started_at, s.finished_at),
        ));
        if let Some(e) = &s.error {
            out.push_str(&format!("     error: {e}\n"));
        }
        for a in &s.attempts {
            out.push_str(&format!(
                "     attempt {}: {}, started {}, took {}{}\n",
                a.number,
                a.outcome.as_deref().unwrap_or("in flight"),
                time(Some(a.started_at)),
                duration(Some(a.started_at), a.finished_at),
                a.error
                    .as_deref()
                    .map(|e| format!(", error: {e}"))
                    .unwrap_or_default(),
            ));
        }
    }
    out
}

/// Writes every run of `store` to `out` as JSON lines (one [`RunRecord`] per line, every
/// field, camelCase as the journal stores it), in submission order. Returns how many.
///
/// Errors: [`HistoryError::Store`], [`HistoryError::Io`].
pub async fn export(store: &dyn Store, out: &mut dyn Write) -> Result<usize, HistoryError> {
    let runs = store.list_runs(&RunFilter::default()).await?;
    for r in &runs {
        serde_json::to_writer(&mut *out, r).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(runs.len())
}

/// The admin endpoint's routes on `store`, read-only:
/// - `GET /admin/runs?cluster=NAME&state=STATE`: the runs (JSON array of [`RunRecord`]s, in
///   submission order); both parameters optional; 400 for an unknown state;
/// - `GET /admin/runs/{id}`: one run, 404 when there is none.
///
/// Serve it on its own listener bound to loopback (`adminListen`), never with the webhook: it
/// has no authentication.
pub fn admin_router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/admin/runs", get(list_runs))
        .route("/admin/runs/{id}", get(show_run))
        .with_state(store)
}

async fn list_runs(
    State(store): State<Arc<dyn Store>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let state = match q.get("state").filter(|s| !s.is_empty()) {
        Some(s) => match parse_state(s) {
            Some(s) => Some(s),
            None => {
                return (StatusCode::BAD_REQUEST, format!("unknown state {s:?}\n")).into_response()
            }
        },
        None => None,
    };
    let filter = RunFilter {
        cluster: q.get("cluster").filter(|c| !c.is_empty()).cloned(),
        state,
    };
    match store.list_runs(&filter).await {
        Ok(runs) => Json(runs).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn show_run(State(store): State<Arc<dyn Store>>, UrlPath(id): UrlPath<String>) -> Response {
    match store.get_run(&id).await {
        Ok(Some(run)) => Json(run).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no run {id}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tkgops_engine::store::{AttemptRecord, StepRecord, StepState};
    use tower::ServiceExt;

    fn run(id: &str, cluster: &str, seq: u64, state: RunState) -> RunRecord {
        let t = chrono::TimeZone::with_ymd_and_hms(&Utc, 2025, 5, 1, 10, 0, 0).unwrap();
        let spec = tkgops_engine::StepSpec {
            id: "apply".into(),
            title: "Apply the Cluster".into(),
            timeout_secs: 60,
            retry: Default::default(),
            inputs: tkgops_engine::StepInputs::KubeWaitCluster(
                tkgops_domain::step::WorkloadTarget {
                    management_cluster: "mc".into(),
                    kubeconfig: None,
                    namespace: "default".into(),
                    cluster_name: cluster.into(),
                },
            ),
        };
        let mut step = StepRecord::pending(spec);
        step.state = StepState::Failed;
        step.started_at = Some(t);
        step.finished_at = Some(t + chrono::Duration::seconds(90));
        step.error = Some("subnet not found".into());
        step.attempts = vec![AttemptRecord {
            number: 1,
            started_at: t,
            finished_at: Some(t + chrono::Duration::seconds(90)),
            error: Some("subnet not found".into()),
            outcome: Some("permanent".into()),
        }];
        RunRecord {
            id: id.into(),
            cluster: cluster.into(),
            workflow: "create-cluster".into(),
            commit_sha: "0123456789abcdef0123456789abcdef01234567".into(),
            origin: Some("github:pr/12".into()),
            state,
            seq,
            created_at: t,
            updated_at: t,
            finished_at: state
                .is_terminal()
                .then(|| t + chrono::Duration::seconds(95)),
            steps: vec![step],
            error: Some("apply: subnet not found".into()),
            note: None,
        }
    }

    async fn store() -> Arc<dyn Store> {
        let store: Arc<dyn Store> = Arc::new(SledStore::temporary().unwrap());
        store
            .put_run(&run("a@0123#create-cluster", "team-a", 1, RunState::Failed))
            .await
            .unwrap();
        store
            .put_run(&run("b@0123#create-cluster", "team-b", 2, RunState::Failed))
            .await
            .unwrap();
        store
    }

    async fn get(app: Router, uri: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn the_admin_endpoint_lists_filters_and_shows_runs() {
        let store = store().await;
        let app = admin_router(store.clone());
        let (status, body) = get(app.clone(), "/admin/runs").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let all: Vec<RunRecord> = serde_json::from_str(&body).unwrap();
        assert_eq!(all, store.list_runs(&RunFilter::default()).await.unwrap());
        assert_eq!(all.len(), 2);

        let (_, body) = get(app.clone(), "/admin/runs?cluster=team-b&state=failed").await;
        let b: Vec<RunRecord> = serde_json::from_str(&body).unwrap();
        assert_eq!(
            b.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["b@0123#create-cluster"]
        );
        let (_, body) = get(app.clone(), "/admin/runs?state=succeeded").await;
        assert_eq!(body, "[]");
        let (status, _) = get(app.clone(), "/admin/runs?state=bogus").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        let (status, body) = get(
            app.clone(),
            &format!("/admin/runs/{}", encode("a@0123#create-cluster")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let a: RunRecord = serde_json::from_str(&body).unwrap();
        assert_eq!(a.steps[0].attempts[0].outcome.as_deref(), Some("permanent"));
        let (status, _) = get(app, "/admin/runs/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn list_and_show_render_steps_attempts_errors_and_durations() {
        let runs = store()
            .await
            .list_runs(&RunFilter::default())
            .await
            .unwrap();
        let table = render_list(&runs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("RUN "), "{table}");
        for cell in [
            "a@0123#create-cluster",
            "team-a",
            "failed",
            "1/1",
            "github:pr/12",
            "0123456789ab",
            "2025-05-01 10:00:00Z",
            "1m 35s",
        ] {
            assert!(lines[1].contains(cell), "{cell} in {table}");
        }
        let shown = render_show(&runs[0]);
        for part in [
            "commit     0123456789abcdef0123456789abcdef01234567",
            "origin     github:pr/12",
            "error      apply: subnet not found",
            "1. apply (Apply the Cluster): failed",
            "took 1m 30s",
            "attempt 1: permanent",
            "error: subnet not found",
        ] {
            assert!(shown.contains(part), "{part:?} in {shown}");
        }
    }

    #[tokio::test]
    async fn an_export_is_one_run_per_line_with_every_field() {
        let store = store().await;
        let mut out = Vec::new();
        assert_eq!(export(store.as_ref(), &mut out).await.unwrap(), 2);
        let text = String::from_utf8(out).unwrap();
        let back: Vec<RunRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, store.list_runs(&RunFilter::default()).await.unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_journal_a_bot_holds_is_refused_with_a_pointer_to_the_admin_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            open_closed_journal(dir.path()),
            Err(HistoryError::NoJournal(_))
        ));
        let held = SledStore::open(&dir.path().join("journal")).unwrap();
        let err = open_closed_journal(dir.path()).unwrap_err();
        assert!(matches!(err, HistoryError::Locked(_)), "{err}");
        assert!(err.to_string().contains("--url"), "{err}");
        drop(held);
        assert!(open_closed_journal(dir.path()).is_ok());
    }
}
