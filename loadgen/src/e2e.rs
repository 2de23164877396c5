//! `loadgen e2e`: the whole path, checked from the outside.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::{E2eArgs, PollArgs, ingest, percentile};

const ANCHOR_CONTRACT: &str = "0x231055a0852d67c7107ad0d0dfeab60278fe6adc";

/// A terminal status and, for COMPLETED, the verification result.
type Outcome = (String, Result<Checked, String>);

/// The outcome of verifying one completed request.
struct Checked {
    tx_hash: String,
    root_digest: Vec<u8>,
}

async fn verify(cid: &str, body: &Value) -> Result<Checked, String> {
    let witness = body["witnessCar"]
        .as_str()
        .ok_or("COMPLETED without witnessCar")?;
    if witness.contains('=') {
        return Err("witnessCar has base64 padding".to_owned());
    }
    let car = cas_merkle::decode_base64(witness).map_err(|e| e.to_string())?;
    let verified = cas_merkle::verify_witness_car(&car)
        .await
        .map_err(|e| e.to_string())?;
    if verified.commit.prev.to_string() != cid {
        return Err(format!(
            "witness leads to {}, not {cid}",
            verified.commit.prev
        ));
    }
    if body["anchorCommit"]["cid"] != verified.anchor_commit_cid.to_string() {
        return Err("anchorCommit.cid is not the witness root".to_owned());
    }
    let digest = verified.proof.tx_hash.hash().digest();
    Ok(Checked {
        tx_hash: format!(
            "0x{}",
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        root_digest: verified.proof.root.hash().digest().to_vec(),
    })
}

async fn check_transaction(
    client: &reqwest::Client,
    rpc: &str,
    tx_hash: &str,
    roots: &HashSet<Vec<u8>>,
) -> Result<(), String> {
    let response: Value = client
        .post(rpc)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "eth_getTransactionByHash", "params": [tx_hash]}))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let tx = &response["result"];
    if tx.is_null() {
        return Err(format!("transaction {tx_hash} not found"));
    }
    if tx["to"].as_str().map(str::to_ascii_lowercase).as_deref() != Some(ANCHOR_CONTRACT) {
        return Err(format!(
            "transaction {tx_hash} is not sent to the anchor contract"
        ));
    }
    let input = tx["input"].as_str().unwrap_or_default();
    let expected_prefix = "0x97ad09eb";
    if input.len() != 2 + 72 || !input.starts_with(expected_prefix) {
        return Err(format!(
            "transaction {tx_hash} is not anchorDagCbor(bytes32)"
        ));
    }
    let root_hex = &input[10..];
    let found = roots
        .iter()
        .any(|r| r.iter().map(|b| format!("{b:02x}")).collect::<String>() == root_hex);
    if !found {
        return Err(format!(
            "transaction {tx_hash} carries a root no witness names"
        ));
    }
    Ok(())
}

pub(crate) async fn run(args: E2eArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let report = ingest(&args.ingest).await?;
    eprintln!("ingest: {}", report.summary);
    let ingest_done = Instant::now();
    let base = format!("{}/api/v0/requests", args.ingest.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .context("http client")?;
    let deadline = started + Duration::from_secs(args.timeout_s);
    let mut waiting: Vec<String> = report.cids.clone();
    // Each terminal answer is checked as it arrives and only the outcome is kept, so memory
    // stays small even for 2^20 requests.
    let mut outcomes: HashMap<String, Outcome> = HashMap::with_capacity(waiting.len());
    let mut polls = 0u64;
    while !waiting.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} of {} requests still not terminal after {} s",
            waiting.len(),
            report.cids.len(),
            args.timeout_s
        );
        let client_ref = &client;
        let base_ref = &base;
        let answers: Vec<(String, Option<Outcome>)> = stream::iter(waiting.iter().cloned())
            .map(|cid| async move {
                let answer = match client_ref.get(format!("{base_ref}/{cid}")).send().await {
                    Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                    _ => None,
                };
                let outcome = match answer {
                    Some(body) => match body["status"].as_str() {
                        Some("COMPLETED") => {
                            Some(("COMPLETED".to_owned(), verify(&cid, &body).await))
                        }
                        Some(other @ ("FAILED" | "REPLACED")) => {
                            Some((other.to_owned(), Err(format!("status {other}"))))
                        }
                        _ => None,
                    },
                    None => None,
                };
                (cid, outcome)
            })
            .buffer_unordered(args.ingest.concurrency.max(1))
            .collect()
            .await;
        polls += answers.len() as u64;
        let mut still = Vec::new();
        for (cid, outcome) in answers {
            match outcome {
                Some(done) => {
                    outcomes.insert(cid, done);
                }
                None => still.push(cid),
            }
        }
        waiting = still;
        if !waiting.is_empty() {
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprint!(
                    "\re2e: {} of {} terminal",
                    outcomes.len(),
                    report.cids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(args.poll_interval_ms)).await;
        }
    }
    let anchored = Instant::now();

    let mut completed = 0u64;
    let mut replaced = 0u64;
    let mut verified = 0u64;
    let mut failed = 0u64;
    let mut problems: Vec<String> = Vec::new();
    let mut transactions: HashSet<String> = HashSet::new();
    let mut roots: HashSet<Vec<u8>> = HashSet::new();
    for (cid, (status, check)) in outcomes {
        match status.as_str() {
            "COMPLETED" => completed += 1,
            "REPLACED" => {
                // A newer request for the same stream won: terminal, and not an error.
                replaced += 1;
                continue;
            }
            _ => {}
        }
        match check {
            Ok(c) => {
                verified += 1;
                transactions.insert(c.tx_hash);
                roots.insert(c.root_digest);
            }
            Err(e) => {
                failed += 1;
                if problems.len() < 5 {
                    problems.push(format!("{cid}: {e}"));
                }
            }
        }
    }
    let mut chain_checked = 0;
    if let Some(rpc) = &args.eth_rpc_url {
        for tx in &transactions {
            if let Err(e) = check_transaction(&client, rpc, tx, &roots).await {
                failed += 1;
                problems.push(e);
            } else {
                chain_checked += 1;
            }
        }
    }
    let summary = json!({
        "mode": "e2e",
        "requests": report.cids.len(),
        "completed": completed,
        "replaced": replaced,
        "verified": verified,
        "failed": failed,
        "transactions": transactions.len(),
        "transactions_checked_on_chain": chain_checked,
        "status_polls": polls,
        "seconds": (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "ingest_seconds": ((ingest_done - started).as_secs_f64() * 1000.0).round() / 1000.0,
        "time_to_anchor_seconds": ((anchored - ingest_done).as_secs_f64() * 1000.0).round() / 1000.0,
        "chain_check_seconds": (anchored.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        "rps": report.summary["rps"],
        "p50_ms": report.summary["p50_ms"],
        "p99_ms": report.summary["p99_ms"],
    });
    println!("{summary}");
    if failed > 0 {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        anyhow::bail!("{failed} requests failed verification");
    }
    Ok(())
}

pub(crate) async fn poll(args: PollArgs) -> anyhow::Result<()> {
    let report = ingest(&args.ingest).await?;
    eprintln!("ingest: {}", report.summary);
    let base = format!("{}/api/v0/requests", args.ingest.url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.ingest.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .context("http client")?;
    let cids = Arc::new(report.cids);
    let started = Instant::now();
    let client_ref = &client;
    let base_ref = &base;
    let results: Vec<(f64, bool)> = stream::iter(0..args.gets)
        .map(|i| {
            let cid = cids[(i % cids.len().max(1) as u64) as usize].clone();
            async move {
                let sent = Instant::now();
                let ok = match client_ref.get(format!("{base_ref}/{cid}")).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                };
                (sent.elapsed().as_secs_f64() * 1000.0, ok)
            }
        })
        .buffer_unordered(args.ingest.concurrency.max(1))
        .collect()
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let ok = results.iter().filter(|(_, ok)| *ok).count();
    let mut latencies: Vec<f64> = results.iter().map(|(l, _)| *l).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let summary = json!({
        "mode": "poll",
        "requests": args.gets,
        "completed": ok,
        "verified": 0,
        "failed": results.len() - ok,
        "concurrency": args.ingest.concurrency,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "rps": (ok as f64 / seconds).round(),
        "p50_ms": (percentile(&latencies, 50.0) * 100.0).round() / 100.0,
        "p99_ms": (percentile(&latencies, 99.0) * 100.0).round() / 100.0,
    });
    println!("{summary}");
    anyhow::ensure!(
        ok == results.len(),
        "{} status reads failed",
        results.len() - ok
    );
    Ok(())
}
