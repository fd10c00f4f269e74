//! Fault injection and request recording shared by every emulator.
//!
//! Each emulator wraps its axum router with [`Faults::layer`]. A test (or the sandbox) injects
//! [`Fault`]s at run time: a matching request then gets a 5xx, a 409, a 429 with `Retry-After`,
//! a delay, or a dropped connection instead of (or before) the normal answer. Every request that
//! reaches the emulator is appended to the [`RequestLog`], so tests can assert the calls made
//! ("TMC saw exactly one POST /v1alpha1/clusters").

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// What happens to a request that matches a [`Fault`].
#[derive(Clone, Debug)]
pub enum FaultAction {
    /// Answer with this HTTP status and body (JSON unless the body does not parse as JSON).
    Status {
        /// HTTP status code, e.g. 500, 502, 409.
        code: u16,
        /// Response body.
        body: String,
    },
    /// Answer 429 (or the given code, e.g. 403 for GitHub's secondary rate limit) with a
    /// `Retry-After` header of `secs` seconds.
    RetryAfter {
        /// HTTP status code, normally 429.
        code: u16,
        /// Value of `Retry-After`, in seconds.
        secs: u64,
    },
    /// Wait this long, then serve the request normally (a slow response).
    Delay(Duration),
    /// Send the response head, then abort the body: the client sees a dropped connection.
    Drop,
    /// Serve the request normally, then end a streaming (watch) response cleanly after this
    /// many newline-delimited events: a watch dropped mid-stream (an API server restart, a
    /// load balancer's idle cut). A client re-watches from the last resourceVersion it saw.
    CloseAfterEvents(usize),
    /// Answer a watch as the Kubernetes API server does when its `resourceVersion` is older
    /// than its watch cache holds: HTTP 200 with one `ERROR` event whose object is a `Status`
    /// of `code: 410`, `reason: Expired` ("too old resource version"), then end the stream
    /// (docs/kubernetes-api-wire.md "List and watch"). kube's `watcher` then relists.
    WatchExpired,
}

/// One injected fault: which requests it matches and how many times it fires.
#[derive(Clone, Debug)]
pub struct Fault {
    /// HTTP method to match; `None` matches any method.
    pub method: Option<Method>,
    /// The request path must start with this prefix (e.g. `/v1alpha1/clusters`).
    pub path_prefix: String,
    /// What to do with a matching request.
    pub action: FaultAction,
    /// How many matching requests it applies to; `None` means until [`Faults::clear`].
    pub times: Option<u32>,
    /// The raw query string must contain this text (e.g. `watch=true`); `None` matches any.
    pub query_contains: Option<String>,
}

impl Fault {
    /// A fault for `method` (or any method when `None`) and requests whose path starts with
    /// `path_prefix`, applying `action` to the next `times` matching requests.
    pub fn new(
        method: Option<Method>,
        path_prefix: &str,
        action: FaultAction,
        times: Option<u32>,
    ) -> Self {
        Fault {
            method,
            path_prefix: path_prefix.to_string(),
            action,
            times,
            query_contains: None,
        }
    }

    /// The same fault, matching only requests whose raw query string contains `text` (e.g.
    /// `watch=true` for Kubernetes watches).
    pub fn with_query(mut self, text: &str) -> Self {
        self.query_contains = Some(text.to_string());
        self
    }
}

/// One request seen by an emulator.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path without the query string.
    pub path: String,
    /// Raw query string, empty when absent.
    pub query: String,
    /// Whether an injected fault answered it instead of the emulator.
    pub faulted: bool,
    /// The request's `Content-Type` header, empty when absent (e.g.
    /// `application/vnd.kubernetes.protobuf` for kubectl's protobuf bodies).
    pub content_type: String,
    /// The request's `Accept` header, empty when absent.
    pub accept: String,
    /// The HTTP status answered (an injected fault's or the emulator's); `None` while the
    /// request is still being served.
    pub status: Option<u16>,
}

/// Append-only log of the requests an emulator received. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct RequestLog {
    inner: Arc<Mutex<Vec<RecordedRequest>>>,
    /// The number of requests recorded, for [`RequestLog::wait_for`].
    recorded: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            inner: Arc::default(),
            recorded: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl RequestLog {
    /// Every request recorded so far, in arrival order.
    pub fn all(&self) -> Vec<RecordedRequest> {
        self.inner.lock().expect("request log poisoned").clone()
    }

    /// How many non-faulted requests had this method and exactly this path.
    pub fn count(&self, method: &Method, path: &str) -> usize {
        self.all()
            .iter()
            .filter(|r| !r.faulted && r.method == *method && r.path == path)
            .count()
    }

    /// How many non-faulted requests had this method and a path starting with `prefix`.
    pub fn count_prefix(&self, method: &Method, prefix: &str) -> usize {
        self.all()
            .iter()
            .filter(|r| !r.faulted && r.method == *method && r.path.starts_with(prefix))
            .count()
    }

    /// Waits until some recorded request satisfies `matches` (checked against the log now and
    /// after every new request) and returns it, or `None` after `timeout`. Tests wait for "the
    /// bot reached this call" with it instead of sleeping.
    pub async fn wait_for(
        &self,
        timeout: std::time::Duration,
        matches: impl Fn(&RecordedRequest) -> bool,
    ) -> Option<RecordedRequest> {
        let mut rx = self.recorded.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(r) = self.all().into_iter().find(|r| matches(r)) {
                return Some(r);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    /// Appends `r`; returns its index (for [`RequestLog::set_status`]).
    fn push(&self, r: RecordedRequest) -> usize {
        let n = {
            let mut log = self.inner.lock().expect("request log poisoned");
            log.push(r);
            log.len()
        };
        self.recorded.send_replace(n);
        n - 1
    }

    /// Records the status answered to request `index`.
    fn set_status(&self, index: usize, status: u16) {
        if let Some(r) = self
            .inner
            .lock()
            .expect("request log poisoned")
            .get_mut(index)
        {
            r.status = Some(status);
        }
    }
}

/// The fault table and request log of one emulator. Cheap to clone (shared state).
#[derive(Clone, Default, Debug)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Fault>>>,
    log: RequestLog,
}

impl Faults {
    /// An empty fault table with an empty request log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a fault; faults are matched in the order they were injected.
    pub fn inject(&self, fault: Fault) {
        self.rules.lock().expect("fault table poisoned").push(fault);
    }

    /// How many injected faults have not fired (all their times) yet.
    pub fn armed(&self) -> usize {
        self.rules.lock().expect("fault table poisoned").len()
    }

    /// Removes every injected fault (the request log is kept).
    pub fn clear(&self) {
        self.rules.lock().expect("fault table poisoned").clear();
    }

    /// The request log of this emulator.
    pub fn log(&self) -> &RequestLog {
        &self.log
    }

    /// Wraps `router` so that every request is recorded and checked against the fault table.
    pub fn layer<S: Clone + Send + Sync + 'static>(
        &self,
        router: axum::Router<S>,
    ) -> axum::Router<S> {
        router.layer(axum::middleware::from_fn_with_state(
            self.clone(),
            fault_middleware,
        ))
    }

    /// Takes the first matching fault (decrementing its remaining count) for this request.
    fn take(&self, method: &Method, path: &str, query: &str) -> Option<FaultAction> {
        let mut rules = self.rules.lock().expect("fault table poisoned");
        let idx = rules.iter().position(|f| {
            f.method.as_ref().is_none_or(|m| m == method)
                && path.starts_with(&f.path_prefix)
                && f.query_contains
                    .as_deref()
                    .is_none_or(|q| query.contains(q))
                && f.times != Some(0)
        })?;
        let action = rules[idx].action.clone();
        if let Some(n) = rules[idx].times.as_mut() {
            *n -= 1;
            if *n == 0 {
                rules.remove(idx);
            }
        }
        Some(action)
    }
}

/// `body`'s frames up to and including the `n`th newline, then the end of the stream.
fn cut_after_lines(
    body: Body,
    n: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> {
    use futures::StreamExt;
    body.into_data_stream().scan(0usize, move |seen, frame| {
        if *seen >= n {
            return futures::future::ready(None);
        }
        let frame = frame.map(|mut b| {
            let cut = b
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .nth(n - *seen - 1)
                .map(|(i, _)| i + 1);
            *seen += b.iter().filter(|c| **c == b'\n').count();
            if let Some(i) = cut {
                b.truncate(i);
            }
            b
        });
        futures::future::ready(Some(frame))
    })
}

/// A header's value as text, empty when absent or not text.
fn header_str(headers: &axum::http::HeaderMap, name: axum::http::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

async fn fault_middleware(State(faults): State<Faults>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = header_str(req.headers(), axum::http::header::CONTENT_TYPE);
    let accept = header_str(req.headers(), axum::http::header::ACCEPT);
    let action = faults.take(&method, &path, &query);
    let faulted = !matches!(
        action,
        None | Some(FaultAction::Delay(_)) | Some(FaultAction::CloseAfterEvents(_))
    );
    let index = faults.log.push(RecordedRequest {
        method,
        path,
        query,
        faulted,
        content_type,
        accept,
        status: None,
    });
    let resp = answer(action, req, next).await;
    faults.log.set_status(index, resp.status().as_u16());
    resp
}

/// The response to a request: the emulator's (`next`) or the injected fault's.
async fn answer(action: Option<FaultAction>, req: Request, next: Next) -> Response {
    match action {
        None => next.run(req).await,
        Some(FaultAction::Delay(d)) => {
            tokio::time::sleep(d).await;
            next.run(req).await
        }
        Some(FaultAction::CloseAfterEvents(n)) => {
            let (parts, body) = next.run(req).await.into_parts();
            Response::from_parts(parts, Body::from_stream(cut_after_lines(body, n)))
        }
        Some(FaultAction::WatchExpired) => {
            let mut line = serde_json::json!({
                "type": "ERROR",
                "object": {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "too old resource version: 1 (2) (injected fault)",
                    "reason": "Expired",
                    "code": 410,
                },
            })
            .to_string();
            line.push('\n');
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                line,
            )
                .into_response()
        }
        Some(FaultAction::Status { code, body }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let ct = if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
                "application/json"
            } else {
                "text/plain"
            };
            (status, [(axum::http::header::CONTENT_TYPE, ct)], body).into_response()
        }
        Some(FaultAction::RetryAfter { code, secs }) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            let mut resp = (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                r#"{"message":"rate limit exceeded (injected fault)"}"#,
            )
                .into_response();
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            resp
        }
        Some(FaultAction::Drop) => {
            let stream = futures::stream::once(async {
                Err::<bytes::Bytes, std::io::Error>(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "connection dropped (injected fault)",
                ))
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-length", "1024")
                .body(Body::from_stream(stream))
                .expect("static response parts are valid")
        }
    }
}
