//! Integration tests of the worker against the real servers that `scripts/test` starts:
//! PostgreSQL (`DATABASE_URL`), anvil chain 1337 (`ETH_RPC_URL`) and moto for SQS + S3
//! (`AWS_ENDPOINT_URL`). The anchor contract sits at the official address; every test
//! anchors from its own fresh, funded, allow-listed wallet, with its own database, queue
//! and bucket.
//!
//! [`txmanager`] drives the transaction manager against the scripted fake chain, where each
//! fault a real provider shows only by accident happens on demand, with tokio's clock paused;
//! [`faults`] runs the worker itself on that chain.

mod faults;
mod txmanager;

use std::{
    future::Future,
    ops::Range,
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    consensus::Transaction as _,
    network::TransactionBuilder,
    primitives::{Address, B256, U256},
    providers::{Provider, RootProvider},
    rpc::types::TransactionRequest,
    signers::local::PrivateKeySigner,
    sol_types::SolCall,
};
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
};
use bytes::Bytes;
use cas_blob::{BlobStore, S3BlobStore};
use cas_chain::{
    ANCHOR_CONTRACT_ADDRESS, AnchorChain, AnchorerConfig, CeramicAnchor, ChainId, EvmAnchorer,
    Payload, install_contract_for_dev,
};
use cas_core::{
    ClientTimestamp, RequestStatus, StreamId,
    pipeline::{BatchMessage, batch_file_key, encode_batch_file, tree_artifact_key},
};
use cas_merkle::{
    ArtifactError, ArtifactIndex, Cid, RangeRead, TX_TYPE_CONTRACT, dag_cbor_cid, tx_hash_cid,
    verify_witness_car,
};
use cas_queue::{Queue, SqsQueue, create_queue};
use cas_store::{
    NewBatch, NewRequest, NewTxAttempt, PgStore, RequestStore, TxJournal, TxState, WalletKey,
    test_support::TestDb,
};
use cas_worker::{
    BatchError, BatchOutcome, RootAnchorer, TxError, TxManager, TxManagerConfig, Worker,
    WorkerConfig,
};
use chrono::{SubsecRound, Utc};
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Poll `predicate` every `interval` until it holds or `timeout` passes; true if it held.
async fn wait_until<F, Fut>(timeout: Duration, interval: Duration, mut predicate: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
}

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect(
        "AWS_ENDPOINT_URL is not set: run the tests through scripts/test, which starts moto",
    )
}

fn rpc_url() -> String {
    std::env::var("ETH_RPC_URL")
        .expect("ETH_RPC_URL must point at a running anvil (scripts/test starts one)")
}

fn expected_chain() -> ChainId {
    ChainId(
        std::env::var("CAS_TEST_CHAIN_ID")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1337),
    )
}

fn unique(what: &str) -> String {
    format!("cas-worker-it-{what}-{}", Uuid::new_v4().simple())
}

async fn sqs_queue(what: &str) -> Arc<SqsQueue> {
    let client = SqsQueue::client_from_env(Some(endpoint())).await;
    let url = create_queue(&client, &unique(what), Duration::from_secs(30))
        .await
        .expect("create queue");
    Arc::new(SqsQueue::new(client, url))
}

async fn s3_blobs() -> Arc<S3BlobStore> {
    let store = S3BlobStore::from_env(unique("bucket"), None, Some(endpoint())).await;
    store.ensure_bucket().await.expect("create bucket");
    Arc::new(store)
}

/// A blob store whose endpoint is down (nothing listens on port 1).
fn unreachable_blobs() -> Arc<S3BlobStore> {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .endpoint_url("http://127.0.0.1:1")
        .force_path_style(true)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(3))
                .build(),
        )
        .build();
    Arc::new(S3BlobStore::new(
        aws_sdk_s3::Client::from_conf(config),
        "nowhere",
        None,
    ))
}

/// anvil's first dev account: the owner given to the contract at the official address (the
/// same one cas-chain's tests use, since they share the chain).
const DEV_OWNER: Address =
    alloy::primitives::address!("0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

fn provider() -> RootProvider {
    RootProvider::new_http(rpc_url().parse().expect("rpc url"))
}

async fn set_balance(p: &RootProvider, who: Address) {
    let wei = U256::from(10u64).pow(U256::from(20u64)); // 100 ETH
    let _: serde_json::Value = p
        .raw_request("anvil_setBalance".into(), (who, wei))
        .await
        .expect("anvil_setBalance");
}

/// The contract at the official address (idempotent), and a fresh funded wallet on its
/// allowlist (the owner adds it, impersonated on anvil).
/// Owner transactions of tests running in parallel: anvil gives concurrent sends from one
/// impersonated account the same nonce, so they take turns.
static OWNER_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn allowed_anchorer() -> EvmAnchorer {
    allowed_wallet().await.1
}

/// Like [`allowed_anchorer`], with the wallet's key.
async fn allowed_wallet() -> (PrivateKeySigner, EvmAnchorer) {
    install_contract_for_dev(&rpc_url(), ANCHOR_CONTRACT_ADDRESS, DEV_OWNER)
        .await
        .expect("install the contract");
    let p = provider();
    let signer = PrivateKeySigner::random();
    set_balance(&p, signer.address()).await;

    let turn = OWNER_TURN.lock().await;
    let owner = CeramicAnchor::new(ANCHOR_CONTRACT_ADDRESS, &p)
        .owner()
        .call()
        .await
        .expect("owner");
    let _: serde_json::Value = p
        .raw_request("anvil_impersonateAccount".into(), (owner,))
        .await
        .expect("impersonate");
    if p.get_balance(owner).await.unwrap() < U256::from(10u64).pow(U256::from(18u64)) {
        set_balance(&p, owner).await;
    }
    let tx = TransactionRequest::default()
        .with_from(owner)
        .with_to(ANCHOR_CONTRACT_ADDRESS)
        .with_input(
            CeramicAnchor::addCasCall {
                _service: signer.address(),
            }
            .abi_encode(),
        );
    let receipt = p
        .send_transaction(tx)
        .await
        .expect("send addCas")
        .get_receipt()
        .await
        .expect("addCas receipt");
    assert!(receipt.status(), "addCas reverted");
    drop(turn);

    let mut config = AnchorerConfig::new(
        rpc_url(),
        SecretString::from(alloy::hex::encode_prefixed(signer.to_bytes())),
    );
    config.expected_chain_id = Some(expected_chain());
    config.poll_interval = Duration::from_millis(50);
    let anchorer = EvmAnchorer::connect(config)
        .await
        .expect("connect anchorer");
    (signer, anchorer)
}

/// Transactions sent by `wallet` so far (its nonce).
async fn tx_count(wallet: Address) -> u64 {
    provider()
        .get_transaction_count(wallet)
        .await
        .expect("transaction count")
}

/// A blob store object as a [`RangeRead`], read with ranged GETs as the API does.
struct BlobRange<'a> {
    blobs: &'a dyn BlobStore,
    key: String,
}

impl RangeRead for BlobRange<'_> {
    type Bytes = bytes::Bytes;

    async fn read_range(&self, range: Range<u64>) -> Result<bytes::Bytes, ArtifactError> {
        match self.blobs.get_range(&self.key, range).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(ArtifactError::Read("artifact missing".into())),
            Err(e) => Err(ArtifactError::Read(e.to_string())),
        }
    }
}

/// A member of a test batch.
#[derive(Debug, Clone)]
struct Member {
    request: NewRequest,
    cid: Cid,
    stream: StreamId,
}

fn member(i: usize) -> Member {
    let id = Uuid::now_v7();
    let cid = dag_cbor_cid(id.as_bytes());
    let stream = StreamId::new(3, dag_cbor_cid(&(i as u64).to_le_bytes()));
    Member {
        request: NewRequest {
            id,
            cid: cid.to_string(),
            stream_id: stream.to_string(),
            origin: "127.0.0.1".into(),
            timestamp: ClientTimestamp::from_unix_nanos(1_700_000_000_000_000_000 + i as i64),
            created_at: Utc::now().trunc_subsecs(6),
        },
        cid,
        stream,
    }
}

/// Close a batch of `n` requests as the scheduler does: requests stored, leaves sorted by CID
/// string, batch file written, batch recorded. Returns the batch id and members in leaf
/// order.
async fn closed_batch(store: &PgStore, blobs: &dyn BlobStore, n: usize) -> (Uuid, Vec<Member>) {
    let mut members: Vec<Member> = (0..n).map(member).collect();
    let requests: Vec<NewRequest> = members.iter().map(|m| m.request.clone()).collect();
    for chunk in requests.chunks(8192) {
        store.insert_requests(chunk).await.expect("insert");
    }
    members.sort_by(|a, b| a.request.cid.cmp(&b.request.cid));
    let batch_id = Uuid::now_v7();
    let leaves: Vec<Cid> = members.iter().map(|m| m.cid).collect();
    blobs
        .put(
            &batch_file_key(batch_id),
            Bytes::from(encode_batch_file(batch_id, &leaves)),
        )
        .await
        .expect("put batch file");
    assert!(
        store
            .create_batch(&NewBatch {
                id: batch_id,
                members: members.iter().map(|m| m.request.id).collect(),
                created_at: Utc::now().trunc_subsecs(6),
            })
            .await
            .expect("create batch")
    );
    (batch_id, members)
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        visibility: Duration::from_secs(30),
        receive_wait: Duration::from_secs(1),
        retry_backoff: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

/// Transactions go through the journaled manager, journaling into the test database.
fn tx_manager(chain: EvmAnchorer, store: &PgStore) -> TxManager {
    TxManager::new(
        Arc::new(chain),
        Arc::new(store.clone()),
        TxManagerConfig {
            attempt_timeout: Duration::from_secs(30),
            ..TxManagerConfig::default()
        },
    )
}

struct Rig {
    _db: TestDb,
    store: Arc<PgStore>,
    batches: Arc<SqsQueue>,
    blobs: Arc<S3BlobStore>,
    anchorer: Arc<TxManager>,
    signer: PrivateKeySigner,
}

impl Rig {
    async fn new() -> Self {
        let db = TestDb::new().await.expect("test database");
        let store = Arc::new(db.store.clone());
        let (signer, anchorer) = allowed_wallet().await;
        let anchorer = Arc::new(tx_manager(anchorer, &store));
        Self {
            store,
            _db: db,
            batches: sqs_queue("batches").await,
            blobs: s3_blobs().await,
            anchorer,
            signer,
        }
    }

    fn worker(&self) -> Worker {
        self.worker_with_blobs(Arc::clone(&self.blobs) as Arc<dyn BlobStore>)
    }

    fn worker_with_blobs(&self, blobs: Arc<dyn BlobStore>) -> Worker {
        Worker::new(
            Arc::clone(&self.store) as Arc<dyn RequestStore>,
            Arc::clone(&self.batches) as Arc<dyn Queue>,
            blobs,
            Arc::clone(&self.anchorer) as Arc<dyn RootAnchorer>,
            worker_config(),
        )
    }
}

/// Everything a node would check about an anchored batch: the store, the artifact, a
/// verified witness for every member (or those at `sample`), and the transaction on chain.
async fn check_anchored(
    rig: &Rig,
    batch_id: Uuid,
    members: &[Member],
    tx_hex: &str,
    sample: &[usize],
) {
    let record = rig.store.get_batch(batch_id).await.unwrap().expect("batch");
    let anchored = record.anchored.expect("batch anchored");
    assert_eq!(record.request_count as usize, members.len());
    assert_eq!(anchored.chain_id, "eip155:1337");
    assert_eq!(anchored.tx_hash, tx_hex);

    let key = tree_artifact_key(batch_id);
    assert!(
        rig.blobs.get(&key).await.unwrap().is_some(),
        "tree artifact in S3"
    );
    let source = BlobRange {
        blobs: rig.blobs.as_ref(),
        key,
    };
    let index = ArtifactIndex::load(&source).await.expect("load artifact");
    assert_eq!(index.leaf_count(), members.len() as u64);
    let proof = index.proof().clone();
    assert_eq!(proof.root.to_string(), anchored.root_cid);
    assert_eq!(proof.cid().to_string(), anchored.proof_cid);
    assert_eq!(proof.chain_id, "eip155:1337");
    assert_eq!(proof.tx_type, TX_TYPE_CONTRACT);
    let tx_bytes: [u8; 32] = alloy::hex::decode(tx_hex.trim_start_matches("0x"))
        .expect("tx hash hex")
        .try_into()
        .expect("32 bytes");
    assert_eq!(proof.tx_hash, tx_hash_cid(tx_bytes));

    let all: Vec<usize> = (0..members.len()).collect();
    let indexes = if sample.is_empty() { &all[..] } else { sample };
    for &i in indexes {
        let m = &members[i];
        let witness = index
            .witness(&source, i as u64, *m.stream.init_cid(), Some(&m.cid))
            .await
            .unwrap_or_else(|e| panic!("witness {i}: {e}"));
        let verified = verify_witness_car(&witness.car)
            .await
            .unwrap_or_else(|e| panic!("verify witness {i}: {e}"));
        assert_eq!(verified.commit.prev, m.cid, "witness {i} leads to its CID");
        assert_eq!(verified.commit.id, *m.stream.init_cid());
        assert_eq!(verified.proof, proof);
        assert_eq!(verified.anchor_commit_cid, witness.anchor_commit_cid);
        let stored = rig
            .store
            .get_request(&m.request.cid)
            .await
            .unwrap()
            .expect("request");
        assert_eq!(stored.status(), RequestStatus::Completed);
        let anchor = stored.anchor.expect("anchor");
        assert_eq!((anchor.batch_id, anchor.leaf_index), (batch_id, i as i32));
    }

    // The transaction nodes look up: to the official contract, anchorDagCbor(root digest).
    let tx = provider()
        .get_transaction_by_hash(B256::from(tx_bytes))
        .await
        .unwrap()
        .expect("transaction on chain");
    assert_eq!(tx.inner.to(), Some(ANCHOR_CONTRACT_ADDRESS));
    let mut expected_input = vec![0x97, 0xad, 0x09, 0xeb];
    expected_input.extend_from_slice(proof.root.hash().digest());
    assert_eq!(tx.inner.input().to_vec(), expected_input);
    assert_eq!(tx.inner.signer(), rig.anchorer.wallet());
}

// ---------------------------------------------------------------------------------------
// 9. process_batch anchors a closed batch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn process_batch_anchors_and_every_witness_verifies() {
    let rig = Rig::new().await;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), 37).await;
    let wallet = rig.anchorer.wallet();
    let nonce = tx_count(wallet).await;

    let outcome = rig.worker().process_batch(batch_id).await.expect("process");
    let BatchOutcome::Anchored {
        batch_id: anchored_id,
        size,
        tx_hash,
    } = outcome
    else {
        panic!("expected Anchored, got {outcome:?}");
    };
    assert_eq!((anchored_id, size), (batch_id, 37));
    assert_eq!(tx_count(wallet).await, nonce + 1, "exactly one transaction");
    check_anchored(&rig, batch_id, &members, &tx_hash, &[]).await;
}

#[tokio::test]
async fn a_single_request_batch_anchors() {
    let rig = Rig::new().await;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), 1).await;
    let outcome = rig.worker().process_batch(batch_id).await.expect("process");
    let BatchOutcome::Anchored { tx_hash, size, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(size, 1);
    check_anchored(&rig, batch_id, &members, &tx_hash, &[]).await;
}

// ---------------------------------------------------------------------------------------
// 10. A redelivered batch message sends no second transaction
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_redelivered_batch_message_sends_no_second_transaction() {
    let rig = Rig::new().await;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), 5).await;
    let worker = rig.worker();
    let outcome = worker.process_batch(batch_id).await.expect("process");
    let BatchOutcome::Anchored { tx_hash, .. } = outcome else {
        panic!("{outcome:?}");
    };
    let before = rig.store.get_batch(batch_id).await.unwrap();
    let wallet = rig.anchorer.wallet();
    let nonce = tx_count(wallet).await;

    // The message arrives (again).
    rig.batches
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();
    let got = rig
        .batches
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    worker.handle(got[0].clone()).await;
    assert_eq!(
        worker.process_batch(batch_id).await.expect("process again"),
        BatchOutcome::AlreadyAnchored(batch_id)
    );
    assert_eq!(tx_count(wallet).await, nonce, "no second transaction");
    assert_eq!(rig.store.get_batch(batch_id).await.unwrap(), before);
    let acked = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async { rig.batches.approximate_depth().await.unwrap() == 0 },
    )
    .await;
    assert!(acked, "the redelivered message is acknowledged");
    check_anchored(&rig, batch_id, &members, &tx_hash, &[0, 4]).await;
}

#[tokio::test]
async fn two_workers_on_one_batch_send_one_transaction() {
    let rig = Rig::new().await;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), 9).await;
    let wallet = rig.anchorer.wallet();
    let nonce = tx_count(wallet).await;
    // The same batch reaches two workers at once (a re-announced or duplicated message).
    let (first, second) = (rig.worker(), rig.worker());
    let (a, b) = tokio::join!(
        first.process_batch(batch_id),
        second.process_batch(batch_id)
    );
    let outcomes = [a, b];
    let anchored: Vec<&BatchOutcome> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok())
        .filter(|o| matches!(o, BatchOutcome::Anchored { .. }))
        .collect();
    assert_eq!(
        anchored.len(),
        1,
        "exactly one worker anchors: {outcomes:?}"
    );
    for outcome in &outcomes {
        match outcome {
            Ok(BatchOutcome::Anchored { .. } | BatchOutcome::AlreadyAnchored(_)) => {}
            Err(BatchError::Retryable(reason)) => {
                assert!(reason.contains("another worker"), "{reason}");
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        tx_count(wallet).await,
        nonce + 1,
        "one transaction for the batch"
    );
    let BatchOutcome::Anchored { tx_hash, .. } = anchored[0] else {
        unreachable!()
    };
    check_anchored(&rig, batch_id, &members, tx_hash, &[0, 8]).await;
}

// ---------------------------------------------------------------------------------------
// 11. run() and handle(): bad messages are dropped, retryable failures retried
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn run_drops_bad_messages_and_keeps_going() {
    let rig = Rig::new().await;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), 3).await;
    rig.batches.send("garbage".into()).await.unwrap();
    rig.batches
        .send(BatchMessage::new(Uuid::now_v7()).to_json())
        .await
        .unwrap();
    rig.batches
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let task = tokio::spawn(rig.worker().run(shutdown.clone()));
    let done = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let anchored = rig
                .store
                .get_batch(batch_id)
                .await
                .unwrap()
                .is_some_and(|b| b.anchored.is_some());
            anchored && rig.batches.approximate_depth().await.unwrap() == 0
        },
    )
    .await;
    assert!(done, "batch anchored and every message acknowledged");
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("run() returns after cancel")
        .expect("no panic");
    assert!(result.is_ok(), "{result:?}");
    let tx_hash = rig
        .store
        .get_batch(batch_id)
        .await
        .unwrap()
        .unwrap()
        .anchored
        .unwrap()
        .tx_hash;
    check_anchored(&rig, batch_id, &members, &tx_hash, &[]).await;
}

#[tokio::test]
async fn handle_drops_unknown_batches_and_garbage() {
    let rig = Rig::new().await;
    let worker = rig.worker();
    let unknown = Uuid::now_v7();
    assert!(matches!(
        worker.process_batch(unknown).await,
        Err(BatchError::Unreadable(_))
    ));
    rig.batches.send("{not json".into()).await.unwrap();
    rig.batches
        .send(BatchMessage::new(unknown).to_json())
        .await
        .unwrap();
    let nonce = tx_count(rig.anchorer.wallet()).await;
    let mut handled = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    while handled < 2 {
        assert!(Instant::now() < deadline, "messages not delivered");
        for m in rig
            .batches
            .receive(10, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap()
        {
            worker.handle(m).await;
            handled += 1;
        }
    }
    assert_eq!(
        rig.batches.approximate_depth().await.unwrap(),
        0,
        "both dropped"
    );
    assert_eq!(tx_count(rig.anchorer.wallet()).await, nonce);
}

#[tokio::test]
async fn a_retryable_failure_leaves_the_message_for_redelivery() {
    let rig = Rig::new().await;
    let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 2).await;
    let broken = rig.worker_with_blobs(unreachable_blobs());
    assert!(
        matches!(
            broken.process_batch(batch_id).await,
            Err(BatchError::Retryable(_))
        ),
        "a blob store that is down is retryable"
    );

    rig.batches
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();
    let got = rig
        .batches
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].receive_count, 1);
    let handled_at = Instant::now();
    broken.handle(got[0].clone()).await;
    assert_eq!(
        rig.batches.approximate_depth().await.unwrap(),
        1,
        "not acknowledged"
    );
    // Visible again after retry_backoff (2 s), well before the 30 s visibility.
    let mut again = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while again.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the message did not come back after the retry backoff"
        );
        again = rig
            .batches
            .receive(1, Duration::from_secs(30), Duration::from_secs(1))
            .await
            .unwrap();
    }
    assert!(
        handled_at.elapsed() >= Duration::from_secs(1),
        "{:?}",
        handled_at.elapsed()
    );
    assert_eq!(again[0].id, got[0].id);
    assert_eq!(again[0].receive_count, 2);
    assert!(
        rig.store
            .get_batch(batch_id)
            .await
            .unwrap()
            .unwrap()
            .anchored
            .is_none()
    );

    // A working worker then anchors it from the redelivered message.
    let worker = rig.worker();
    worker.handle(again[0].clone()).await;
    assert!(
        rig.store
            .get_batch(batch_id)
            .await
            .unwrap()
            .unwrap()
            .anchored
            .is_some()
    );
    assert_eq!(rig.batches.approximate_depth().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------
// 12. A batch of 2^14 requests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_batch_of_2_pow_14_requests() {
    let rig = Rig::new().await;
    let n = 1 << 14;
    let (batch_id, members) = closed_batch(&rig.store, rig.blobs.as_ref(), n).await;
    let started = Instant::now();
    let outcome = rig.worker().process_batch(batch_id).await.expect("process");
    let elapsed = started.elapsed();
    println!("process_batch of 2^14 requests (tree + anchor + artifact + record): {elapsed:?}");
    let BatchOutcome::Anchored { tx_hash, size, .. } = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(size, n);
    check_anchored(
        &rig,
        batch_id,
        &members,
        &tx_hash,
        &[0, 1, 1023, 1024, 8191, 8192, n - 2, n - 1],
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// The retry backoff is not overwritten by a visibility extension still in flight
// ---------------------------------------------------------------------------------------

/// A queue whose visibility extensions (calls with `slow`) take a while to land, recording
/// every visibility actually applied, in order.
struct SlowExtend {
    inner: cas_queue::MemoryQueue,
    slow: Duration,
    delay: Duration,
    applied: std::sync::Mutex<Vec<Duration>>,
}

#[async_trait::async_trait]
impl Queue for SlowExtend {
    async fn send(&self, body: String) -> Result<(), cas_queue::QueueError> {
        self.inner.send(body).await
    }
    async fn send_many(&self, bodies: Vec<String>) -> Result<(), cas_queue::QueueError> {
        self.inner.send_many(bodies).await
    }
    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<cas_queue::Message>, cas_queue::QueueError> {
        self.inner.receive(max, visibility, wait).await
    }
    async fn ack(&self, receipts: &[cas_queue::Receipt]) -> Result<(), cas_queue::QueueError> {
        self.inner.ack(receipts).await
    }
    async fn set_visibility(
        &self,
        receipt: &cas_queue::Receipt,
        visibility: Duration,
    ) -> Result<(), cas_queue::QueueError> {
        if visibility == self.slow {
            tokio::time::sleep(self.delay).await;
        }
        let result = self.inner.set_visibility(receipt, visibility).await;
        self.applied.lock().unwrap().push(visibility);
        result
    }
    async fn approximate_depth(&self) -> Result<u64, cas_queue::QueueError> {
        self.inner.approximate_depth().await
    }
}

/// A blob store that answers every read after a delay with "unavailable".
struct SlowDown(Duration);

#[async_trait::async_trait]
impl BlobStore for SlowDown {
    async fn put(&self, _key: &str, _bytes: Bytes) -> Result<(), cas_blob::BlobError> {
        Err(cas_blob::BlobError::Unavailable("down".into()))
    }
    async fn get(&self, _key: &str) -> Result<Option<Bytes>, cas_blob::BlobError> {
        tokio::time::sleep(self.0).await;
        Err(cas_blob::BlobError::Unavailable("down".into()))
    }
    async fn get_range(
        &self,
        _key: &str,
        _range: Range<u64>,
    ) -> Result<Option<Bytes>, cas_blob::BlobError> {
        Err(cas_blob::BlobError::Unavailable("down".into()))
    }
}

#[tokio::test]
async fn the_retry_backoff_is_not_overwritten_by_an_extension_in_flight() {
    let rig = Rig::new().await;
    let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 2).await;
    // Extensions every 2 s that take 1.5 s to land; the batch fails at 2.2 s, so the
    // extension started at 2 s lands (at 3.5 s) after the worker asked for the backoff.
    let visibility = Duration::from_secs(6);
    let retry_backoff = Duration::from_millis(2500);
    let queue = Arc::new(SlowExtend {
        inner: cas_queue::MemoryQueue::new(),
        slow: visibility,
        delay: Duration::from_millis(1500),
        applied: std::sync::Mutex::new(Vec::new()),
    });
    let worker = Worker::new(
        Arc::clone(&rig.store) as Arc<dyn RequestStore>,
        Arc::clone(&queue) as Arc<dyn Queue>,
        Arc::new(SlowDown(Duration::from_millis(2200))),
        Arc::clone(&rig.anchorer) as Arc<dyn RootAnchorer>,
        WorkerConfig {
            visibility,
            receive_wait: Duration::from_secs(1),
            retry_backoff,
            ..WorkerConfig::default()
        },
    );
    queue
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();
    let got = queue.receive(1, visibility, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    worker.handle(got[0].clone()).await;
    let returned = Instant::now();

    // The message must be visible again about retry_backoff after handle() returned, not a
    // whole visibility timeout later.
    let mut again = Vec::new();
    while again.is_empty() && returned.elapsed() < retry_backoff + Duration::from_millis(1500) {
        again = queue
            .receive(1, visibility, Duration::from_millis(100))
            .await
            .unwrap();
    }
    assert_eq!(
        again.len(),
        1,
        "not redelivered within the retry backoff; visibilities applied: {:?}",
        queue.applied.lock().unwrap()
    );
    assert_eq!(queue.applied.lock().unwrap().last(), Some(&retry_backoff));
}

// ---------------------------------------------------------------------------------------
// The transaction manager's journal paths that real processes cannot force
// ---------------------------------------------------------------------------------------

fn wallet_key(anchorer: &EvmAnchorer) -> WalletKey {
    WalletKey {
        chain_id: anchorer.chain_id().0,
        address: anchorer.wallet().into_array(),
    }
}

/// Sign an anchor of `root` at the wallet's next nonce and journal it as `Signed`, as a
/// worker does right before broadcasting.
async fn journaled_attempt(
    anchorer: &EvmAnchorer,
    store: &PgStore,
    batch_id: Uuid,
    root: [u8; 32],
) -> cas_chain::SignedAnchorTx {
    let nonce = anchorer.nonce_at(None).await.unwrap();
    let fees = anchorer.suggest_fees().await.unwrap();
    let signed = anchorer
        .sign(Payload::Anchor { root_digest: root }, nonce, fees)
        .await
        .unwrap();
    store
        .record_attempt(&NewTxAttempt {
            batch_id,
            wallet: wallet_key(anchorer),
            nonce,
            tx_hash: signed.tx_hash.0,
            root_digest: root,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            gas_limit: signed.gas_limit,
            raw_tx: signed.raw.to_vec(),
        })
        .await
        .unwrap();
    signed
}

#[tokio::test]
async fn a_transaction_broadcast_before_a_crash_is_found_and_not_sent_again() {
    let db = TestDb::new().await.unwrap();
    let anchorer = allowed_anchorer().await;
    let wallet = anchorer.wallet();
    let batch_id = Uuid::now_v7();
    let root = [0x5a; 32];
    // Journaled, broadcast and mined; then the worker died before recording anything else.
    let signed = journaled_attempt(&anchorer, &db.store, batch_id, root).await;
    anchorer.broadcast(&signed).await.unwrap();
    let nonce = tx_count(wallet).await;
    assert_eq!(nonce, signed.nonce + 1);

    let manager = tx_manager(anchorer, &db.store);
    let tx = manager.anchor(batch_id, root).await.expect("anchor");
    assert_eq!(
        B256::from(tx.tx_hash),
        signed.tx_hash,
        "the journaled transaction"
    );
    assert_eq!(tx_count(wallet).await, nonce, "nothing sent again");
    let attempts = db.store.batch_attempts(batch_id).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, TxState::Mined);
    assert_eq!(attempts[0].block_number, Some(tx.block_number));
    // Asking again (a redelivered message) still sends nothing.
    let again = manager.anchor(batch_id, root).await.unwrap();
    assert_eq!(again.tx_hash, tx.tx_hash);
    assert_eq!(tx_count(wallet).await, nonce);
}

#[tokio::test]
async fn only_a_transaction_proven_dropped_is_sent_again() {
    let db = TestDb::new().await.unwrap();
    let (signer, anchorer) = allowed_wallet().await;
    let wallet = anchorer.wallet();
    let batch_id = Uuid::now_v7();
    let root = [0x6b; 32];
    // Journaled but never broadcast (the worker died in between) ...
    let lost = journaled_attempt(&anchorer, &db.store, batch_id, root).await;
    // ... and its nonce is then used by another transaction of the wallet.
    let other = alloy::providers::ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(signer))
        .connect_http(rpc_url().parse().unwrap());
    let receipt = other
        .send_transaction(
            TransactionRequest::default()
                .with_to(wallet)
                .with_value(U256::ZERO)
                .with_nonce(lost.nonce),
        )
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());

    let manager = tx_manager(anchorer, &db.store);
    let tx = manager.anchor(batch_id, root).await.expect("anchor");
    let attempts = db.store.batch_attempts(batch_id).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].tx_hash, lost.tx_hash.0);
    assert_eq!(
        attempts[0].state,
        TxState::Dropped,
        "proven dropped: nonce used, no receipt"
    );
    assert_eq!(attempts[1].state, TxState::Mined);
    assert_eq!(attempts[1].nonce, lost.nonce + 1, "a new nonce");
    assert_eq!(attempts[1].tx_hash, tx.tx_hash);
    assert!(
        provider()
            .get_transaction_receipt(lost.tx_hash)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(tx_count(wallet).await, lost.nonce + 2);
}

#[tokio::test]
async fn the_wallet_lock_wait_is_bounded_and_nothing_is_sent_without_it() {
    let db = TestDb::new().await.unwrap();
    let anchorer = allowed_anchorer().await;
    let key = wallet_key(&anchorer);
    let wallet = anchorer.wallet();
    let nonce = tx_count(wallet).await;
    let manager = TxManager::new(
        Arc::new(anchorer),
        Arc::new(db.store.clone()),
        TxManagerConfig {
            lock_timeout: Duration::from_millis(500),
            ..TxManagerConfig::default()
        },
    );
    // Another worker (another pool: another process) holds the lock.
    let other = PgStore::connect_lazy(&db.url, 2, Duration::from_secs(5)).unwrap();
    let held = other
        .lock_wallet(&key, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("lock");
    let started = Instant::now();
    let err = manager
        .anchor(Uuid::now_v7(), [0x7c; 32])
        .await
        .unwrap_err();
    assert!(matches!(err, TxError::LockTimeout { .. }), "{err}");
    assert!(err.is_retryable());
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(tx_count(wallet).await, nonce, "nothing sent");
    drop(held);
    manager.anchor(Uuid::now_v7(), [0x7c; 32]).await.unwrap();
    assert_eq!(tx_count(wallet).await, nonce + 1);
}

#[tokio::test]
async fn a_wallet_removed_from_the_allowlist_leaves_its_batches_queued() {
    let rig = Rig::new().await;
    let (batch_id, _members) = closed_batch(&rig.store, rig.blobs.as_ref(), 2).await;
    let wallet = rig.anchorer.wallet();
    // The wallet is removed while the worker runs (it may remove itself).
    let own = alloy::providers::ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(rig.signer.clone()))
        .connect_http(rpc_url().parse().unwrap());
    let removed = CeramicAnchor::new(ANCHOR_CONTRACT_ADDRESS, &own)
        .removeCas(wallet)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(removed.status());
    let nonce = tx_count(wallet).await;

    match rig.worker().process_batch(batch_id).await {
        Err(BatchError::Retryable(reason)) => assert!(
            reason.contains(&format!("wallet {wallet} is not allowed to anchor"))
                && reason.contains("addCas"),
            "{reason}"
        ),
        other => panic!("expected a retryable error, got {other:?}"),
    }
    assert_eq!(tx_count(wallet).await, nonce, "nothing sent");
    assert!(rig.store.batch_attempts(batch_id).await.unwrap().is_empty());
    // The message is not dropped.
    rig.batches
        .send(BatchMessage::new(batch_id).to_json())
        .await
        .unwrap();
    let got = rig
        .batches
        .receive(1, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    rig.worker().handle(got[0].clone()).await;
    assert_eq!(rig.batches.approximate_depth().await.unwrap(), 1);
}
