//! Parts failing under load: PostgreSQL restarted, the SQS/S3 emulator gone for 30 s, an RPC
//! provider that errs after taking a transaction or shows receipts late, anvil restarted, a
//! reorganisation, every message delivered three times, fees above the cap for longer than
//! the manager's patience, batch files deleted or corrupted, SIGTERM to every role.

use std::time::{Duration, Instant};

use cas_test_support::wait_until;
use serde_json::json;

use super::{Options, cluster, settle_and_check};

/// Transactions the journal sent for a batch at more than one nonce (must be none: a batch
/// stays on its nonce).
async fn batches_on_several_nonces(cluster: &cas_test_support::cluster::Cluster) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT batch_id FROM eth_tx_attempt \
         WHERE batch_id <> '00000000-0000-0000-0000-000000000000' \
         GROUP BY batch_id HAVING count(DISTINCT nonce) > 1) AS moved",
    )
    .fetch_one(cluster.db())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_restarted_twice_under_load() {
    let cluster = cluster(Options::default()).await;
    let load = cluster.load(300, &["--rate", "50"]).unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        tokio::task::block_in_place(|| cluster.pg.restart()).unwrap();
    }
    let fault_over = Instant::now();
    let accepted = load.finish().await.unwrap();
    settle_and_check(&cluster, &accepted, fault_over, "postgres restarted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_gone_for_30_seconds() {
    let cluster = cluster(Options::default()).await;
    let load = cluster.load(300, &["--rate", "10"]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.aws.set_down(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    cluster.aws.set_down(false);
    let fault_over = Instant::now();
    let accepted = load.finish().await.unwrap();
    settle_and_check(&cluster, &accepted, fault_over, "emulator down for 30 s").await;
}

/// The provider answers `eth_sendRawTransaction` with an internal error after taking the
/// transaction, three times: each batch is anchored once (it used to be anchored again at
/// the next nonce, three times for one batch).
#[tokio::test(flavor = "multi_thread")]
async fn an_rpc_provider_that_errs_after_taking_the_transaction() {
    let cluster = cluster(Options::default()).await;
    cluster.rpc.fail_sends_after_accepting(3);
    // About one batch a second for ten seconds: several sends.
    let load = cluster.load(100, &["--rate", "10"]).unwrap();
    let accepted = load.finish().await.unwrap();
    let verdict =
        settle_and_check(&cluster, &accepted, Instant::now(), "rpc error after send").await;
    assert_eq!(verdict.faults.get("rpc_error_after_send"), Some(&3));
    assert_eq!(
        verdict.transactions, verdict.batches,
        "one transaction per batch"
    );
    assert_eq!(batches_on_several_nonces(&cluster).await, 0);
}

/// Receipts lag the provider's nonce view by 20 s: each batch is anchored once, and
/// completes (it used to be sent 81 times in 5 minutes and never complete).
#[tokio::test(flavor = "multi_thread")]
async fn receipts_lagging_the_nonce_by_20_seconds() {
    let cluster = cluster(Options::default()).await;
    cluster.rpc.set_receipt_lag(Duration::from_secs(20));
    let load = cluster.load(60, &[]).unwrap();
    let accepted = load.finish().await.unwrap();
    let verdict = settle_and_check(&cluster, &accepted, Instant::now(), "receipts lag 20 s").await;
    assert!(
        verdict
            .faults
            .get("rpc_receipt_lagged")
            .is_some_and(|n| *n > 0)
    );
    assert_eq!(
        verdict.transactions, verdict.batches,
        "one transaction per batch"
    );
    assert_eq!(batches_on_several_nonces(&cluster).await, 0);
}

/// Wait until some anchor transaction is sent and not mined yet.
async fn wait_for_pending_anchor(cluster: &cas_test_support::cluster::Cluster) {
    let sent = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(50),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM eth_tx_attempt WHERE state = 'broadcast'",
            )
            .fetch_one(cluster.db())
            .await
            .is_ok_and(|n| n > 0)
        },
    )
    .await;
    assert!(sent, "no anchor transaction was sent;\n{}", cluster.logs());
}

/// anvil restarts while an anchor waits in its pool (mining every 4 s): the pool is gone,
/// the chain is kept. The transaction is sent again; nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn anvil_restarted_with_a_transaction_in_its_pool() {
    let mut cluster = cluster(Options::default()).await;
    cluster
        .anvil
        .rpc("evm_setAutomine", json!([false]))
        .await
        .unwrap();
    cluster
        .anvil
        .rpc("evm_setIntervalMining", json!([4]))
        .await
        .unwrap();
    let load = cluster.load(40, &[]).unwrap();
    wait_for_pending_anchor(&cluster).await;
    cluster.anvil.restart(false).await.unwrap(); // automine again after the restart
    let fault_over = Instant::now();
    let accepted = load.finish().await.unwrap();
    let verdict = settle_and_check(&cluster, &accepted, fault_over, "anvil restarted").await;
    assert_eq!(verdict.transactions, verdict.batches);
}

/// A reorganisation at a chosen moment, twice: once while an anchor waits for its
/// confirmations (3 here), and once after a batch was recorded as anchored. Each time the
/// anchor is gone from the chain; it is sent again as the same transaction, so every
/// witness is valid on the canonical chain at the end.
#[tokio::test(flavor = "multi_thread")]
async fn reorganisations_before_and_after_completion() {
    let cluster = cluster(Options {
        confirmations: 3,
        ..Options::default()
    })
    .await;
    let anvil = &cluster.anvil;
    anvil.rpc("evm_setAutomine", json!([false])).await.unwrap();
    anvil
        .rpc("evm_setIntervalMining", json!([1]))
        .await
        .unwrap();

    // Before completion: mined, not yet confirmed.
    let snapshot = anvil.rpc("evm_snapshot", json!([])).await.unwrap();
    let first = cluster.load(30, &[]).unwrap();
    let mined = wait_until(
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM eth_tx_attempt WHERE state = 'mined'",
            )
            .fetch_one(cluster.db())
            .await
            .is_ok_and(|n| n > 0)
        },
    )
    .await;
    assert!(mined, "{}", cluster.logs());
    assert!(anvil.rpc("evm_revert", json!([snapshot])).await.unwrap() == json!(true));
    let mut accepted = first.finish().await.unwrap();
    settle_and_check(
        &cluster,
        &accepted,
        Instant::now(),
        "reorg before completion",
    )
    .await;

    // After completion: the batch was recorded anchored; the chain then loses it.
    let snapshot = anvil.rpc("evm_snapshot", json!([])).await.unwrap();
    let second = cluster.load(30, &[]).unwrap();
    accepted.extend(second.finish().await.unwrap());
    cluster.wait_settled(Duration::from_secs(60)).await.unwrap();
    assert!(anvil.rpc("evm_revert", json!([snapshot])).await.unwrap() == json!(true));
    let reverted = Instant::now();
    // The worker's periodic check reopens the batch; it completes again.
    let reopened = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(50),
        || async {
            cluster.roles["worker"]
                .logged("a mined transaction is no longer in the chain; sending it again")
                > 0
        },
    )
    .await;
    assert!(
        reopened,
        "the lost anchor was not noticed;\n{}",
        cluster.logs()
    );
    let verdict = settle_and_check(&cluster, &accepted, reverted, "reorg after completion").await;
    assert_eq!(verdict.transactions, verdict.batches);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_message_delivered_three_times() {
    let cluster = cluster(Options::default()).await;
    cluster.aws.set_sqs_copies(3);
    let load = cluster.load(200, &["--streams", "150"]).unwrap();
    let accepted = load.finish().await.unwrap();
    let verdict = settle_and_check(
        &cluster,
        &accepted,
        Instant::now(),
        "messages delivered thrice",
    )
    .await;
    assert!(verdict.faults.get("sqs_duplicate").is_some_and(|n| *n > 0));
    assert_eq!(verdict.transactions, verdict.batches);
}

/// The base fee stays above the worker's cap (3 gwei) for 45 s, longer than its patience
/// (5 attempts of 6 s): the attempts stop at the cap and wait, at one nonce, and the batch
/// is anchored once fees fall.
#[tokio::test(flavor = "multi_thread")]
async fn fees_above_the_cap_for_longer_than_the_patience() {
    let cluster = cluster(Options {
        env: vec![("CAS_ETH_MAX_FEE_GWEI".into(), "3".into())],
        ..Options::default()
    })
    .await;
    let anvil = &cluster.anvil;
    anvil.rpc("evm_setAutomine", json!([false])).await.unwrap();
    anvil
        .rpc("evm_setIntervalMining", json!([1]))
        .await
        .unwrap();
    let high = format!("0x{:x}", 20_000_000_000u64);
    let raise = async {
        let until = Instant::now() + Duration::from_secs(45);
        while Instant::now() < until {
            anvil
                .rpc("anvil_setNextBlockBaseFeePerGas", json!([high]))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let load = cluster.load(30, &[]).unwrap();
    raise.await;
    anvil
        .rpc("anvil_setNextBlockBaseFeePerGas", json!(["0x3b9aca00"]))
        .await
        .unwrap();
    let fault_over = Instant::now();
    let accepted = load.finish().await.unwrap();
    let verdict = settle_and_check(&cluster, &accepted, fault_over, "fees above the cap").await;
    assert_eq!(verdict.transactions, verdict.batches);
    assert_eq!(batches_on_several_nonces(&cluster).await, 0);
    let capped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eth_tx_attempt WHERE max_fee_per_gas > 3000000000",
    )
    .fetch_one(cluster.db())
    .await
    .unwrap();
    assert_eq!(capped, 0, "no attempt above the cap");
}

/// Two batches can never be anchored: one's file is deleted, the other's corrupted. They
/// fail for good, their requests move to new batches, and those are anchored.
#[tokio::test(flavor = "multi_thread")]
async fn batch_files_deleted_or_corrupted() {
    let mut cluster = cluster(Options::default()).await;
    cluster.roles.remove("worker");
    let mut accepted = cluster.load(20, &[]).unwrap().finish().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    accepted.extend(cluster.load(20, &[]).unwrap().finish().await.unwrap());
    let two = wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            cluster
                .unanchored_batches()
                .await
                .is_ok_and(|b| b.len() >= 2)
        },
    )
    .await;
    assert!(two, "two batches closed");
    let batches = cluster.unanchored_batches().await.unwrap();
    cluster.tamper_batch_file(batches[0], None).await.unwrap();
    cluster
        .tamper_batch_file(batches[1], Some(b"not a batch file"))
        .await
        .unwrap();
    let fault_over = Instant::now();
    cluster.start_role("worker", None).await.unwrap();
    settle_and_check(&cluster, &accepted, fault_over, "batch files lost").await;
    let failed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM batch WHERE failed_at IS NOT NULL AND replaced_by IS NOT NULL",
    )
    .fetch_one(cluster.db())
    .await
    .unwrap();
    assert_eq!(failed, 2, "both failed for good and were replaced");
}

/// SIGTERM to each role in turn, while requests arrive and anchors wait for blocks (every
/// 3 s): each stops well within its stop timeout (ECS gives 120 s; here 30 s), exits 0, and
/// once started again nothing is lost or sent twice.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_every_role_quickly_and_loses_nothing() {
    let mut cluster = cluster(Options::default()).await;
    cluster
        .anvil
        .rpc("evm_setAutomine", json!([false]))
        .await
        .unwrap();
    cluster
        .anvil
        .rpc("evm_setIntervalMining", json!([3]))
        .await
        .unwrap();
    let load = cluster.load(200, &["--rate", "10"]).unwrap();
    for role in ["worker", "scheduler", "api", "worker"] {
        if role == "worker" {
            wait_for_pending_anchor(&cluster).await;
        } else {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let stopping = Instant::now();
        cluster.role(role).signal(libc::SIGTERM);
        let status = cluster
            .role(role)
            .wait_exit(Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("{e}:\n{}", cluster.logs()));
        println!("{role} stopped in {:?}", stopping.elapsed());
        assert!(status.success(), "{role} exited with {status}");
        cluster.start_role(role, None).await.unwrap();
    }
    let fault_over = Instant::now();
    let accepted = load.finish().await.unwrap();
    let verdict = settle_and_check(&cluster, &accepted, fault_over, "sigterm").await;
    assert_eq!(verdict.transactions, verdict.batches);
}
