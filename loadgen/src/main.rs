//! `loadgen`: drives an anchor service the way Ceramic nodes do and reports what it measured
//! as one JSON line.

use std::{
    io::IsTerminal,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use cas_core::StreamId;
use clap::{Args, Parser, Subcommand};

mod e2e;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// POST new anchor requests and measure acceptance rate and latency.
    Ingest(IngestArgs),
    /// POST requests, wait until all are terminal, verify every witness (and, with an RPC,
    /// that each transaction carries its proof root), and report the time to anchor.
    E2e(E2eArgs),
    /// POST requests, then GET their status repeatedly (as polling nodes do) and measure
    /// the status read rate and latency.
    Poll(PollArgs),
}

#[derive(Debug, Args)]
struct PollArgs {
    #[command(flatten)]
    ingest: IngestArgs,
    /// GETs to send in total (spread over the posted requests).
    #[arg(long, default_value_t = 100_000)]
    gets: u64,
    /// Wait until every posted request is COMPLETED before measuring, so the reads are of
    /// final answers with witnesses (needs the scheduler and worker running).
    #[arg(long)]
    wait_completed: bool,
    /// With --wait-completed: give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[derive(Debug, Args)]
struct E2eArgs {
    #[command(flatten)]
    ingest: IngestArgs,
    /// Ethereum JSON-RPC URL: also check each anchor transaction on chain.
    #[arg(long, env = "ETH_RPC_URL")]
    eth_rpc_url: Option<String>,
    /// Pause between polling rounds.
    #[arg(long, default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800)]
    timeout_s: u64,
}

#[derive(Debug, Args)]
struct IngestArgs {
    /// Base URL of the service, e.g. http://127.0.0.1:8081.
    #[arg(long, env = "LOADGEN_URL")]
    url: String,
    /// Number of requests to send.
    #[arg(long, default_value_t = 10_000)]
    requests: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Send at this fixed rate (requests per second) instead of as fast as the concurrency
    /// allows; latency then counts from each request's scheduled time, so a stalled
    /// service shows up in the percentiles instead of slowing the load down.
    #[arg(long)]
    rate: Option<f64>,
    /// Seed for the generated CIDs (a new one each run by default, so every request is new).
    #[arg(long)]
    seed: Option<String>,
    /// Sign every POST as a node with DID auth does (Ed25519 did:key generated for the run,
    /// printed on stderr): run the service with `--auth relaxed`, or allowlist the DID.
    #[arg(long)]
    auth: bool,
    /// Spread the requests over this many streams, newer requests with newer timestamps (as
    /// a node's successive commits), so that older ones of a stream may be REPLACED. 0: one
    /// stream per request.
    #[arg(long, default_value_t = 0)]
    streams: u64,
    /// Send a request again after a failure (no answer, 5xx, 429), as nodes do, at most this
    /// many times, a second apart.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Write the CID of every accepted request (answered 201 or 202), one per line, to this
    /// file: the requests the service promised to anchor (the fault harness checks them).
    #[arg(long)]
    accepted_out: Option<std::path::PathBuf>,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Ingest(args) => {
            let report = ingest(&args).await?;
            println!("{}", report.summary);
            if report.failed > 0 {
                anyhow::bail!("{} requests failed", report.failed);
            }
            Ok(())
        }
        Command::E2e(args) => e2e::run(args).await,
        Command::Poll(args) => e2e::poll(args).await,
    }
}

/// A realistic request body: half dag-jose (signed commits), half dag-cbor (time events and
/// unsigned data) CIDs, each for its own stream (requests for one stream from one origin
/// replace each other, so shared streams would not all be anchored).
#[cfg(test)]
fn request_body(seed: &str, index: u64) -> Vec<u8> {
    request_body_in(seed, index, 0)
}

/// [`request_body`] for requests spread over `streams` streams (0: one per request), with
/// timestamps that grow with the index.
fn request_body_in(seed: &str, index: u64, streams: u64) -> Vec<u8> {
    let digest_source = format!("{seed}-{index}");
    let cbor = cas_merkle::dag_cbor_cid(digest_source.as_bytes());
    let cid = if index.is_multiple_of(2) {
        cbor
    } else {
        cas_merkle::Cid::new_v1(cas_merkle::DAG_JOSE, cbor.hash().to_owned())
    };
    let stream_index = if streams > 0 { index % streams } else { index };
    let stream_init = cas_merkle::dag_cbor_cid(format!("{seed}-stream-{stream_index}").as_bytes());
    let stream = StreamId::new(3, stream_init);
    // Newer requests of a stream carry newer timestamps, a millisecond per request.
    let timestamp = chrono::DateTime::from_timestamp_millis(1_795_305_600_000 + index as i64)
        .expect("in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::to_vec(&json!({
        "streamId": stream.to_string(),
        "cid": cid.to_string(),
        "timestamp": timestamp,
        "jsCeramicVersion": "loadgen",
    }))
    .expect("json")
}

/// An HDR histogram of latencies in microseconds (1 µs to 10 min, 3 significant digits).
fn latency_histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// Record one latency (saturating at the histogram's top).
fn record(histogram: &mut hdrhistogram::Histogram<u64>, latency: Duration) {
    histogram.saturating_record((latency.as_micros() as u64).max(1));
}

/// A quantile of a latency histogram in milliseconds, two decimals.
fn quantile_ms(histogram: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    if histogram.is_empty() {
        return 0.0;
    }
    (histogram.value_at_quantile(q) as f64 / 10.0).round() / 100.0
}

/// What an ingest run did.
struct IngestReport {
    summary: serde_json::Value,
    failed: u64,
    cids: Vec<String>,
}

async fn ingest(args: &IngestArgs) -> anyhow::Result<IngestReport> {
    let endpoint = format!("{}/api/v0/requests", args.url.trim_end_matches('/'));
    let seed = args
        .seed
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()
        .context("http client")?;
    let signer = args
        .auth
        .then(|| Arc::new(cas_auth::Ed25519Signer::generate()));
    if let Some(signer) = &signer {
        use cas_auth::RequestSigner as _;
        eprintln!("signing requests as {}", signer.did());
    }
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let progress = std::io::stderr().is_terminal().then(|| {
        let done = Arc::clone(&done);
        let total = args.requests;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let n = done.load(Ordering::Relaxed);
                eprint!(
                    "\ringest {n}/{total} ({:.0}%)",
                    100.0 * n as f64 / total.max(1) as f64
                );
            }
        })
    });

    let mut workers = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency.max(1) {
        let client = client.clone();
        let endpoint = endpoint.clone();
        let seed = seed.clone();
        let next = Arc::clone(&next);
        let done = Arc::clone(&done);
        let signer = signer.clone();
        let total = args.requests;
        let rate = args.rate.filter(|r| *r > 0.0);
        let (streams, retries) = (args.streams, args.retries);
        workers.push(tokio::spawn(async move {
            let mut latencies = latency_histogram();
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut accepted = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= total {
                    break;
                }
                let body = request_body_in(&seed, index, streams);
                let sent = match rate {
                    Some(rate) => {
                        let due = started + Duration::from_secs_f64(index as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        due
                    }
                    None => Instant::now(),
                };
                let mut tries = 0;
                let result = loop {
                    let mut request = client
                        .post(&endpoint)
                        .header("content-type", "application/json");
                    if let Some(signer) = &signer {
                        use cas_auth::RequestSigner as _;
                        let token = signer.sign(&endpoint, Some(&cas_auth::sha256_digest(&body)));
                        request = request.header("authorization", format!("Bearer {token}"));
                    }
                    let result = request.body(body.clone()).send().await;
                    let transient = match &result {
                        Ok(r) => r.status().is_server_error() || r.status().as_u16() == 429,
                        Err(_) => true,
                    };
                    if !transient || tries >= retries {
                        break result;
                    }
                    tries += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                };
                record(&mut latencies, sent.elapsed());
                match result {
                    Ok(r) if r.status().as_u16() == 201 || r.status().as_u16() == 202 => {
                        ok += 1;
                        accepted.push(index);
                    }
                    _ => failed += 1,
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (latencies, ok, failed, accepted)
        }));
    }
    let mut latencies = latency_histogram();
    let (mut ok, mut failed) = (0, 0);
    let mut accepted = Vec::new();
    for worker in workers {
        let (l, o, f, a) = worker.await?;
        latencies.add(&l).context("merging latency histograms")?;
        ok += o;
        failed += f;
        accepted.extend(a);
    }
    let cid_of = |i: u64| {
        let body: serde_json::Value =
            serde_json::from_slice(&request_body_in(&seed, i, args.streams)).expect("json");
        body["cid"].as_str().unwrap_or_default().to_owned()
    };
    if let Some(path) = &args.accepted_out {
        accepted.sort_unstable();
        let lines: String = accepted.iter().map(|&i| cid_of(i) + "\n").collect();
        std::fs::write(path, lines)
            .with_context(|| format!("writing the accepted requests to {}", path.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    let summary = json!({
        "mode": "ingest",
        "auth": args.auth,
        "requests": args.requests,
        "completed": ok,
        "verified": 0,
        "failed": failed,
        "concurrency": args.concurrency,
        "rate": args.rate,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "rps": (ok as f64 / seconds).round(),
        "p50_ms": quantile_ms(&latencies, 0.50),
        "p99_ms": quantile_ms(&latencies, 0.99),
        "p999_ms": quantile_ms(&latencies, 0.999),
        "max_ms": quantile_ms(&latencies, 1.0),
    });
    let cids = (0..args.requests).map(cid_of).collect();
    Ok(IngestReport {
        summary,
        failed,
        cids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_requests_and_unique() {
        let a = cas_core::parse_json_request(&request_body("s", 1)).unwrap();
        let b = cas_core::parse_json_request(&request_body("s", 2)).unwrap();
        assert_ne!(a.cid, b.cid);
        assert_eq!(a.cid.codec(), cas_merkle::DAG_JOSE);
        assert_eq!(b.cid.codec(), cas_merkle::DAG_CBOR);
    }

    #[test]
    fn shared_streams_carry_newer_timestamps_for_newer_requests() {
        let a = cas_core::parse_json_request(&request_body_in("s", 3, 2)).unwrap();
        let b = cas_core::parse_json_request(&request_body_in("s", 5, 2)).unwrap();
        let other = cas_core::parse_json_request(&request_body_in("s", 4, 2)).unwrap();
        assert_eq!(a.stream_id, b.stream_id);
        assert_ne!(a.stream_id, other.stream_id);
        assert!(a.timestamp < b.timestamp);
    }

    #[test]
    fn latency_quantiles() {
        let mut h = latency_histogram();
        for ms in 1..=100u64 {
            record(&mut h, Duration::from_millis(ms));
        }
        assert!(
            (quantile_ms(&h, 0.5) - 50.0).abs() < 0.1,
            "{}",
            quantile_ms(&h, 0.5)
        );
        assert!((quantile_ms(&h, 0.99) - 99.0).abs() < 0.1);
        assert!((quantile_ms(&h, 1.0) - 100.0).abs() < 0.1);
        assert_eq!(quantile_ms(&latency_histogram(), 0.99), 0.0);
    }
}
