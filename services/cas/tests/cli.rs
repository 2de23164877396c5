//! The `cas` binary as operators run it: real processes against PostgreSQL and anvil.

mod common;

use std::process::Command;

use cas_store::test_support::TestDb;
use common::{CAS, Running};
use serde_json::{Value, json};

const STREAM: &str = "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b";
const CID: &str = "bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54";

fn eth_rpc_url() -> String {
    std::env::var("ETH_RPC_URL").expect("ETH_RPC_URL must point at anvil (scripts/test starts one)")
}

/// Put a password into a URL (the test cluster trusts local connections, so any password works).
fn with_password(url: &str, password: &str) -> String {
    url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{password}@"),
        1,
    )
}

#[test]
fn help_lists_every_setting_with_its_environment_variable() {
    let output = Command::new(CAS).args(["api", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for var in [
        "CAS_HTTP_ADDR",
        "DATABASE_URL",
        "ETH_RPC_URL",
        "CAS_DB_MAX_CONNECTIONS",
        "CAS_DB_ACQUIRE_TIMEOUT",
        "CAS_JSON_BODY_LIMIT",
        "CAS_CAR_BODY_LIMIT",
        "CAS_REQUEST_TIMEOUT",
        "CAS_INGEST_BATCH_MAX",
        "CAS_INGEST_WORKERS",
        "CAS_INGEST_QUEUE",
        "CAS_LOG_FORMAT",
        "CAS_S3_BUCKET",
        "CAS_SQS_QUEUE_PREFIX",
        "CAS_ANSWER_CACHE",
    ] {
        assert!(
            help.contains(var),
            "{var} missing from `cas api --help`:\n{help}"
        );
    }
    let output = Command::new(CAS).arg("--help").output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("api") && help.contains("migrate"), "{help}");

    // The value of a secret variable is never echoed by --help.
    let output = Command::new(CAS)
        .args(["api", "--help"])
        .env("DATABASE_URL", "postgres://u:hunter2@h/db")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("hunter2"));
}

#[test]
fn bad_configuration_fails_before_serving() {
    let output = Command::new(CAS)
        .args([
            "api",
            "--database-url",
            "postgres://h/db",
            "--request-timeout",
            "soon",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a duration"));

    let output = Command::new(CAS)
        .args(["api"])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--database-url"));
}

#[tokio::test(flavor = "multi_thread")]
async fn api_refuses_an_unmigrated_database() {
    let db = TestDb::unmigrated().await.unwrap();
    let mut api = Running::start(
        &["api", "--http-addr", "127.0.0.1:0"],
        &[("DATABASE_URL", &db.url)],
    );
    let status = api.wait_exit();
    assert!(!status.success());
    let output = api.seen.join("\n");
    assert!(output.contains("cas migrate"), "{output}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_then_api_serves_a_round_trip_and_stops_on_sigterm() {
    let db = TestDb::unmigrated().await.unwrap();
    let password = "s3cr3t-db-password";
    let url = with_password(&db.url, password);
    let rpc = eth_rpc_url();

    let mut migrate = Running::start(&["migrate"], &[("DATABASE_URL", &url)]);
    assert!(migrate.wait_exit().success(), "{}", migrate.seen.join("\n"));

    let mut api = Running::start(
        &["api", "--http-addr", "127.0.0.1:0"],
        &[("DATABASE_URL", &url), ("ETH_RPC_URL", &rpc)],
    );
    let listening = api.wait_for("api listening");
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let chain = api.wait_for("ethereum chain detected");
    assert_eq!(chain["chain.id"], "eip155:1337");

    let client = reqwest::Client::new();
    let base = format!("http://{addr}/api/v0");
    let chains: Value = client
        .get(format!("{base}/service-info/supported_chains"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chains, json!({"supportedChains": ["eip155:1337"]}));

    let created = client
        .post(format!("{base}/requests"))
        .json(&json!({"streamId": STREAM, "cid": CID, "timestamp": "2024-07-30T00:11:15.631Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await.unwrap();
    let fetched: Value = client
        .get(format!("{base}/requests/{CID}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, created);
    assert_eq!(fetched["status"], "PENDING");

    api.terminate();
    let status = api.wait_exit();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    let logs = api.seen.join("\n") + &migrate.seen.join("\n");
    assert!(logs.contains("api stopped"), "{logs}");
    assert!(
        !logs.contains(password),
        "the database password leaked into the logs:\n{logs}"
    );
    assert!(logs.contains("***"), "the redacted url is logged: {logs}");
}
