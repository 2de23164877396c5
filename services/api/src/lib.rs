//! The anchor request API (`cas api`): the HTTP surface Ceramic nodes talk to.
//!
//! Routes (all wire-compatible with the reference Ceramic Anchor Service):
//! - `POST /api/v0/requests`: create a request (JSON or CAR body); 201 new, 202 existing.
//! - `GET /api/v0/requests/{cid}`: status of a request; 200, 404, or 400 for a bad CID.
//! - `GET /api/v0/service-info/supported_chains`: `{"supportedChains":["eip155:<id>"]}`.
//! - `GET /api/v0/healthcheck`: 200 or 503, empty body.
//!
//! Client mistakes answer 4xx with `{"error": "..."}`; internal failures answer 5xx, never
//! 4xx, because nodes treat a 4xx as "the service does not know this request".

mod error;
mod presentation;
mod publisher;
mod routes;
mod witness;

use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use async_trait::async_trait;
use cas_store::{GroupCommitConfig, GroupCommitter, RequestRecord, RequestStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use presentation::Presentation;
pub use publisher::{IngestPublisher, PublisherConfig};
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
    /// Final answers (COMPLETED with witness, REPLACED) kept serialized in memory; they never
    /// change, so repeated polls skip the database. About 3.5 KB each.
    pub answer_cache: usize,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            json_body_limit: 100 * 1024,
            car_body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            group_commit: GroupCommitConfig::default(),
            answer_cache: 20_000,
        }
    }
}

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Arc<dyn RequestStore>,
    pub(crate) ingest: GroupCommitter,
    pub(crate) witnesses: Arc<dyn WitnessSource>,
    pub(crate) chain_id: ChainIdCell,
    pub(crate) settings: Arc<ApiSettings>,
    pub(crate) publisher: Option<IngestPublisher>,
    pub(crate) answers: Arc<std::sync::Mutex<witness::BoundedCache<String, bytes::Bytes>>>,
}

impl AppState {
    /// State over a store. Must be called inside a Tokio runtime (it starts the group
    /// committer's workers).
    pub fn new(
        store: Arc<dyn RequestStore>,
        witnesses: Arc<dyn WitnessSource>,
        chain_id: ChainIdCell,
        settings: ApiSettings,
    ) -> Self {
        let ingest = GroupCommitter::spawn(Arc::clone(&store), settings.group_commit);
        Self {
            store,
            ingest,
            witnesses,
            chain_id,
            answers: Arc::new(std::sync::Mutex::new(witness::BoundedCache::new(
                settings.answer_cache,
            ))),
            settings: Arc::new(settings),
            publisher: None,
        }
    }

    /// Publish every newly created request to the ingest queues through `publisher`.
    pub fn with_publisher(mut self, publisher: IngestPublisher) -> Self {
        self.publisher = Some(publisher);
        self
    }
}

/// The router with every route and layer.
pub fn router(state: AppState) -> axum::Router {
    routes::router(state)
}

/// A bound API server.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
}

impl Application {
    /// Bind the listener (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, state: AppState) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            router: router(state),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` is cancelled, then let in-flight requests finish.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    }
}
