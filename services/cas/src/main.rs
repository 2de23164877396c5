//! The `cas` binary: one executable for every role of the anchor service.

mod config;

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use cas_api::{ApiSettings, AppState, Application, ChainIdCell, NoWitnesses};
use cas_store::{GroupCommitConfig, PgStore, RequestStore};
use clap::Parser;
use config::{ApiArgs, Cli, Command, DatabaseArgs, MigrateArgs};
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
    let store = connect(&args.database)?;
    store
        .check_migrated()
        .await
        .context("the database is not ready")?;

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
    };
    let state = AppState::new(
        Arc::new(store) as Arc<dyn RequestStore>,
        Arc::new(NoWitnesses),
        chain_id,
        settings,
    );
    let app = Application::bind(args.http_addr, state)
        .await
        .with_context(|| format!("failed to listen on {}", args.http_addr))?;
    let addr = app.local_addr()?;
    tracing::info!(addr = %addr, "api listening");
    app.run_until_stopped(shutdown)
        .await
        .context("http server failed")?;
    tracing::info!("api stopped");
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
