//! REST handlers of the GitHub emulator.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use axum::Extension;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::shapes::{PullView, ReviewView, StatusView};
use super::{
    app, git, hooks, GitHubEmulatorError, HeadRepo, InstallationToken, MergeError, MergeMethod,
    MergeRequest, NewPull, Principal, Role, Shared, Status, MAX_COMMENT_CHARS, MAX_PULL_COMMITS,
    RATE_LIMIT,
};

const DOCS: &str = "https://docs.github.com/rest";

type Sh = State<Arc<Shared>>;

/// The caller, set by [`auth`].
type Caller = Extension<Principal>;

/// An error answer: HTTP status plus GitHub's JSON error body.
struct ApiError(StatusCode, Value);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(self.1)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn not_found() -> ApiError {
    ApiError(
        StatusCode::NOT_FOUND,
        json!({"message": "Not Found", "documentation_url": DOCS}),
    )
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "github emulator: internal error");
    ApiError(
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"message": format!("emulator error: {e}")}),
    )
}

fn bad_json() -> ApiError {
    ApiError(
        StatusCode::BAD_REQUEST,
        json!({"message": "Problems parsing JSON", "documentation_url": DOCS}),
    )
}

fn validation(resource: &str, field: &str, code: &str, message: Option<&str>) -> ApiError {
    let mut err = json!({"resource": resource, "code": code, "field": field});
    if let Some(m) = message {
        err["message"] = json!(m);
    }
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"message": "Validation Failed", "errors": [err], "documentation_url": DOCS}),
    )
}

/// A 422 "Validation Failed" with a `custom` error (GitHub's shape: no `field`).
fn custom_validation(resource: &str, message: &str) -> ApiError {
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"message": "Validation Failed",
            "errors": [{"resource": resource, "code": "custom", "message": message}],
            "documentation_url": DOCS}),
    )
}

/// A 422 "Unprocessable Entity" whose `errors` are plain messages (GitHub's review answers).
fn unprocessable(message: &str) -> ApiError {
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        json!({"message": "Unprocessable Entity", "errors": [message],
            "documentation_url": DOCS, "status": "422"}),
    )
}

fn unauthorized(message: &str) -> ApiError {
    ApiError(
        StatusCode::UNAUTHORIZED,
        json!({"message": message, "documentation_url": DOCS}),
    )
}

fn not_accessible_by_integration() -> ApiError {
    ApiError(
        StatusCode::FORBIDDEN,
        json!({"message": "Resource not accessible by integration",
            "documentation_url": DOCS, "status": "403"}),
    )
}

/// GitHub's 403 for a caller whose repository role does not allow the action: an App
/// installation gets `Resource not accessible by integration`; a user gets the emulator's
/// message naming the role it lacks (GitHub's wording varies by endpoint and token kind).
fn forbidden(caller: &Principal, e: &GitHubEmulatorError) -> ApiError {
    if *caller == Principal::Installation {
        return not_accessible_by_integration();
    }
    let message = match e {
        GitHubEmulatorError::Forbidden { needed, .. } if *needed >= Role::Write => {
            "Must have push access to repository".to_string()
        }
        GitHubEmulatorError::Forbidden { needed, .. } => {
            format!("Must have {} access to repository", needed.as_str())
        }
        other => other.to_string(),
    };
    ApiError(
        StatusCode::FORBIDDEN,
        json!({"message": message, "documentation_url": DOCS, "status": "403"}),
    )
}

/// `Ok` when the caller's login has at least role `needed`, else the 403 of [`forbidden`].
fn require(
    sh: &Shared,
    caller: &Principal,
    needed: Role,
    action: &str,
) -> Result<String, ApiError> {
    let st = sh.lock();
    let login = sh.login_of(&st, caller);
    sh.require(&st, &login, needed, || action.to_string())
        .map_err(|e| forbidden(caller, &e))?;
    Ok(login)
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice::<Value>(body).map_err(|_| bad_json())
}

fn query(raw: &Option<String>) -> HashMap<String, String> {
    url::form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn ok_json(status: StatusCode, v: Value) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Builds the routes (without the fault layer).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/user", get(get_user))
        .route("/app", get(get_app))
        .route("/app/installations/{id}", get(get_installation))
        .route(
            "/app/installations/{id}/access_tokens",
            post(create_access_token),
        )
        .route("/orgs/{org}/teams/{team}/members", get(list_team_members))
        .route("/repos/{o}/{r}", get(get_repo))
        .route("/repos/{o}/{r}/installation", get(repo_installation))
        .route("/repos/{o}/{r}/pulls", get(list_pulls).post(create_pull))
        .route("/repos/{o}/{r}/pulls/{n}", get(get_pull))
        .route("/repos/{o}/{r}/pulls/{n}/files", get(list_files))
        .route("/repos/{o}/{r}/pulls/{n}/commits", get(list_pull_commits))
        .route(
            "/repos/{o}/{r}/pulls/{n}/reviews",
            get(list_reviews).post(create_review),
        )
        .route("/repos/{o}/{r}/pulls/{n}/reviews/{id}", get(get_review))
        .route(
            "/repos/{o}/{r}/pulls/{n}/reviews/{id}/dismissals",
            put(dismiss_review),
        )
        .route(
            "/repos/{o}/{r}/pulls/{n}/merge",
            put(merge_pull).get(is_merged),
        )
        .route(
            "/repos/{o}/{r}/issues/{n}/comments",
            get(list_comments).post(create_comment),
        )
        .route(
            "/repos/{o}/{r}/issues/{n}/labels",
            get(list_labels).post(add_labels),
        )
        .route(
            "/repos/{o}/{r}/issues/{n}/labels/{name}",
            axum::routing::delete(remove_label),
        )
        .route("/repos/{o}/{r}/issues", get(list_issues).post(create_issue))
        .route(
            "/repos/{o}/{r}/issues/{n}",
            get(get_issue).patch(update_issue).post(update_issue),
        )
        .route("/repos/{o}/{r}/issues/comments", get(list_repo_comments))
        .route(
            "/repos/{o}/{r}/issues/comments/{id}",
            // GitHub also takes POST where it takes PATCH ("resource endpoints also accept
            // POST requests"); octocrab's `update_comment` sends POST.
            patch(update_comment)
                .post(update_comment)
                .get(get_comment)
                .delete(delete_comment),
        )
        .route(
            "/repos/{o}/{r}/statuses/{sha}",
            post(create_status).get(list_statuses),
        )
        .route("/repos/{o}/{r}/commits/{*rest}", get(commit_subresource))
        .fallback(|| async { not_found() })
        .layer(axum::middleware::from_fn_with_state(shared.clone(), auth))
        .with_state(shared)
}

/// The route template of a request: axum's matched path, with the catch-all of
/// `/commits/{*rest}` spelled as GitHub's documentation names the endpoint it served
/// (`{ref}`, `{ref}/status`, `{ref}/statuses`, …), so each maps to one permission.
fn route_template(matched: &str, path: &str) -> String {
    let Some(prefix) = matched.strip_suffix("{*rest}") else {
        return matched.to_string();
    };
    let literal_segments = prefix.split('/').filter(|s| !s.is_empty()).count();
    let rest: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(literal_segments)
        .collect();
    match rest.as_slice() {
        [] | [_] => format!("{prefix}{{ref}}"),
        [.., last] => format!("{prefix}{{ref}}/{last}"),
    }
}

/// Whether `path` is one of the endpoints that take the App's JWT (and only it).
fn is_app_path(path: &str) -> bool {
    path == "/app"
        || path.starts_with("/app/")
        || (path.starts_with("/repos/")
            && path.ends_with("/installation")
            && path.split('/').count() == 5)
}

/// Who the `Authorization` header (`Bearer X` or `token X`) authenticates, or GitHub's 401.
fn authenticate(sh: &Shared, req: &Request) -> Result<Principal, ApiError> {
    let bad = || unauthorized("Bad credentials");
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad)?
        .trim();
    let tok = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .or_else(|| header.strip_prefix("token "))
        .map(str::trim)
        .unwrap_or("");
    if tok.is_empty() {
        return Err(bad());
    }
    if !sh.opts.token.is_empty() && constant_eq(tok.as_bytes(), sh.opts.token.as_bytes()) {
        return Ok(Principal::Bot);
    }
    {
        let st = sh.lock();
        let user = st
            .users
            .iter()
            .filter(|(_, t)| constant_eq(tok.as_bytes(), t.as_bytes()))
            .map(|(l, _)| l.clone())
            .next();
        if let Some(login) = user {
            return Ok(Principal::User(login));
        }
        let now = Utc::now();
        let installation = st
            .installation_tokens
            .iter()
            .find(|t| constant_eq(tok.as_bytes(), t.token.as_bytes()));
        if let Some(t) = installation {
            // An expired installation token is refused like an unknown one.
            return if now < t.expires_at {
                Ok(Principal::Installation)
            } else {
                Err(bad())
            };
        }
    }
    match &sh.app {
        Some(app) if app::looks_like_jwt(tok) => {
            app.verify(tok).map(Principal::App).map_err(unauthorized)
        }
        _ => Err(bad()),
    }
}

/// Authenticates every request (GitHub's 401 `Bad credentials` for an unknown or expired
/// token), keeps the App's JWT to the App endpoints and those endpoints to it, passes the
/// caller to the handlers, and adds `x-ratelimit-*` headers to every answer.
async fn auth(State(sh): Sh, mut req: Request, next: Next) -> Response {
    let app_path = is_app_path(req.uri().path());
    let principal = authenticate(&sh, &req).and_then(|p| match (&p, app_path) {
        (Principal::App(_), true) => Ok(p),
        // GitHub's answer when anything but the App's JWT calls an App endpoint.
        (_, true) => Err(unauthorized(app::JWT_UNDECODABLE)),
        (Principal::App(_), false) => Err(not_accessible_by_integration()),
        (_, false) => Ok(p),
    });
    let ok = principal.is_ok();
    if let Ok(Principal::Bot | Principal::Installation | Principal::App(_)) = &principal {
        let route = match req.extensions().get::<axum::extract::MatchedPath>() {
            Some(m) => route_template(m.as_str(), req.uri().path()),
            None => format!("<unmatched> {}", req.uri().path()),
        };
        sh.bot_routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(format!("{} {route}", req.method()));
    }
    let mut resp = match principal {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    };
    let (used, reset) = {
        let mut st = sh.lock();
        let now = Utc::now().timestamp();
        if now >= st.rate_reset {
            st.rate_reset = now + 3600;
            st.rate_used = 0;
        }
        if ok {
            st.rate_used += 1;
        }
        (st.rate_used, st.rate_reset)
    };
    let h = resp.headers_mut();
    h.insert("x-ratelimit-limit", HeaderValue::from(RATE_LIMIT));
    h.insert(
        "x-ratelimit-remaining",
        HeaderValue::from(RATE_LIMIT.saturating_sub(used)),
    );
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
    h.insert("x-ratelimit-used", HeaderValue::from(used));
    h.insert("x-ratelimit-resource", HeaderValue::from_static("core"));
    h.insert(
        "x-github-api-version-selected",
        HeaderValue::from_static("2022-11-28"),
    );
    resp
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_repo(sh: &Shared, o: &str, r: &str) -> Result<(), ApiError> {
    if o.eq_ignore_ascii_case(&sh.opts.owner) && r.eq_ignore_ascii_case(&sh.opts.repo) {
        Ok(())
    } else {
        Err(not_found())
    }
}

fn parse_num(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>().map_err(|_| not_found())
}

/// Slices `items` by `page`/`per_page` (default 30, max 100) and adds a `Link` header.
fn paginate(sh: &Shared, path: &str, q: &HashMap<String, String>, items: Vec<Value>) -> Response {
    let per_page = q
        .get("per_page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(30)
        .min(100);
    let page = q
        .get("page")
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|v| *v > 0)
        .unwrap_or(1);
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let start = (page - 1).saturating_mul(per_page).min(total);
    let end = start.saturating_add(per_page).min(total);
    let slice: Vec<Value> = items.into_iter().skip(start).take(end - start).collect();
    let mut resp = ok_json(StatusCode::OK, Value::Array(slice));
    let link_for = |p: usize| {
        let mut params: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| k.as_str() != "page" && k.as_str() != "per_page")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("per_page".into(), per_page.to_string()));
        params.push(("page".into(), p.to_string()));
        let qs = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        format!("{}{}?{}", sh.api_url, path, qs)
    };
    let mut links = Vec::new();
    if page < last {
        links.push(format!("<{}>; rel=\"next\"", link_for(page + 1)));
        links.push(format!("<{}>; rel=\"last\"", link_for(last)));
    }
    if page > 1 {
        links.push(format!("<{}>; rel=\"first\"", link_for(1)));
        links.push(format!(
            "<{}>; rel=\"prev\"",
            link_for((page - 1).min(last))
        ));
    }
    if !links.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

async fn get_user(State(sh): Sh, Extension(p): Caller) -> ApiResult {
    if p == Principal::Installation {
        // An installation is not a user.
        return Err(not_accessible_by_integration());
    }
    let login = sh.login_of(&sh.lock(), &p);
    Ok(ok_json(StatusCode::OK, sh.ctx().user(&login)))
}

/// `GET /orgs/{org}/teams/{team}/members`: the team's members as simple users, paginated;
/// 404 for an unknown team (GitHub also answers 404 when the caller may not see it).
async fn list_team_members(
    State(sh): Sh,
    Path((org, team)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    let members = sh.team_members(&org, &team).ok_or_else(not_found)?;
    let ctx = sh.ctx();
    let items = members.iter().map(|m| ctx.user(m)).collect();
    Ok(paginate(
        &sh,
        &format!("/orgs/{org}/teams/{team}/members"),
        &query(&raw),
        items,
    ))
}

/// The App's creation time shown by `GET /app` (fixed: the emulator's own start is as good).
fn app_created() -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(1_650_000_000, 0).unwrap_or_else(Utc::now)
}

async fn get_app(State(sh): Sh) -> ApiResult {
    let app = sh.app.as_ref().ok_or_else(not_found)?;
    Ok(ok_json(
        StatusCode::OK,
        sh.ctx().integration(&app.opts, &app_created()),
    ))
}

async fn get_installation(State(sh): Sh, Path(id): Path<String>) -> ApiResult {
    let app = sh.app.as_ref().ok_or_else(not_found)?;
    if parse_num(&id)? != app.opts.installation_id {
        return Err(not_found());
    }
    Ok(ok_json(
        StatusCode::OK,
        sh.ctx().installation(&app.opts, &app_created()),
    ))
}

async fn repo_installation(State(sh): Sh, Path((o, r)): Path<(String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let app = sh.app.as_ref().ok_or_else(not_found)?;
    Ok(ok_json(
        StatusCode::OK,
        sh.ctx().installation(&app.opts, &app_created()),
    ))
}

/// `POST /app/installations/{id}/access_tokens`: a new installation token valid for the App's
/// token TTL. `repositories` (names) may only name the emulated repository.
async fn create_access_token(
    State(sh): Sh,
    Extension(caller): Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult {
    let app = sh.app.as_ref().ok_or_else(not_found)?;
    if parse_num(&id)? != app.opts.installation_id {
        return Err(not_found());
    }
    let b = parse_body(&body)?;
    if let Some(names) = b.get("repositories").and_then(Value::as_array) {
        if names.iter().any(|n| {
            !n.as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(&sh.opts.repo))
        }) {
            return Err(unprocessable(
                "There is at least one repository that does not exist or is not accessible to the parent installation.",
            ));
        }
    }
    let ttl = chrono::Duration::from_std(app.opts.token_ttl)
        .unwrap_or_else(|_| chrono::Duration::hours(1));
    // GitHub's expires_at has whole seconds; round down so the token never outlives it.
    let expires_at = chrono::DateTime::from_timestamp((Utc::now() + ttl).timestamp(), 0)
        .unwrap_or_else(Utc::now);
    let token = app::new_installation_token();
    let key = match caller {
        Principal::App(key) => key,
        _ => return Err(unauthorized(app::JWT_UNDECODABLE)),
    };
    sh.lock().installation_tokens.push(InstallationToken {
        token: token.clone(),
        expires_at,
        key,
    });
    Ok(ok_json(
        StatusCode::CREATED,
        json!({
            "token": token,
            "expires_at": super::shapes::ts(&expires_at),
            "permissions": super::shapes::app_permissions(),
            "repository_selection": "selected",
        }),
    ))
}

async fn get_repo(State(sh): Sh, Path((o, r)): Path<(String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    Ok(ok_json(StatusCode::OK, sh.ctx().repository(&Utc::now())))
}

/// Renders PR `n` (refreshing its head from the bare repository first).
fn render_pull(
    sh: &Shared,
    repo: &git2::Repository,
    n: u64,
    simple: bool,
) -> Result<Option<Value>, ApiError> {
    let mut st = sh.lock();
    let comments = st.comments.iter().filter(|c| c.issue == n).count();
    let Some(pull) = st.pulls.get_mut(&n) else {
        return Ok(None);
    };
    sh.refresh(repo, pull).map_err(internal)?;
    let p = pull.clone();
    drop(st);
    pull_json(sh, repo, &p, comments, simple)
        .map(Some)
        .map_err(internal)
}

/// The JSON of pull request `p` (full shape, or the list shape when `simple`) with `comments`
/// issue comments; mergeability and diff figures are computed from the bare repository.
pub(super) fn pull_json(
    sh: &Shared,
    repo: &git2::Repository,
    p: &super::Pull,
    comments: usize,
    simple: bool,
) -> Result<Value, String> {
    let base_sha = match &p.base_sha_closed {
        Some(s) => s.clone(),
        None => git::branch_tip(repo, &p.base_ref)
            .map_err(|e| e.to_string())?
            .map(|o| o.to_string())
            .unwrap_or_default(),
    };
    let (mut mergeable, mut commits, mut additions, mut deletions, mut changed) =
        (None, 0, 0, 0, 0);
    if let (Ok(b), Ok(h)) = (
        git2::Oid::from_str(&base_sha),
        git2::Oid::from_str(&p.head_sha),
    ) {
        if p.open {
            mergeable = git::mergeable(repo, b, h).ok();
        }
        if !simple {
            let base_for_diff = if p.merged {
                repo.merge_base(b, h).unwrap_or(b)
            } else {
                b
            };
            commits = git::commit_count(repo, base_for_diff, h).unwrap_or(0);
            if let Ok(files) = git::changed_files(repo, base_for_diff, h) {
                changed = files.len();
                additions = files.iter().map(|f| f.additions).sum();
                deletions = files.iter().map(|f| f.deletions).sum();
            }
        }
    }
    let view = PullView {
        number: p.number,
        head_repo: &p.head_repo,
        open: p.open,
        title: &p.title,
        body: &p.body,
        author: &p.author,
        created_at: &p.created_at,
        updated_at: &p.updated_at,
        closed_at: p.closed_at.as_ref(),
        merged_at: p.merged_at.as_ref(),
        merge_commit_sha: p.merge_commit_sha.as_deref(),
        merged_by: p.merged_by.as_deref(),
        merged: p.merged,
        mergeable,
        head_ref: &p.head_ref,
        head_sha: &p.head_sha,
        base_ref: &p.base_ref,
        base_sha: &base_sha,
        comments,
        commits,
        additions,
        deletions,
        changed_files: changed,
        labels: &p.labels,
    };
    Ok(sh.ctx().pull(&view, &Utc::now(), simple))
}

/// The login of a pull request's head owner (`owner` in the `head` filter `owner:branch`).
fn head_owner<'a>(sh: &'a Shared, p: &'a super::Pull) -> &'a str {
    match &p.head_repo {
        HeadRepo::Base => &sh.opts.owner,
        HeadRepo::Fork { owner, .. } => owner,
        HeadRepo::Deleted => &p.author,
    }
}

async fn list_pulls(
    State(sh): Sh,
    Path((o, r)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let q = query(&raw);
    let repo = sh.repo().map_err(internal)?;
    let state = q.get("state").map(String::as_str).unwrap_or("open");
    let sort = q.get("sort").map(String::as_str).unwrap_or("created");
    let desc = match q.get("direction").map(String::as_str) {
        Some("asc") => false,
        Some("desc") => true,
        _ => sort == "created",
    };
    // `head` is `owner:branch` (GitHub ignores a filter without the owner prefix's branch).
    let head_filter = q.get("head").map(|h| match h.split_once(':') {
        Some((owner, branch)) => (Some(owner.to_string()), branch.to_string()),
        None => (None, h.clone()),
    });
    let mut pulls: Vec<super::Pull> = {
        let mut st = sh.lock();
        for p in st.pulls.values_mut() {
            sh.refresh(&repo, p).map_err(internal)?;
        }
        st.pulls.values().cloned().collect()
    };
    pulls.retain(|p| match state {
        "open" => p.open,
        "closed" => !p.open,
        "all" => true,
        _ => false,
    });
    if let Some(base) = q.get("base") {
        pulls.retain(|p| &p.base_ref == base);
    }
    if let Some((owner, branch)) = &head_filter {
        pulls.retain(|p| {
            &p.head_ref == branch
                && owner
                    .as_deref()
                    .is_none_or(|o| o.eq_ignore_ascii_case(head_owner(&sh, p)))
        });
    }
    pulls.sort_by(|a, b| {
        let key = |p: &super::Pull| {
            if sort == "updated" {
                (p.updated_at, p.number)
            } else {
                (p.created_at, p.number)
            }
        };
        key(a).cmp(&key(b))
    });
    if desc {
        pulls.reverse();
    }
    let mut items = Vec::with_capacity(pulls.len());
    for p in &pulls {
        if let Some(v) = render_pull(&sh, &repo, p.number, true)? {
            items.push(v);
        }
    }
    Ok(paginate(&sh, &format!("/repos/{o}/{r}/pulls"), &q, items))
}

fn str_field<'a>(b: &'a Value, name: &str) -> Option<&'a str> {
    b.get(name).and_then(Value::as_str)
}

/// `POST /repos/{o}/{r}/pulls` `{title, head, base, body}`: opens a pull request as the caller,
/// with GitHub's validation errors (missing fields, unknown branches, no commits between base
/// and head, an open pull request for the same head and base already).
async fn create_pull(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let b = parse_body(&body)?;
    let title = str_field(&b, "title").filter(|t| !t.trim().is_empty());
    let head = str_field(&b, "head").filter(|h| !h.is_empty());
    let base = str_field(&b, "base").filter(|h| !h.is_empty());
    for (name, v) in [("title", title), ("head", head), ("base", base)] {
        if v.is_none() {
            return Err(validation("PullRequest", name, "missing_field", None));
        }
    }
    let (Some(title), Some(head), Some(base)) = (title, head, base) else {
        return Err(validation("PullRequest", "head", "missing_field", None));
    };
    let text = str_field(&b, "body").unwrap_or("");
    body_within_limit("PullRequest", text)?;
    // `head` may be `owner:branch`; another owner would be a fork this repository lacks.
    let head_branch = match head.split_once(':') {
        Some((owner, branch)) if owner.eq_ignore_ascii_case(&sh.opts.owner) => branch,
        Some(_) => return Err(validation("PullRequest", "head", "invalid", None)),
        None => head,
    };
    let repo = sh.repo().map_err(internal)?;
    let base_tip = git::branch_tip(&repo, base)
        .map_err(internal)?
        .ok_or_else(|| validation("PullRequest", "base", "invalid", None))?;
    let head_tip = git::branch_tip(&repo, head_branch)
        .map_err(internal)?
        .ok_or_else(|| validation("PullRequest", "head", "invalid", None))?;
    if head_branch == base || git::commit_count(&repo, base_tip, head_tip).map_err(internal)? == 0 {
        return Err(custom_validation(
            "PullRequest",
            &format!("No commits between {base} and {head_branch}"),
        ));
    }
    let (author, duplicate) = {
        let st = sh.lock();
        let duplicate = st.pulls.values().any(|x| {
            x.open
                && x.head_repo == HeadRepo::Base
                && x.head_ref == head_branch
                && x.base_ref == base
        });
        (sh.login_of(&st, &p), duplicate)
    };
    if duplicate {
        return Err(custom_validation(
            "PullRequest",
            &format!(
                "A pull request already exists for {}:{head_branch}.",
                sh.opts.owner
            ),
        ));
    }
    let n = sh
        .create_pull(
            &repo,
            NewPull {
                head_ref: head_branch,
                head_repo: HeadRepo::Base,
                base_ref: base,
                title,
                body: text,
                author: &author,
            },
        )
        .map_err(internal)?;
    let v = render_pull(&sh, &repo, n, false)?.ok_or_else(not_found)?;
    let mut resp = ok_json(StatusCode::CREATED, v);
    if let Ok(loc) = HeaderValue::from_str(&format!("{}/repos/{o}/{r}/pulls/{n}", sh.api_url)) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(resp)
}

async fn get_pull(State(sh): Sh, Path((o, r, n)): Path<(String, String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let repo = sh.repo().map_err(internal)?;
    let v = render_pull(&sh, &repo, n, false)?.ok_or_else(not_found)?;
    Ok(ok_json(StatusCode::OK, v))
}

async fn list_files(
    State(sh): Sh,
    Path((o, r, n)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let repo = sh.repo().map_err(internal)?;
    let p = {
        let mut st = sh.lock();
        let p = st.pulls.get_mut(&n).ok_or_else(not_found)?;
        sh.refresh(&repo, p).map_err(internal)?;
        p.clone()
    };
    let base_sha = match &p.base_sha_closed {
        Some(s) => s.clone(),
        None => git::branch_tip(&repo, &p.base_ref)
            .map_err(internal)?
            .map(|o| o.to_string())
            .unwrap_or_default(),
    };
    let b = git2::Oid::from_str(&base_sha).map_err(internal)?;
    let h = git2::Oid::from_str(&p.head_sha).map_err(internal)?;
    let base_for_diff = if p.merged {
        repo.merge_base(b, h).unwrap_or(b)
    } else {
        b
    };
    let files = git::changed_files(&repo, base_for_diff, h).map_err(internal)?;
    let ctx = sh.ctx();
    let items = files
        .iter()
        .map(|f| ctx.diff_entry(f, &p.head_sha))
        .collect();
    Ok(paginate(
        &sh,
        &format!("/repos/{o}/{r}/pulls/{n}/files"),
        &query(&raw),
        items,
    ))
}

pub(super) fn review_json(sh: &Shared, rv: &super::Review) -> Value {
    sh.ctx().review(&ReviewView {
        id: rv.id,
        pull: rv.pull,
        user: &rv.user,
        body: &rv.body,
        state: &rv.state,
        commit_id: &rv.commit_id,
        submitted_at: rv.submitted_at.as_ref(),
    })
}

/// Whether review `rv` is visible to `login`: a `PENDING` review only to its author (GitHub).
fn review_visible(rv: &super::Review, login: &str) -> bool {
    rv.state != "PENDING" || rv.user.eq_ignore_ascii_case(login)
}

/// `GET /repos/{o}/{r}/pulls/{n}/reviews`: the reviews in submission order, paginated; a
/// pending review is listed to its author only.
async fn list_reviews(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, n)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let reviews: Vec<super::Review> = {
        let st = sh.lock();
        if !st.pulls.contains_key(&n) && !st.issues.contains_key(&n) {
            return Err(not_found());
        }
        let login = sh.login_of(&st, &caller);
        st.reviews
            .iter()
            .filter(|rv| rv.pull == n && review_visible(rv, &login))
            .cloned()
            .collect()
    };
    let items = reviews.iter().map(|rv| review_json(&sh, rv)).collect();
    Ok(paginate(
        &sh,
        &format!("/repos/{o}/{r}/pulls/{n}/reviews"),
        &query(&raw),
        items,
    ))
}

/// `GET /repos/{o}/{r}/pulls/{n}/reviews/{id}`: one review (404 for someone else's pending
/// review, which GitHub does not show).
async fn get_review(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, n, id)): Path<(String, String, String, String)>,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let (n, id) = (parse_num(&n)?, parse_num(&id)?);
    let rv = {
        let st = sh.lock();
        let login = sh.login_of(&st, &caller);
        st.reviews
            .iter()
            .find(|rv| rv.pull == n && rv.id == id && review_visible(rv, &login))
            .cloned()
            .ok_or_else(not_found)?
    };
    Ok(ok_json(StatusCode::OK, review_json(&sh, &rv)))
}

/// `PUT /repos/{o}/{r}/pulls/{n}/reviews/{id}/dismissals` with `message` (required) and
/// `event` (`DISMISS`, optional): the review's state becomes `DISMISSED` (200 with the
/// review). 403 below the write role, 404 for an unknown review, 422 for a pending or
/// commented review or a missing message (GitHub's "Dismiss a review for a pull request").
async fn dismiss_review(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, n, id)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let (n, id) = (parse_num(&n)?, parse_num(&id)?);
    let b = parse_body(&body)?;
    if str_field(&b, "message").is_none_or(|m| m.trim().is_empty()) {
        return Err(validation(
            "PullRequestReview",
            "message",
            "missing_field",
            None,
        ));
    }
    if b.get("event")
        .is_some_and(|e| e.as_str() != Some("DISMISS"))
    {
        return Err(validation("PullRequestReview", "event", "invalid", None));
    }
    let login = sh.login_of(&sh.lock(), &caller);
    match sh.dismiss_review(n, id, &login) {
        Ok(rv) => Ok(ok_json(StatusCode::OK, review_json(&sh, &rv))),
        Err(GitHubEmulatorError::NoSuchPull(_) | GitHubEmulatorError::NoSuchReview { .. }) => {
            Err(not_found())
        }
        Err(e @ GitHubEmulatorError::Forbidden { .. }) => Err(forbidden(&caller, &e)),
        Err(GitHubEmulatorError::ReviewRefused { message, .. }) => Err(unprocessable(&message)),
        Err(e) => Err(internal(e)),
    }
}

/// `GET /repos/{o}/{r}/pulls/{n}/commits`: the pull request's own commits (reachable from its
/// head, not from its base: the base tip before the merge once merged, so the original
/// commits stay listed after a squash or rebase merge), oldest first, at most
/// [`MAX_PULL_COMMITS`], paginated (30 a page by default, at most 100).
async fn list_pull_commits(
    State(sh): Sh,
    Path((o, r, n)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let repo = sh.repo().map_err(internal)?;
    let p = {
        let mut st = sh.lock();
        let p = st.pulls.get_mut(&n).ok_or_else(not_found)?;
        sh.refresh(&repo, p).map_err(internal)?;
        p.clone()
    };
    let base = match &p.base_sha_closed {
        Some(s) => git2::Oid::from_str(s).map_err(internal)?,
        None => git::branch_tip(&repo, &p.base_ref)
            .map_err(internal)?
            .ok_or_else(not_found)?,
    };
    let head = git2::Oid::from_str(&p.head_sha).map_err(internal)?;
    let oids = git::pull_commits(&repo, base, head).map_err(internal)?;
    let ctx = sh.ctx();
    let mut items = Vec::new();
    for oid in oids.into_iter().take(MAX_PULL_COMMITS) {
        items.push(ctx.commit(&git::commit_view(&repo, oid).map_err(internal)?));
    }
    Ok(paginate(
        &sh,
        &format!("/repos/{o}/{r}/pulls/{n}/commits"),
        &query(&raw),
        items,
    ))
}

/// `POST /repos/{o}/{r}/pulls/{n}/reviews`: a review by the caller (any role) on `commit_id`
/// (a commit of the pull request) or the current head. `event` `APPROVE`, `REQUEST_CHANGES`,
/// `COMMENT`, or none (a pending review: one per user, shown to its author only). GitHub
/// refuses (422) approving or requesting changes on one's own PR and any review of a closed
/// one.
async fn create_review(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r, n)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let b = parse_body(&body)?;
    let state = match b.get("event").and_then(Value::as_str) {
        Some("APPROVE") => "APPROVED",
        Some("REQUEST_CHANGES") => "CHANGES_REQUESTED",
        Some("COMMENT") => "COMMENTED",
        None => "PENDING",
        Some(_) => return Err(validation("PullRequestReview", "event", "invalid", None)),
    };
    let text = str_field(&b, "body").unwrap_or("").to_string();
    let repo = sh.repo().map_err(internal)?;
    let (login, head, base) = {
        let mut st = sh.lock();
        let pull = st.pulls.get_mut(&n).ok_or_else(not_found)?;
        sh.refresh(&repo, pull).map_err(internal)?;
        let pull = pull.clone();
        let base = pull.base_sha_closed.clone().or_else(|| {
            git::branch_tip(&repo, &pull.base_ref)
                .ok()
                .flatten()
                .map(|o| o.to_string())
        });
        (sh.login_of(&st, &p), pull.head_sha.clone(), base)
    };
    let commit_id = match str_field(&b, "commit_id") {
        None => None,
        Some(c) => {
            // Only a commit of the pull request: reachable from its head, not from its base.
            let base = base.and_then(|b| git2::Oid::from_str(&b).ok());
            let ok = match (git::resolve_commit(&repo, c), git2::Oid::from_str(&head)) {
                (Some(oid), Ok(h)) if c.len() == 40 && oid.to_string() == c => {
                    git::is_ancestor(&repo, oid, h)
                        && !base.is_some_and(|b| git::is_ancestor(&repo, oid, b))
                }
                _ => false,
            };
            if !ok {
                return Err(validation(
                    "PullRequestReview",
                    "commit_id",
                    "invalid",
                    None,
                ));
            }
            Some(c.to_string())
        }
    };
    match sh.add_review(n, &login, state, &text, commit_id) {
        Ok(rv) => Ok(ok_json(StatusCode::OK, review_json(&sh, &rv))),
        Err(
            GitHubEmulatorError::OwnPullRequest { message, .. }
            | GitHubEmulatorError::ReviewRefused { message, .. },
        ) => Err(unprocessable(&message)),
        Err(GitHubEmulatorError::NoSuchPull(_)) => Err(not_found()),
        Err(e) => Err(internal(e)),
    }
}

async fn is_merged(State(sh): Sh, Path((o, r, n)): Path<(String, String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let merged = sh.lock().pulls.get(&n).map(|p| p.merged).unwrap_or(false);
    if merged {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(not_found())
    }
}

async fn merge_pull(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r, n)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let b = parse_body(&body)?;
    let expected = b.get("sha").and_then(Value::as_str).map(str::to_string);
    let method = match b.get("merge_method") {
        None | Some(Value::Null) => MergeMethod::Merge,
        Some(m) => m
            .as_str()
            .and_then(MergeMethod::parse)
            .ok_or_else(|| validation("PullRequest", "merge_method", "invalid", None))?,
    };
    let req = MergeRequest {
        method,
        expected_sha: expected.as_deref(),
        title: str_field(&b, "commit_title"),
        message: str_field(&b, "commit_message"),
    };
    let login = sh.login_of(&sh.lock(), &p);
    let not_mergeable = || {
        ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"message": "Pull Request is not mergeable", "documentation_url": DOCS}),
        )
    };
    match sh.merge(n, &login, req) {
        Ok(sha) => Ok(ok_json(
            StatusCode::OK,
            json!({"sha": sha, "merged": true, "message": "Pull Request successfully merged"}),
        )),
        Err(MergeError::HeadModified) => Err(ApiError(
            StatusCode::CONFLICT,
            json!({"message": "Head branch was modified. Review and try the merge again.", "documentation_url": DOCS}),
        )),
        Err(MergeError::Emu(GitHubEmulatorError::NoSuchPull(_))) => Err(not_found()),
        Err(MergeError::Emu(e @ GitHubEmulatorError::Forbidden { .. })) => Err(forbidden(&p, &e)),
        Err(MergeError::Emu(GitHubEmulatorError::CannotRebase(_))) => Err(ApiError(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"message": "This branch can't be rebased", "documentation_url": DOCS}),
        )),
        Err(MergeError::Emu(
            GitHubEmulatorError::AlreadyMerged(_)
            | GitHubEmulatorError::NotOpen(_)
            | GitHubEmulatorError::Conflict(_),
        )) => Err(not_mergeable()),
        Err(MergeError::Emu(e)) => Err(internal(e)),
    }
}

pub(super) fn comment_json(sh: &Shared, c: &super::Comment) -> Value {
    sh.ctx().comment(
        c.id,
        c.issue,
        &c.user,
        &c.body,
        &c.created_at,
        &c.updated_at,
    )
}

fn body_field(b: &Value) -> Result<String, ApiError> {
    let body = b
        .get("body")
        .and_then(Value::as_str)
        .ok_or_else(|| validation("IssueComment", "body", "missing_field", None))?;
    body_within_limit("IssueComment", body)?;
    Ok(body.to_string())
}

/// GitHub's 422 for a `body` of `resource` longer than [`MAX_COMMENT_CHARS`] characters
/// (comments and pull request bodies alike).
fn body_within_limit(resource: &str, body: &str) -> Result<(), ApiError> {
    if body.chars().count() > MAX_COMMENT_CHARS {
        return Err(validation(
            resource,
            "body",
            "custom",
            Some(&format!(
                "body is too long (maximum is {MAX_COMMENT_CHARS} characters)"
            )),
        ));
    }
    Ok(())
}

async fn list_comments(
    State(sh): Sh,
    Path((o, r, n)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let comments: Vec<super::Comment> = {
        let st = sh.lock();
        // Pull requests and plain issues share the issue comment list.
        if !st.pulls.contains_key(&n) && !st.issues.contains_key(&n) {
            return Err(not_found());
        }
        st.comments
            .iter()
            .filter(|c| c.issue == n)
            .cloned()
            .collect()
    };
    let items = comments.iter().map(|c| comment_json(&sh, c)).collect();
    Ok(paginate(
        &sh,
        &format!("/repos/{o}/{r}/issues/{n}/comments"),
        &query(&raw),
        items,
    ))
}

/// The REST shape of issue `n` (a plain issue, or a pull request as an issue), if any.
fn issue_json(sh: &Shared, n: u64) -> Option<Value> {
    let st = sh.lock();
    let comments = st.comments.iter().filter(|c| c.issue == n).count();
    if let Some(i) = st.issues.get(&n) {
        return Some(sh.ctx().plain_issue(i, comments));
    }
    st.pulls.get(&n).map(|p| sh.ctx().issue(p, comments))
}

/// `GET /repos/{o}/{r}/issues`: issues and pull requests (GitHub lists both; pull requests
/// carry `pull_request`), `state` (`open` default, `closed`, `all`), `creator` (login),
/// newest first (GitHub's default `sort=created`, `direction=desc`), paginated.
async fn list_issues(
    State(sh): Sh,
    Path((o, r)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let q = query(&raw);
    let state = q.get("state").map(String::as_str).unwrap_or("open");
    if !["open", "closed", "all"].contains(&state) {
        return Err(validation("Issue", "state", "invalid", None));
    }
    let creator = q.get("creator").map(|c| c.to_lowercase());
    let numbers: Vec<u64> = {
        let st = sh.lock();
        let mut all: Vec<(&u64, &super::Pull)> = st.issues.iter().chain(st.pulls.iter()).collect();
        all.sort_by_key(|(n, _)| std::cmp::Reverse(**n));
        all.into_iter()
            .filter(|(_, i)| match state {
                "open" => i.open,
                "closed" => !i.open,
                _ => true,
            })
            .filter(|(_, i)| {
                creator
                    .as_deref()
                    .is_none_or(|c| i.author.to_lowercase() == c)
            })
            .map(|(n, _)| *n)
            .collect()
    };
    let items = numbers.iter().filter_map(|n| issue_json(&sh, *n)).collect();
    Ok(paginate(&sh, &format!("/repos/{o}/{r}/issues"), &q, items))
}

/// `POST /repos/{o}/{r}/issues` with `title` (required, non-empty) and `body`: 201 with the
/// issue and its `Location`.
async fn create_issue(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let b = parse_body(&body)?;
    let Some(title) = str_field(&b, "title").filter(|t| !t.trim().is_empty()) else {
        return Err(validation("Issue", "title", "missing_field", None));
    };
    let text = match b.get("body") {
        Some(_) => body_field(&b)?,
        None => String::new(),
    };
    let login = sh.login_of(&sh.lock(), &p);
    let issue = sh.create_issue(title, &text, &login);
    let mut resp = ok_json(StatusCode::CREATED, sh.ctx().plain_issue(&issue, 0));
    let loc = format!("{}/repos/{o}/{r}/issues/{}", sh.api_url, issue.number);
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn get_issue(State(sh): Sh, Path((o, r, n)): Path<(String, String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    issue_json(&sh, n)
        .map(|v| ok_json(StatusCode::OK, v))
        .ok_or_else(not_found)
}

/// `PATCH /repos/{o}/{r}/issues/{n}` of a plain issue: `title`, `body`, `state`
/// (`open`/`closed`). The author may; others need the write role to edit and triage to close
/// or reopen (403). Editing a pull request through this endpoint is not emulated (404).
async fn update_issue(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, n)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let b = parse_body(&body)?;
    let text = match b.get("body") {
        Some(_) => Some(body_field(&b)?),
        None => None,
    };
    let state = str_field(&b, "state");
    if state.is_some_and(|s| s != "open" && s != "closed") {
        return Err(validation("Issue", "state", "invalid", None));
    }
    {
        let mut st = sh.lock();
        let now = sh.now();
        let author = st.issues.get(&n).ok_or_else(not_found)?.author.clone();
        let login = sh.login_of(&st, &caller);
        if !author.eq_ignore_ascii_case(&login) {
            // Someone else's issue: editing it needs write, closing or reopening triage.
            let needed = if str_field(&b, "title").is_some() || text.is_some() {
                Role::Write
            } else {
                Role::Triage
            };
            sh.require(&st, &login, needed, || {
                format!("edit issue #{n} of {author}")
            })
            .map_err(|e| forbidden(&caller, &e))?;
        }
        let issue = st.issues.get_mut(&n).ok_or_else(not_found)?;
        if let Some(t) = str_field(&b, "title") {
            if t.trim().is_empty() {
                return Err(validation("Issue", "title", "missing_field", None));
            }
            issue.title = t.to_string();
        }
        if let Some(t) = text {
            issue.body = t;
        }
        if let Some(s) = state {
            issue.open = s == "open";
            issue.closed_at = (!issue.open).then_some(now);
        }
        issue.updated_at = now;
    }
    issue_json(&sh, n)
        .map(|v| ok_json(StatusCode::OK, v))
        .ok_or_else(not_found)
}

/// `GET /repos/{o}/{r}/issues/comments`: every comment of the repository, with GitHub's
/// `sort` (`created` default, or `updated`), `direction` (`asc` default with a sort; GitHub
/// ignores it without one) and `since` (ISO 8601: only comments updated at or after it; a
/// malformed value is a 422 as on GitHub), paginated.
async fn list_repo_comments(
    State(sh): Sh,
    Path((o, r)): Path<(String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let q = query(&raw);
    let since = match q.get("since") {
        Some(v) => Some(
            DateTime::parse_from_rfc3339(v)
                .map_err(|_| validation("IssueComment", "since", "invalid", None))?
                .with_timezone(&Utc),
        ),
        None => None,
    };
    let by_updated = q.get("sort").map(String::as_str) == Some("updated");
    let desc = q.get("direction").map(String::as_str) == Some("desc");
    let mut comments: Vec<super::Comment> = sh
        .lock()
        .comments
        .iter()
        .filter(|c| since.is_none_or(|s| c.updated_at >= s))
        .cloned()
        .collect();
    comments.sort_by_key(|c| {
        (
            if by_updated {
                c.updated_at
            } else {
                c.created_at
            },
            c.id,
        )
    });
    if desc {
        comments.reverse();
    }
    let items = comments.iter().map(|c| comment_json(&sh, c)).collect();
    Ok(paginate(
        &sh,
        &format!("/repos/{o}/{r}/issues/comments"),
        &q,
        items,
    ))
}

async fn create_comment(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r, n)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let text = body_field(&parse_body(&body)?)?;
    let login = sh.login_of(&sh.lock(), &p);
    let c = match sh.add_comment(n, &login, text) {
        Ok(c) => c,
        Err(GitHubEmulatorError::NoSuchPull(_)) => return Err(not_found()),
        Err(e) => return Err(internal(e)),
    };
    let mut resp = ok_json(StatusCode::CREATED, comment_json(&sh, &c));
    let loc = format!("{}/repos/{o}/{r}/issues/comments/{}", sh.api_url, c.id);
    if let Ok(v) = HeaderValue::from_str(&loc) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

fn labels_json(sh: &Shared, labels: &[String]) -> Value {
    Value::Array(labels.iter().map(|l| sh.ctx().label(l)).collect())
}

async fn list_labels(State(sh): Sh, Path((o, r, n)): Path<(String, String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let labels = sh
        .lock()
        .pulls
        .get(&n)
        .map(|p| p.labels.clone())
        .ok_or_else(not_found)?;
    Ok(ok_json(StatusCode::OK, labels_json(&sh, &labels)))
}

/// `POST /repos/{o}/{r}/issues/{n}/labels` with `{"labels": ["name", …]}` (or a bare array):
/// adds the labels and answers every label of the issue.
async fn add_labels(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r, n)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let v = parse_body(&body)?;
    let names: Vec<String> = v
        .get("labels")
        .unwrap_or(&v)
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err(unprocessable("labels: at least one label name is required"));
    }
    let login = sh.login_of(&sh.lock(), &p);
    let mut labels = Vec::new();
    for name in &names {
        labels = match sh.set_label(n, &login, name, true) {
            Ok(l) => l,
            Err(GitHubEmulatorError::NoSuchPull(_)) => return Err(not_found()),
            Err(e @ GitHubEmulatorError::Forbidden { .. }) => return Err(forbidden(&p, &e)),
            Err(e) => return Err(internal(e)),
        };
    }
    Ok(ok_json(StatusCode::OK, labels_json(&sh, &labels)))
}

async fn remove_label(
    State(sh): Sh,
    Extension(p): Caller,
    Path((o, r, n, name)): Path<(String, String, String, String)>,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let n = parse_num(&n)?;
    let present = sh
        .lock()
        .pulls
        .get(&n)
        .map(|p| p.labels.contains(&name))
        .ok_or_else(not_found)?;
    if !present {
        return Err(not_found());
    }
    let login = sh.login_of(&sh.lock(), &p);
    let labels = sh.set_label(n, &login, &name, false).map_err(|e| match e {
        GitHubEmulatorError::Forbidden { .. } => forbidden(&p, &e),
        e => internal(e),
    })?;
    Ok(ok_json(StatusCode::OK, labels_json(&sh, &labels)))
}

async fn get_comment(State(sh): Sh, Path((o, r, id)): Path<(String, String, String)>) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let id = parse_num(&id)?;
    let c = sh
        .lock()
        .comments
        .iter()
        .find(|c| c.id == id)
        .cloned()
        .ok_or_else(not_found)?;
    Ok(ok_json(StatusCode::OK, comment_json(&sh, &c)))
}

/// `PATCH /repos/{o}/{r}/issues/comments/{id}` with `body`: by the comment's author or anyone
/// with the write role (403 otherwise); the author stays, `updated_at` moves.
async fn update_comment(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, id)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let id = parse_num(&id)?;
    let text = body_field(&parse_body(&body)?)?;
    let login = sh.login_of(&sh.lock(), &caller);
    match sh.edit_comment(id, &login, text) {
        Ok(c) => Ok(ok_json(StatusCode::OK, comment_json(&sh, &c))),
        Err(GitHubEmulatorError::NoSuchComment(_)) => Err(not_found()),
        Err(e @ GitHubEmulatorError::Forbidden { .. }) => Err(forbidden(&caller, &e)),
        Err(e) => Err(internal(e)),
    }
}

/// `DELETE /repos/{o}/{r}/issues/comments/{id}`: by the comment's author or anyone with the
/// write role (403 otherwise); 204.
async fn delete_comment(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, id)): Path<(String, String, String)>,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let id = parse_num(&id)?;
    let (c, pull, sender) = {
        let mut st = sh.lock();
        let pos = st
            .comments
            .iter()
            .position(|c| c.id == id)
            .ok_or_else(not_found)?;
        let login = sh.login_of(&st, &caller);
        let author = st.comments[pos].user.clone();
        if !author.eq_ignore_ascii_case(&login) {
            sh.require(&st, &login, Role::Write, || {
                format!("delete comment {id} of {author}")
            })
            .map_err(|e| forbidden(&caller, &e))?;
        }
        let c = st.comments.remove(pos);
        let pull = st.pulls.get(&c.issue).cloned();
        (c, pull, sh.login_of(&st, &caller))
    };
    if let Some(pull) = pull {
        sh.emit(hooks::Hook::Comment {
            action: "deleted",
            pull,
            comment: c,
            sender,
            old_body: None,
        });
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn status_view(s: &Status) -> StatusView<'_> {
    StatusView {
        id: s.id,
        sha: &s.sha,
        state: &s.state,
        description: s.description.as_deref(),
        target_url: s.target_url.as_deref(),
        context: &s.context,
        creator: &s.creator,
        created_at: &s.created_at,
    }
}

async fn create_status(
    State(sh): Sh,
    Extension(caller): Caller,
    Path((o, r, sha)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    // "Users with push access in a repository can create commit statuses" (GitHub's REST docs).
    require(&sh, &caller, Role::Write, "create a commit status")?;
    let b = parse_body(&body)?;
    let state = b.get("state").and_then(Value::as_str).unwrap_or("");
    if !matches!(state, "pending" | "success" | "failure" | "error") {
        return Err(validation(
            "Status",
            "state",
            "custom",
            Some("state is not included in the list"),
        ));
    }
    let repo = sh.repo().map_err(internal)?;
    let oid = match git2::Oid::from_str(&sha) {
        Ok(oid) if sha.len() == 40 && repo.find_commit(oid).is_ok() => oid,
        _ => {
            return Err(ApiError(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"message": format!("No commit found for SHA: {sha}"), "documentation_url": DOCS}),
            ))
        }
    };
    let context = b
        .get("context")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_string();
    let description = b
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string);
    let target_url = b
        .get("target_url")
        .and_then(Value::as_str)
        .map(str::to_string);
    let s = {
        let mut st = sh.lock();
        let count = st
            .statuses
            .iter()
            .filter(|s| s.sha == sha && s.context == context)
            .count();
        if count >= 1000 {
            return Err(validation(
                "Status",
                "context",
                "custom",
                Some("This SHA and context has reached the maximum number of statuses."),
            ));
        }
        let id = st.next_status;
        st.next_status += 1;
        let s = Status {
            id,
            sha: oid.to_string(),
            state: state.to_string(),
            description,
            target_url,
            context,
            creator: sh.login_of(&st, &caller),
            created_at: sh.now(),
        };
        st.statuses.push(s.clone());
        s
    };
    Ok(ok_json(
        StatusCode::CREATED,
        sh.ctx().status(&status_view(&s), true),
    ))
}

/// Resolves `reference` to a commit SHA, or answers 422/404 like GitHub.
fn resolve(sh: &Shared, reference: &str) -> Result<String, ApiError> {
    let repo = sh.repo().map_err(internal)?;
    git::resolve_commit(&repo, reference).map(|o| o.to_string()).ok_or_else(|| {
        ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"message": format!("No commit found for SHA: {reference}"), "documentation_url": DOCS}),
        )
    })
}

/// `GET /repos/{o}/{r}/commits/{ref}/status` and `…/statuses`, where `{ref}` may contain
/// slashes (`heads/main`, a branch `feature/x`).
async fn commit_subresource(
    sh: Sh,
    Path((o, r, rest)): Path<(String, String, String)>,
    raw: RawQuery,
) -> ApiResult {
    if let Some(reference) = rest.strip_suffix("/statuses") {
        list_statuses(sh, Path((o, r, reference.to_string())), raw).await
    } else if let Some(reference) = rest.strip_suffix("/status") {
        combined_status(sh, Path((o, r, reference.to_string()))).await
    } else {
        Err(not_found())
    }
}

async fn list_statuses(
    State(sh): Sh,
    Path((o, r, reference)): Path<(String, String, String)>,
    RawQuery(raw): RawQuery,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let sha = resolve(&sh, &reference)?;
    let statuses: Vec<Status> = sh
        .lock()
        .statuses
        .iter()
        .rev()
        .filter(|s| s.sha == sha)
        .cloned()
        .collect();
    let ctx = sh.ctx();
    let items = statuses
        .iter()
        .map(|s| ctx.status(&status_view(s), true))
        .collect();
    Ok(paginate(
        &sh,
        &format!("/repos/{o}/{r}/commits/{reference}/statuses"),
        &query(&raw),
        items,
    ))
}

async fn combined_status(
    State(sh): Sh,
    Path((o, r, reference)): Path<(String, String, String)>,
) -> ApiResult {
    check_repo(&sh, &o, &r)?;
    let sha = resolve(&sh, &reference)?;
    let latest: Vec<Status> = {
        let st = sh.lock();
        let mut seen = std::collections::HashSet::new();
        st.statuses
            .iter()
            .rev()
            .filter(|s| s.sha == sha && seen.insert(s.context.clone()))
            .cloned()
            .collect()
    };
    let state = if latest
        .iter()
        .any(|s| s.state == "failure" || s.state == "error")
    {
        "failure"
    } else if latest.is_empty() || latest.iter().any(|s| s.state == "pending") {
        "pending"
    } else {
        "success"
    };
    let views: Vec<StatusView<'_>> = latest.iter().map(status_view).collect();
    Ok(ok_json(
        StatusCode::OK,
        sh.ctx().combined(&sha, state, &views),
    ))
}
