//! `cas dev`: the whole service in one process, on SQLite, in-memory queues, a directory
//! and an anvil it starts itself. Requests become COMPLETED with witnesses anchored on that
//! chain, and requests accepted before a crash complete after a restart.

mod common;

use std::time::{Duration, Instant};

use alloy::{
    consensus::Transaction as _,
    primitives::B256,
    providers::{Provider, RootProvider},
};
use cas_chain::ANCHOR_CONTRACT_ADDRESS;
use cas_core::StreamId;
use cas_merkle::{dag_cbor_cid, decode_base64, verify_witness_car};
use common::Running;
use serde_json::{Value, json};
use uuid::Uuid;

/// Start `cas dev` on a free port; returns the process and its base URL.
fn start_dev(data_dir: &std::path::Path, extra: &[&str]) -> (Running, String) {
    let mut args = vec![
        "dev",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    // `cas dev` must find anvil by itself (ANVIL_BIN, PATH or .tools); it must not pick up
    // the shared test chain.
    let mut dev = Running::start_without(&args, &[], &["ETH_RPC_URL", "CAS_HTTP_ADDR"]);
    let ready = dev.wait_for("cas dev ready");
    let addr = ready["addr"].as_str().expect("addr in the ready line");
    (dev, format!("http://{addr}/api/v0"))
}

fn request_body(tag: &str) -> (String, String, Value) {
    let cid = dag_cbor_cid(tag.as_bytes()).to_string();
    let stream = StreamId::new(3, dag_cbor_cid(format!("{tag}-stream").as_bytes())).to_string();
    let body = json!({"streamId": stream, "cid": cid, "timestamp": "2026-11-22T00:00:00.000Z"});
    (cid, stream, body)
}

/// Poll until the request is COMPLETED; return the answer.
async fn wait_completed(client: &reqwest::Client, base: &str, cid: &str, dev: &Running) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body: Value = client
            .get(format!("{base}/requests/{cid}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] == "COMPLETED" {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{cid} not completed: {body}\n{}",
            dev.seen.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The witness leads to the CID, and its transaction is on the chain `rpc` serves, to the
/// official contract, carrying the proof root.
async fn verify_anchor(body: &Value, cid: &str, stream: &str, rpc: &str) -> B256 {
    let car = decode_base64(body["witnessCar"].as_str().expect("witnessCar")).unwrap();
    let witness = verify_witness_car(&car).await.unwrap();
    assert_eq!(witness.commit.prev.to_string(), cid);
    let stream: StreamId = stream.parse().unwrap();
    assert_eq!(witness.commit.id, *stream.init_cid());
    assert_eq!(witness.proof.chain_id, "eip155:1337");
    let tx_hash = B256::from_slice(witness.proof.tx_hash.hash().digest());
    let provider: RootProvider = RootProvider::new_http(rpc.parse().unwrap());
    let tx = provider
        .get_transaction_by_hash(tx_hash)
        .await
        .unwrap()
        .expect("the anchor transaction is on the chain");
    assert_eq!(tx.inner.to(), Some(ANCHOR_CONTRACT_ADDRESS));
    assert_eq!(&tx.inner.input()[4..], witness.proof.root.hash().digest());
    tx_hash
}

/// The RPC URL of the anvil a `cas dev` process started (from its log).
fn anvil_url(dev: &mut Running) -> String {
    let line = dev
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "anvil started");
    match line {
        Some(v) => v["url"].as_str().unwrap().to_owned(),
        None => dev.wait_for("anvil started")["url"]
            .as_str()
            .unwrap()
            .to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_anchors_requests_and_resumes_after_a_crash() {
    let data = std::env::temp_dir().join(format!("cas-dev-test-{}", Uuid::new_v4().simple()));
    let client = reqwest::Client::new();

    // First run: batches never close (1 h linger), so accepted requests are only pending
    // when the process is killed without warning.
    let (mut dev, base) = start_dev(&data, &["--batch-linger", "1h"]);
    let chains: Value = client
        .get(format!("{base}/service-info/supported_chains"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chains, json!({"supportedChains": ["eip155:1337"]}));
    let tag = Uuid::new_v4().simple().to_string();
    let mut posted = Vec::new();
    for i in 0..3 {
        let (cid, stream, body) = request_body(&format!("{tag}-{i}"));
        let response = client
            .post(format!("{base}/requests"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        posted.push((cid, stream));
    }
    dev.child.kill().unwrap(); // SIGKILL: no chance to flush anything
    dev.wait_exit();

    // Second run: the requests accepted before the crash complete.
    let (mut dev, base) = start_dev(&data, &["--batch-linger", "500ms"]);
    let rpc = anvil_url(&mut dev);
    let mut tx_hashes = Vec::new();
    for (cid, stream) in &posted {
        let body = wait_completed(&client, &base, cid, &dev).await;
        tx_hashes.push(verify_anchor(&body, cid, stream, &rpc).await);
    }
    assert!(
        tx_hashes.windows(2).all(|w| w[0] == w[1]),
        "one batch, one transaction: {tx_hashes:?}"
    );
    // A request posted now completes too, and the metrics saw it.
    let (cid, stream, body) = request_body(&format!("{tag}-late"));
    let response = client
        .post(format!("{base}/requests"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let answer = wait_completed(&client, &base, &cid, &dev).await;
    verify_anchor(&answer, &cid, &stream, &rpc).await;
    let metrics = client
        .get(base.replace("/api/v0", "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every role's metrics moved: the API's, the scheduler's, the worker's and the
    // transaction manager's.
    for expected in [
        "cas_requests_created_total 1",
        "cas_http_requests_total{route=\"/api/v0/requests\",status=\"201\"} 1",
        "cas_batches_closed_total 2",
        "cas_batches_anchored_total 2",
        "cas_tree_build_seconds_count 2",
        "cas_anchor_attempts_total{outcome=\"mined\"} 2",
        "cas_witness_cache_misses_total",
        "cas_wallet_balance_wei",
    ] {
        assert!(metrics.contains(expected), "{expected} in:\n{metrics}");
    }
    dev.terminate();
    assert!(dev.wait_exit().success(), "{}", dev.seen.join("\n"));

    // Third run: the chain was kept, so old answers still verify against it.
    let (mut dev, base) = start_dev(&data, &[]);
    let rpc = anvil_url(&mut dev);
    for (cid, stream) in &posted {
        let body = wait_completed(&client, &base, cid, &dev).await;
        verify_anchor(&body, cid, stream, &rpc).await;
    }
    dev.terminate();
    assert!(dev.wait_exit().success(), "{}", dev.seen.join("\n"));
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_uses_a_given_local_chain_and_places_the_contract_there() {
    // A chain of our own (fresh, so the official address has no code yet).
    let anvil = std::env::var("ANVIL_BIN").unwrap_or_else(|_| "anvil".to_owned());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node = std::process::Command::new(&anvil)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--chain-id", "1337"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("anvil (scripts/test exports ANVIL_BIN)");
    let rpc = format!("http://127.0.0.1:{port}");
    let provider: RootProvider = RootProvider::new_http(rpc.parse().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while provider.get_chain_id().await.is_err() {
        assert!(Instant::now() < deadline, "anvil did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        provider
            .get_code_at(ANCHOR_CONTRACT_ADDRESS)
            .await
            .unwrap()
            .is_empty()
    );

    let data = std::env::temp_dir().join(format!("cas-dev-test-{}", Uuid::new_v4().simple()));
    let (mut dev, base) = start_dev(&data, &["--eth-rpc-url", &rpc]);
    assert!(
        !dev.seen.iter().any(|l| l.contains("anvil started")),
        "no anvil of its own"
    );
    assert!(
        !provider
            .get_code_at(ANCHOR_CONTRACT_ADDRESS)
            .await
            .unwrap()
            .is_empty(),
        "the contract is at the official address"
    );
    let client = reqwest::Client::new();
    let (cid, stream, body) = request_body(&Uuid::new_v4().simple().to_string());
    let response = client
        .post(format!("{base}/requests"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let answer = wait_completed(&client, &base, &cid, &dev).await;
    verify_anchor(&answer, &cid, &stream, &rpc).await;
    dev.terminate();
    assert!(dev.wait_exit().success(), "{}", dev.seen.join("\n"));
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&data);
}

#[test]
fn dev_without_anvil_says_how_to_get_it() {
    let data = std::env::temp_dir().join(format!("cas-dev-test-{}", Uuid::new_v4().simple()));
    let mut dev = Running::start_without(
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--anvil-bin",
            "/nonexistent/anvil",
        ],
        &[],
        &["ETH_RPC_URL"],
    );
    let status = dev.wait_exit();
    assert!(!status.success());
    let output = dev.seen.join("\n");
    assert!(output.contains("/nonexistent/anvil"), "{output}");
    assert!(output.contains("not an executable file"), "{output}");
    let _ = std::fs::remove_dir_all(&data);
}
