//! The bot's HTTP server (axum): GitHub webhooks at `POST /webhooks/github`, and `/healthz`,
//! `/readyz` for the platform running the bot.
//!
//! Security rule 4 (docs/design.md; reference `docs/github.md` (b)6):
//! 1. `X-Hub-Signature-256` (`sha256=<hex HMAC-SHA256 of the raw body>`) is verified, in
//!    constant time, before anything of the body is parsed. A missing or wrong signature gets
//!    401 and changes nothing. Without a configured secret every delivery is refused (fail
//!    closed).
//! 2. The delivery is recorded durably in the journal under its `X-GitHub-Delivery` GUID
//!    ([`BotJournal::record_delivery`], flushed) before the 2xx is sent; a redelivery with the
//!    same GUID is answered and ignored.
//! 3. The payload is only a hint: an accepted delivery wakes the poll loop, which re-reads every
//!    pull request through the API. Polling stays on as the safety net for missed deliveries.
//!
//! Answers take one flushed journal write: far below GitHub's 10 s limit. Delivery records are
//! kept [`DELIVERY_RETENTION`] (7 days, longer than GitHub offers a redelivery of a recent
//! delivery) and pruned at most once per [`PRUNE_INTERVAL`], on an accepted delivery
//! ([`WebhookState::prune_deliveries`]); a redelivery older than that only wakes the poll.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::journal::{BotJournal, Delivery, JournalError};

/// How long a delivery record is kept: 7 days.
pub const DELIVERY_RETENTION: chrono::Duration = chrono::Duration::days(7);

/// At most one prune of delivery records per hour (a prune scans every record).
pub const PRUNE_INTERVAL: chrono::Duration = chrono::Duration::hours(1);

/// Largest payload accepted, in bytes: GitHub's own cap, 25 MB (`docs/github.md` (d)).
pub const MAX_PAYLOAD_BYTES: usize = 25 * 1024 * 1024;

/// The events that make the bot look at pull requests again.
pub const HINT_EVENTS: &[&str] = &[
    "pull_request",
    "pull_request_review",
    "issue_comment",
    "push",
];

/// What the HTTP handlers share.
pub struct WebhookState {
    /// The webhook secret, read again when its file changes; none refuses every delivery.
    secret: crate::secrets::RotatingSecret,
    journal: BotJournal,
    /// Woken after an accepted delivery of a [`HINT_EVENTS`] event.
    wake: Arc<Notify>,
    ready: Arc<AtomicBool>,
    /// The trusted policy chain, shown in `/readyz`'s detail.
    policy: Option<Arc<crate::trust::PolicyHealth>>,
    /// The time deliveries are recorded and pruned by (the system clock unless a test sets
    /// another with [`WebhookState::with_clock`]).
    clock: crate::reconcile::schedule::Clock,
    /// When delivery records were last pruned (`None`: not yet since the start).
    pruned_at: Mutex<Option<DateTime<Utc>>>,
    /// The bot's metrics and the engine's store (queued runs), for `GET /metrics` and the
    /// count of deliveries; `None`: `/metrics` answers 404.
    metrics: Option<(
        Arc<crate::metrics::Metrics>,
        Arc<dyn tkgops_engine::store::Store>,
    )>,
}

impl WebhookState {
    /// The state of a server verifying with `secret` (`None`: refuse every delivery), recording
    /// deliveries in `journal`, waking `wake` on hints, and reporting `/readyz` from `ready`.
    pub fn new(
        secret: Option<String>,
        journal: BotJournal,
        wake: Arc<Notify>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        Self::with_secret(
            crate::secrets::RotatingSecret::fixed(secret),
            journal,
            wake,
            ready,
        )
    }

    /// As [`WebhookState::new`], verifying with `secret` as it is at each delivery: a secret
    /// file rotated in place is used at the next delivery, and the value it replaced is still
    /// accepted for [`crate::secrets::ROTATION_GRACE`].
    pub fn with_secret(
        secret: crate::secrets::RotatingSecret,
        journal: BotJournal,
        wake: Arc<Notify>,
        ready: Arc<AtomicBool>,
    ) -> Self {
        WebhookState {
            secret,
            journal,
            wake,
            ready,
            policy: None,
            clock: crate::reconcile::schedule::system_clock(),
            pruned_at: Mutex::new(None),
            metrics: None,
        }
    }

    /// The same state, serving `metrics` at `GET /metrics` (with the queued runs read from
    /// `store` at each scrape) and counting every delivery in it by result.
    pub fn with_metrics(
        mut self,
        metrics: Arc<crate::metrics::Metrics>,
        store: Arc<dyn tkgops_engine::store::Store>,
    ) -> Self {
        self.metrics = Some((metrics, store));
        self
    }

    /// This state with `clock` as the time deliveries are recorded and pruned by.
    pub fn with_clock(mut self, clock: crate::reconcile::schedule::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Removes the delivery records older than [`DELIVERY_RETENTION`] at `now`; unreadable
    /// ones are removed too. Returns how many were removed.
    ///
    /// Errors: the journal's, when it cannot be scanned or a record cannot be removed.
    pub async fn prune_deliveries(&self, now: DateTime<Utc>) -> Result<usize, JournalError> {
        self.journal
            .prune_deliveries(now - DELIVERY_RETENTION)
            .await
    }

    /// Prunes the delivery records ([`WebhookState::prune_deliveries`]) when the last prune
    /// was [`PRUNE_INTERVAL`] or more before `now` (or never). A failure is logged and tried
    /// again at the next delivery.
    async fn prune_if_due(&self, now: DateTime<Utc>) {
        {
            let mut last = self.pruned_at.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|l| now - l < PRUNE_INTERVAL && now >= l) {
                return;
            }
            *last = Some(now);
        }
        match self.prune_deliveries(now).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "webhook: pruned old delivery records"),
            Err(e) => {
                tracing::warn!(error = %e, "webhook: pruning delivery records failed");
                *self.pruned_at.lock().unwrap_or_else(|e| e.into_inner()) = None;
            }
        }
    }

    /// The same state, with `/readyz` also reporting the trusted policy chain of `policy`:
    /// the trusted policy commit, the untrusted policy change on the default branch (if any)
    /// and how many were reported (security rule 1).
    pub fn with_policy(mut self, policy: Arc<crate::trust::PolicyHealth>) -> Self {
        self.policy = Some(policy);
        self
    }
}

/// The router: `POST /webhooks/github`, `GET /healthz` (200 while the process serves),
/// `GET /readyz` (200 once the bot completed a poll of GitHub, 503 before) and `GET /metrics`
/// (Prometheus, [`crate::metrics`]; 404 when the state has none).
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/webhooks/github", post(receive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(MAX_PAYLOAD_BYTES))
        .with_state(state)
}

/// `GET /readyz`: 200 with `ready` once a poll of GitHub completed (503 before), followed by
/// the policy chain's detail lines when known ([`crate::trust::PolicyHealth::detail`]). An
/// untrusted policy change does not make the bot unready: it keeps working under the trusted
/// policy, and the detail says so.
async fn readyz(State(state): State<Arc<WebhookState>>) -> (StatusCode, String) {
    let detail = state
        .policy
        .as_ref()
        .map(|p| p.detail())
        .unwrap_or_default();
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, format!("ready\n{detail}"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: no poll of GitHub completed yet\n{detail}"),
        )
    }
}

/// `GET /metrics`: the exposition of the bot's metrics ([`crate::metrics::Metrics::encode`]),
/// with the queued runs read from the engine's store now. 503 when the store cannot be read.
async fn metrics(
    State(state): State<Arc<WebhookState>>,
) -> (
    StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
) {
    let content_type = axum::http::header::CONTENT_TYPE;
    let Some((metrics, store)) = state.metrics.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            [(content_type, "text/plain")],
            "no metrics\n".into(),
        );
    };
    match store.list_active().await {
        Ok(active) => (
            StatusCode::OK,
            [(content_type, crate::metrics::CONTENT_TYPE)],
            metrics.encode(&active, Utc::now()),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: reading the active runs failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(content_type, "text/plain")],
                "journal unavailable\n".into(),
            )
        }
    }
}

/// Whether `signature` (the `X-Hub-Signature-256` header) is `sha256=` followed by the hex
/// HMAC-SHA256 of `body` under `secret`. The comparison is constant-time (`Mac::verify_slice`).
pub fn signature_valid(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(hex_sig) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = hex::decode(hex_sig) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// `sha256=<hex>`: the `X-Hub-Signature-256` value GitHub sends for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/github`: [`handle_delivery`], counted by result in the metrics.
async fn receive(
    State(state): State<Arc<WebhookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let (status, message, result) = handle_delivery(&state, &headers, &body).await;
    if let Some((metrics, _)) = &state.metrics {
        metrics.webhook_delivery(result);
    }
    (status, message)
}

/// One delivery: the answer and the result it is counted under (`accepted`, `ignored`,
/// `duplicate`, `bad_signature`, `no_secret`, `bad_request`, `journal_unavailable`).
async fn handle_delivery(
    state: &WebhookState,
    headers: &HeaderMap,
    body: &Bytes,
) -> (StatusCode, &'static str, &'static str) {
    // 1. Authenticate before reading anything of the body.
    let secrets = state.secret.accepted();
    if secrets.is_empty() {
        return (
            StatusCode::UNAUTHORIZED,
            "no webhook secret is configured",
            "no_secret",
        );
    }
    let signed = header(headers, "x-hub-signature-256").is_some_and(|sig| {
        secrets
            .iter()
            .any(|s| signature_valid(s.as_bytes(), body, sig))
    });
    if !signed {
        tracing::warn!("webhook refused: missing or wrong X-Hub-Signature-256");
        return (
            StatusCode::UNAUTHORIZED,
            "invalid signature",
            "bad_signature",
        );
    }
    let Some(delivery) = header(headers, "x-github-delivery")
        .filter(|d| !d.is_empty() && d.len() <= 128 && d.chars().all(|c| c.is_ascii_graphic()))
    else {
        return (
            StatusCode::BAD_REQUEST,
            "missing X-GitHub-Delivery",
            "bad_request",
        );
    };
    let event = header(headers, "x-github-event").unwrap_or("").to_string();
    // 2. Record durably (dedupe by delivery GUID) before answering.
    match state.journal.delivery(delivery).await {
        Ok(Some(_)) => return (StatusCode::OK, "duplicate delivery ignored", "duplicate"),
        Ok(None) => {}
        // A record that does not decode is a delivery recorded all the same.
        Err(JournalError::Codec { .. }) => {
            return (StatusCode::OK, "duplicate delivery ignored", "duplicate")
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook: reading the journal failed");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "journal unavailable",
                "journal_unavailable",
            );
        }
    }
    let now = (state.clock)();
    let record = Delivery {
        received: now,
        event: event.clone(),
    };
    if let Err(e) = state.journal.record_delivery(delivery, &record).await {
        tracing::warn!(error = %e, "webhook: recording the delivery failed");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "journal unavailable",
            "journal_unavailable",
        );
    }
    state.prune_if_due(now).await;
    // 3. A hint only: wake the poll loop, which re-reads state through the API.
    if HINT_EVENTS.contains(&event.as_str()) {
        state.wake.notify_one();
        tracing::debug!(%delivery, %event, "webhook accepted; polling now");
        (StatusCode::ACCEPTED, "accepted", "accepted")
    } else {
        (StatusCode::OK, "event ignored", "ignored")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tkgops_engine::store::SledStore;
    use tower::ServiceExt;

    const SECRET: &str = "a-webhook-secret-of-more-than-24-chars";

    async fn journal() -> BotJournal {
        BotJournal::open(Arc::new(SledStore::temporary().unwrap()))
            .await
            .unwrap()
            .0
    }

    async fn setup(secret: Option<&str>) -> (Router, BotJournal, Arc<Notify>, Arc<AtomicBool>) {
        let journal = journal().await;
        let wake = Arc::new(Notify::new());
        let ready = Arc::new(AtomicBool::new(false));
        let state = WebhookState::new(
            secret.map(String::from),
            journal.clone(),
            wake.clone(),
            ready.clone(),
        );
        (router(Arc::new(state)), journal, wake, ready)
    }

    fn delivery(body: &str, signature: Option<String>, id: &str) -> Request<Body> {
        let mut r = Request::post("/webhooks/github")
            .header("x-github-event", "pull_request")
            .header("x-github-delivery", id)
            .header("content-type", "application/json");
        if let Some(s) = signature {
            r = r.header("x-hub-signature-256", s);
        }
        r.body(Body::from(body.to_string())).unwrap()
    }

    async fn deliveries(journal: &BotJournal) -> usize {
        journal.deliveries().await.unwrap().len()
    }

    #[tokio::test]
    async fn signed_deliveries_are_recorded_once_and_wake_the_poll() {
        let (app, store, wake, _) = setup(Some(SECRET)).await;
        let body = r#"{"action":"opened","number":1}"#;
        let sig = sign(SECRET.as_bytes(), body.as_bytes());
        let woken = wake.notified();
        let r = app
            .clone()
            .oneshot(delivery(body, Some(sig.clone()), "guid-1"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        tokio::time::timeout(std::time::Duration::from_secs(5), woken)
            .await
            .expect("the poll loop was woken");
        assert_eq!(deliveries(&store).await, 1);
        // A redelivery (same GUID) is answered and ignored: no second record, no wake-up.
        let r = app
            .oneshot(delivery(body, Some(sig), "guid-1"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(deliveries(&store).await, 1);
    }

    /// Issue 19 (secrets that rotate): with the secret in a file, a rotation in place (the
    /// kubelet's new file) is used at the next delivery without a restart, deliveries signed
    /// with the replaced secret are still accepted during the grace, and a forged one is not.
    #[tokio::test]
    async fn a_secret_file_rotated_in_place_is_used_at_the_next_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("webhook-secret");
        std::fs::write(&path, SECRET).unwrap();
        let store = journal().await;
        let state = WebhookState::with_secret(
            crate::secrets::RotatingSecret::new(crate::secrets::SecretSource::File(path.clone())),
            store.clone(),
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(true)),
        );
        let app = router(Arc::new(state));
        let body = r#"{"action":"opened","number":1}"#;
        let send = |secret: &str, id: &str| {
            app.clone().oneshot(delivery(
                body,
                Some(sign(secret.as_bytes(), body.as_bytes())),
                id,
            ))
        };
        assert_eq!(
            send(SECRET, "a").await.unwrap().status(),
            StatusCode::ACCEPTED
        );
        let rotated = "a-rotated-webhook-secret-0123456789";
        let next = dir.path().join("webhook-secret.new");
        std::fs::write(&next, rotated).unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(
            send(rotated, "b").await.unwrap().status(),
            StatusCode::ACCEPTED
        );
        assert_eq!(
            send(SECRET, "c").await.unwrap().status(),
            StatusCode::ACCEPTED,
            "the replaced secret is accepted during the grace"
        );
        assert_eq!(
            send("another-secret-entirely-0123456789", "d")
                .await
                .unwrap()
                .status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(deliveries(&store).await, 3);
        // Gone: every delivery is refused (fail closed), whatever it was signed with.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            send(rotated, "e").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }

    /// Delivery records are kept 7 days: on a simulated clock, a delivery 8 days later prunes
    /// the first one (whose redelivery is then accepted as new: a hint only), and one within
    /// the hour after a prune does not scan again.
    #[tokio::test]
    async fn delivery_records_are_pruned_after_seven_days() {
        use chrono::TimeZone;
        let store = journal().await;
        let t0 = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let now = Arc::new(std::sync::Mutex::new(t0));
        let clock_now = now.clone();
        let state = WebhookState::new(
            Some(SECRET.into()),
            store.clone(),
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(true)),
        )
        .with_clock(Arc::new(move || *clock_now.lock().unwrap()));
        let app = router(Arc::new(state));
        let body = r#"{"action":"opened"}"#;
        let sig = sign(SECRET.as_bytes(), body.as_bytes());
        let send = |id: &str| app.clone().oneshot(delivery(body, Some(sig.clone()), id));
        let at = |d: chrono::Duration| *now.lock().unwrap() = t0 + d;
        let (days, minutes) = (chrono::Duration::days, chrono::Duration::minutes);
        assert_eq!(send("old-1").await.unwrap().status(), StatusCode::ACCEPTED);
        at(days(3));
        assert_eq!(send("mid-1").await.unwrap().status(), StatusCode::ACCEPTED);
        at(days(6));
        assert_eq!(send("mid-2").await.unwrap().status(), StatusCode::ACCEPTED);
        assert_eq!(deliveries(&store).await, 3, "nothing is 7 days old yet");
        // Day 8: old-1 is 8 days old and goes; its redelivery would be a new hint.
        at(days(8));
        assert_eq!(send("new-1").await.unwrap().status(), StatusCode::ACCEPTED);
        let keys = |store: BotJournal| async move { store.deliveries().await.unwrap() };
        assert_eq!(keys(store.clone()).await, ["mid-1", "mid-2", "new-1"]);
        // Pruned at most once an hour: 10 min before mid-1 turns 7 days old a prune keeps it;
        // 20 min after, the prune is not due yet; an hour later it goes.
        at(days(10) - minutes(10));
        assert_eq!(send("new-2").await.unwrap().status(), StatusCode::ACCEPTED);
        at(days(10) + minutes(20));
        assert_eq!(send("new-3").await.unwrap().status(), StatusCode::ACCEPTED);
        assert_eq!(
            keys(store.clone()).await,
            ["mid-1", "mid-2", "new-1", "new-2", "new-3"]
        );
        at(days(10) + minutes(51));
        assert_eq!(send("new-4").await.unwrap().status(), StatusCode::ACCEPTED);
        assert_eq!(
            keys(store.clone()).await,
            ["mid-2", "new-1", "new-2", "new-3", "new-4"]
        );
        // A redelivery of a kept record is still ignored.
        assert_eq!(send("mid-2").await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn forged_and_unsigned_deliveries_change_nothing() {
        let (app, store, _, _) = setup(Some(SECRET)).await;
        let body = r#"{"action":"opened"}"#;
        let forged = sign(b"another-secret-entirely-0123456789", body.as_bytes());
        for sig in [
            None,
            Some(forged),
            Some("sha256=zz".to_string()),
            Some("sha1=abc".to_string()),
        ] {
            let r = app
                .clone()
                .oneshot(delivery(body, sig, "guid-2"))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        }
        // The body was signed for another payload: refused too.
        let sig = sign(SECRET.as_bytes(), b"{}");
        let r = app
            .oneshot(delivery(body, Some(sig), "guid-3"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(deliveries(&store).await, 0);
    }

    #[tokio::test]
    async fn without_a_secret_every_delivery_is_refused() {
        let (app, store, _, _) = setup(None).await;
        let body = "{}";
        let sig = sign(b"", body.as_bytes());
        let r = app
            .oneshot(delivery(body, Some(sig), "guid-4"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(deliveries(&store).await, 0);
    }

    /// `GET /metrics` serves the exposition, with every delivery counted by its result.
    #[tokio::test]
    async fn deliveries_are_counted_by_result_at_metrics() {
        let journal = journal().await;
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let state = WebhookState::new(
            Some(SECRET.into()),
            journal.clone(),
            Arc::new(Notify::new()),
            Arc::new(AtomicBool::new(true)),
        )
        .with_metrics(metrics, journal.store());
        let app = router(Arc::new(state));
        let body = r#"{"action":"opened"}"#;
        let sig = sign(SECRET.as_bytes(), body.as_bytes());
        for (sig, id) in [
            (Some(sig.clone()), "m-1"),
            (Some(sig), "m-1"),
            (None, "m-2"),
        ] {
            app.clone().oneshot(delivery(body, sig, id)).await.unwrap();
        }
        let r = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            r.headers()["content-type"],
            crate::metrics::CONTENT_TYPE,
            "Prometheus negotiates OpenMetrics"
        );
        let bytes = axum::body::to_bytes(r.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        for line in [
            r#"tkgops_webhook_deliveries_total{result="accepted"} 1"#,
            r#"tkgops_webhook_deliveries_total{result="duplicate"} 1"#,
            r#"tkgops_webhook_deliveries_total{result="bad_signature"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn health_and_readiness() {
        let (app, _, _, ready) = setup(Some(SECRET)).await;
        let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
        assert_eq!(
            app.clone().oneshot(get("/healthz")).await.unwrap().status(),
            StatusCode::OK
        );
        assert_eq!(
            app.clone().oneshot(get("/readyz")).await.unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::Release);
        assert_eq!(
            app.oneshot(get("/readyz")).await.unwrap().status(),
            StatusCode::OK
        );
    }
}
