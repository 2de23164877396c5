//! `loadgen e2e`: the whole path, checked from the outside.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::{StreamExt, stream};
use serde_json::{Value, json};

use crate::{E2eArgs, PollArgs, ingest};

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

/// GET one request's status; `None` while it is not terminal (or the GET failed).
async fn terminal_answer(client: &reqwest::Client, base: &str, cid: &str) -> Option<Value> {
    let response = client.get(format!("{base}/{cid}")).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body: Value = response.json().await.ok()?;
    matches!(
        body["status"].as_str(),
        Some("COMPLETED" | "FAILED" | "REPLACED")
    )
    .then_some(body)
}

/// Wait until every request is terminal, checking each answer (when `check`) as it arrives.
///
/// Polling every waiting request each round would spend the service's capacity on pending
/// answers (and, for 2^20 requests, take minutes per round). Instead one probe (the oldest
/// waiting request) is polled until it is terminal; then one sweep over all waiting
/// requests collects every terminal answer, spread over all cores, and the next probe
/// starts on what is left.
async fn wait_terminal(
    client: &reqwest::Client,
    base: &str,
    mut waiting: Vec<String>,
    concurrency: usize,
    interval: Duration,
    deadline: Instant,
    check: bool,
) -> anyhow::Result<(HashMap<String, Outcome>, u64)> {
    let total = waiting.len();
    let mut outcomes: HashMap<String, Outcome> = HashMap::with_capacity(total);
    let mut polls = 0u64;
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while !waiting.is_empty() {
        // Probe.
        loop {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} of {total} requests still not terminal",
                waiting.len()
            );
            polls += 1;
            if terminal_answer(client, base, &waiting[0]).await.is_some() {
                break;
            }
            if show {
                eprint!("\re2e: {} of {total} terminal, waiting", outcomes.len());
            }
            tokio::time::sleep(interval).await;
        }
        // Sweep, on spawned tasks so that verification uses every core.
        let answers: Vec<(String, Option<Outcome>)> = stream::iter(waiting.drain(..))
            .map(|cid| {
                let client = client.clone();
                let base = base.to_owned();
                tokio::spawn(async move {
                    let outcome = match terminal_answer(&client, &base, &cid).await {
                        Some(body) => {
                            let status = body["status"].as_str().unwrap_or_default().to_owned();
                            let checked = if status != "COMPLETED" {
                                Err(format!("status {status}"))
                            } else if check {
                                verify(&cid, &body).await
                            } else {
                                Err("not checked".to_owned())
                            };
                            Some((status, checked))
                        }
                        None => None,
                    };
                    (cid, outcome)
                })
            })
            .buffer_unordered(concurrency.max(1))
            .map(|joined| joined.expect("poll task"))
            .collect()
            .await;
        polls += answers.len() as u64;
        for (cid, outcome) in answers {
            match outcome {
                Some(done) => {
                    outcomes.insert(cid, done);
                }
                None => waiting.push(cid),
            }
        }
        if show {
            eprint!("\re2e: {} of {total} terminal", outcomes.len());
        }
    }
    if show {
        eprintln!();
    }
    Ok((outcomes, polls))
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
    let (outcomes, polls) = wait_terminal(
        &client,
        &base,
        report.cids.clone(),
        args.ingest.concurrency,
        Duration::from_millis(args.poll_interval_ms),
        deadline,
        true,
    )
    .await?;
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
    if args.wait_completed {
        let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
        let (outcomes, _) = wait_terminal(
            &client,
            &base,
            report.cids.clone(),
            args.ingest.concurrency,
            Duration::from_millis(500),
            deadline,
            false,
        )
        .await?;
        let not_completed = outcomes.values().filter(|(s, _)| s != "COMPLETED").count();
        anyhow::ensure!(
            not_completed == 0,
            "{not_completed} requests ended other than COMPLETED"
        );
        eprintln!("all {} requests COMPLETED; measuring reads", outcomes.len());
    }
    let cids = Arc::new(report.cids);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    // One task per connection, spread over the runtime's threads.
    let mut workers = Vec::with_capacity(args.ingest.concurrency);
    for _ in 0..args.ingest.concurrency.max(1) {
        let client = client.clone();
        let base = base.clone();
        let cids = Arc::clone(&cids);
        let next = Arc::clone(&next);
        let total = args.gets;
        workers.push(tokio::spawn(async move {
            let mut latencies = crate::latency_histogram();
            let mut failed = 0u64;
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let cid = &cids[(i % cids.len().max(1) as u64) as usize];
                let sent = Instant::now();
                match client.get(format!("{base}/{cid}")).send().await {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(b) => bytes += b.len() as u64,
                        Err(_) => failed += 1,
                    },
                    _ => failed += 1,
                }
                crate::record(&mut latencies, sent.elapsed());
            }
            (latencies, failed, bytes)
        }));
    }
    let mut latencies = crate::latency_histogram();
    let (mut failed, mut bytes) = (0u64, 0u64);
    for worker in workers {
        let (l, f, b) = worker.await?;
        latencies.add(&l).context("merging latency histograms")?;
        failed += f;
        bytes += b;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = latencies.len() - failed;
    let summary = json!({
        "mode": "poll",
        "requests": args.gets,
        "completed": ok,
        "verified": 0,
        "failed": failed,
        "concurrency": args.ingest.concurrency,
        "answers_completed": args.wait_completed,
        "mean_answer_bytes": (bytes as f64 / ok.max(1) as f64).round(),
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "rps": (ok as f64 / seconds).round(),
        "p50_ms": crate::quantile_ms(&latencies, 0.50),
        "p99_ms": crate::quantile_ms(&latencies, 0.99),
        "p999_ms": crate::quantile_ms(&latencies, 0.999),
        "max_ms": crate::quantile_ms(&latencies, 1.0),
    });
    println!("{summary}");
    anyhow::ensure!(failed == 0, "{failed} status reads failed");
    Ok(())
}
