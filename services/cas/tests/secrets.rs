//! Secrets stay secret: the database password, credentials in the RPC URL, the anchoring
//! wallet's key and the AWS secret key appear neither in `--help` nor in any log line of any
//! role, from start to shutdown.

mod common;

use std::process::Command;

use cas_chain::{ANCHOR_CONTRACT_ADDRESS, dev};
use cas_store::test_support::TestDb;
use common::{CAS, Running};
use secrecy::ExposeSecret;
use uuid::Uuid;

const DB_PASSWORD: &str = "db-pw-7c1e9b2f";
const RPC_SECRET: &str = "rpc-token-5d2a8f41";
const AWS_SECRET: &str = "aws-secret-0e4b6c93";

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set (scripts/test sets it)"))
}

/// `url` with `user:secret@` credentials (anvil ignores them; the RPC client must not log them).
fn with_credentials(url: &str, user: &str, secret: &str) -> String {
    url.replacen("://", &format!("://{user}:{secret}@"), 1)
}

/// Every form in which a secret could leak: as given, and the key without its 0x.
fn needles(key: &str) -> Vec<String> {
    vec![
        DB_PASSWORD.to_owned(),
        RPC_SECRET.to_owned(),
        AWS_SECRET.to_owned(),
        key.to_owned(),
        key.trim_start_matches("0x").to_owned(),
        key.trim_start_matches("0x")[..24].to_owned(),
    ]
}

fn assert_clean(what: &str, text: &str, needles: &[String]) {
    for needle in needles {
        assert!(
            !text.contains(needle.as_str()),
            "{what} leaks a secret ({needle}):\n{text}"
        );
    }
}

#[test]
fn help_never_echoes_secret_values() {
    let key = dev::generate_key();
    let key = key.expose_secret();
    let needles = needles(key);
    let db = format!("postgres://cas:{DB_PASSWORD}@db.example/cas");
    let rpc = format!("https://user:{RPC_SECRET}@rpc.example/");
    for command in [
        vec!["--help"],
        vec!["api", "--help"],
        vec!["migrate", "--help"],
        vec!["scheduler", "--help"],
        vec!["worker", "--help"],
        vec!["dev", "--help"],
    ] {
        let output = Command::new(CAS)
            .args(&command)
            .env("DATABASE_URL", &db)
            .env("ETH_RPC_URL", &rpc)
            .env("CAS_ETH_PRIVATE_KEY", key)
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .output()
            .unwrap();
        assert!(output.status.success(), "{command:?}");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_clean(&format!("cas {}", command.join(" ")), &text, &needles);
    }
    // The auth and limit settings are listed with their variables.
    let output = Command::new(CAS).args(["api", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    let dev_help = Command::new(CAS).args(["dev", "--help"]).output().unwrap();
    let dev_help = String::from_utf8_lossy(&dev_help.stdout);
    for var in [
        "CAS_AUTH",
        "CAS_AUTH_ALLOWED_DIDS",
        "CAS_AUTH_NONCE_TTL",
        "CAS_TRUSTED_PROXIES",
        "CAS_RATE_LIMIT_IP",
        "CAS_RATE_LIMIT_IP_BURST",
        "CAS_RATE_LIMIT_DID",
        "CAS_RATE_LIMIT_DID_BURST",
        "CAS_MAX_CONNECTIONS",
        "CAS_MAX_HEADER_BYTES",
        "CAS_MAX_HEADERS",
        "CAS_HEADER_READ_TIMEOUT",
    ] {
        assert!(help.contains(var), "{var} missing from `cas api --help`");
        assert!(
            dev_help.contains(var),
            "{var} missing from `cas dev --help`"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_role_logs_a_secret_from_start_to_shutdown() {
    let rpc = env("ETH_RPC_URL");
    env("AWS_ENDPOINT_URL");
    let db = TestDb::unmigrated().await.unwrap();
    let db_url = db.url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{DB_PASSWORD}@"),
        1,
    );
    assert!(db_url.contains(DB_PASSWORD), "test URL shape: {}", db.url);
    let rpc_url = with_credentials(&rpc, "cas", RPC_SECRET);

    let key = dev::generate_key();
    let wallet = cas_chain::wallet_address(&key).unwrap();
    dev::fund_for_dev(&rpc, wallet).await.unwrap();
    cas_chain::install_contract_for_dev(&rpc, ANCHOR_CONTRACT_ADDRESS, wallet)
        .await
        .unwrap();
    dev::allow_wallet_for_dev(&rpc, ANCHOR_CONTRACT_ADDRESS, wallet)
        .await
        .unwrap();
    let key = key.expose_secret().to_owned();
    let needles = needles(&key);

    let run = Uuid::new_v4().simple().to_string();
    let prefix = format!("sec{}-", &run[..12]);
    let bucket = format!("sec-{}", &run[..20]);
    let shared = [
        ("DATABASE_URL", db_url.as_str()),
        ("ETH_RPC_URL", rpc_url.as_str()),
        ("AWS_SECRET_ACCESS_KEY", AWS_SECRET),
        ("CAS_SQS_QUEUE_PREFIX", prefix.as_str()),
        ("CAS_INGEST_QUEUES", "2"),
        ("CAS_CREATE_QUEUES", "true"),
        ("CAS_S3_BUCKET", bucket.as_str()),
        ("CAS_CREATE_BUCKET", "true"),
        ("RUST_LOG", "debug"),
    ];

    let mut migrate = Running::start(&["migrate"], &shared);
    assert!(migrate.wait_exit().success(), "{}", migrate.seen.join("\n"));

    let mut api = Running::start(&["api", "--http-addr", "127.0.0.1:0"], &shared);
    api.wait_for("api listening");
    if !api
        .seen
        .iter()
        .any(|l| l.contains("ethereum chain detected"))
    {
        api.wait_for("ethereum chain detected");
    }
    let mut scheduler = Running::start(&["scheduler"], &shared);
    scheduler.wait_for("scheduler running");
    let mut worker_env = shared.to_vec();
    worker_env.push(("CAS_ETH_PRIVATE_KEY", &key));
    let mut worker = Running::start(&["worker"], &worker_env);
    worker.wait_for("worker running");

    let mut logs = migrate.seen.join("\n");
    for (name, role) in [
        ("api", &mut api),
        ("scheduler", &mut scheduler),
        ("worker", &mut worker),
    ] {
        role.terminate();
        assert!(
            role.wait_exit().success(),
            "{name}: {}",
            role.seen.join("\n")
        );
        logs.push_str(&role.seen.join("\n"));
    }
    // The database URL is logged, redacted: the check looks at the right lines.
    assert!(logs.contains("postgres:***@"), "{logs}");
    assert_clean("the roles' logs", &logs, &needles);
}

#[tokio::test(flavor = "multi_thread")]
async fn cas_dev_authenticates_and_logs_no_secret() {
    let rpc = env("ETH_RPC_URL");
    let key = dev::generate_key();
    let wallet = cas_chain::wallet_address(&key).unwrap();
    dev::fund_for_dev(&rpc, wallet).await.unwrap();
    cas_chain::install_contract_for_dev(&rpc, ANCHOR_CONTRACT_ADDRESS, wallet)
        .await
        .unwrap();
    dev::allow_wallet_for_dev(&rpc, ANCHOR_CONTRACT_ADDRESS, wallet)
        .await
        .unwrap();
    let key = key.expose_secret().to_owned();
    let needles = needles(&key);
    let data = std::env::temp_dir().join(format!("cas-dev-secrets-{}", Uuid::new_v4().simple()));
    let rpc_url = with_credentials(&rpc, "cas", RPC_SECRET);
    let mut dev = Running::start_without(
        &[
            "dev",
            "--http-addr",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--auth",
            "relaxed",
        ],
        &[
            ("ETH_RPC_URL", rpc_url.as_str()),
            ("CAS_ETH_PRIVATE_KEY", key.as_str()),
            ("RUST_LOG", "debug"),
        ],
        &["CAS_HTTP_ADDR"],
    );
    let ready = dev.wait_for("cas dev ready");
    // `cas dev` serves the API with the same authentication as `cas api`.
    let url = format!("http://{}/api/v0/requests", ready["addr"].as_str().unwrap());
    let body = serde_json::to_vec(&serde_json::json!({
        "streamId": "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b",
        "cid": cas_merkle::dag_cbor_cid(data.to_string_lossy().as_bytes()).to_string(),
        "timestamp": "2026-11-22T00:00:00.000Z",
    }))
    .unwrap();
    let client = reqwest::Client::new();
    let post = |token: Option<String>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        request.send()
    };
    assert_eq!(post(None).await.unwrap().status().as_u16(), 401);
    let node = cas_auth::Ed25519Signer::generate();
    let token = cas_auth::RequestSigner::sign(&node, &url, Some(&cas_auth::sha256_digest(&body)));
    assert_eq!(
        post(Some(token.clone())).await.unwrap().status().as_u16(),
        201
    );
    assert_eq!(
        post(Some(token)).await.unwrap().status().as_u16(),
        401,
        "replay"
    );
    dev.terminate();
    assert!(dev.wait_exit().success(), "{}", dev.seen.join("\n"));
    let _ = std::fs::remove_dir_all(&data);
    assert_clean("cas dev", &dev.seen.join("\n"), &needles);
}
