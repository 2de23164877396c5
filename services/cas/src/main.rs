//! The `cas` binary: one executable for every role of the anchor service.

mod config;
mod dev;
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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Fault points for the fault harness, from FAILPOINTS (builds with `failpoints` only).
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    let service = match &cli.command {
        Command::Api(_) => "cas-api",
        Command::Migrate(_) => "cas-migrate",
        Command::Scheduler(_) => "cas-scheduler",
        Command::Worker(_) => "cas-worker",
        Command::Dev(_) => "cas-dev",
    };
    let telemetry = cas_telemetry::init(
        service,
        cli.log_format,
        cli.otlp_endpoint.as_ref().map(url::Url::as_str),
    )
    .context("failed to set up telemetry")?;
    cas_telemetry::metrics::install();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "cas starting");
    #[cfg(feature = "failpoints")]
    tracing::warn!(
        failpoints = %std::env::var("FAILPOINTS").unwrap_or_default(),
        "this build has fault points for testing; never run it in production"
    );
    let result = match cli.command {
        Command::Api(args) => run_api(args).await,
        Command::Migrate(args) => run_migrate(args).await,
        Command::Scheduler(args) => run_scheduler(args).await,
        Command::Worker(args) => run_worker(args).await,
        Command::Dev(args) => dev::run(args).await,
    };
    if let Err(err) = &result {
        tracing::error!(error = format!("{err:#}"), "cas stopped with an error");
    }
    // Flush buffered spans, on error exits too.
    telemetry.shutdown().await;
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
    let auth = args.auth.settings()?;
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

    tracing::info!(
        auth = %auth.mode,
        allowed_dids = auth.allowed_dids.len(),
        trusted_proxies = auth.trusted_proxies.len(),
        "api authentication configured"
    );
    let mut settings = ApiSettings {
        json_body_limit: args.json_body_limit,
        car_body_limit: args.car_body_limit,
        request_timeout: args.request_timeout,
        group_commit: GroupCommitConfig {
            max_batch: args.ingest_batch_max,
            workers: args.ingest_workers,
            queue_capacity: args.ingest_queue,
        },
        answer_cache: args.answer_cache,
        auth,
        ..ApiSettings::default()
    };
    args.limits.apply(&mut settings);
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
    let store = Arc::new(store);
    // Used nonces live in PostgreSQL, so a replay is caught by whichever instance gets it.
    let mut state = AppState::new(
        Arc::clone(&store) as Arc<dyn RequestStore>,
        witnesses,
        chain_id,
        settings,
    )
    .with_nonce_store(store as Arc<dyn cas_store::NonceStore>);
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
    serve_metrics(&args.metrics, &shutdown).await?;
    let store = connect_migrated(&args.database).await?;
    let pipeline = Pipeline::require(&args.pipeline).await?;
    let config = cas_scheduler::SchedulerConfig {
        batch_max: args.batch_max,
        linger: args.batch_linger,
        flush_interval: args.batch_flush_interval,
        visibility: args.ingest_visibility,
        receive_wait: Duration::from_secs(1),
        receive_interval: Duration::from_millis(500),
        sweep_age: args
            .sweep_age
            .unwrap_or(args.batch_linger + Duration::from_secs(60)),
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
    serve_metrics(&args.metrics, &shutdown).await?;
    let store = connect_migrated(&args.database).await?;
    let pipeline = Pipeline::require(&args.pipeline).await?;

    let signer = match (
        &args.eth_private_key,
        &args.eth_private_key_file,
        &args.eth_kms_key_id,
    ) {
        (Some(key), None, None) => cas_chain::SignerSource::PrivateKey(key.clone()),
        (None, Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the private key file {}", path.display()))?;
            cas_chain::SignerSource::PrivateKey(secrecy::SecretString::from(text.trim().to_owned()))
        }
        (None, None, Some(key_id)) => cas_chain::SignerSource::AwsKms {
            key_id: key_id.clone(),
        },
        (None, None, None) => anyhow::bail!(
            "the worker needs a wallet: set CAS_ETH_PRIVATE_KEY, CAS_ETH_PRIVATE_KEY_FILE or CAS_ETH_KMS_KEY_ID"
        ),
        _ => anyhow::bail!(
            "give one of CAS_ETH_PRIVATE_KEY, CAS_ETH_PRIVATE_KEY_FILE or CAS_ETH_KMS_KEY_ID, not several"
        ),
    };
    let rpc_url = args.eth_rpc_url.expose_secret().to_owned();
    let contract: cas_chain::Address = args
        .anchor_contract
        .parse()
        .with_context(|| format!("invalid anchor contract address {}", args.anchor_contract))?;
    let chain = cas_chain::fetch_chain_id(&rpc_url)
        .await
        .context("reading the chain id")?;
    if let Some(expected) = args.chain_id.map(cas_chain::ChainId)
        && expected != chain
    {
        return Err(cas_chain::ChainError::WrongChain {
            expected,
            actual: chain,
        })
        .context("checking the chain (CAS_CHAIN_ID)");
    }
    let wallet = cas_chain::AnchorSigner::load(&signer, Some(chain.0))
        .await
        .context("loading the anchoring wallet's key")?
        .address();
    if args.install_dev_contract {
        let installed = cas_chain::install_contract_for_dev(&rpc_url, contract, wallet)
            .await
            .context("installing the dev anchor contract")?;
        tracing::info!(?installed, contract = %contract, owner = %wallet, "dev anchor contract checked");
    }
    let mut config = cas_chain::AnchorerConfig::with_signer(rpc_url, signer);
    config.contract = contract;
    config.expected_chain_id = Some(chain);
    config.confirmations =
        args.eth_confirmations
            .unwrap_or(if cas_chain::contract::is_dev_chain(chain) {
                1
            } else {
                4
            });
    let confirmations = config.confirmations;
    let anchorer = cas_chain::EvmAnchorer::connect(config)
        .await
        .context("connecting the anchoring wallet")?;
    tracing::info!(
        wallet = %wallet,
        chain.id = %chain,
        contract = %contract,
        confirmations,
        max_fee_per_gas = args.eth_max_fee_gwei,
        "anchoring wallet ready"
    );
    let store = Arc::new(store);
    let transactions = cas_worker::TxManager::new(
        Arc::new(anchorer),
        Arc::clone(&store) as Arc<dyn cas_store::TxJournal>,
        cas_worker::TxManagerConfig {
            attempt_timeout: args.eth_tx_timeout,
            max_attempts: args.eth_max_attempts,
            fees: cas_chain::FeePolicy::with_cap(args.eth_max_fee_gwei),
            lock_timeout: args.nonce_lock_timeout,
            low_balance_wei: args.low_balance_wei,
            ..cas_worker::TxManagerConfig::default()
        },
    );

    let worker = cas_worker::Worker::new(
        store,
        pipeline.batches,
        pipeline.blobs,
        Arc::new(transactions),
        cas_worker::WorkerConfig {
            visibility: args.batch_visibility,
            build_threads: args.build_threads,
            reorg_check_interval: args.reorg_check_interval,
            max_receives: Some(args.pipeline.max_receives),
            ..cas_worker::WorkerConfig::default()
        },
    );
    worker.run(shutdown).await
}

/// Serve `/metrics` in the background if the role was given an address for it.
async fn serve_metrics(
    args: &config::MetricsArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(addr) = args.metrics_addr else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} for metrics"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        if let Err(err) = cas_api::serve_metrics(listener, shutdown).await {
            tracing::warn!(error = %err, "metrics server failed");
        }
    });
    Ok(())
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
