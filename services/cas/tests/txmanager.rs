//! The transaction manager as operators run it: real `cas worker` processes on PostgreSQL,
//! moto (SQS, S3, KMS) and anvil.
//!
//! Every test starts its **own anvil** (chain 1337): several of them pause mining or change
//! the base fee, which would stall or disturb the tests sharing the anvil of `scripts/test`.
//! Batches are closed by the test itself (requests, batch file, batch row, batch message),
//! exactly as the scheduler does, so only the worker runs as a process. Each test checks the
//! chain itself: how many `anchorDagCbor` transactions carry the batch's root.

mod common;

use std::{
    future::Future,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use alloy::primitives::{Address, B256, U256, keccak256};
use bytes::Bytes;
use cas_blob::{BlobStore, S3BlobStore};
use cas_chain::{ANCHOR_CONTRACT_ADDRESS, dev};
use cas_core::{
    ClientTimestamp,
    pipeline::{BatchMessage, batch_file_key, encode_batch_file},
};
use cas_merkle::{Cid, dag_cbor_cid};
use cas_queue::{Queue, SqsQueue, create_queue_with_dlq};
use cas_store::{
    NewBatch, NewRequest, RequestStore, TxAttempt, TxJournal, TxState, test_support::TestDb,
};
use chrono::{SubsecRound, Utc};
use common::{CAS, Running};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn wait_until<F, Fut>(timeout: Duration, mut predicate: F) -> bool
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One JSON-RPC call; panics on an error answer.
async fn rpc(url: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let answer: Value = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{method}: {e}"));
    if let Some(error) = answer.get("error") {
        panic!("{method}: {error}");
    }
    answer["result"].clone()
}

fn hex_u64(value: &Value) -> u64 {
    u64::from_str_radix(value.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex")
}

fn hex_u128(value: &Value) -> u128 {
    u128::from_str_radix(value.as_str().expect("hex").trim_start_matches("0x"), 16).expect("hex")
}

fn anvil_bin() -> String {
    if let Ok(bin) = std::env::var("ANVIL_BIN") {
        return bin;
    }
    if Command::new("anvil")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        return "anvil".to_owned();
    }
    format!(
        "{}/../../.tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// An anvil (chain 1337) of this test alone, stopped when dropped.
struct OwnAnvil {
    child: Child,
    url: String,
}

impl OwnAnvil {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(anvil_bin())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--chain-id", "1337"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start anvil (ANVIL_BIN, PATH or .tools/anvil; scripts/test installs it)");
        let url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []});
        let up = wait_until(Duration::from_secs(20), || {
            let request = client.post(&url).json(&body).send();
            async move { request.await.is_ok() }
        })
        .await;
        assert!(up, "anvil did not start on {url}");
        Self { child, url }
    }

    async fn automine(&self, on: bool) {
        rpc(&self.url, "evm_setAutomine", json!([on])).await;
    }

    async fn mine(&self) {
        rpc(&self.url, "evm_mine", json!([])).await;
    }

    async fn nonce(&self, wallet: Address) -> u64 {
        hex_u64(
            &rpc(
                &self.url,
                "eth_getTransactionCount",
                json!([wallet, "latest"]),
            )
            .await,
        )
    }

    async fn pending_in_pool(&self) -> u64 {
        hex_u64(&rpc(&self.url, "txpool_status", json!([])).await["pending"])
    }

    /// Every mined `anchorDagCbor(root)` transaction to the official contract.
    async fn anchors_of(&self, root: [u8; 32]) -> Vec<Value> {
        let mut input = String::from("0x97ad09eb");
        input.push_str(&alloy::hex::encode(root));
        let contract = ANCHOR_CONTRACT_ADDRESS.to_string().to_lowercase();
        let latest = hex_u64(&rpc(&self.url, "eth_blockNumber", json!([])).await);
        let mut found = Vec::new();
        for n in 0..=latest {
            let block = rpc(
                &self.url,
                "eth_getBlockByNumber",
                json!([format!("0x{n:x}"), true]),
            )
            .await;
            for tx in block["transactions"].as_array().unwrap() {
                if tx["to"].as_str().map(str::to_lowercase).as_deref() == Some(&contract)
                    && tx["input"].as_str() == Some(&input)
                {
                    found.push(tx.clone());
                }
            }
        }
        found
    }
}

impl Drop for OwnAnvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the test wallet stands with the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wallet {
    /// Owns the contract (so it may anchor) and holds 100 ETH.
    FundedOwner,
    /// Holds 100 ETH; the contract belongs to someone else and does not allow it.
    NotAllowed,
    /// Owns the contract but holds nothing.
    Unfunded,
}

/// A database, an anvil with the contract at the official address, a queue prefix and a
/// bucket, and a wallet.
struct Rig {
    db: TestDb,
    anvil: OwnAnvil,
    key: SecretString,
    wallet: Address,
    prefix: String,
    bucket: String,
    blobs: S3BlobStore,
    batches: SqsQueue,
}

impl Rig {
    async fn new(stance: Wallet) -> Self {
        let key = dev::generate_key();
        let wallet = cas_chain::wallet_address(&key).unwrap();
        Self::with_wallet(key, wallet, stance).await
    }

    async fn with_wallet(key: SecretString, wallet: Address, stance: Wallet) -> Self {
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL (scripts/test starts moto)");
        let anvil = OwnAnvil::start().await;
        let owner = match stance {
            Wallet::NotAllowed => Address::repeat_byte(0x42),
            Wallet::FundedOwner | Wallet::Unfunded => wallet,
        };
        cas_chain::install_contract_for_dev(&anvil.url, ANCHOR_CONTRACT_ADDRESS, owner)
            .await
            .unwrap();
        if stance != Wallet::Unfunded {
            dev::fund_for_dev(&anvil.url, wallet).await.unwrap();
        }
        let db = TestDb::new().await.unwrap();
        let run = Uuid::new_v4().simple().to_string();
        let prefix = format!("txm{}-", &run[..12]);
        let bucket = format!("txm-{}", &run[..20]);
        let blobs = S3BlobStore::from_env(bucket.clone(), Some("cas".into()), None).await;
        blobs.ensure_bucket().await.unwrap();
        let client = SqsQueue::client_from_env(None).await;
        let (url, _dlq) = create_queue_with_dlq(
            &client,
            &format!("{prefix}batch"),
            Duration::from_secs(600),
            5,
        )
        .await
        .unwrap();
        Self {
            db,
            anvil,
            key,
            wallet,
            prefix,
            bucket,
            blobs,
            batches: SqsQueue::new(client, url),
        }
    }

    /// The environment of `cas worker` for this rig, plus `extra`.
    fn env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", self.db.url.as_str()),
            ("ETH_RPC_URL", self.anvil.url.as_str()),
            ("CAS_ETH_PRIVATE_KEY", self.key.expose_secret()),
            ("CAS_SQS_QUEUE_PREFIX", self.prefix.as_str()),
            ("CAS_INGEST_QUEUES", "1"),
            ("CAS_CREATE_QUEUES", "true"),
            ("CAS_S3_BUCKET", self.bucket.as_str()),
            ("CAS_BATCH_VISIBILITY", "6s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        env
    }

    fn worker(&self, extra: &[(&str, &str)]) -> Running {
        let env = self.env(extra);
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Running::start(&["worker"], &refs)
    }

    /// Close a batch of `n` requests as the scheduler does and announce it.
    async fn batch(&self, n: usize) -> Uuid {
        let batch_id = Uuid::now_v7();
        let mut requests: Vec<(NewRequest, Cid)> = (0..n)
            .map(|i| {
                let id = Uuid::now_v7();
                let cid = dag_cbor_cid(id.as_bytes());
                let stream = cas_core::StreamId::new(3, dag_cbor_cid(&(i as u64).to_le_bytes()));
                let request = NewRequest {
                    id,
                    cid: cid.to_string(),
                    stream_id: stream.to_string(),
                    origin: "127.0.0.1".into(),
                    timestamp: ClientTimestamp::from_unix_nanos(1_700_000_000_000_000_000),
                    created_at: Utc::now().trunc_subsecs(6),
                };
                (request, cid)
            })
            .collect();
        let rows: Vec<NewRequest> = requests.iter().map(|(r, _)| r.clone()).collect();
        self.db.store.insert_requests(&rows).await.unwrap();
        requests.sort_by(|a, b| a.0.cid.cmp(&b.0.cid));
        let leaves: Vec<Cid> = requests.iter().map(|(_, c)| *c).collect();
        self.blobs
            .put(
                &batch_file_key(batch_id),
                Bytes::from(encode_batch_file(batch_id, &leaves)),
            )
            .await
            .unwrap();
        assert!(
            self.db
                .store
                .create_batch(&NewBatch {
                    id: batch_id,
                    members: requests.iter().map(|(r, _)| r.id).collect(),
                    created_at: Utc::now().trunc_subsecs(6),
                })
                .await
                .unwrap()
        );
        self.announce(batch_id).await;
        batch_id
    }

    async fn announce(&self, batch_id: Uuid) {
        self.batches
            .send(BatchMessage::new(batch_id).to_json())
            .await
            .unwrap();
    }

    async fn attempts(&self, batch_id: Uuid) -> Vec<TxAttempt> {
        self.db.store.batch_attempts(batch_id).await.unwrap()
    }

    async fn anchored_tx(&self, batch_id: Uuid) -> Option<(String, [u8; 32])> {
        let batch = self.db.store.get_batch(batch_id).await.unwrap()?;
        let anchored = batch.anchored?;
        let root: Cid = anchored.root_cid.parse().unwrap();
        let digest: [u8; 32] = root.hash().digest().try_into().unwrap();
        Some((anchored.tx_hash, digest))
    }

    async fn wait_anchored(&self, batch_id: Uuid, timeout: Duration, workers: &mut [&mut Running]) {
        let done = wait_until(timeout, || async {
            self.anchored_tx(batch_id).await.is_some()
        })
        .await;
        if !done {
            let logs: Vec<String> = workers.iter_mut().map(|w| w.drain().join("\n")).collect();
            panic!(
                "batch {batch_id} not anchored in {timeout:?}; worker logs:\n{}",
                logs.join("\n---\n")
            );
        }
    }

    /// The batch's single anchor transaction on chain (panics unless exactly one).
    async fn only_anchor(&self, batch_id: Uuid) -> Value {
        let (tx_hash, root) = self.anchored_tx(batch_id).await.expect("anchored");
        let anchors = self.anvil.anchors_of(root).await;
        assert_eq!(
            anchors.len(),
            1,
            "exactly one anchor transaction: {anchors:#?}"
        );
        assert_eq!(anchors[0]["hash"].as_str(), Some(tx_hash.as_str()));
        anchors[0].clone()
    }

    fn assert_key_not_logged(&self, logs: &[String]) {
        let hex = self.key.expose_secret().trim_start_matches("0x").to_owned();
        assert!(
            !logs.iter().any(|l| l.contains(&hex)),
            "the private key leaked into logs"
        );
    }
}

fn logged(worker: &Running, message: &str) -> usize {
    worker
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == message)
        .count()
}

// ---------------------------------------------------------------------------------------
// Fees: an underpriced attempt is replaced at the same nonce
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_underpriced_attempt_is_replaced_at_the_same_nonce_and_the_batch_completes() {
    let rig = Rig::new(Wallet::FundedOwner).await;
    rig.anvil.automine(false).await;
    let batch_id = rig.batch(3).await;
    let mut worker = rig.worker(&[("CAS_ETH_TX_TIMEOUT", "3s")]);
    worker.wait_for("worker running");

    // The first attempt is broadcast while nothing is mined.
    let sent = wait_until(Duration::from_secs(60), || async {
        rig.attempts(batch_id)
            .await
            .iter()
            .any(|a| a.state == TxState::Broadcast)
    })
    .await;
    assert!(
        sent,
        "no broadcast attempt; logs:\n{}",
        worker.drain().join("\n")
    );
    let first = rig.attempts(batch_id).await.remove(0);

    // Then the base fee jumps above its max fee, and blocks come every second: the attempt
    // is underpriced and cannot be mined (anvil drops it).
    let base_fee = 4 * first.max_fee_per_gas;
    rpc(
        &rig.anvil.url,
        "anvil_setNextBlockBaseFeePerGas",
        json!([format!("0x{base_fee:x}")]),
    )
    .await;
    rpc(&rig.anvil.url, "evm_setIntervalMining", json!([1])).await;

    rig.wait_anchored(batch_id, Duration::from_secs(90), &mut [&mut worker])
        .await;
    let onchain = rig.only_anchor(batch_id).await;
    assert_eq!(hex_u64(&onchain["nonce"]), first.nonce, "same nonce");
    assert!(hex_u128(&onchain["maxFeePerGas"]) > first.max_fee_per_gas);
    let receipt = rpc(
        &rig.anvil.url,
        "eth_getTransactionReceipt",
        json!([onchain["hash"]]),
    )
    .await;
    assert_eq!(receipt["status"], "0x1");
    assert!(
        hex_u128(
            &rpc(
                &rig.anvil.url,
                "eth_getBlockByNumber",
                json!([receipt["blockNumber"], false])
            )
            .await["baseFeePerGas"]
        ) > first.max_fee_per_gas,
        "mined in a block the first attempt could not pay for"
    );

    // The journal tells the story: the first attempt replaced, each replacement at the same
    // nonce paying at least 12.5 % more on both fields, the last one mined.
    let attempts = rig.attempts(batch_id).await;
    assert!(attempts.len() >= 2, "{attempts:#?}");
    assert_eq!(attempts[0].tx_hash, first.tx_hash);
    assert_eq!(attempts[0].state, TxState::Replaced);
    let accepted: Vec<&TxAttempt> = attempts
        .iter()
        .filter(|a| a.state != TxState::Failed)
        .collect();
    for pair in accepted.windows(2) {
        assert_eq!(pair[1].nonce, first.nonce);
        assert!(
            pair[1].max_fee_per_gas * 8 >= pair[0].max_fee_per_gas * 9,
            "{attempts:#?}"
        );
        assert!(
            pair[1].max_priority_fee_per_gas * 8 >= pair[0].max_priority_fee_per_gas * 9,
            "{attempts:#?}"
        );
    }
    for a in &attempts {
        println!(
            "attempt nonce {} {:?}: max fee {} wei, tip {} wei",
            a.nonce, a.state, a.max_fee_per_gas, a.max_priority_fee_per_gas
        );
    }
    let mined: Vec<&TxAttempt> = attempts
        .iter()
        .filter(|a| a.state == TxState::Mined)
        .collect();
    assert_eq!(mined.len(), 1, "{attempts:#?}");
    assert_eq!(
        format!("0x{}", alloy::hex::encode(mined[0].tx_hash)),
        onchain["hash"].as_str().unwrap()
    );
    assert!(
        rpc(
            &rig.anvil.url,
            "eth_getTransactionReceipt",
            json!([B256::from(first.tx_hash)])
        )
        .await
        .is_null(),
        "the underpriced attempt was never mined"
    );
    worker.drain();
    assert!(
        logged(
            &worker,
            "replacing a pending anchor transaction with higher fees"
        ) >= 1
    );
    assert_eq!(rig.anvil.nonce(rig.wallet).await, first.nonce + 1);

    worker.terminate();
    assert!(worker.wait_exit().success());
    rig.assert_key_not_logged(&worker.seen);
}

// ---------------------------------------------------------------------------------------
// Crash after broadcast: the restarted worker finds the journaled transaction
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_after_broadcast_finishes_the_batch_on_restart_without_a_second_anchor() {
    let rig = Rig::new(Wallet::FundedOwner).await;
    rig.anvil.automine(false).await;
    let batch_id = rig.batch(4).await;
    let mut first = rig.worker(&[("CAS_ETH_TX_TIMEOUT", "60s")]);
    first.wait_for("worker running");

    let broadcast = wait_until(Duration::from_secs(60), || async {
        rig.attempts(batch_id)
            .await
            .iter()
            .any(|a| a.state == TxState::Broadcast)
    })
    .await;
    assert!(
        broadcast,
        "no broadcast; logs:\n{}",
        first.drain().join("\n")
    );
    assert_eq!(
        rig.anvil.pending_in_pool().await,
        1,
        "waiting in the mempool"
    );

    // Killed between broadcast and confirmation: no chance to record anything.
    first.child.kill().unwrap();
    first.wait_exit();
    assert!(rig.anchored_tx(batch_id).await.is_none());

    // A new worker starts while the transaction is still pending; then mining resumes.
    let mut second = rig.worker(&[("CAS_ETH_TX_TIMEOUT", "60s")]);
    second.wait_for("worker running");
    tokio::time::sleep(Duration::from_secs(1)).await;
    rig.anvil.automine(true).await;
    rig.anvil.mine().await;

    // The batch message comes back after its visibility timeout, and completes.
    rig.wait_anchored(batch_id, Duration::from_secs(90), &mut [&mut second])
        .await;
    let onchain = rig.only_anchor(batch_id).await;
    let attempts = rig.attempts(batch_id).await;
    assert_eq!(attempts.len(), 1, "nothing was signed again: {attempts:#?}");
    assert_eq!(attempts[0].state, TxState::Mined);
    assert_eq!(
        format!("0x{}", alloy::hex::encode(attempts[0].tx_hash)),
        onchain["hash"].as_str().unwrap()
    );
    assert_eq!(rig.anvil.nonce(rig.wallet).await, 1, "one transaction ever");
    second.drain();
    assert_eq!(logged(&second, "sending anchor transaction"), 0);
    assert_eq!(
        logged(
            &second,
            "the journal has this batch's transaction mined; nothing is sent"
        ),
        1
    );

    second.terminate();
    assert!(second.wait_exit().success());
    rig.assert_key_not_logged(&first.seen);
    rig.assert_key_not_logged(&second.seen);
}

// ---------------------------------------------------------------------------------------
// Redelivery and concurrency
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_message_delivered_twice_makes_one_anchor() {
    let rig = Rig::new(Wallet::FundedOwner).await;
    let batch_id = rig.batch(3).await;
    rig.announce(batch_id).await; // the same message, twice
    // Two workers, so the copies can be handled at the same time.
    let mut a = rig.worker(&[]);
    let mut b = rig.worker(&[]);
    a.wait_for("worker running");
    b.wait_for("worker running");
    rig.wait_anchored(batch_id, Duration::from_secs(60), &mut [&mut a, &mut b])
        .await;
    // Both copies are consumed (one may wait for the batch lock and a retry backoff).
    let consumed = wait_until(Duration::from_secs(90), || async {
        rig.batches.approximate_depth().await.unwrap() == 0
    })
    .await;
    assert!(consumed, "both copies acknowledged");
    rig.only_anchor(batch_id).await;
    assert_eq!(rig.attempts(batch_id).await.len(), 1);
    assert_eq!(rig.anvil.nonce(rig.wallet).await, 1);
    for w in [&mut a, &mut b] {
        w.terminate();
        assert!(w.wait_exit().success());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_anchor_two_batches_at_once_with_distinct_nonces() {
    let rig = Rig::new(Wallet::FundedOwner).await;
    rig.anvil.automine(false).await;
    let mut a = rig.worker(&[("CAS_ETH_TX_TIMEOUT", "60s")]);
    a.wait_for("worker running");
    let first = rig.batch(2).await;
    // Worker A holds the wallet lock while its transaction waits for a block.
    let sent = wait_until(Duration::from_secs(60), || async {
        rig.attempts(first)
            .await
            .iter()
            .any(|x| x.state == TxState::Broadcast)
    })
    .await;
    assert!(sent, "logs:\n{}", a.drain().join("\n"));

    let mut b = rig.worker(&[("CAS_ETH_TX_TIMEOUT", "60s")]);
    b.wait_for("worker running");
    // At start, B leaves A's pending transaction to the lock holder.
    b.wait_for("another worker holds the wallet lock; it resumes the journaled transactions");
    let second = rig.batch(2).await;
    // Worker B takes the second batch and waits for the wallet lock, across processes.
    let waiting = wait_until(Duration::from_secs(60), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(rig.db.store.pool())
        .await
        .unwrap();
        waiting == 1
    })
    .await;
    assert!(waiting, "worker B waits for the wallet lock");
    assert!(
        rig.attempts(second).await.is_empty(),
        "nothing sent before the lock"
    );

    rig.anvil.automine(true).await;
    rig.anvil.mine().await;
    rig.wait_anchored(first, Duration::from_secs(60), &mut [&mut a, &mut b])
        .await;
    rig.wait_anchored(second, Duration::from_secs(60), &mut [&mut a, &mut b])
        .await;
    let one = rig.only_anchor(first).await;
    let two = rig.only_anchor(second).await;
    let nonces = [hex_u64(&one["nonce"]), hex_u64(&two["nonce"])];
    assert_eq!(nonces, [0, 1], "distinct nonces, in order");
    for tx in [&one, &two] {
        assert_eq!(
            tx["from"].as_str().unwrap().to_lowercase(),
            rig.wallet.to_string().to_lowercase()
        );
    }
    a.drain();
    b.drain();
    assert_eq!(
        logged(&a, "batch anchored"),
        1,
        "worker A anchored one batch"
    );
    assert_eq!(
        logged(&b, "batch anchored"),
        1,
        "worker B anchored the other"
    );
    for w in [&mut a, &mut b] {
        w.terminate();
        assert!(w.wait_exit().success());
    }
}

// ---------------------------------------------------------------------------------------
// Safety checks: clear errors, nothing lost
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_for_another_chain_refuses_to_start() {
    let rig = Rig::new(Wallet::FundedOwner).await;
    let batch_id = rig.batch(1).await;
    let mut worker = rig.worker(&[("CAS_CHAIN_ID", "1")]);
    let status = worker.wait_exit();
    assert!(!status.success());
    let logs = worker.seen.join("\n");
    assert!(
        logs.contains("the ethereum rpc serves chain eip155:1337, but eip155:1 is configured"),
        "{logs}"
    );
    // Nothing happened to the batch; a correctly configured worker anchors it.
    assert!(rig.attempts(batch_id).await.is_empty());
    let mut worker = rig.worker(&[("CAS_CHAIN_ID", "1337")]);
    rig.wait_anchored(batch_id, Duration::from_secs(60), &mut [&mut worker])
        .await;
    rig.only_anchor(batch_id).await;
    worker.terminate();
    assert!(worker.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wallet_off_the_allowlist_is_refused_and_its_batch_waits() {
    let rig = Rig::new(Wallet::NotAllowed).await;
    let batch_id = rig.batch(2).await;
    let mut worker = rig.worker(&[]);
    assert!(!worker.wait_exit().success());
    let logs = worker.seen.join("\n");
    assert!(
        logs.contains(&format!(
            "wallet {} is not allowed to anchor on contract {ANCHOR_CONTRACT_ADDRESS}",
            rig.wallet
        )) && logs.contains(&format!("addCas({})", rig.wallet)),
        "{logs}"
    );
    rig.assert_key_not_logged(&worker.seen);

    // The owner allows it; the batch, still queued, is anchored once.
    dev::allow_wallet_for_dev(&rig.anvil.url, ANCHOR_CONTRACT_ADDRESS, rig.wallet)
        .await
        .unwrap();
    let mut worker = rig.worker(&[]);
    rig.wait_anchored(batch_id, Duration::from_secs(60), &mut [&mut worker])
        .await;
    rig.only_anchor(batch_id).await;
    worker.terminate();
    assert!(worker.wait_exit().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unfunded_wallet_is_reported_and_its_batch_completes_once_funded() {
    let rig = Rig::new(Wallet::Unfunded).await;
    let batch_id = rig.batch(2).await;
    let mut worker = rig.worker(&[]);
    worker.wait_for("worker running");
    let low = worker
        .wait_for_matching(
            "the anchoring wallet's balance is low; fund it",
            Duration::from_secs(10),
            |_| true,
        )
        .expect("low balance warned at start");
    assert_eq!(low["balance_wei"], "0");
    let failed = worker
        .wait_for_matching("batch failed, will retry", Duration::from_secs(60), |_| {
            true
        })
        .unwrap_or_else(|| panic!("no failure; logs:\n{}", worker.seen.join("\n")));
    let reason = failed["error"].as_str().unwrap();
    assert!(
        reason.contains(&format!("wallet {} holds 0 wei", rig.wallet))
            && reason.contains("fund the wallet"),
        "{reason}"
    );
    // Nothing was signed into the journal or sent.
    assert!(rig.attempts(batch_id).await.is_empty());
    assert_eq!(rig.anvil.nonce(rig.wallet).await, 0);

    dev::fund_for_dev(&rig.anvil.url, rig.wallet).await.unwrap();
    // The message comes back after the retry backoff (30 s).
    rig.wait_anchored(batch_id, Duration::from_secs(90), &mut [&mut worker])
        .await;
    rig.only_anchor(batch_id).await;
    worker.terminate();
    assert!(worker.wait_exit().success());
}

// ---------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------

#[test]
fn worker_help_lists_the_transaction_settings() {
    let output = Command::new(CAS)
        .args(["worker", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for var in [
        "CAS_ETH_PRIVATE_KEY",
        "CAS_ETH_PRIVATE_KEY_FILE",
        "CAS_ETH_KMS_KEY_ID",
        "CAS_CHAIN_ID",
        "CAS_ETH_CONFIRMATIONS",
        "CAS_ETH_TX_TIMEOUT",
        "CAS_ETH_MAX_ATTEMPTS",
        "CAS_ETH_MAX_FEE_GWEI",
        "CAS_NONCE_LOCK_TIMEOUT",
        "CAS_LOW_BALANCE_WEI",
    ] {
        assert!(
            help.contains(var),
            "{var} missing from `cas worker --help`:\n{help}"
        );
    }
    let output = Command::new(CAS)
        .args(["worker", "--help"])
        .env("CAS_ETH_PRIVATE_KEY", "0xdeadbeefsecret")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("deadbeefsecret"));
}

// ---------------------------------------------------------------------------------------
// AWS KMS (moto)
// ---------------------------------------------------------------------------------------

async fn kms_client() -> aws_sdk_kms::Client {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    aws_sdk_kms::Client::new(&config)
}

/// `(r, s)` of a DER ECDSA signature.
fn der_signature(der: &[u8]) -> (U256, U256) {
    assert_eq!(der[0], 0x30, "DER sequence");
    let mut at = 2;
    let mut int = || {
        assert_eq!(der[at], 0x02, "DER integer");
        let len = der[at + 1] as usize;
        let bytes = &der[at + 2..at + 2 + len];
        at += 2 + len;
        U256::from_be_slice(&bytes[bytes.len().saturating_sub(32)..])
    };
    (int(), int())
}

/// Whether a KMS `Sign` with `MessageType=DIGEST` signs the digest itself (AWS does; moto
/// 5.2.5 hashes it again, so Ethereum signatures cannot be made with it).
async fn kms_signs_digests(kms: &aws_sdk_kms::Client, key_id: &str, address: Address) -> bool {
    let digest = keccak256(Uuid::new_v4().as_bytes());
    let signed = kms
        .sign()
        .key_id(key_id)
        .message(aws_sdk_kms::primitives::Blob::new(digest.to_vec()))
        .message_type(aws_sdk_kms::types::MessageType::Digest)
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::EcdsaSha256)
        .send()
        .await
        .unwrap();
    let (r, s) = der_signature(signed.signature().unwrap().as_ref());
    [false, true].into_iter().any(|parity| {
        alloy::primitives::Signature::new(r, s, parity)
            .recover_address_from_prehash(&digest)
            .is_ok_and(|a| a == address)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kms_key_is_the_wallet_and_anchors_where_kms_signs_digests() {
    let kms = kms_client().await;
    let key = kms
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::EccSecgP256K1)
        .key_usage(aws_sdk_kms::types::KeyUsageType::SignVerify)
        .send()
        .await
        .expect("moto KMS CreateKey with ECC_SECG_P256K1");
    let key_id = key.key_metadata().unwrap().key_id().to_owned();
    let public = kms.get_public_key().key_id(&key_id).send().await.unwrap();
    let der = public.public_key().unwrap().as_ref();
    // SubjectPublicKeyInfo ends with the uncompressed point 04 ‖ x ‖ y.
    let point = &der[der.len() - 64..];
    assert_eq!(der[der.len() - 65], 0x04);
    let address = Address::from_slice(&keccak256(point)[12..]);
    let digests = kms_signs_digests(&kms, &key_id, address).await;

    // No private key anywhere: the worker signs with the KMS key only.
    let rig = Rig::with_wallet(SecretString::from("unused"), address, Wallet::FundedOwner).await;
    let batch_id = rig.batch(2).await;
    let env = rig.env(&[("CAS_ETH_KMS_KEY_ID", &key_id)]);
    let refs: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| k != "CAS_ETH_PRIVATE_KEY")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut worker = Running::start_without(&["worker"], &refs, &["CAS_ETH_PRIVATE_KEY"]);
    let ready = worker.wait_for("anchoring wallet ready");
    assert_eq!(
        ready["wallet"].as_str().unwrap().to_lowercase(),
        address.to_string().to_lowercase(),
        "the wallet is the KMS key's address"
    );

    if digests {
        rig.wait_anchored(batch_id, Duration::from_secs(60), &mut [&mut worker])
            .await;
        let tx = rig.only_anchor(batch_id).await;
        assert_eq!(
            tx["from"].as_str().unwrap().to_lowercase(),
            address.to_string().to_lowercase()
        );
    } else {
        // moto 5.2.5 ignores MessageType=DIGEST: the signature does not recover to the key's
        // address. The signer refuses it; nothing is journaled or sent; the batch is retried.
        eprintln!("note: this KMS emulator hashes DIGEST messages again; checking the refusal");
        let failed = worker
            .wait_for_matching("batch failed, will retry", Duration::from_secs(60), |_| {
                true
            })
            .unwrap_or_else(|| panic!("no failure; logs:\n{}", worker.seen.join("\n")));
        let reason = failed["error"].as_str().unwrap();
        assert!(
            reason.contains("signing the transaction failed"),
            "{reason}"
        );
        assert!(rig.attempts(batch_id).await.is_empty());
        assert_eq!(rig.anvil.nonce(address).await, 0);
        assert!(rig.anchored_tx(batch_id).await.is_none());
    }
    worker.terminate();
    assert!(worker.wait_exit().success());
}
