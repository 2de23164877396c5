//! Spawning the API on a random port against its own PostgreSQL database.

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use cas_api::{
    ApiSettings, AppState, Application, BuiltWitness, ChainIdCell, IngestPublisher, NoWitnesses,
    WitnessSource,
};
use cas_merkle::{AnchorProof, MerkleTree};
use cas_store::{PgStore, RequestRecord, RequestStore, test_support::TestDb};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub(crate) const STREAM: &str = "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b";

pub(crate) struct TestApp {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) store: PgStore,
    pub(crate) chain_id: ChainIdCell,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) async fn spawn_app() -> TestApp {
    let db = TestDb::new().await.expect("test database");
    spawn_app_with(db.store, Arc::new(NoWitnesses), ApiSettings::default()).await
}

pub(crate) async fn spawn_app_with_publisher(
    store: PgStore,
    publisher: IngestPublisher,
) -> TestApp {
    spawn_app_inner(
        store,
        Arc::new(NoWitnesses),
        ApiSettings::default(),
        Some(publisher),
    )
    .await
}

pub(crate) async fn spawn_app_with(
    store: PgStore,
    witnesses: Arc<dyn WitnessSource>,
    settings: ApiSettings,
) -> TestApp {
    spawn_app_inner(store, witnesses, settings, None).await
}

async fn spawn_app_inner(
    store: PgStore,
    witnesses: Arc<dyn WitnessSource>,
    settings: ApiSettings,
    publisher: Option<IngestPublisher>,
) -> TestApp {
    let chain_id = ChainIdCell::default();
    let state = AppState::new(
        Arc::new(store.clone()) as Arc<dyn RequestStore>,
        witnesses,
        Arc::clone(&chain_id),
        settings,
    )
    // As `cas api` runs: used nonces in PostgreSQL, shared by apps on the same store.
    .with_nonce_store(Arc::new(store.clone()));
    let state = match publisher {
        Some(p) => state.with_publisher(p),
        None => state,
    };
    let app = Application::bind(SocketAddr::from(([127, 0, 0, 1], 0)), state)
        .await
        .expect("bind");
    let addr = app.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run_until_stopped(shutdown.clone()));
    TestApp {
        base: format!("http://{addr}/api/v0"),
        client: reqwest::Client::new(),
        store,
        chain_id,
        shutdown,
    }
}

impl TestApp {
    /// The address the app listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.base
            .trim_start_matches("http://")
            .trim_end_matches("/api/v0")
            .parse()
            .unwrap()
    }

    pub(crate) async fn post_json(&self, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{}/requests", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn post_raw(&self, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/requests", self.base))
            .body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn get(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn request_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM request")
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }
}

/// A CIDv1 dag-cbor CID over some bytes: a fresh, valid request CID.
pub(crate) fn cid_for(seed: &str) -> cas_merkle::Cid {
    cas_merkle::dag_cbor_cid(seed.as_bytes())
}

pub(crate) fn request_body(cid: &str) -> Value {
    json!({
        "streamId": STREAM,
        "cid": cid,
        "timestamp": "2024-07-30T00:11:15.631123456+00:00",
        "ceramicOneVersion": "ceramic-one/0.40.0",
    })
}

/// Witnesses from one in-memory tree (the production source reads tree artifacts).
pub(crate) struct TreeWitnesses {
    pub(crate) tree: MerkleTree,
    pub(crate) proof: AnchorProof,
}

#[async_trait]
impl WitnessSource for TreeWitnesses {
    async fn witness(&self, record: &RequestRecord) -> Result<Option<BuiltWitness>, String> {
        let Some(anchor) = &record.anchor else {
            return Ok(None);
        };
        let stream: cas_core::StreamId = record.stream_id.parse().map_err(|e| format!("{e}"))?;
        let witness = self
            .tree
            .witness_car(anchor.leaf_index as usize, *stream.init_cid(), &self.proof)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(BuiltWitness {
            anchor_commit_cid: witness.anchor_commit_cid.to_string(),
            car: witness.car,
        }))
    }
}

/// A witness source that is down.
pub(crate) struct BrokenWitnesses;

#[async_trait]
impl WitnessSource for BrokenWitnesses {
    async fn witness(&self, _record: &RequestRecord) -> Result<Option<BuiltWitness>, String> {
        Err("artifact store unreachable".to_owned())
    }
}
