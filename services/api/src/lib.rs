//! The anchor request API (`cas api`): the HTTP surface Ceramic nodes talk to.
//!
//! Routes (all wire-compatible with the reference Ceramic Anchor Service):
//! - `POST /api/v0/requests`: create a request (JSON or CAR body); 201 new, 202 existing.
//! - `GET /api/v0/requests/{cid}`: status of a request; 200, 404, or 400 for a bad CID.
//! - `GET /api/v0/service-info/supported_chains`: `{"supportedChains":["eip155:<id>"]}`.
//! - `GET /api/v0/healthcheck`: 200 or 503, empty body.
//! - `GET /metrics`: Prometheus metrics of this process.
//!
//! Client mistakes answer 4xx with `{"error": "..."}`; internal failures answer 5xx, never
//! 4xx, because nodes treat a 4xx as "the service does not know this request".
//!
//! Abuse protection: DID authentication of POSTs (401 `{"message":"Unauthorized"}`, see
//! [`AuthSettings`]), rate limits per client IP and per DID (429 with `Retry-After`), body,
//! header and connection limits, request timeouts, and a bounded ingest queue that answers
//! 503 when full instead of growing.

mod auth;
mod error;
mod http_metrics;
mod limits;
mod presentation;
mod publisher;
mod routes;
mod server;
mod witness;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use cas_store::{
    GroupCommitConfig, GroupCommitter, GroupReader, MemoryNonceStore, NonceStore, RequestRecord,
    RequestStore,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::{AuthMode, AuthSettings, IpRange};
pub use error::ApiError;
pub use limits::RateLimit;
pub use presentation::Presentation;
pub use publisher::{IngestPublisher, PublisherConfig};
pub use server::ServerLimits;
pub use witness::ArtifactWitnesses;

/// A built witness: the anchor commit's CID and the witness CAR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltWitness {
    /// CID of the anchor commit (`anchorCommit.cid`).
    pub anchor_commit_cid: String,
    /// The witness CAR bytes.
    pub car: Vec<u8>,
}

/// Where completed requests get their witness from.
#[async_trait]
pub trait WitnessSource: Send + Sync + 'static {
    /// The witness of an anchored request, or `None` if none can be built for it (then the
    /// answer is COMPLETED without `witnessCar`, as the reference does). An error is a
    /// temporary failure: the API answers 503 so clients retry.
    async fn witness(&self, record: &RequestRecord) -> Result<Option<BuiltWitness>, String>;
}

/// A witness source that has none (used until a tree artifact store is configured).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWitnesses;

#[async_trait]
impl WitnessSource for NoWitnesses {
    async fn witness(&self, _record: &RequestRecord) -> Result<Option<BuiltWitness>, String> {
        Ok(None)
    }
}

/// The chain this service anchors on, once known (`eip155:<id>`).
pub type ChainIdCell = Arc<OnceLock<String>>;

/// Tunables of the API.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest JSON body, in bytes.
    pub json_body_limit: usize,
    /// Largest CAR body, in bytes.
    pub car_body_limit: usize,
    /// Longest time one request may take before it is answered 503.
    pub request_timeout: Duration,
    /// Group-commit tuning of the ingest path.
    pub group_commit: GroupCommitConfig,
    /// Grouping of status reads that miss the answer cache: concurrent lookups by CID
    /// become one query.
    pub group_read: GroupCommitConfig,
    /// Final answers (COMPLETED with witness, REPLACED) kept serialized in memory; they never
    /// change, so repeated polls skip the database. About 3.5 KB each.
    pub answer_cache: usize,
    /// DID authentication and gateway trust.
    pub auth: AuthSettings,
    /// Requests per client IP (a /64 for IPv6); disabled by default, since behind a proxy
    /// that is not configured as trusted every client has the proxy's address.
    pub ip_rate: RateLimit,
    /// Anchor requests per authenticated DID.
    pub did_rate: RateLimit,
    /// Most keys each rate limiter tracks (bounds its memory, about 100 bytes a key).
    pub rate_limit_keys: usize,
    /// Connection, header and header-timeout limits.
    pub server: ServerLimits,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            json_body_limit: 100 * 1024,
            car_body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            group_commit: GroupCommitConfig::default(),
            group_read: GroupCommitConfig {
                max_batch: 256,
                workers: 2,
                queue_capacity: 65_536,
            },
            answer_cache: 20_000,
            auth: AuthSettings::default(),
            ip_rate: RateLimit {
                per_second: 0.0,
                burst: 200,
            },
            did_rate: RateLimit {
                per_second: 100.0,
                burst: 500,
            },
            rate_limit_keys: 100_000,
            server: ServerLimits::default(),
        }
    }
}

/// Shared state of the handlers. Axum clones it for every request, so it is one `Arc`.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<AppInner>,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.inner
    }
}

/// What [`AppState`] shares.
#[derive(Clone)]
pub struct AppInner {
    pub(crate) store: Arc<dyn RequestStore>,
    pub(crate) ingest: GroupCommitter,
    pub(crate) reads: GroupReader,
    pub(crate) witnesses: Arc<dyn WitnessSource>,
    pub(crate) chain_id: ChainIdCell,
    pub(crate) settings: Arc<ApiSettings>,
    pub(crate) publisher: Option<IngestPublisher>,
    pub(crate) answers: Arc<std::sync::Mutex<witness::BoundedCache<String, bytes::Bytes>>>,
    pub(crate) auth: Arc<auth::Authenticator>,
    pub(crate) auth_settings: Arc<AuthSettings>,
    pub(crate) ip_limiter: Option<Arc<limits::RateLimiter<std::net::IpAddr>>>,
}

impl AppState {
    /// State over a store. Must be called inside a Tokio runtime (it starts the group
    /// committer's workers). Used nonces are remembered in this process's memory; an API with
    /// several instances must share them with [`AppState::with_nonce_store`].
    pub fn new(
        store: Arc<dyn RequestStore>,
        witnesses: Arc<dyn WitnessSource>,
        chain_id: ChainIdCell,
        settings: ApiSettings,
    ) -> Self {
        let ingest = GroupCommitter::spawn(Arc::clone(&store), settings.group_commit);
        let reads = GroupReader::spawn(Arc::clone(&store), settings.group_read);
        let ip_limiter =
            limits::RateLimiter::new(settings.ip_rate, settings.rate_limit_keys).map(Arc::new);
        let auth = Arc::new(Self::authenticator(
            &settings,
            Arc::new(MemoryNonceStore::default()),
        ));
        let inner = AppInner {
            auth_settings: Arc::new(settings.auth.clone()),
            auth,
            ip_limiter,
            store,
            ingest,
            reads,
            witnesses,
            chain_id,
            answers: Arc::new(std::sync::Mutex::new(witness::BoundedCache::new(
                settings.answer_cache,
            ))),
            settings: Arc::new(settings),
            publisher: None,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Remember used nonces in `nonces` (a store shared by every API instance).
    pub fn with_nonce_store(mut self, nonces: Arc<dyn NonceStore>) -> Self {
        let auth = Arc::new(Self::authenticator(&self.settings, nonces));
        Arc::make_mut(&mut self.inner).auth = auth;
        self
    }

    fn authenticator(settings: &ApiSettings, nonces: Arc<dyn NonceStore>) -> auth::Authenticator {
        auth::Authenticator::new(
            settings.auth.clone(),
            nonces,
            limits::RateLimiter::new(settings.did_rate, settings.rate_limit_keys),
        )
    }

    /// Publish every newly created request to the ingest queues through `publisher`.
    pub fn with_publisher(mut self, publisher: IngestPublisher) -> Self {
        Arc::make_mut(&mut self.inner).publisher = Some(publisher);
        self
    }
}

/// The router with every route and layer.
pub fn router(state: AppState) -> axum::Router {
    routes::router(state)
}

/// A bound API server.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    limits: ServerLimits,
    /// The nonce store to purge, when authentication is on.
    nonces: Option<(Arc<dyn NonceStore>, Duration)>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("listener", &self.listener)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Bind the listener (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, state: AppState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let nonces = (state.auth.mode() != AuthMode::Off)
            .then(|| (Arc::clone(state.auth.nonces()), state.auth.nonce_ttl()));
        Ok(Self {
            listener,
            limits: state.settings.server,
            router: router(state),
            nonces,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` is cancelled, then let in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        if let Some((nonces, ttl)) = self.nonces {
            tokio::spawn(purge_nonces(nonces, ttl, shutdown.clone()));
        }
        server::serve(self.listener, self.router, self.limits, shutdown).await
    }
}

/// Serve `GET /metrics` on `listener` until `shutdown`: the metrics endpoint of the roles
/// that have no API (scheduler, worker).
pub async fn serve_metrics(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(http_metrics::render))
        .layer(axum::middleware::from_fn(http_metrics::track));
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Forget expired nonces every quarter of their lifetime (at most a minute apart), so the
/// nonce store holds about one lifetime's worth.
async fn purge_nonces(nonces: Arc<dyn NonceStore>, ttl: Duration, shutdown: CancellationToken) {
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match nonces.purge_expired(chrono::Utc::now()).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "expired nonces purged"),
            Err(err) => tracing::warn!(error = %err, "purging expired nonces failed"),
        }
    }
}
