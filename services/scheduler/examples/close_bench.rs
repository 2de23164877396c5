//! Benchmark of one batch close at full size, as production runs it: `BENCH_CLOSE_REQUESTS`
//! (2^20 by default) requests stored in PostgreSQL (`DATABASE_URL`, an empty database) and
//! published packed to ten SQS ingest queues (`AWS_ENDPOINT_URL`), then received by a
//! scheduler and closed into one batch whose file goes to S3. Two processes, so that the
//! closing one holds only what a scheduler holds:
//!
//! ```text
//! close_bench prepare   # store and publish
//! close_bench close     # receive, close; prints JSON lines
//! ```
//!
//! `scripts/bench` runs both. The close's figures: its time and its steps, and the peak
//! resident memory (VmHWM) of the closing process before and after the close.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cas_blob::S3BlobStore;
use cas_core::{
    ClientTimestamp, StreamId,
    pipeline::{IngestEntry, pack_ingest},
};
use cas_queue::{MAX_MESSAGE_BYTES, MultiQueue, Queue, SqsQueue, create_queue};
use cas_scheduler::{Scheduler, SchedulerConfig};
use cas_store::{NewRequest, PgStore, RequestStore};
use chrono::Utc;
use uuid::Uuid;

fn emit(name: &str, value: impl std::fmt::Display, unit: &str) {
    println!(r#"{{"name":"{name}","value":{value},"unit":"{unit}"}}"#);
}

/// Peak and current resident memory of this process, MiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb / 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

// The allocator of the `cas` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The ingest multi-queue (10 SQS queues, created if missing) and the batch queue, named
/// after the database (so that each prepared run has its own).
async fn queues(database: &str) -> anyhow::Result<(Arc<dyn Queue>, Arc<dyn Queue>)> {
    let client = SqsQueue::client_from_env(None).await;
    let prefix = format!("close-bench-{database}");
    let mut ingest: Vec<Arc<dyn Queue>> = Vec::new();
    for i in 0..10 {
        let url = create_queue(
            &client,
            &format!("{prefix}-ingest-{i}"),
            Duration::from_secs(900),
        )
        .await?;
        ingest.push(Arc::new(SqsQueue::new(client.clone(), url)));
    }
    let url = create_queue(
        &client,
        &format!("{prefix}-batch"),
        Duration::from_secs(600),
    )
    .await?;
    Ok((
        Arc::new(MultiQueue::new(ingest)),
        Arc::new(SqsQueue::new(client, url)),
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_CLOSE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 20);
    let url = std::env::var("DATABASE_URL")?;
    let store = Arc::new(PgStore::connect_lazy(&url, 8, Duration::from_secs(30))?);
    let database = url
        .rsplit('/')
        .next()
        .unwrap_or("cas")
        .replace(['?', '='], "-");
    let (ingest, batches) = queues(&database).await?;
    match std::env::args().nth(1).as_deref() {
        Some("prepare") => prepare(n, &store, ingest.as_ref()).await,
        Some("close") => close(n, store, ingest, batches).await,
        _ => anyhow::bail!("usage: close_bench prepare|close"),
    }
}

async fn prepare(n: usize, store: &PgStore, ingest: &dyn Queue) -> anyhow::Result<()> {
    store.migrate().await?;

    let started = Instant::now();
    let requests: Vec<NewRequest> = (0..n)
        .map(|i| {
            let id = Uuid::now_v7();
            let cid = cas_merkle::dag_cbor_cid(id.as_bytes());
            let stream = StreamId::new(3, cas_merkle::dag_cbor_cid(&(i as u64).to_le_bytes()));
            NewRequest {
                id,
                cid: cid.to_string(),
                stream_id: stream.to_string(),
                origin: "did:key:z6MkbenchBENCHbenchBENCHbenchBENCHbenchBENCH".into(),
                timestamp: ClientTimestamp::from_unix_nanos(1_795_305_600_000_000_000 + i as i64),
                created_at: Utc::now(),
            }
        })
        .collect();
    for chunk in requests.chunks(8192) {
        store.insert_requests(chunk).await?;
    }
    let entries: Vec<IngestEntry> = requests
        .iter()
        .map(|r| IngestEntry {
            id: r.id,
            cid: r.cid.clone(),
            sid: r.stream_id.clone(),
            org: r.origin.clone(),
            ts: r.timestamp.unix_nanos(),
        })
        .collect();
    let messages = pack_ingest(&entries, MAX_MESSAGE_BYTES)?;
    let message_count = messages.len();
    // One message per send: the multi-queue spreads them round-robin, as the API does.
    for message in messages {
        ingest.send(message).await?;
    }
    eprintln!(
        "stored and published {n} requests in {message_count} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn close(
    n: usize,
    store: Arc<PgStore>,
    ingest: Arc<dyn Queue>,
    batches: Arc<dyn Queue>,
) -> anyhow::Result<()> {
    let blobs = S3BlobStore::from_env("close-bench".to_owned(), Some("cas".into()), None).await;
    blobs.ensure_bucket().await?;
    let mut scheduler = Scheduler::new(
        Arc::clone(&store) as Arc<dyn RequestStore>,
        ingest,
        batches,
        Arc::new(blobs),
        SchedulerConfig {
            batch_max: n,
            linger: Duration::from_secs(3600),
            sweep_age: Duration::from_secs(7200),
            ..SchedulerConfig::default()
        },
    )?;
    // Receiving checks each entry and claims its stream's tip as it arrives (in production
    // this overlaps the ingest).
    let receiving = Instant::now();
    while scheduler.pending_len() < n {
        scheduler.receive_once().await?;
    }
    let receive_ms = receiving.elapsed().as_millis();
    let (peak_received, rss_received) = memory();
    let closing = Instant::now();
    let report = scheduler.close_batch().await?;
    let close_ms = closing.elapsed().as_millis();
    let (peak, _) = memory();
    anyhow::ensure!(report.batched == n, "batched {} of {n}", report.batched);
    let label = if n == 1 << 20 {
        "2pow20".to_owned()
    } else {
        n.to_string()
    };
    emit(&format!("scheduler_receive_{label}"), receive_ms, "ms");
    emit(&format!("scheduler_close_{label}"), close_ms, "ms");
    emit(
        &format!("scheduler_close_{label}_filter"),
        report.filter_ms,
        "ms",
    );
    emit(
        &format!("scheduler_close_{label}_record"),
        report.record_ms,
        "ms",
    );
    emit(&format!("scheduler_close_{label}_ack"), report.ack_ms, "ms");
    emit(
        &format!("scheduler_{label}_pending_rss"),
        rss_received,
        "MiB",
    );
    emit(
        &format!("scheduler_{label}_peak_rss_before_close"),
        peak_received,
        "MiB",
    );
    emit(&format!("scheduler_close_{label}_peak_rss"), peak, "MiB");
    Ok(())
}
