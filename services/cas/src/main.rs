//! The `cas` binary: one executable for every role of the anchor service.

mod config;
mod pipeline;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use cas_api::{
    ApiSettings, AppState, Application, ArtifactWitnesses, ChainIdCell, IngestPublisher,
    NoWitnesses, PublisherConfig, WitnessSource,
};
use cas_store::{GroupCommitConfig, PgStore, RequestStore};
use clap::Parser;
use config::{ApiArgs, Cli, Command, DatabaseArgs, MigrateArgs, SchedulerArgs, WorkerArgs};
use pipeline::Pipeline;
use secrecy::ExposeSecret;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cas_telemetry::init(cli.log_format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "cas starting");
    let result = match cli.command {
        Command::Api(args) => run_api(args).await,
        Command::Migrate(args) => run_migrate(args).await,
        Command::Scheduler(args) => run_scheduler(args).await,
        Command::Worker(args) => run_worker(args).await,
    };
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "cas stopped with an error");
    }
    result
}

fn connect(database: &DatabaseArgs) -> anyhow::Result<PgStore> {
    tracing::info!(database = %database.redacted_url(), "connecting to postgres");
    PgStore::connect_lazy(
        database.url.expose_secret(),
        database.max_connections,
        database.acquire_timeout,
    )
    .context("failed to configure the database pool")
}

/// Connect and refuse a database whose schema is behind this build.
async fn connect_migrated(database: &DatabaseArgs) -> anyhow::Result<PgStore> {
    let store = connect(database)?;
    store
        .check_migrated()
        .await
        .context("the database is not ready")?;
    Ok(store)
}

async fn run_migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let store = connect(&args.database)?;
    store
        .migrate()
        .await
        .context("failed to migrate the database")?;
    tracing::info!("database migrations applied");
    Ok(())
}

async fn run_api(args: ApiArgs) -> anyhow::Result<()> {
    let shutdown = cas_telemetry::shutdown_token();
    let store = connect_migrated(&args.database).await?;

    let chain_id = ChainIdCell::default();
    match &args.eth_rpc_url {
        Some(url) => {
            let url = url.expose_secret().to_owned();
            tokio::spawn(watch_chain_id(url, Arc::clone(&chain_id), shutdown.clone()));
        }
        None => tracing::warn!(
            "no --eth-rpc-url (ETH_RPC_URL): supported_chains answers 503 and nodes will refuse this service"
        ),
    }

    let settings = ApiSettings {
        json_body_limit: args.json_body_limit,
        car_body_limit: args.car_body_limit,
        request_timeout: args.request_timeout,
        group_commit: GroupCommitConfig {
            max_batch: args.ingest_batch_max,
            workers: args.ingest_workers,
            queue_capacity: args.ingest_queue,
        },
        answer_cache: args.answer_cache,
    };
    let pipeline = Pipeline::connect(&args.pipeline).await?;
    let (witnesses, publisher): (Arc<dyn WitnessSource>, _) = match &pipeline {
        Some(p) => {
            let witnesses = ArtifactWitnesses::new(
                Arc::clone(&p.blobs),
                args.artifact_cache,
                args.witness_cache,
            );
            let (publisher, task) =
                IngestPublisher::spawn(Arc::clone(&p.ingest), PublisherConfig::default());
            (Arc::new(witnesses), Some((publisher, task)))
        }
        None => {
            tracing::warn!(
                "no --s3-bucket (CAS_S3_BUCKET): requests are stored but not published for anchoring, \
                 and completed requests carry no witness"
            );
            (Arc::new(NoWitnesses), None)
        }
    };
    let mut state = AppState::new(
        Arc::new(store) as Arc<dyn RequestStore>,
        witnesses,
        chain_id,
        settings,
    );
    let mut publisher_task = None;
    if let Some((publisher, task)) = publisher {
        state = state.with_publisher(publisher);
        publisher_task = Some(task);
    }
    let app = Application::bind(args.http_addr, state)
        .await
        .with_context(|| format!("failed to listen on {}", args.http_addr))?;
    let addr = app.local_addr()?;
    tracing::info!(addr = %addr, "api listening");
    app.run_until_stopped(shutdown)
        .await
        .context("http server failed")?;
    if let Some(task) = publisher_task {
        // The server is gone, so the publisher's last handle is dropped: it flushes and ends.
        if tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .is_err()
        {
            tracing::warn!(
                "publisher did not flush within 20s; the sweeper will re-publish what is left"
            );
        }
    }
    tracing::info!("api stopped");
    Ok(())
}

async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let shutdown = cas_telemetry::shutdown_token();
    let store = connect_migrated(&args.database).await?;
    let pipeline = Pipeline::require(&args.pipeline).await?;
    let config = cas_scheduler::SchedulerConfig {
        batch_max: args.batch_max,
        linger: args.batch_linger,
        flush_interval: args.batch_flush_interval,
        visibility: args.ingest_visibility,
        receive_wait: Duration::from_secs(1),
        sweep_age: args.sweep_age,
        sweep_interval: args.sweep_interval,
        redispatch_after: args.redispatch_after,
    };
    let scheduler = cas_scheduler::Scheduler::new(
        Arc::new(store),
        pipeline.ingest,
        pipeline.batches,
        pipeline.blobs,
        config,
    )?;
    scheduler.run(shutdown).await
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let shutdown = cas_telemetry::shutdown_token();
    let store = connect_migrated(&args.database).await?;
    let pipeline = Pipeline::require(&args.pipeline).await?;

    let key = match (&args.eth_private_key, &args.eth_private_key_file) {
        (Some(key), None) => key.clone(),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the private key file {}", path.display()))?;
            secrecy::SecretString::from(text.trim().to_owned())
        }
        (Some(_), Some(_)) => {
            anyhow::bail!("give CAS_ETH_PRIVATE_KEY or CAS_ETH_PRIVATE_KEY_FILE, not both")
        }
        (None, None) => anyhow::bail!(
            "the worker needs a wallet: set CAS_ETH_PRIVATE_KEY or CAS_ETH_PRIVATE_KEY_FILE"
        ),
    };
    let rpc_url = args.eth_rpc_url.expose_secret().to_owned();
    let contract: cas_chain::Address = args
        .anchor_contract
        .parse()
        .with_context(|| format!("invalid anchor contract address {}", args.anchor_contract))?;
    let wallet = cas_chain::wallet_address(&key).context("invalid private key")?;
    let chain = cas_chain::fetch_chain_id(&rpc_url)
        .await
        .context("reading the chain id")?;
    if args.install_dev_contract {
        let installed = cas_chain::install_contract_for_dev(&rpc_url, contract, wallet)
            .await
            .context("installing the dev anchor contract")?;
        tracing::info!(?installed, contract = %contract, owner = %wallet, "dev anchor contract checked");
    }
    let mut config = cas_chain::AnchorerConfig::new(rpc_url, key);
    config.contract = contract;
    config.expected_chain_id = args.chain_id.map(cas_chain::ChainId);
    config.confirmations =
        args.eth_confirmations
            .unwrap_or(if cas_chain::contract::is_dev_chain(chain) {
                1
            } else {
                4
            });
    config.attempt_timeout = args.eth_tx_timeout;
    let anchorer = cas_chain::EvmAnchorer::connect(config)
        .await
        .context("connecting the anchoring wallet")?;
    tracing::info!(wallet = %wallet, chain.id = %chain, contract = %contract, "anchoring wallet ready");

    let worker = cas_worker::Worker::new(
        Arc::new(store),
        pipeline.batches,
        pipeline.blobs,
        Arc::new(anchorer),
        cas_worker::WorkerConfig {
            visibility: args.batch_visibility,
            build_threads: args.build_threads,
            ..cas_worker::WorkerConfig::default()
        },
    );
    worker.run(shutdown).await
}

/// Learn the chain id from the RPC, retrying with backoff until it answers.
async fn watch_chain_id(url: String, cell: ChainIdCell, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(500);
    loop {
        match cas_chain::fetch_chain_id(&url).await {
            Ok(id) => {
                tracing::info!(chain.id = %id, "ethereum chain detected");
                let _ = cell.set(id.to_string());
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot read the chain id yet");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
