//! Interop with the published js-ceramic client: `interop/js-ceramic-client.mjs` drives
//! `@ceramicnetwork/core`'s own anchor client (the DID-authenticated EthereumAnchorService with
//! its RemoteCAS, AnchorRequestStore and polling loop) and its own anchor validation
//! (AnchorTimestampExtractor, EthereumAnchorValidator, applyAnchorCommit) against the service:
//! supported chains, signed JSON POSTs, polling until COMPLETED, the Merkle path check and
//! chain inclusion (transaction input = proof root, `to` = the official contract), a REPLACED
//! tip and a CAR-form request. The same run is made against `cas dev` (authentication off, as
//! a developer runs it) and against the production roles on PostgreSQL, the SQS/S3 emulator and
//! anvil with DID authentication on (`--auth allowlist` with the client's node DID), so every
//! POST also passes our verification of js-ceramic's signatures (JSON and CAR digests).
//!
//! Needs `node` and the pinned client in `interop/node_modules` (scripts/test installs it with
//! `ensure_interop_client` from `interop/install.sh`).

mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use alloy::{
    consensus::Transaction as _,
    primitives::B256,
    providers::{Provider, RootProvider},
};
use cas_chain::{ANCHOR_CONTRACT_ADDRESS, dev};
use cas_merkle::Cid;
use cas_store::test_support::TestDb;
use common::Running;
use secrecy::ExposeSecret;
use serde_json::Value;
use uuid::Uuid;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop")
}

fn with<'a>(
    shared: &[(&'a str, &'a str)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    shared.iter().chain(extra).copied().collect()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (scripts/test sets it)"))
}

fn node_command(seed: &str) -> tokio::process::Command {
    let dir = interop_dir();
    assert!(
        dir.join("node_modules/@ceramicnetwork/core/package.json")
            .is_file(),
        "the js-ceramic client is not installed in {}: run scripts/test, or \
         `source interop/install.sh && ensure_interop_client`",
        dir.display()
    );
    let node = std::env::var("NODE_BIN").unwrap_or_else(|_| "node".to_owned());
    let mut command = tokio::process::Command::new(node);
    command
        .arg(dir.join("js-ceramic-client.mjs"))
        .env("INTEROP_DID_SEED", seed)
        .env("INTEROP_TIMEOUT_MS", "240000")
        .kill_on_drop(true);
    command
}

/// A fresh seed for the client's node DID (32 bytes, hex).
fn new_seed() -> String {
    format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple())
}

/// The did:key js-ceramic derives from `seed` (key-did-provider-ed25519).
async fn js_ceramic_did(seed: &str) -> String {
    let output = node_command(seed)
        .arg("--print-did")
        .output()
        .await
        .expect("run node (20.8 or newer is needed)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Run the js-ceramic client against `cas_url`, checking anchors on `rpc_url`; return its
/// summary. Fails the test with the client's output if any of its checks failed.
async fn run_js_ceramic_client(seed: &str, cas_url: &str, rpc_url: &str) -> Value {
    let output = node_command(seed)
        .args([cas_url, rpc_url])
        .output()
        .await
        .expect("run node (20.8 or newer is needed)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str::<Value>(line).ok())
        .unwrap_or(Value::Null);
    println!("js-ceramic client summary: {summary}");
    assert!(
        output.status.success() && summary["ok"] == true,
        "the js-ceramic client failed ({}):\n{}\nstderr:\n{stderr}",
        output.status,
        serde_json::to_string_pretty(&summary).unwrap()
    );
    summary
}

/// One anchored request in the summary: what js-ceramic accepted, checked again here against
/// the chain with our own code.
async fn assert_anchor(what: &str, result: &Value, provider: &RootProvider) {
    let text = |key: &str| {
        result[key]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no {key} in {result}"))
            .to_owned()
    };
    assert_eq!(result["anchorStatus"], 3, "{what}: ANCHORED in js-ceramic");
    assert_eq!(
        text("prev"),
        text("tip"),
        "{what}: the anchor commit's prev"
    );
    assert_eq!(
        text("id"),
        text("genesis"),
        "{what}: the anchor commit's id"
    );
    assert_eq!(text("chainId"), "eip155:1337", "{what}");
    assert_eq!(text("txType"), "f(bytes32)", "{what}");
    assert_eq!(
        text("to"),
        ANCHOR_CONTRACT_ADDRESS.to_checksum(None),
        "{what}"
    );
    assert!(
        result["blockNumber"].as_u64().unwrap() > 1,
        "{what}: above js-ceramic's block threshold for 1337, so `to` was checked"
    );
    assert_eq!(
        result["validatedTimestamp"], result["blockTimestamp"],
        "{what}"
    );

    let tx_hash: B256 = text("txHash").parse().unwrap();
    let tx = provider
        .get_transaction_by_hash(tx_hash)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: transaction {tx_hash} is not on the chain"));
    assert_eq!(tx.inner.to(), Some(ANCHOR_CONTRACT_ADDRESS), "{what}");
    let root: Cid = text("proofRoot").parse().unwrap();
    assert_eq!(&tx.inner.input()[..4], &[0x97, 0xad, 0x09, 0xeb], "{what}");
    assert_eq!(&tx.inner.input()[4..], root.hash().digest(), "{what}");
}

async fn assert_summary(summary: &Value, rpc_url: &str) {
    assert_eq!(
        summary["supportedChains"],
        serde_json::json!(["eip155:1337"])
    );
    assert_eq!(summary["usableChains"], serde_json::json!(["eip155:1337"]));
    assert_eq!(summary["validatorChainId"], "eip155:1337");
    let provider: RootProvider = RootProvider::new_http(rpc_url.parse().unwrap());

    // JSON requests through requestAnchor and the polling loop.
    let json = summary["json"].as_array().unwrap();
    assert_eq!(json.len(), 2);
    for result in json {
        assert_anchor("JSON request", result, &provider).await;
    }
    // A signed (dag-jose) genesis as the tip, and an update whose genesis is another CID.
    assert!(json[0]["tip"].as_str().unwrap().starts_with("bagcqcera"));
    assert_ne!(json[1]["id"], json[1]["prev"]);

    // REPLACED: the older tip of a stream, the newer one anchored.
    let replaced = &summary["replaced"];
    assert_eq!(replaced["olderStatus"], "REPLACED");
    assert_anchor("newer tip", &replaced["newer"], &provider).await;

    // CAR-form request: 201, then anchored like the others.
    assert_eq!(summary["car"]["postStatus"], serde_json::json!([201]));
    assert_eq!(summary["car"]["firstAnswerStatus"], "PENDING");
    assert_anchor("CAR-form request", &summary["car"]["result"], &provider).await;

    // The client's checks reject tampered anchors, so passing them means something.
    let negative = &summary["negative"];
    assert!(
        negative["tamperedPath"]
            .as_str()
            .unwrap()
            .contains("points to invalid 'prev' commit")
    );
    assert!(
        negative["wrongRoot"]
            .as_str()
            .unwrap()
            .contains("is not in the transaction")
    );
    assert!(
        negative["wrongContract"]
            .as_str()
            .unwrap()
            .contains("not the official anchoring contract address")
    );

    // Every request was DID-signed; POSTs answered 201, polls 200.
    let signed = &summary["signedRequests"];
    assert!(signed["total"].as_u64().unwrap() > 5);
    assert_eq!(signed["total"], signed["verified"]);
    let http = &summary["http"];
    assert!(
        http["POST /api/v0/requests 201"].as_u64().unwrap() >= 5,
        "{http}"
    );
    assert!(
        http["GET /api/v0/requests/{cid} 200"].as_u64().unwrap() >= 3,
        "{http}"
    );
    assert_eq!(
        http["GET /api/v0/service-info/supported_chains 200"], 1,
        "{http}"
    );
    assert_eq!(summary["logErrors"], serde_json::json!([]));
}

/// Our own view of a request after the client is done.
async fn status_of(base: &str, cid: &str) -> Value {
    reqwest::get(format!("{base}/requests/{cid}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn js_ceramic_client_against_cas_dev() {
    let data = std::env::temp_dir().join(format!("cas-interop-{}", Uuid::new_v4().simple()));
    let mut dev = Running::start_without(
        &[
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--batch-linger",
            "1s",
        ],
        &[],
        &["ETH_RPC_URL", "CAS_HTTP_ADDR"],
    );
    let ready = dev.wait_for("cas dev ready");
    let addr = ready["addr"].as_str().unwrap().to_owned();
    let rpc = dev
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "anvil started")
        .map(|v| v["url"].as_str().unwrap().to_owned())
        .expect("cas dev started its own anvil");

    let cas_url = format!("http://{addr}");
    let summary = run_js_ceramic_client(&new_seed(), &cas_url, &rpc).await;
    assert_summary(&summary, &rpc).await;
    let older = summary["replaced"]["olderCid"].as_str().unwrap();
    assert_eq!(
        status_of(&format!("{cas_url}/api/v0"), older).await["status"],
        "REPLACED"
    );

    dev.terminate();
    assert!(dev.wait_exit().success(), "{}", dev.seen.join("\n"));
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread")]
async fn js_ceramic_client_against_the_production_roles() {
    let rpc = env("ETH_RPC_URL");
    env("AWS_ENDPOINT_URL");
    let db = TestDb::unmigrated().await.unwrap();
    let run_id = Uuid::new_v4().simple().to_string();
    let prefix = format!("iop{}-", &run_id[..12]);
    let bucket = format!("iop-{}", &run_id[..20]);

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
    // DID authentication on, with the client's node DID on the allowlist, as a CAS that
    // requires `anchorServiceAuthMethod: "did"` runs.
    let seed = new_seed();
    let did = js_ceramic_did(&seed).await;
    assert!(did.starts_with("did:key:z6Mk"), "{did}");
    let mut api = Running::start(
        &["api", "--http-addr", "127.0.0.1:0"],
        &with(
            &shared,
            &[("CAS_AUTH", "allowlist"), ("CAS_AUTH_ALLOWED_DIDS", &did)],
        ),
    );
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
        &["worker"],
        &with(&shared, &[("CAS_ETH_PRIVATE_KEY", key.expose_secret())]),
    );
    worker.wait_for("worker running");

    let cas_url = format!("http://{addr}");
    // The supported chain is read from the RPC at start; wait until the API knows it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{cas_url}/api/v0/service-info/supported_chains"))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        assert!(Instant::now() < deadline, "supported_chains never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Authentication is really on: an unsigned POST is refused.
    let unsigned = reqwest::Client::new()
        .post(format!("{cas_url}/api/v0/requests"))
        .json(&serde_json::json!({
            "streamId": "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b",
            "cid": "bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54",
            "timestamp": "2026-11-22T00:00:00.000Z",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status().as_u16(), 401);

    let summary = run_js_ceramic_client(&seed, &cas_url, &rpc).await;
    assert_summary(&summary, &rpc).await;
    assert_eq!(summary["did"], did.as_str());
    let older = summary["replaced"]["olderCid"].as_str().unwrap();
    assert_eq!(
        status_of(&format!("{cas_url}/api/v0"), older).await["status"],
        "REPLACED"
    );

    for process in [&mut api, &mut scheduler, &mut worker] {
        process.terminate();
        assert!(process.wait_exit().success(), "{}", process.seen.join("\n"));
    }
}
