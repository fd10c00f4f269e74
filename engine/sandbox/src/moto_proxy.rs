//! A fault proxy in front of moto (README "Chaos harness"): a loopback HTTP server the bot's
//! EC2 endpoint (`awsEndpointUrl`) points at. It forwards every request to moto unchanged and
//! relays moto's answer, except that while armed it answers the next request itself with EC2's
//! `RequestLimitExceeded` throttling error (HTTP 503, the EC2 Query API's XML error shape:
//! `<Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors>
//! <RequestID>…</RequestID></Response>`), which moto never sends. The answered request never
//! reaches moto, so moto's request recording holds only what EC2 would have acted on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::SandboxError;

/// EC2's throttling error body, as the Query API sends it with HTTP 503.
pub const REQUEST_LIMIT_EXCEEDED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>00000000-0000-4000-8000-000000000503</RequestID></Response>";

#[derive(Clone)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    armed: Arc<AtomicU32>,
    throttled: Arc<AtomicU32>,
}

/// The running proxy; stops when dropped.
pub struct MotoProxy {
    url: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl MotoProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `upstream` (moto's endpoint URL,
    /// `http://127.0.0.1:PORT`).
    ///
    /// Errors: [`SandboxError`] when the port cannot be bound.
    pub async fn start(upstream: &str) -> Result<MotoProxy, SandboxError> {
        let shared = Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
            armed: Arc::default(),
            throttled: Arc::default(),
        };
        let listener = ctx!(
            tokio::net::TcpListener::bind("127.0.0.1:0").await,
            "binding the moto fault proxy"
        )?;
        let addr = ctx!(listener.local_addr(), "reading the proxy's address")?;
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(MotoProxy {
            url: format!("http://{addr}"),
            shared,
            task,
        })
    }

    /// The proxy's URL, for the bot's `awsEndpointUrl`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Arms one `RequestLimitExceeded`: the next request is answered 503 instead of forwarded.
    pub fn throttle_next(&self) {
        self.shared.armed.fetch_add(1, Ordering::AcqRel);
    }

    /// How many requests were answered `RequestLimitExceeded` so far.
    pub fn throttled(&self) -> u32 {
        self.shared.throttled.load(Ordering::Acquire)
    }
}

impl Drop for MotoProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(State(s): State<Shared>, req: Request) -> Response {
    let take = s
        .armed
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    if take {
        s.throttled.fetch_add(1, Ordering::AcqRel);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
            REQUEST_LIMIT_EXCEEDED,
        )
            .into_response();
    }
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::BAD_REQUEST, "request body too large").into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if !matches!(k.as_str(), "host" | "content-length" | "connection") {
            headers.append(k.clone(), v.clone());
        }
    }
    let sent = s
        .client
        .request(parts.method, format!("{}{path}", s.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            return (StatusCode::BAD_GATEWAY, format!("moto unreachable: {e}")).into_response()
        }
    };
    let status = resp.status();
    let mut out_headers = resp.headers().clone();
    out_headers.remove(axum::http::header::CONTENT_LENGTH);
    out_headers.remove(axum::http::header::TRANSFER_ENCODING);
    let bytes: Bytes = resp.bytes().await.unwrap_or_default();
    let mut out = (status, bytes).into_response();
    out.headers_mut().extend(out_headers);
    out
}
