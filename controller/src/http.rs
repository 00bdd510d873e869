//! HTTP: the JSON API, the SSE feed, health and readiness, the dashboard.

use crate::feed::{FeedError, FeedItem};
use crate::state::StateHandle;
use crate::store::Store;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use vigil_core::{IncidentId, Timestamp};

#[derive(Clone, Debug)]
struct Ctx {
    state: StateHandle,
    store: Store,
}

/// The HTTP router.
pub fn router(state: StateHandle, store: Store) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/v1/nodes", get(nodes))
        .route("/api/v1/nodes/{id}", get(node))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/incidents", get(incidents))
        .route("/api/v1/incidents/{id}", get(incident))
        .route("/api/v1/events", get(events))
        .route("/api/v1/status", get(status))
        .route("/api/v1/ledger", get(ledger))
        .route("/api/v1/ledger/advice", get(ledger_advice))
        .route("/metrics", get(metrics))
        .route("/api/v1/cordon", axum::routing::post(cordon))
        .route("/api/v1/uncordon", axum::routing::post(uncordon))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint; see docs/api.md") })
        .with_state(Ctx { state, store })
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": msg.into() }))).into_response()
}

fn unavailable() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "controller is shutting down",
    )
}

async fn readyz(State(ctx): State<Ctx>) -> Response {
    let state_ok = ctx.state.query(|_| ()).await.is_some();
    let store_ok = ctx.store.ping().await;
    if state_ok && store_ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: state {state_ok}, store {store_ok}\n"),
        )
            .into_response()
    }
}

async fn status(State(ctx): State<Ctx>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let breaker = ctx
        .state
        .query(move |c| json!({ "open": c.breaker_open(), "allowance_cards": c.quarantine_allowance(now) }))
        .await;
    let s = &ctx.state.stats;
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "streams": s.streams.load(Relaxed),
        "heartbeats": s.heartbeats.load(Relaxed),
        "events": s.events.load(Relaxed),
        "duplicate_events": s.duplicate_events.load(Relaxed),
        "rejected": s.rejected.load(Relaxed),
        "circuit_breaker": breaker,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CordonRequest {
    /// `NODE` or `NODE/CARD`.
    target: String,
    #[serde(default)]
    reason: Option<String>,
}

fn target(t: &str) -> Result<(vigil_core::NodeId, Option<u32>), String> {
    if t.contains('/') {
        let c: vigil_core::CardId = t.parse().map_err(|e| format!("target {t:?}: {e}"))?;
        Ok((c.node, Some(c.index)))
    } else {
        Ok((
            vigil_core::NodeId::new(t).map_err(|e| format!("target {t:?}: {e}"))?,
            None,
        ))
    }
}

async fn operator(ctx: &Ctx, body: &str, cordon: bool) -> Response {
    let req: CordonRequest = match serde_json::from_str(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body must be {{\"target\": \"NODE[/CARD]\"}}: {e}"),
            );
        }
    };
    let (node, card) = match target(&req.target) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let input = if cordon {
        vigil_core::cluster::Input::Cordon {
            node,
            card,
            reason: req
                .reason
                .unwrap_or_else(|| "cordoned by an operator".to_owned()),
        }
    } else {
        vigil_core::cluster::Input::Uncordon { node, card }
    };
    match ctx.state.operator(input).await {
        Ok(()) => axum::Json(json!({ "ok": true, "target": req.target })).into_response(),
        Err(e) if e.contains("not registered") || e.contains("inventory") => {
            error(StatusCode::NOT_FOUND, e)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn cordon(State(ctx): State<Ctx>, body: String) -> Response {
    operator(&ctx, &body, true).await
}

async fn uncordon(State(ctx): State<Ctx>, body: String) -> Response {
    operator(&ctx, &body, false).await
}

/// A JSON answer from a query of the state task: 503 when the task is
/// gone, 500 (logged) when a value cannot be encoded.
fn json_answer<T: serde::Serialize>(r: Option<Result<T, serde_json::Error>>) -> Response {
    match r {
        Some(Ok(v)) => axum::Json(v).into_response(),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "cannot encode an API answer");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode: {e}"),
            )
        }
        None => unavailable(),
    }
}

/// Every item as a JSON value, or the first encoding error.
fn json_values<'a, T: serde::Serialize + 'a>(
    items: impl Iterator<Item = &'a T>,
) -> Result<Vec<serde_json::Value>, serde_json::Error> {
    items.map(serde_json::to_value).collect()
}

async fn nodes(State(ctx): State<Ctx>) -> Response {
    json_answer(ctx.state.query(|c| json_values(c.nodes())).await)
}

async fn node(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let Ok(id) = vigil_core::NodeId::new(id.clone()) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not a valid node id"),
        );
    };
    let key = id.clone();
    match ctx
        .state
        .query(move |c| c.node(&key).map(serde_json::to_value))
        .await
    {
        Some(Some(v)) => json_answer(Some(v)),
        Some(None) => error(StatusCode::NOT_FOUND, format!("unknown node {id}")),
        None => unavailable(),
    }
}

async fn jobs(State(ctx): State<Ctx>) -> Response {
    json_answer(ctx.state.query(|c| json_values(c.jobs())).await)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncidentQuery {
    job: Option<String>,
    since: Option<String>,
    limit: Option<usize>,
}

async fn incidents(
    State(ctx): State<Ctx>,
    q: Result<Query<IncidentQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let since = match q.since.as_deref().map(Timestamp::parse_rfc3339).transpose() {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("since: {e}")),
    };
    let limit = q.limit.unwrap_or(1000);
    let job = q.job;
    let r = ctx
        .state
        .query(move |c| {
            json_values(
                c.incidents()
                    .rev()
                    .filter(|i| {
                        job.as_deref()
                            .is_none_or(|j| i.job.as_ref().is_some_and(|x| x.as_str() == j))
                    })
                    .filter(|i| since.is_none_or(|s| i.detected_at >= s))
                    .take(limit),
            )
        })
        .await;
    json_answer(r)
}

async fn incident(State(ctx): State<Ctx>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<IncidentId>() else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{id:?} is not an incident id (inc-N)"),
        );
    };
    match ctx
        .state
        .query(move |c| c.incident(id).map(serde_json::to_value))
        .await
    {
        Some(Some(v)) => json_answer(Some(v)),
        Some(None) => error(StatusCode::NOT_FOUND, format!("unknown incident {id}")),
        None => unavailable(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    after: Option<u64>,
    /// Begin with a `snapshot` event of the current state, then deltas.
    snapshot: Option<bool>,
}

async fn events(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().parse::<u64>());
    let after = match from_header {
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID must be a feed sequence number",
            );
        }
        None => q.after.unwrap_or(0),
    };
    // A snapshot only for a fresh start: a client that resumes with
    // Last-Event-ID already has the state and wants the deltas.
    let want_snapshot = q.snapshot.unwrap_or(false) && from_header.is_none();
    if want_snapshot && q.after.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "snapshot=true starts from the current state; it cannot be combined with after",
        );
    }
    let (first, after) = if want_snapshot {
        match crate::feed::snapshot(&ctx.state).await {
            Some(ev) => {
                let seq = ev.seq;
                (Some(FeedItem::Event(Arc::new(ev))), seq)
            }
            None => return unavailable(),
        }
    } else {
        (None, after)
    };
    let Some(feed) = crate::feed::stream(ctx.state.clone(), ctx.store.clone(), after).await else {
        return unavailable();
    };
    let feed = futures_util::StreamExt::chain(futures_util::stream::iter(first.map(Ok)), feed);
    // An error ends the response, so the client sees a broken stream (and
    // resumes with Last-Event-ID) rather than a gap.
    let stream = tokio_stream::StreamExt::map(feed, |item| sse_event(item?));
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// One feed item as an SSE event.
fn sse_event(item: FeedItem) -> Result<Event, SseError> {
    Ok(match item {
        FeedItem::Event(e) => {
            let data = serde_json::to_string(&*e).map_err(|err| {
                tracing::warn!(seq = e.seq, error = %err, "feed stream ended: cannot encode an event");
                SseError::Encode(err)
            })?;
            Event::default()
                .id(e.seq.to_string())
                .event(e.kind.clone())
                .data(data)
        }
        FeedItem::Dropped(n) => Event::default()
            .event("dropped")
            .data(json!({ "dropped": n }).to_string()),
    })
}

/// Why an SSE response ended early.
#[derive(Debug, thiserror::Error)]
enum SseError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("cannot encode a feed event: {0}")]
    Encode(serde_json::Error),
}

async fn metrics(State(ctx): State<Ctx>, headers: HeaderMap) -> Response {
    // Prometheus asks for OpenMetrics in its Accept header; anything else
    // gets the classic text format.
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let content_type = if openmetrics {
        crate::metrics::OPENMETRICS
    } else {
        crate::metrics::PROMETHEUS_TEXT
    };
    match crate::metrics::render(&ctx.state, openmetrics).await {
        Ok(text) => ([(header::CONTENT_TYPE, content_type)], text).into_response(),
        Err(crate::metrics::MetricsError::Unavailable) => unavailable(),
        Err(e) => {
            tracing::warn!(error = %e, "/metrics failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

async fn dashboard() -> Html<&'static str> {
    Html(include_str!("dashboard.html"))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LedgerQuery {
    job: Option<String>,
    since: Option<String>,
    until: Option<String>,
    by: Option<String>,
}

/// `GET /api/v1/ledger`: allocated versus effective card-hours, with the
/// losses by cause; `by` groups by job (default), node, card, model or cause.
async fn ledger(
    State(ctx): State<Ctx>,
    q: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let time = |name: &str, v: Option<&str>| -> Result<Option<vigil_core::Millis>, String> {
        v.map(Timestamp::parse_rfc3339)
            .transpose()
            .map(|t| t.map(|t| t.0))
            .map_err(|e| format!("{name}: {e}"))
    };
    let since = match time("since", q.since.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let until = match time("until", q.until.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let by = match q
        .by
        .as_deref()
        .unwrap_or("job")
        .parse::<vigil_core::ledger::GroupBy>()
    {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let job = match q.job.map(vigil_core::JobId::new).transpose() {
        Ok(j) => j,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("job: {e}")),
    };
    let now = crate::now_ms();
    match ctx
        .state
        .query(move |c| {
            let rows = c.ledger().rows(now, since, until);
            vigil_core::ledger::report(&rows, by, job.as_ref())
        })
        .await
    {
        Some(v) => axum::Json(v).into_response(),
        None => unavailable(),
    }
}

/// `GET /api/v1/ledger/advice`: the checkpoint interval that maximizes ETTR.
async fn ledger_advice(State(ctx): State<Ctx>) -> Response {
    let now = crate::now_ms();
    match ctx.state.query(move |c| c.ledger().advise(now)).await {
        Some(v) => axum::Json(v).into_response(),
        None => unavailable(),
    }
}

#[cfg(test)]
mod tests {
    /// The dashboard listens for every kind the feed can carry: the kinds
    /// it names are core's catalog, less the two it handles apart.
    #[test]
    fn the_dashboard_listens_for_every_feed_kind() {
        let page = include_str!("dashboard.html");
        let line = page
            .lines()
            .find_map(|l| l.trim().strip_prefix("const KINDS = ["))
            .expect("the dashboard names its kinds");
        let listed: std::collections::BTreeSet<&str> = line
            .trim_end_matches("];")
            .split(',')
            .map(|k| k.trim().trim_matches('"'))
            .collect();
        let catalog: std::collections::BTreeSet<&str> = vigil_core::feed::KINDS
            .iter()
            .copied()
            .filter(|k| !matches!(*k, "snapshot" | "dropped"))
            .collect();
        assert_eq!(listed, catalog);
        for apart in ["snapshot", "dropped"] {
            assert!(
                page.contains(&format!("addEventListener(\"{apart}\"")),
                "{apart}"
            );
        }
    }
}
