//! End to end: the api, scheduler and worker as separate processes on PostgreSQL, the SQS/S3
//! emulator and anvil. Requests posted to the API become COMPLETED with witnesses whose
//! paths lead from the proof root to their CIDs, and whose transactions on the chain carry
//! those roots and go to the official contract address.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use alloy::{
    consensus::Transaction as _,
    primitives::B256,
    providers::{Provider, RootProvider},
};
use cas_chain::{ANCHOR_CONTRACT_ADDRESS, dev};
use cas_core::StreamId;
use cas_merkle::{Cid, dag_cbor_cid, decode_base64, verify_witness_car};
use cas_store::test_support::TestDb;
use common::Running;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

fn with<'a>(
    shared: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    shared.iter().chain(extra).copied().collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (scripts/test sets it)"))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_become_completed_with_witnesses_anchored_on_chain() {
    let rpc = env("ETH_RPC_URL");
    env("AWS_ENDPOINT_URL");
    let db = TestDb::unmigrated().await.unwrap();
    let run_id = Uuid::new_v4().simple().to_string();
    let prefix = format!("e2e{}-", &run_id[..12]);
    let bucket = format!("e2e-{}", &run_id[..20]);

    // A fresh wallet, funded and allowed on the contract at the official address.
    let key = dev::generate_key();
    let wallet = cas_chain::wallet_address(&key).unwrap();
    dev::fund_for_dev(&rpc, wallet).await.unwrap();
    cas_chain::install_contract_for_dev(&rpc, ANCHOR_CONTRACT_ADDRESS, wallet)
        .await
        .unwrap();
    dev::allow_wallet_for_dev(&rpc, ANCHOR_CONTRACT_ADDRESS, wallet)
        .await
        .unwrap();

    let mut migrate = Running::start(&["migrate"], &[("DATABASE_URL", &db.url)]);
    assert!(migrate.wait_exit().success(), "{}", migrate.seen.join("\n"));

    let shared: Vec<(&str, &str)> = vec![
        ("DATABASE_URL", &db.url),
        ("ETH_RPC_URL", &rpc),
        ("CAS_SQS_QUEUE_PREFIX", &prefix),
        ("CAS_INGEST_QUEUES", "3"),
        ("CAS_CREATE_QUEUES", "true"),
        ("CAS_S3_BUCKET", &bucket),
        ("CAS_CREATE_BUCKET", "true"),
    ];
    let mut api = Running::start(&["api", "--http-addr", "127.0.0.1:0"], &with(&shared, &[]));
    let addr = api.wait_for("api listening")["addr"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut scheduler = Running::start(
        &["scheduler"],
        &with(
            &shared,
            &[
                ("CAS_BATCH_LINGER", "3s"),
                ("CAS_SWEEP_INTERVAL", "2s"),
                ("CAS_SWEEP_AGE", "30s"),
            ],
        ),
    );
    scheduler.wait_for("scheduler running");
    let mut worker = Running::start(
        &["worker", "--install-dev-contract"],
        &with(&shared, &[("CAS_ETH_PRIVATE_KEY", key.expose_secret())]),
    );
    worker.wait_for("worker running");

    let client = reqwest::Client::new();
    let base = format!("http://{addr}/api/v0");
    // 40 requests over 8 streams (dag-cbor and dag-jose CIDs), plus one stream with an older
    // and a newer request from the same origin: the older one must end REPLACED.
    let mut expected: HashMap<String, &'static str> = HashMap::new();
    let mut streams: HashMap<String, String> = HashMap::new();
    for i in 0..40u32 {
        let cbor = dag_cbor_cid(format!("{run_id}-{i}").as_bytes());
        let cid = if i % 2 == 0 {
            cbor
        } else {
            Cid::new_v1(0x85, cbor.hash().to_owned())
        };
        let stream = StreamId::new(
            3,
            dag_cbor_cid(format!("{run_id}-stream-{}", i % 8).as_bytes()),
        );
        // Distinct streams per request keep REPLACED out of this group.
        let stream = if i < 8 {
            stream
        } else {
            StreamId::new(3, dag_cbor_cid(format!("{run_id}-s{i}").as_bytes()))
        };
        let body = json!({"streamId": stream.to_string(), "cid": cid.to_string(), "timestamp": "2026-11-22T00:00:00.000Z"});
        let response = client
            .post(format!("{base}/requests"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
        expected.insert(cid.to_string(), "COMPLETED");
        streams.insert(cid.to_string(), stream.to_string());
    }
    let replaced_stream =
        StreamId::new(3, dag_cbor_cid(format!("{run_id}-replaced").as_bytes())).to_string();
    let newer = dag_cbor_cid(format!("{run_id}-newer").as_bytes()).to_string();
    let older = dag_cbor_cid(format!("{run_id}-older").as_bytes()).to_string();
    for (cid, ts) in [
        (&newer, "2026-11-22T00:00:02Z"),
        (&older, "2026-11-22T00:00:01Z"),
    ] {
        let body = json!({"streamId": replaced_stream, "cid": cid, "timestamp": ts});
        let response = client
            .post(format!("{base}/requests"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201);
    }
    expected.insert(newer.clone(), "COMPLETED");
    expected.insert(older.clone(), "REPLACED");
    streams.insert(newer.clone(), replaced_stream.clone());

    // Poll (as js-ceramic does) until every request is terminal.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut answers: HashMap<String, Value> = HashMap::new();
    while answers.len() < expected.len() {
        assert!(
            Instant::now() < deadline,
            "not all requests completed; done: {}/{}\nscheduler:\n{}\nworker:\n{}",
            answers.len(),
            expected.len(),
            scheduler.seen.join("\n"),
            worker.seen.join("\n")
        );
        for cid in expected.keys() {
            if answers.contains_key(cid) {
                continue;
            }
            let body: Value = client
                .get(format!("{base}/requests/{cid}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if body["status"] == "COMPLETED" || body["status"] == "REPLACED" {
                answers.insert(cid.clone(), body);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let provider: RootProvider = RootProvider::new_http(rpc.parse().unwrap());
    let mut transactions: HashSet<B256> = HashSet::new();
    for (cid, body) in &answers {
        assert_eq!(body["status"], expected[cid], "{cid}: {body}");
        if body["status"] != "COMPLETED" {
            assert!(body.get("witnessCar").is_none());
            continue;
        }
        let car = decode_base64(body["witnessCar"].as_str().unwrap()).unwrap();
        let witness = verify_witness_car(&car).await.unwrap();
        assert_eq!(
            witness.commit.prev.to_string(),
            *cid,
            "the path leads to the request's CID"
        );
        assert_eq!(
            body["anchorCommit"]["cid"],
            witness.anchor_commit_cid.to_string()
        );
        let stream: StreamId = streams[cid].parse().unwrap();
        assert_eq!(
            witness.commit.id,
            *stream.init_cid(),
            "commit id is the stream's init CID"
        );
        assert_eq!(witness.proof.chain_id, "eip155:1337");
        assert_eq!(witness.proof.tx_type, "f(bytes32)");
        assert_eq!(witness.proof.tx_hash.codec(), 0x93);
        let tx_hash = B256::from_slice(witness.proof.tx_hash.hash().digest());
        let tx = provider
            .get_transaction_by_hash(tx_hash)
            .await
            .unwrap()
            .expect("transaction on chain");
        assert_eq!(
            tx.inner.to(),
            Some(ANCHOR_CONTRACT_ADDRESS),
            "sent to the official contract"
        );
        let input = tx.inner.input();
        assert_eq!(
            &input[..4],
            &[0x97, 0xad, 0x09, 0xeb],
            "anchorDagCbor selector"
        );
        assert_eq!(
            &input[4..],
            witness.proof.root.hash().digest(),
            "the transaction carries the proof root"
        );
        transactions.insert(tx_hash);
    }
    assert!(!transactions.is_empty());
    assert!(
        transactions.len() * 4 <= expected.len(),
        "requests are batched: {} transactions for {} requests",
        transactions.len(),
        expected.len()
    );

    // ceramic-one polls by re-POSTing: the 202 carries the witness.
    let body =
        json!({"streamId": streams[&newer], "cid": newer, "timestamp": "2026-11-22T00:00:02Z"});
    let response = client
        .post(format!("{base}/requests"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let again: Value = response.json().await.unwrap();
    assert_eq!(again, answers[&newer]);

    for process in [&mut api, &mut scheduler, &mut worker] {
        process.terminate();
        assert!(process.wait_exit().success(), "{}", process.seen.join("\n"));
    }
    let logs = [&api, &scheduler, &worker]
        .iter()
        .map(|p| p.seen.join("\n"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !logs.contains(key.expose_secret().trim_start_matches("0x")),
        "the private key leaked into logs"
    );
}
