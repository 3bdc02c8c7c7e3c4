//! The API server (axum): routes, authorization (`SO_PEERCRED` on the Unix socket, a bearer token
//! on TCP), JSON errors, and the Prometheus endpoint.
//!
//! Authorization happens in one middleware in front of every route, so a handler never runs for
//! a caller that is not allowed; the caller's uid is handed to the engine, which logs it with
//! every operation.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::connect_info::Connected;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, Path as UrlPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{ApiError, ExtendRequest, FaultList, PauseState, Reverted, Status};
use crate::engine::{Engine, EngineError, FaultId, Requester, RevertReason};
use crate::faults::FaultSpec;

/// Content type of the metrics endpoint (`OpenMetrics` 1.0 text, what prometheus-client encodes).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors setting up the listeners.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another agent already serves the socket.
    #[error("another chaos-agent is already listening on {0}")]
    InUse(PathBuf),
    /// A filesystem or socket operation failed.
    #[error("{what} {path}: {cause}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: String,
        /// The cause (in the message; not a `source`, so anyhow does not print it twice).
        cause: std::io::Error,
    },
    /// The configured group does not exist.
    #[error("api.allowed_group {0:?}: no such group")]
    NoSuchGroup(String),
}

/// Who may use the API. Replaced as a whole on SIGHUP.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    /// Uids allowed besides root.
    pub allowed_uids: Vec<u32>,
    /// Group allowed (name, gid).
    pub allowed_group: Option<(String, u32)>,
    /// Bearer token for the TCP listener.
    pub token: Option<String>,
}

impl Auth {
    /// Builds the rules from the configuration, resolving the group name.
    pub fn from_config(
        cfg: &crate::config::Config,
        token: Option<String>,
    ) -> Result<Self, ServerError> {
        let allowed_group = match &cfg.api.allowed_group {
            None => None,
            Some(name) => {
                let g = nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ServerError::NoSuchGroup(name.clone()))?;
                Some((name.clone(), g.gid.as_raw()))
            }
        };
        Ok(Self {
            allowed_uids: cfg.api.allowed_uids.clone(),
            allowed_group,
            token,
        })
    }

    fn unix_allowed(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || self.allowed_uids.contains(&uid) {
            return true;
        }
        let Some((_, group)) = self.allowed_group else {
            return false;
        };
        // Primary group from the kernel; supplementary groups from /proc, read now (a client
        // cannot fake them, and they are what file permissions would use too).
        gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
    }

    fn describe(&self) -> String {
        let mut who = vec!["root".to_owned()];
        who.extend(self.allowed_uids.iter().map(|u| format!("uid {u}")));
        if let Some((name, _)) = &self.allowed_group {
            who.push(format!("members of group {name}"));
        }
        who.join(", ")
    }
}

fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The peer of a connection, taken from the kernel when it is accepted.
#[derive(Clone, Debug)]
pub enum Peer {
    /// A Unix-socket client with its `SO_PEERCRED` credentials (`None` if the kernel gave none).
    Unix {
        /// Credentials: uid, gid, pid.
        cred: Option<(u32, u32, Option<i32>)>,
    },
    /// A TCP client.
    Tcp(SocketAddr),
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix {
                cred: Some((uid, _, Some(pid))),
            } => write!(f, "unix uid={uid} pid={pid}"),
            Self::Unix {
                cred: Some((uid, _, None)),
            } => write!(f, "unix uid={uid}"),
            Self::Unix { cred: None } => f.write_str("unix (no credentials)"),
            Self::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

impl Connected<IncomingStream<'_, UnixListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        let cred = stream
            .io()
            .peer_cred()
            .ok()
            .map(|c| (c.uid(), c.gid(), c.pid()));
        Self::Unix { cred }
    }
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Self::Tcp(*stream.remote_addr())
    }
}

/// The uid logged for TCP clients, which have no Unix identity (the span names their address).
pub const TCP_UID: u32 = u32::MAX;

/// Shared state of the handlers.
#[derive(Debug)]
pub struct ApiState {
    /// The engine.
    pub engine: Engine,
    /// Authorization rules.
    pub auth: RwLock<Auth>,
    /// When the agent started.
    pub started: Instant,
    /// Leftovers removed by the start-up reconcile.
    pub leftovers_at_start: usize,
    /// The metrics address, for status.
    pub metrics_addr: Option<SocketAddr>,
    /// The experiments the daemon runs.
    pub experiments: Arc<crate::experiment::daemon::Experiments>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self::from(&e)
    }
}

fn refuse(who: Requester, why: &str, e: ApiError, engine: &Engine) -> ApiError {
    engine.metrics().fault_refused(why);
    tracing::warn!(event = "refuse", uid = who.uid, reason = why, error = %e.message, "request refused");
    e
}

/// Checks the caller before any handler runs and attaches its [`Requester`].
async fn authorize(
    State(st): State<Arc<ApiState>>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    mut req: Request,
    next: Next,
) -> Response {
    let auth = st.auth.read().map(|a| a.clone()).unwrap_or_default();
    let who = match &peer {
        Peer::Unix {
            cred: Some((uid, gid, pid)),
        } => {
            if !auth.unix_allowed(*uid, *gid, *pid) {
                st.engine.metrics().fault_refused("forbidden");
                tracing::warn!(event = "refuse", uid = *uid, reason = "forbidden", method = %req.method(), path = %req.uri().path(), "API request refused: uid not allowed");
                return ApiError::new(
                    403,
                    "forbidden",
                    format!(
                        "uid {uid} may not use the chaos-agent API (allowed: {})",
                        auth.describe()
                    ),
                )
                .into_response();
            }
            Requester { uid: *uid }
        }
        Peer::Unix { cred: None } => {
            return ApiError::new(
                403,
                "forbidden",
                "the kernel gave no peer credentials for this connection",
            )
            .into_response();
        }
        Peer::Tcp(addr) => {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let ok = matches!((&auth.token, given), (Some(want), Some(got)) if constant_time_eq(want.as_bytes(), got.as_bytes()));
            if !ok {
                st.engine.metrics().fault_refused("unauthorized");
                tracing::warn!(event = "refuse", uid = TCP_UID, remote = %addr, reason = "unauthorized", "API request refused: missing or wrong bearer token");
                let mut r = ApiError::new(
                    401,
                    "unauthorized",
                    "the TCP API needs `Authorization: Bearer <token>` with the agent's token",
                )
                .into_response();
                r.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
            Requester { uid: TCP_UID }
        }
    };
    req.extensions_mut().insert(who);
    let span =
        tracing::info_span!("api", peer = %peer, method = %req.method(), path = %req.uri().path());
    next.run(req).instrument(span).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // The length leaks, the content does not: compare every byte whatever the first mismatch.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fault id from a request path (`/v1/faults/{id}`).
pub fn parse_id(s: &str) -> Result<FaultId, ApiError> {
    s.parse().map_err(|e: String| ApiError::invalid(e))
}

/// The largest request body accepted. The largest valid fault spec is about 2.3 MB (16,384
/// prefixes of each family on each side, 4,096 port ranges on each side); axum's default of 2 MB
/// refused it, and with a text answer instead of a JSON error.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// A body that could not be read (over [`MAX_BODY_BYTES`], or cut off) as a JSON error.
fn body_error(e: &axum::extract::rejection::BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            413,
            "body_too_large",
            format!(
                "the request body is larger than {} MiB, the most a fault spec can take",
                MAX_BODY_BYTES >> 20
            ),
        )
    } else {
        ApiError::invalid(format!(
            "the request body could not be read: {}",
            e.body_text()
        ))
    }
}

/// Longest error message repeated from the JSON parser: its messages quote the offending field
/// name or value, which a request may make as long as its body.
const MAX_PARSE_MESSAGE: usize = 400;

/// A request body as JSON (`what` names it in the error); an empty body is an error of its own.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes, what: &str) -> Result<T, ApiError> {
    let Some(first) = body.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Err(ApiError::invalid(format!(
            "the request body is empty: expected {what} as JSON"
        )));
    };
    // serde would also take a struct from an array of its fields in order: only an object is
    // a request.
    if *first != b'{' {
        let got = match first {
            b'[' => "an array",
            b'"' => "a string",
            b'n' => "null",
            b't' | b'f' => "a boolean",
            b'-' | b'0'..=b'9' => "a number",
            _ => "something that is not JSON",
        };
        return Err(ApiError::invalid(format!(
            "invalid {what}: expected a JSON object, got {got}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(crate::spec::one_line(
            &format!("invalid {what}: {e}"),
            MAX_PARSE_MESSAGE,
        ))
    })
}

/// Runs an engine operation in its own task: if the client disconnects, axum drops the handler
/// future, and an apply or revert cut off half-way would leave kernel state no slot owns.
async fn detached<T: Send + 'static>(
    f: impl Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(f)
        .await
        .map_err(|e| ApiError::new(500, "internal", format!("request task failed: {e}")))
}

type Who = axum::Extension<Requester>;
type Json<T> = axum::Json<T>;

async fn create(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<crate::engine::FaultInfo>), ApiError> {
    let spec: FaultSpec = body
        .map_err(|e| body_error(&e))
        .and_then(|b| parse_json(&b, "fault spec"))
        .map_err(|e| refuse(who, "invalid", e, &st.engine))?;
    // The engine logs and counts its own refusals.
    let engine = st.engine.clone();
    let info = detached(async move { engine.inject(spec, who).await }).await??;
    Ok((StatusCode::CREATED, axum::Json(info)))
}

async fn list(State(st): State<Arc<ApiState>>) -> Json<FaultList> {
    axum::Json(FaultList {
        faults: st.engine.list().await,
    })
}

async fn show(
    State(st): State<Arc<ApiState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<crate::engine::FaultInfo>, ApiError> {
    let id = parse_id(&id)?;
    st.engine
        .get(id)
        .await
        .map(axum::Json)
        .ok_or_else(|| EngineError::NotFound(id).into())
}

async fn stop(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<crate::engine::RevertReport>, ApiError> {
    let id = parse_id(&id)?;
    let engine = st.engine.clone();
    Ok(axum::Json(
        detached(async move { engine.stop(id, who).await }).await??,
    ))
}

async fn stop_all(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
) -> Result<Json<Reverted>, ApiError> {
    let engine = st.engine.clone();
    let reverted =
        detached(async move { engine.stop_all(RevertReason::Stopped, who).await }).await?;
    Ok(axum::Json(Reverted { reverted }))
}

async fn extend(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
    UrlPath(id): UrlPath<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<crate::engine::FaultInfo>, ApiError> {
    let id = parse_id(&id)?;
    let req: ExtendRequest = body
        .map_err(|e| body_error(&e))
        .and_then(|b| parse_json(&b, "extend request"))
        .map_err(|e| refuse(who, "invalid", e, &st.engine))?;
    if req.by.is_zero() {
        return Err(refuse(
            who,
            "invalid",
            ApiError::invalid("`by` must be greater than zero"),
            &st.engine,
        ));
    }
    // No fault can be extended by more than the maximum TTL; refusing it here also keeps a
    // `by` near `u64::MAX` seconds from overflowing the engine's deadline arithmetic.
    let max = st.engine.config().limits.effective_max_ttl();
    if req.by > max {
        return Err(refuse(
            who,
            "invalid",
            ApiError::new(
                400,
                "ttl_too_long",
                format!(
                    "extending by {}: the ttl exceeds the maximum of {}",
                    humantime::format_duration(req.by),
                    humantime::format_duration(max)
                ),
            ),
            &st.engine,
        ));
    }
    let engine = st.engine.clone();
    match detached(async move { engine.extend(id, req.by, who).await }).await? {
        Ok(info) => Ok(axum::Json(info)),
        Err(e) => {
            let api = ApiError::from(&e);
            Err(if matches!(e, EngineError::NotFound(_)) {
                api
            } else {
                refuse(who, "invalid", api, &st.engine)
            })
        }
    }
}

/// Blocks until the fault ends and returns its report (for `inject --wait`).
async fn wait(
    State(st): State<Arc<ApiState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<crate::engine::RevertReport>, ApiError> {
    let id = parse_id(&id)?;
    let mut rx = st.engine.watch(id).await.ok_or(EngineError::NotFound(id))?;
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return Ok(axum::Json(r));
        }
        if rx.changed().await.is_err() {
            // The sender is gone: the report, if any, is the last value.
            return rx
                .borrow()
                .clone()
                .map(axum::Json)
                .ok_or_else(|| ApiError::new(500, "internal", "the fault ended without a report"));
        }
    }
}

async fn status(State(st): State<Arc<ApiState>>) -> Json<Status> {
    let cfg = st.engine.config();
    axum::Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        uptime_seconds: st.started.elapsed().as_secs(),
        kernel: crate::sys::kernel_release(),
        paused: st.engine.is_paused(),
        active_faults: st.engine.list().await.len(),
        max_faults: cfg.max_faults,
        max_ttl: cfg.limits.max_ttl,
        default_ttl: cfg.default_ttl,
        attach_mode: format!(
            "{} ({})",
            cfg.attach_mode.as_str(),
            cfg.attach_mode.resolve().as_str()
        ),
        protected_ports: cfg
            .protected_ports
            .iter()
            .map(ToString::to_string)
            .collect(),
        leftovers_removed_at_start: st.leftovers_at_start,
        metrics_addr: st.metrics_addr.map(|a| a.to_string()),
    })
}

async fn pause(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
) -> Result<Json<PauseState>, ApiError> {
    let engine = st.engine.clone();
    let experiments = st.experiments.clone();
    let reverted = detached(async move {
        // Experiments first: each reverts its own faults and records itself as interrupted.
        experiments
            .stop_all(&format!("the agent was paused by uid {}", who.uid))
            .await;
        engine.pause(who).await
    })
    .await?;
    Ok(axum::Json(PauseState {
        paused: true,
        reverted,
    }))
}

async fn resume(State(st): State<Arc<ApiState>>, axum::Extension(who): Who) -> Json<PauseState> {
    st.engine.resume(who);
    axum::Json(PauseState {
        paused: false,
        reverted: Vec::new(),
    })
}

async fn experiment_start(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<crate::experiment::daemon::RunSummary>), ApiError> {
    use crate::experiment::daemon::StartError;
    let body = body.map_err(|e| body_error(&e))?;
    let toml = std::str::from_utf8(&body)
        .map_err(|_| ApiError::invalid("the experiment file is not UTF-8"))?;
    let cfg = st.engine.config();
    match st.experiments.start(toml, &cfg, who) {
        Ok(s) => Ok((StatusCode::CREATED, axum::Json(s))),
        Err(e @ StartError::Invalid(_)) => {
            Err(ApiError::new(400, "invalid_experiment", e.to_string()))
        }
        Err(e @ StartError::Busy(_)) => {
            Err(ApiError::new(409, "experiment_running", e.to_string()))
        }
        Err(e @ StartError::Paused) => Err(ApiError::new(409, "paused", e.to_string())),
    }
}

#[derive(serde::Serialize)]
struct ExperimentList {
    experiments: Vec<crate::experiment::daemon::RunSummary>,
}

async fn experiment_list(State(st): State<Arc<ApiState>>) -> Json<ExperimentList> {
    axum::Json(ExperimentList {
        experiments: st.experiments.list(),
    })
}

fn no_experiment(id: &str) -> ApiError {
    ApiError::new(404, "no_such_experiment", format!("no experiment {id}"))
}

async fn experiment_show(
    State(st): State<Arc<ApiState>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let v = match st.experiments.get(&id).ok_or_else(|| no_experiment(&id))? {
        Ok(report) => serde_json::to_value(report),
        Err(running) => serde_json::to_value(running),
    };
    v.map(axum::Json)
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))
}

async fn experiment_stop(
    State(st): State<Arc<ApiState>>,
    axum::Extension(who): Who,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let experiments = st.experiments.clone();
    let why = format!("stopped through the API by uid {}", who.uid);
    let id2 = id.clone();
    let stopped = detached(async move { experiments.stop(&id2, &why).await }).await?;
    if !stopped {
        return Err(ApiError::new(
            404,
            "no_such_experiment",
            format!("no running experiment {id}"),
        ));
    }
    experiment_show(State(st), UrlPath(id)).await
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        404,
        "no_such_endpoint",
        format!(
            "no endpoint {method} {} (see docs/api.md; paths start with /v1)",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        405,
        "method_not_allowed",
        format!(
            "{method} is not allowed on {} (see docs/api.md)",
            uri.path()
        ),
    )
}

/// The API router (routes, fallbacks and the authorization layer).
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/v1/faults", post(create).get(list).delete(stop_all))
        .route("/v1/faults/{id}", get(show).delete(stop))
        .route("/v1/faults/{id}/extend", post(extend))
        .route("/v1/faults/{id}/wait", get(wait))
        .route("/v1/status", get(status))
        .route("/v1/pause", post(pause))
        .route("/v1/resume", post(resume))
        .route(
            "/v1/experiments",
            post(experiment_start).get(experiment_list),
        )
        .route(
            "/v1/experiments/{id}",
            get(experiment_show).delete(experiment_stop),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

/// Binds the control socket: refuses if another agent answers on it, removes a stale one,
/// and restricts it to root (0600) or root and the allowed group (0660).
pub fn bind_unix(path: &Path, group: Option<u32>) -> Result<UnixListener, ServerError> {
    let io = |what: &'static str, p: &Path| {
        let path = p.display().to_string();
        move |cause| ServerError::Io { what, path, cause }
    };
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        // The socket's own mode is the access control; the directory only has to be traversable.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_owned()));
        }
        // Nobody answers: a crashed agent's socket.
        std::fs::remove_file(path).map_err(io("remove stale socket", path))?;
    }
    // Created with a restrictive umask so the socket is never reachable by others, not even
    // between bind and chmod.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io("bind", path))?;
    if let Some(gid) = group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            ServerError::Io {
                what: "chown",
                path: path.display().to_string(),
                cause: e.into(),
            }
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(io("chmod", path))?;
    }
    Ok(listener)
}

/// Serves the API on the Unix socket (and TCP if given) until `stop` is cancelled. Returns when
/// every connection has finished; callers bound that wait (see `cli::run`).
pub async fn serve(
    state: Arc<ApiState>,
    unix: UnixListener,
    tcp: Option<TcpListener>,
    stop: CancellationToken,
) {
    let app = router(state);
    let unix_srv = {
        let app = app.clone();
        let stop = stop.clone();
        async move {
            let svc = app.into_make_service_with_connect_info::<Peer>();
            if let Err(e) = axum::serve(unix, svc)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "API socket server failed");
            }
        }
    };
    let tcp_srv = async move {
        if let Some(l) = tcp {
            let svc = app.into_make_service_with_connect_info::<Peer>();
            if let Err(e) = axum::serve(l, svc)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "API TCP server failed");
            }
        }
    };
    tokio::join!(unix_srv, tcp_srv);
}

/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The exposition formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exposition {
    /// The classic Prometheus text format 0.0.4: the default.
    PrometheusText,
    /// `OpenMetrics` 1.0 text, only for a client that prefers it.
    OpenMetrics,
}

/// One media range of an `Accept` header: `type/subtype`, lower-cased, its `version`
/// parameter and its weight (`q`, 1 when absent).
fn media_ranges<'a>(accept: impl Iterator<Item = &'a str>) -> Vec<(String, Option<String>, f32)> {
    let mut out = Vec::new();
    for range in accept.flat_map(|v| v.split(',')) {
        let mut parts = range.split(';').map(str::trim);
        let Some(media) = parts.next().filter(|m| !m.is_empty()) else {
            continue;
        };
        let mut version = None;
        let mut q = Some(1.0_f32);
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"');
            match k.trim().to_ascii_lowercase().as_str() {
                // RFC 9110 12.4.2: 0 to 1 with at most three decimals; a weight we cannot
                // read makes the range unusable rather than preferred.
                "q" => q = v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)),
                "version" => version = Some(v.to_owned()),
                _ => {}
            }
        }
        if let Some(q) = q {
            out.push((media.to_ascii_lowercase(), version, q));
        }
    }
    out
}

/// Picks the exposition for an `Accept` header (RFC 9110 content negotiation, section 12.5.1).
/// Classic text unless the client weighs `OpenMetrics` 1.0 strictly higher than anything that
/// covers `text/plain`: Prometheus 2.x and 3.x list `OpenMetrics` first (q 1 or 0.6 over
/// text's 0.5 or 0.4) and get it; curl's `*/*`, no header, `text/plain` alone, a client that
/// ranks them equal or one that accepts neither get the text format, which every Prometheus
/// parser and promtool read.
fn negotiate<'a>(accept: impl Iterator<Item = &'a str>) -> Exposition {
    let ranges = media_ranges(accept);
    let max_q = |pred: &dyn Fn(&str, Option<&str>) -> bool| {
        ranges
            .iter()
            .filter(|(m, v, _)| pred(m, v.as_deref()))
            .map(|(_, _, q)| *q)
            .reduce(f32::max)
    };
    // Only an explicit OpenMetrics range counts (not `*/*` or `application/*`): the version we
    // encode is 1.0.0, so a client that asks for 0.0.1 only is served text.
    let om = max_q(&|m, v| m == "application/openmetrics-text" && v.is_none_or(|v| v == "1.0.0"))
        .unwrap_or(0.0);
    // The most specific range that covers text/plain decides its weight: text 0.0.4 (and
    // 1.0.0, of which 0.0.4 with legacy names is a subset), then `text/*`, then `*/*`.
    let text = max_q(&|m, v| m == "text/plain" && v.is_none_or(|v| v == "0.0.4" || v == "1.0.0"))
        .or_else(|| max_q(&|m, _| m == "text/*"))
        .or_else(|| max_q(&|m, _| m == "*/*"))
        .unwrap_or(0.0);
    if om > 0.0 && om > text {
        Exposition::OpenMetrics
    } else {
        Exposition::PrometheusText
    }
}

/// Serves `GET /metrics` (classic text, or `OpenMetrics` for clients that prefer it) until
/// `stop` is cancelled.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) {
    let app = Router::new().route(
        "/metrics",
        get(move |headers: axum::http::HeaderMap| {
            let m = metrics.clone();
            async move {
                let accept = headers
                    .get_all(header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok());
                match negotiate(accept) {
                    Exposition::OpenMetrics => (
                        [
                            (header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE),
                            (header::VARY, "Accept"),
                        ],
                        m.encode(),
                    ),
                    Exposition::PrometheusText => (
                        [
                            (header::CONTENT_TYPE, PROMETHEUS_TEXT_CONTENT_TYPE),
                            (header::VARY, "Accept"),
                        ],
                        m.encode_prometheus_text(),
                    ),
                }
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> ApiError {
        parse_json::<FaultSpec>(&Bytes::from(body.to_owned()), "fault spec").expect_err(body)
    }

    #[test]
    fn bodies_that_are_not_an_object_are_refused() {
        for (body, got) in [
            ("[]", "an array"),
            (r#"["5s"]"#, "an array"),
            ("null", "null"),
            ("\"x\"", "a string"),
            ("5", "a number"),
            ("true", "a boolean"),
            ("\u{1}", "something that is not JSON"),
        ] {
            let e = refused(body);
            assert_eq!(e.status, 400);
            assert!(
                e.message
                    .ends_with(&format!("expected a JSON object, got {got}")),
                "{body}: {}",
                e.message
            );
        }
        assert!(refused(" \n").message.contains("empty"));
    }

    #[test]
    fn parser_messages_stay_on_one_short_line() {
        let e = refused(r#"{"ttl":"5s","target":{"a\nb":1}}"#);
        assert!(
            !e.message.contains('\n') && e.message.contains(r"a\nb"),
            "{}",
            e.message
        );
        let long = format!(r#"{{"ttl":"5s","{}":1}}"#, "x".repeat(100_000));
        let e = refused(&long);
        assert!(
            e.message.chars().count() <= MAX_PARSE_MESSAGE,
            "{}",
            e.message.len()
        );
        assert!(
            e.message
                .starts_with("invalid fault spec: unknown field `xxx"),
            "{}",
            e.message
        );
        assert!(
            e.message.ends_with("at line 1 column 100014"),
            "{}",
            e.message
        );
    }

    fn served(accept: &[&str]) -> Exposition {
        negotiate(accept.iter().copied())
    }

    #[test]
    fn metrics_default_to_classic_text() {
        use Exposition::{OpenMetrics, PrometheusText};
        // What each scraper sends (captured from Debian's Prometheus 2.42 with a listening
        // socket; 2.45 sends the same; 2.49+ derives it from `scrape_protocols`).
        let prometheus_2_42 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let prometheus_2_45_native_histograms = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited,application/openmetrics-text;version=1.0.0;q=0.8,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        let prometheus_2_53 = "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        let prometheus_3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        // `scrape_protocols: [PrometheusText0.0.4, OpenMetricsText1.0.0]` on 3.x.
        let prometheus_3_text_first = "text/plain;version=0.0.4;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,*/*;q=0.4";
        for (accept, want) in [
            (vec![prometheus_2_42], OpenMetrics),
            (vec![prometheus_2_45_native_histograms], OpenMetrics),
            (vec![prometheus_2_53], OpenMetrics),
            (vec![prometheus_3], OpenMetrics),
            (vec![prometheus_3_text_first], PrometheusText),
            // curl, a browser, no header at all.
            (vec!["*/*"], PrometheusText),
            (
                vec!["text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"],
                PrometheusText,
            ),
            (vec![], PrometheusText),
            (vec![""], PrometheusText),
            // Explicit asks, either way; parameters and case do not matter.
            (vec!["text/plain;version=0.0.4"], PrometheusText),
            (vec!["application/openmetrics-text"], OpenMetrics),
            (
                vec!["Application/OpenMetrics-Text; Version=1.0.0; charset=utf-8"],
                OpenMetrics,
            ),
            (
                vec!["application/openmetrics-text; version=\"1.0.0\""],
                OpenMetrics,
            ),
            // The weights decide, not the order; a tie is the server's choice (text).
            (
                vec!["application/openmetrics-text;q=0.5,text/plain;q=0.9"],
                PrometheusText,
            ),
            (
                vec!["text/plain;q=0.2,application/openmetrics-text;q=0.3"],
                OpenMetrics,
            ),
            (
                vec!["application/openmetrics-text;q=0.5,text/plain;q=0.5"],
                PrometheusText,
            ),
            (
                vec!["application/openmetrics-text;q=0.5,*/*;q=0.5"],
                PrometheusText,
            ),
            (
                vec!["application/openmetrics-text;q=0.5,text/*;q=0.4"],
                OpenMetrics,
            ),
            // The most specific range wins: text/plain;q=0 refuses text even under */*;q=1.
            (
                vec!["text/plain;q=0,*/*,application/openmetrics-text;q=0.1"],
                OpenMetrics,
            ),
            // q=0 is "not acceptable"; an unreadable weight makes the range unusable.
            (vec!["application/openmetrics-text;q=0"], PrometheusText),
            (vec!["application/openmetrics-text;q=high"], PrometheusText),
            (vec!["application/openmetrics-text;q=2"], PrometheusText),
            // Only the version we encode.
            (
                vec!["application/openmetrics-text;version=0.0.1"],
                PrometheusText,
            ),
            (
                vec!["application/openmetrics-text;version=2.0.0,text/plain;q=0.1"],
                PrometheusText,
            ),
            // Wildcards never select OpenMetrics.
            (vec!["application/*"], PrometheusText),
            // Several Accept headers are one list.
            (
                vec!["text/plain;q=0.1", "application/openmetrics-text"],
                OpenMetrics,
            ),
            (vec!["application/json"], PrometheusText),
        ] {
            assert_eq!(served(&accept), want, "Accept: {accept:?}");
        }
    }
}
