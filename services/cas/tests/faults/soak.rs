//! The soak (`scripts/soak [minutes]`): steady load from `loadgen` for N minutes (15 by
//! default, `SOAK_MINUTES`) while a fault of a random kind is injected every 10 to 30 s:
//! a role killed at a random fault point or with a plain SIGKILL, a role stopped with
//! SIGTERM, PostgreSQL restarted, the emulator gone for up to 30 s, send errors after the
//! node took the transaction, receipts lagging by 20 s, transactions dropped from the pool,
//! anvil restarted, a reorganisation of the newest blocks, every message delivered three
//! times for a while, fees above the cap for a while. Then the load stops, the faults stop,
//! and the checks run. The summary is one JSON line on stdout (and in `SOAK_OUT` if set).
//!
//! Not part of `scripts/test` (it is long): `#[ignore]`d, run by `scripts/soak`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use cas_core::fault::POINTS;
use cas_test_support::cluster::{Cluster, Options};
use serde_json::json;

use super::settle_and_check;

/// A small deterministic generator (the soak's seed is printed, so a run can be repeated).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

fn role_of(point: &str) -> &'static str {
    match point.split("::").next() {
        Some("api") => "api",
        Some("scheduler") => "scheduler",
        _ => "worker",
    }
}

/// Kill a role: at a fault point if it reaches it within 20 s, else with a plain SIGKILL;
/// then start it again.
async fn kill_role(cluster: &mut Cluster, point: &'static str) -> &'static str {
    let role = role_of(point);
    cluster
        .start_role(role, Some(&format!("{point}=1*return(kill)")))
        .await
        .unwrap();
    let reached = cluster
        .role(role)
        .wait_exit(Duration::from_secs(20))
        .await
        .is_ok();
    if !reached {
        cluster.role(role).signal(libc::SIGKILL);
        let _ = cluster.role(role).wait_exit(Duration::from_secs(10)).await;
    }
    cluster.start_role(role, None).await.unwrap();
    if reached { point } else { "sigkill" }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: run by scripts/soak"]
async fn soak() {
    let minutes: u64 = std::env::var("SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| uuid::Uuid::new_v4().as_u64_pair().0);
    println!("soak: {minutes} minutes, seed {seed}");
    let mut dice = Dice(seed);
    let mut cluster = Cluster::start(Options::default()).await.unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs(minutes * 60);

    // The load: one loadgen after the other, 25 requests a second, over 20 streams, so that
    // requests of one stream meet in a batch and older ones are REPLACED.
    let (api, dir) = (cluster.api_url.clone(), std::env::temp_dir());
    let load_until = until;
    let loads = tokio::spawn(async move {
        let mut accepted = Vec::new();
        while Instant::now() < load_until {
            let run = cas_test_support::cluster::load(
                &api,
                &dir,
                500,
                &["--rate", "25", "--streams", "20"],
            )
            .unwrap();
            accepted.extend(run.finish().await.unwrap());
        }
        accepted
    });

    let mut faults: BTreeMap<&'static str, u64> = BTreeMap::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(10 + dice.roll(20))).await;
        if Instant::now() >= until {
            break;
        }
        let kind: &'static str = match dice.roll(12) {
            0 | 1 => {
                let point = POINTS[dice.roll(POINTS.len() as u64) as usize];
                kill_role(&mut cluster, point).await
            }
            2 => {
                let role = ["api", "scheduler", "worker"][dice.roll(3) as usize];
                cluster.role(role).signal(libc::SIGTERM);
                let stopped = cluster.role(role).wait_exit(Duration::from_secs(60)).await;
                assert!(
                    stopped.is_ok(),
                    "{role} did not stop on SIGTERM:\n{}",
                    cluster.logs()
                );
                cluster.start_role(role, None).await.unwrap();
                "sigterm"
            }
            3 => {
                tokio::task::block_in_place(|| cluster.pg.restart()).unwrap();
                "postgres_restart"
            }
            4 => {
                cluster.aws.set_down(true);
                tokio::time::sleep(Duration::from_secs(5 + dice.roll(26))).await;
                cluster.aws.set_down(false);
                "emulator_down"
            }
            5 => {
                cluster
                    .rpc
                    .fail_sends_after_accepting(1 + dice.roll(3) as u32);
                "rpc_error_after_send"
            }
            6 => {
                cluster.rpc.set_receipt_lag(Duration::from_secs(20));
                tokio::time::sleep(Duration::from_secs(30)).await;
                cluster.rpc.set_receipt_lag(Duration::ZERO);
                "receipt_lag"
            }
            7 => {
                let _ = cluster
                    .anvil
                    .rpc("anvil_dropAllTransactions", json!([]))
                    .await;
                "pool_dropped"
            }
            8 => {
                cluster.anvil.restart(false).await.unwrap();
                "anvil_restart"
            }
            9 => {
                // A reorganisation of the newest blocks: back to a snapshot taken a few
                // seconds ago.
                let snapshot = cluster.anvil.rpc("evm_snapshot", json!([])).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2 + dice.roll(4))).await;
                cluster
                    .anvil
                    .rpc("evm_revert", json!([snapshot]))
                    .await
                    .unwrap();
                "reorg"
            }
            10 => {
                cluster.aws.set_sqs_copies(3);
                tokio::time::sleep(Duration::from_secs(30)).await;
                cluster.aws.set_sqs_copies(1);
                "duplicate_deliveries"
            }
            _ => {
                let high = format!("0x{:x}", 400_000_000_000u64); // above the 200 gwei cap
                let raise_until = Instant::now() + Duration::from_secs(15 + dice.roll(30));
                while Instant::now() < raise_until {
                    let _ = cluster
                        .anvil
                        .rpc("anvil_setNextBlockBaseFeePerGas", json!([high]))
                        .await;
                    let _ = cluster.anvil.rpc("evm_mine", json!([])).await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                let _ = cluster
                    .anvil
                    .rpc("anvil_setNextBlockBaseFeePerGas", json!(["0x3b9aca00"]))
                    .await;
                let _ = cluster.anvil.rpc("evm_mine", json!([])).await;
                "fees_above_cap"
            }
        };
        *faults.entry(kind).or_default() += 1;
        println!("soak: {:>5.0} s: {kind}", started.elapsed().as_secs_f64());
    }
    let accepted = loads.await.unwrap();
    let fault_over = Instant::now();
    let verdict = settle_and_check(&cluster, &accepted, fault_over, "soak").await;
    let mut summary = verdict.summary();
    summary["minutes"] = json!(minutes);
    summary["seed"] = json!(seed);
    summary["faults_injected"] = json!(faults);
    summary["faults_injected_total"] = json!(faults.values().sum::<u64>());
    println!("{summary}");
    if let Ok(path) = std::env::var("SOAK_OUT") {
        std::fs::write(path, format!("{summary}\n")).unwrap();
    }
}
