//! The operator HTTP API (`docs/PROTOCOL.md` section 8), served with axum: clients,
//! kick, broadcast, send, events as Server-Sent Events, health and Prometheus
//! metrics, and the operator console ([`crate::web::CONSOLE`]) at `/`. With a
//! token configured, every route but `/healthz` and the console's own files
//! needs `Authorization: Bearer <token>`: the console is a login form until
//! the token it is given works against the API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router as HttpRouter};
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::events::Events;
use crate::metrics::{Metrics, RouteKind};
use crate::router::{Router, SessionHandle};
use crate::web::{self, Asset};

/// Interval of SSE keep-alive comments, so proxies keep the stream open.
const SSE_KEEPALIVE: Duration = Duration::from_secs(15);

/// What the operator API reads and acts on. The gateway builds it from its
/// own parts, so this module depends on those parts and not on the gateway.
pub(crate) struct Api {
    /// Who is connected; where broadcasts and sends go.
    pub(crate) router: Arc<Router>,
    /// What `GET /metrics` renders.
    pub(crate) metrics: Arc<Metrics>,
    /// What `GET /events` streams.
    pub(crate) events: Events,
    /// Cancelled when shutdown begins: `/healthz` answers 503, `/events`
    /// streams end, and the API stops.
    pub(crate) shutdown: CancellationToken,
    /// Largest request body: `max_message_size`, since a body becomes a message.
    pub(crate) max_body: usize,
    /// The bearer token every route but `/healthz` needs, if any.
    pub(crate) token: Option<Arc<str>>,
    /// Serve the operator console at `/`.
    pub(crate) console: bool,
    /// The cluster, with `[cluster]`: the routes reach every node.
    pub(crate) cluster: Option<Arc<Cluster>>,
}

/// One connected client as `GET /clients` reports it (the admin API writes
/// it, [`crate::operator`] reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientRow {
    /// Client name.
    pub name: String,
    /// Real client address.
    pub remote: String,
    /// Listener it came through.
    pub listener: String,
    /// Whether it came over TLS.
    pub tls: bool,
    /// RFC 3339 time of the handshake.
    pub connected_at: String,
    /// Whether its name is a provisional Qt name.
    #[serde(default)]
    pub provisional: bool,
    /// The cluster node it is connected to (only with `[cluster]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl ClientRow {
    /// The row of a session here (`node`: this node's id in a cluster).
    pub(crate) fn of(s: &SessionHandle, node: Option<&str>) -> ClientRow {
        ClientRow {
            name: s.name().to_string(),
            remote: s.info.remote.to_string(),
            listener: s.info.listener.to_string(),
            tls: s.info.tls,
            connected_at: humantime::format_rfc3339_seconds(s.info.connected_at).to_string(),
            provisional: s.is_provisional(),
            node: node.map(str::to_owned),
        }
    }
}

/// The answer to `POST /send/{name}` and `POST /broadcast`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Delivered {
    /// Sessions the message was queued for on this node.
    pub(crate) delivered: usize,
    /// Other cluster nodes that took it (only with `[cluster]`): each
    /// delivers to its own sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) nodes: Option<usize>,
}

impl Delivered {
    /// Sessions here plus other nodes: how many places took the message.
    pub(crate) fn reached(&self) -> usize {
        self.delivered + self.nodes.unwrap_or(0)
    }
}

/// The answer to `DELETE /clients/{name}`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Closed {
    /// Sessions told to close (4001).
    pub(crate) closed: usize,
}

/// The query of `DELETE /clients/{name}`.
#[derive(Debug, Deserialize)]
struct KickQuery {
    /// Words for the client, sent after `kicked: ` in the close frame.
    reason: Option<String>,
}

/// Serves the operator API on `tcp` until shutdown.
pub(crate) async fn serve(tcp: TcpListener, api: Api) {
    let shutdown = api.shutdown.clone();
    let body_limit = api.max_body;
    let console = api.console;
    let state = Arc::new(api);
    let mut app = HttpRouter::new()
        .route("/clients", get(clients))
        .route("/clients/{name}", delete(kick))
        .route("/broadcast", post(broadcast))
        .route("/send/{name}", post(send))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .route("/healthz", get(healthz));
    if console {
        // Outside the token check: the files hold no data, and without a
        // token that works the page is only its login form.
        let site = &*web::CONSOLE;
        for asset in site.assets() {
            let serve = move |headers: HeaderMap| async move { console_file(asset, &headers) };
            if asset.file == "index.html" {
                app = app.route("/", get(serve));
            }
            app = app.route(&format!("/{}", asset.file), get(serve));
        }
    }
    let app = app
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state);
    let result = axum::serve(tcp, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin API stopped");
    }
}

async fn authorize(State(state): State<Arc<Api>>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::token::bearer);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            tracing::warn!(path = %request.uri().path(), "admin request without a valid bearer token");
            let mut headers = HeaderMap::new();
            headers.insert(
                header::WWW_AUTHENTICATE,
                "Bearer".parse().unwrap_or_else(|_| unreachable!()),
            );
            return (
                StatusCode::UNAUTHORIZED,
                headers,
                "missing or wrong bearer token\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares secrets without leaking, through timing, where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn clients(State(state): State<Arc<Api>>) -> Response {
    let node = state.cluster.as_ref().map(|c| c.node());
    let rows = state
        .router
        .sessions()
        .iter()
        .map(|s| ClientRow::of(s, node))
        .collect::<Vec<_>>();
    let Some(cluster) = &state.cluster else {
        return Json(rows).into_response();
    };
    // A cluster node says which it is (the console shows a node column).
    let me = ("x-wssgate-node", cluster.node().to_owned());
    match cluster.remote_clients().await {
        Ok(remote) => {
            let mut rows = rows;
            rows.extend(remote);
            ([me], Json(rows)).into_response()
        }
        // This node's clients, and a header saying the rest is missing.
        Err(e) => (
            [me, ("x-wssgate-cluster", format!("unavailable: {e}"))],
            Json(rows),
        )
            .into_response(),
    }
}

/// A file of the console, or 304 when the browser's copy is fresh.
fn console_file(asset: &'static Asset, request: &HeaderMap) -> Response {
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|tags| asset.is_fresh(tags.as_bytes()));
    let mut headers = HeaderMap::new();
    for (name, value) in web::CONSOLE.headers(asset) {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    }
    if fresh {
        (StatusCode::NOT_MODIFIED, headers).into_response()
    } else {
        (headers, asset.body).into_response()
    }
}

/// The answer when the part of a request for other nodes failed.
fn cluster_unavailable(delivered: usize, what: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"delivered": delivered, "cluster": "unavailable", "error": what})),
    )
        .into_response()
}

async fn kick(
    State(state): State<Arc<Api>>,
    Path(name): Path<String>,
    Query(query): Query<KickQuery>,
) -> Response {
    let reason = query.reason.as_deref();
    let mut closed = state.router.kick(&name, reason);
    if closed == 0
        && let Some(cluster) = &state.cluster
    {
        match cluster.kick(&name, reason).await {
            Ok(nodes) => closed = nodes,
            Err(e) => return cluster_unavailable(0, &e),
        }
    }
    if closed == 0 {
        return (
            StatusCode::NOT_FOUND,
            format!("recipient not connected: {name}\n"),
        )
            .into_response();
    }
    tracing::info!(client = %name, closed, reason = reason.unwrap_or(""), "operator kick");
    Json(Closed { closed }).into_response()
}

async fn broadcast(State(state): State<Arc<Api>>, body: String) -> Response {
    let router = &state.router;
    let delivered = router.broadcast(Message::text(body.clone())).queued;
    router.metrics().routed(RouteKind::broadcast).inc();
    let mut nodes = None;
    if let Some(cluster) = &state.cluster {
        match cluster.broadcast(&body).await {
            Ok(n) => nodes = Some(n),
            Err(e) => return cluster_unavailable(delivered, &e),
        }
    }
    tracing::info!(delivered, ?nodes, "operator broadcast");
    Json(Delivered { delivered, nodes }).into_response()
}

async fn send(State(state): State<Arc<Api>>, Path(name): Path<String>, body: String) -> Response {
    let router = &state.router;
    let delivery = router.send_to_name(&name, || Message::text(body.clone()));
    let mut nodes = None;
    if delivery.targets == 0
        && let Some(cluster) = &state.cluster
    {
        match cluster.send(&name, &body).await {
            Ok(n) => nodes = Some(n).filter(|&n| n > 0),
            Err(e) => return cluster_unavailable(0, &e),
        }
    }
    if delivery.targets == 0 && nodes.is_none() {
        return (
            StatusCode::NOT_FOUND,
            format!("recipient not connected: {name}\n"),
        )
            .into_response();
    }
    let delivered = delivery.queued;
    router.metrics().routed(RouteKind::send).inc();
    tracing::info!(client = %name, delivered, ?nodes, "operator message");
    Json(Delivered { delivered, nodes }).into_response()
}

async fn events(
    State(state): State<Arc<Api>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let receiver = state.events.subscribe();
    // The first event says the subscription is live: what follows is complete.
    let subscribed = futures_util::stream::once(async {
        Ok(SseEvent::default().data(r#"{"type":"subscribed"}"#))
    });
    // The stream ends after the last event (`shutdown`, published just
    // before the shutdown token is cancelled), or at the token if it lagged
    // past it.
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold(Some(receiver), move |receiver| {
        let shutdown = shutdown.clone();
        async move {
            let mut receiver = receiver?;
            let next = tokio::select! {
                biased;
                next = receiver.recv() => next,
                () = shutdown.cancelled() => match receiver.try_recv() {
                    Ok(published) => Ok(published),
                    Err(_) => return None,
                },
            };
            let (event, last) = match next {
                Ok(published) => (SseEvent::default().data(&*published.json), published.last),
                // A subscriber that falls behind skips events rather than holding memory.
                Err(RecvError::Lagged(skipped)) => (
                    SseEvent::default().comment(format!("skipped {skipped} events")),
                    false,
                ),
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), (!last).then_some(receiver)))
        }
    });
    Sse::new(subscribed.chain(stream)).keep_alive(KeepAlive::new().interval(SSE_KEEPALIVE))
}

/// 200 while serving: this node's clients are served whatever Redis does,
/// and the body says how the cluster is (`cluster: up` or `cluster: down`).
async fn healthz(State(state): State<Arc<Api>>) -> (StatusCode, &'static str) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
    }
    match &state.cluster {
        None => (StatusCode::OK, "ok\n"),
        Some(c) if c.is_up() => (StatusCode::OK, "ok\ncluster: up\n"),
        Some(c) if c.is_settling() => (StatusCode::OK, "ok\ncluster: recovering\n"),
        Some(_) => (StatusCode::OK, "ok\ncluster: down\n"),
    }
}

async fn metrics(State(state): State<Arc<Api>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
