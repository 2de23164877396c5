//! `cas dev`: the whole service in one process, on embedded parts.
//!
//! The API, the scheduler and the worker run as tasks of this process. The request store is
//! a SQLite file, the queues live in memory, batch files and tree artifacts are files under
//! the data directory, and the chain is a local anvil that this command starts (with its
//! state kept in the data directory) unless an RPC URL is given.
//!
//! The queues are in memory, so a restart loses their messages but nothing else: at start
//! every accepted request that is not in a batch is published again, and every batch that
//! is not anchored is announced again, before the API accepts new requests.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use cas_api::{
    ApiSettings, AppState, Application, ArtifactWitnesses, ChainIdCell, IngestPublisher,
    PublisherConfig,
};
use cas_blob::{BlobStore, LocalDirBlobStore};
use cas_chain::ChainId;
use cas_queue::{MemoryQueue, Queue};
use cas_store::{GroupCommitConfig, RequestStore, SqliteStore};
use clap::Args;
use secrecy::{ExposeSecret, SecretString};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use crate::config::{AuthArgs, LimitArgs, parse_duration, parse_secret};

/// The chain id of the anvil `cas dev` starts: js-ceramic's `local` network accepts it.
pub(crate) const DEV_CHAIN_ID: u64 = 1337;

/// The first of anvil's well-known dev accounts (funded on every anvil; never use it
/// anywhere else).
const ANVIL_DEV_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// The anvil version `scripts/dev` installs into the project's tools folder.
const ANVIL_NPM_PACKAGE: &str = "@foundry-rs/anvil-linux-amd64@1.7.1";

/// Where `scripts/dev` and `scripts/test` install anvil, relative to the project root.
const ANVIL_LOCAL_PATH: &str = ".tools/anvil/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil";

#[derive(Debug, Args)]
pub(crate) struct DevArgs {
    /// Address the HTTP API listens on (js-ceramic's default local CAS is port 8081).
    #[arg(long, env = "CAS_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    pub(crate) http_addr: SocketAddr,

    /// Directory for the SQLite database, batch files, tree artifacts and the chain state.
    #[arg(long, env = "CAS_DATA_DIR", default_value = "./.cas")]
    pub(crate) data_dir: PathBuf,

    /// Longest a request waits for its batch to close.
    #[arg(long, env = "CAS_BATCH_LINGER", default_value = "2s", value_parser = parse_duration)]
    pub(crate) batch_linger: Duration,

    /// Most requests in one batch.
    #[arg(long, env = "CAS_BATCH_MAX", default_value_t = 1 << 20)]
    pub(crate) batch_max: usize,

    /// Anchor on this Ethereum JSON-RPC endpoint instead of starting anvil. On a local dev
    /// chain (1337/31337) the anchor contract is placed at its address if it has no code.
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) eth_rpc_url: Option<SecretString>,

    /// The anvil executable (default: `anvil` on PATH, then the project's .tools folder).
    #[arg(long, env = "ANVIL_BIN")]
    pub(crate) anvil_bin: Option<PathBuf>,

    /// Private key (hex) of the anchoring wallet (default: anvil's first dev account).
    /// Never logged.
    #[arg(long, env = "CAS_ETH_PRIVATE_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) eth_private_key: Option<SecretString>,

    #[command(flatten)]
    pub(crate) auth: AuthArgs,

    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// Run `cas dev` until SIGTERM or Ctrl-C.
pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let shutdown = cas_telemetry::shutdown_token();
    // Configuration errors first, before anything is started.
    args.auth.settings()?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            args.data_dir.display()
        )
    })?;
    let data_dir = args
        .data_dir
        .canonicalize()
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;

    // The chain first: it is the part most likely to be missing.
    let mut anvil = None;
    let rpc_url = match &args.eth_rpc_url {
        Some(url) => url.expose_secret().to_owned(),
        None => {
            let started = Anvil::start(args.anvil_bin.as_deref(), &data_dir).await?;
            let url = started.url.clone();
            anvil = Some(started);
            url
        }
    };
    let result = run_with_chain(&args, &data_dir, &rpc_url, shutdown).await;
    if let Some(anvil) = anvil {
        anvil.stop().await;
    }
    result
}

async fn run_with_chain(
    args: &DevArgs,
    data_dir: &Path,
    rpc_url: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let chain = cas_chain::fetch_chain_id(rpc_url)
        .await
        .context("reading the chain id")?;

    let db_path = data_dir.join("cas.sqlite");
    let sqlite = SqliteStore::open(&db_path)
        .await
        .with_context(|| format!("opening the database {}", db_path.display()))?;
    let journal: Arc<dyn cas_store::TxJournal> = Arc::new(sqlite.clone());
    // Used nonces of signed requests live in the SQLite file too, so a restart forgets none.
    let nonces: Arc<dyn cas_store::NonceStore> = Arc::new(sqlite.clone());
    let store: Arc<dyn RequestStore> = Arc::new(sqlite);
    let blobs: Arc<dyn BlobStore> = Arc::new(LocalDirBlobStore::new(data_dir.join("blobs")));
    let (ingest, batches) = embedded_queues();

    // Every attempt is journaled in the SQLite file before it is sent, so a restart never
    // anchors a batch twice; the wallet lock is in-process (one process).
    let anchorer = cas_worker::TxManager::new(
        Arc::new(connect_anchorer(args, rpc_url, chain).await?),
        journal,
        cas_worker::TxManagerConfig {
            attempt_timeout: Duration::from_secs(30),
            ..cas_worker::TxManagerConfig::default()
        },
    );

    let scheduler_config = cas_scheduler::SchedulerConfig {
        batch_max: args.batch_max,
        linger: args.batch_linger,
        flush_interval: None,
        visibility: Duration::from_secs(15 * 60),
        receive_wait: Duration::from_millis(200),
        receive_interval: Duration::from_millis(100),
        sweep_age: args.batch_linger + Duration::from_secs(30),
        sweep_interval: Duration::from_secs(15),
        redispatch_after: Duration::from_secs(5 * 60),
    };
    let mut scheduler = cas_scheduler::Scheduler::new(
        Arc::clone(&store),
        Arc::clone(&ingest),
        Arc::clone(&batches),
        Arc::clone(&blobs),
        scheduler_config,
    )?;
    recover(&mut scheduler).await?;
    let worker = cas_worker::Worker::new(
        Arc::clone(&store),
        Arc::clone(&batches),
        Arc::clone(&blobs),
        Arc::new(anchorer),
        cas_worker::WorkerConfig {
            receive_wait: Duration::from_millis(500),
            retry_backoff: Duration::from_secs(5),
            reorg_check_interval: Duration::from_secs(10),
            max_receives: Some(MAX_RECEIVES),
            ..cas_worker::WorkerConfig::default()
        },
    );

    let chain_cell = ChainIdCell::default();
    let _ = chain_cell.set(chain.to_string());
    let mut settings = ApiSettings {
        group_commit: GroupCommitConfig {
            max_batch: 256,
            workers: 1,
            queue_capacity: 16_384,
        },
        auth: args.auth.settings()?,
        ..ApiSettings::default()
    };
    args.limits.apply(&mut settings);
    let (publisher, publisher_task) =
        IngestPublisher::spawn(Arc::clone(&ingest), PublisherConfig::default());
    let witnesses = ArtifactWitnesses::new(Arc::clone(&blobs), 64, 20_000);
    let state = AppState::new(
        Arc::clone(&store),
        Arc::new(witnesses),
        chain_cell,
        settings,
    )
    .with_nonce_store(nonces)
    .with_publisher(publisher);
    let app = Application::bind(args.http_addr, state)
        .await
        .with_context(|| format!("failed to listen on {}", args.http_addr))?;
    let addr = app.local_addr()?;

    let roles = [
        ("scheduler", tokio::spawn(scheduler.run(shutdown.clone()))),
        ("worker", tokio::spawn(worker.run(shutdown.clone()))),
        (
            "http server",
            tokio::spawn({
                let shutdown = shutdown.clone();
                async move {
                    app.run_until_stopped(shutdown)
                        .await
                        .map_err(anyhow::Error::from)
                }
            }),
        ),
    ];
    tracing::info!(
        addr = %addr,
        chain.id = %chain,
        rpc = %crate::config::redact_url(rpc_url),
        data_dir = %data_dir.display(),
        "cas dev ready"
    );
    print_banner(addr, chain, data_dir);

    // Run until shutdown, or until a role ends on its own (then stop the others).
    let (names, tasks): (Vec<_>, Vec<_>) = roles.into_iter().unzip();
    let (first, index, rest) = futures::future::select_all(tasks).await;
    let mut failure = role_result(names[index], first, shutdown.is_cancelled()).err();
    shutdown.cancel();
    let remaining: Vec<_> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, name)| *name)
        .collect();
    for (name, task) in remaining.into_iter().zip(rest) {
        match tokio::time::timeout(Duration::from_secs(30), task).await {
            Ok(result) => {
                if let Err(err) = role_result(name, result, true) {
                    failure.get_or_insert(err);
                }
            }
            Err(_) => tracing::warn!(role = name, "did not stop within 30s"),
        }
    }
    if tokio::time::timeout(Duration::from_secs(10), publisher_task)
        .await
        .is_err()
    {
        tracing::warn!("publisher did not flush in time; the requests are re-published at start");
    }
    match failure {
        Some(err) => Err(err),
        None => {
            tracing::info!("cas dev stopped");
            Ok(())
        }
    }
}

/// What a role's task ended with; ending without a shutdown request is a failure.
fn role_result(
    name: &str,
    ended: Result<anyhow::Result<()>, tokio::task::JoinError>,
    stopping: bool,
) -> anyhow::Result<()> {
    match ended {
        Ok(Ok(())) if stopping => Ok(()),
        Ok(Ok(())) => Err(anyhow::anyhow!("the {name} stopped unexpectedly")),
        Ok(Err(err)) => Err(err.context(format!("the {name} failed"))),
        Err(err) => Err(anyhow::anyhow!("the {name} panicked: {err}")),
    }
}

/// The wallet and contract: the dev key by default, and on a dev chain the contract is
/// placed at its official address if it is not there yet.
async fn connect_anchorer(
    args: &DevArgs,
    rpc_url: &str,
    chain: ChainId,
) -> anyhow::Result<cas_chain::EvmAnchorer> {
    let key = args
        .eth_private_key
        .clone()
        .unwrap_or_else(|| SecretString::from(ANVIL_DEV_KEY.to_owned()));
    let wallet = cas_chain::wallet_address(&key).context("invalid private key")?;
    let contract = cas_chain::ANCHOR_CONTRACT_ADDRESS;
    if cas_chain::contract::is_dev_chain(chain) {
        let installed = cas_chain::install_contract_for_dev(rpc_url, contract, wallet)
            .await
            .context("placing the anchor contract on the dev chain")?;
        tracing::info!(?installed, contract = %contract, owner = %wallet, "anchor contract checked");
    }
    let mut config = cas_chain::AnchorerConfig::new(rpc_url.to_owned(), key);
    config.contract = contract;
    config.confirmations = if cas_chain::contract::is_dev_chain(chain) {
        1
    } else {
        4
    };
    config.poll_interval = Duration::from_millis(250);
    cas_chain::EvmAnchorer::connect(config)
        .await
        .context("connecting the anchoring wallet")
}

/// Receives after which a message moves to its dead-letter queue, as production's queues
/// are created (`CAS_QUEUE_MAX_RECEIVES`).
const MAX_RECEIVES: u32 = 5;

/// The ingest and batch queues, in memory, each with a dead-letter queue like production's:
/// a message no one manages to process stops being redelivered after [`MAX_RECEIVES`], and
/// what it stood for is recovered as in production (the sweeper re-publishes its requests,
/// the re-dispatch loop announces its batch again).
fn embedded_queues() -> (Arc<dyn Queue>, Arc<dyn Queue>) {
    let ingest = MemoryQueue::with_dead_letter(MAX_RECEIVES, MemoryQueue::new());
    let batches = MemoryQueue::with_dead_letter(MAX_RECEIVES, MemoryQueue::new());
    (Arc::new(ingest), Arc::new(batches))
}

/// Feed the in-memory queues from the durable store: after a restart, requests accepted
/// before it and batches closed before it continue where they were.
async fn recover(scheduler: &mut cas_scheduler::Scheduler) -> anyhow::Result<()> {
    let (requests, batches) = scheduler
        .resume_all()
        .await
        .context("resuming the work accepted before the restart")?;
    if requests > 0 || batches > 0 {
        tracing::info!(
            requests,
            batches,
            "resumed work accepted before the restart"
        );
    }
    Ok(())
}

fn print_banner(addr: SocketAddr, chain: ChainId, data_dir: &Path) {
    let base = format!("http://{addr}");
    println!(
        "
  Ceramic anchor service (cas dev) listening on {base}
  chain {chain}, data in {data}

  js-ceramic: \"anchor\": {{\"anchor-service-url\": \"{base}\"}} in the daemon config
  ceramic-one: --remote-anchor-service-url {base}

  try:
    curl -s {base}/api/v0/service-info/supported_chains
    curl -s -X POST {base}/api/v0/requests -H 'content-type: application/json' \\
      -d '{{\"streamId\":\"k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b\",
           \"cid\":\"bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54\",
           \"timestamp\":\"2026-11-22T00:00:00.000Z\"}}'
    curl -s {base}/api/v0/requests/bafyreia776z4jdg5zgycivcpr3q6lcu6llfowkrljkmq3bex2k5hkzat54
",
        data = data_dir.display()
    );
}

/// An anvil started by `cas dev`, keeping its chain state in the data directory.
struct Anvil {
    child: Child,
    url: String,
}

impl Anvil {
    async fn start(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<Self> {
        let bin = find_anvil(explicit)?;
        let port = free_port().context("finding a free port for anvil")?;
        let log_path = data_dir.join("anvil.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(&bin);
        command
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(port.to_string())
            .arg("--chain-id")
            .arg(DEV_CHAIN_ID.to_string())
            // Load the chain from, and save it to, the data directory, so anchored requests
            // stay verifiable across restarts.
            .arg("--state")
            .arg(data_dir.join("anvil-state.json"))
            .arg("--state-interval")
            .arg("5")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        // SAFETY: prctl only changes this child's own death signal; it allocates nothing
        // and is async-signal-safe.
        unsafe {
            command.pre_exec(|| {
                // If `cas dev` dies, anvil gets SIGTERM (and saves its state) instead of
                // outliving it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting anvil ({})", bin.display()))?;
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
                anyhow::bail!(
                    "anvil ({}) exited at start with {status}; its log ({}):\n{}",
                    bin.display(),
                    log_path.display(),
                    tail.lines()
                        .rev()
                        .take(20)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            match cas_chain::fetch_chain_id(&url).await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => {
                    anyhow::bail!("anvil did not answer on {url} within 30s: {err}");
                }
            }
        }
        tracing::info!(url = %url, bin = %bin.display(), chain.id = DEV_CHAIN_ID, "anvil started");
        Ok(Self { child, url })
    }

    /// Ask anvil to stop (it saves its state on SIGTERM), then make sure it is gone.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: sending a signal to our own child process.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
            tracing::warn!("anvil did not stop within 10s; killing it");
        }
        let _ = self.child.kill().await;
    }
}

/// `--anvil-bin`/`ANVIL_BIN`, else `anvil` on PATH, else the project's tools folder (looked
/// up from the working directory and from the executable's location).
fn find_anvil(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut roots = vec![std::env::current_dir().unwrap_or_default()];
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/cas → the project root.
        roots.extend(exe.ancestors().nth(3).map(Path::to_owned));
    }
    find_anvil_in(explicit, std::env::var_os("PATH"), &roots)
}

fn find_anvil_in(
    explicit: Option<&Path>,
    path_var: Option<std::ffi::OsString>,
    roots: &[PathBuf],
) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        anyhow::ensure!(
            is_executable(path),
            "ANVIL_BIN / --anvil-bin points at {}, which is not an executable file",
            path.display()
        );
        return Ok(path.to_owned());
    }
    let on_path = path_var
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("anvil"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let local = roots.iter().map(|root| root.join(ANVIL_LOCAL_PATH));
    if let Some(found) = on_path.into_iter().chain(local).find(|p| is_executable(p)) {
        return Ok(found);
    }
    anyhow::bail!(
        "anvil (a local Ethereum node) was not found on PATH or in {ANVIL_LOCAL_PATH}.\n\
         Get it with one of:\n  \
         scripts/dev   (installs it into .tools/ and starts cas dev)\n  \
         npm install --prefix .tools/anvil {ANVIL_NPM_PACKAGE}\n  \
         curl -L https://foundry.paradigm.xyz | bash && foundryup\n\
         or set ANVIL_BIN to its path, or pass --eth-rpc-url to use a running node."
    )
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A poison message (one no one can process) is redelivered five times, as in
    /// production, then stops coming back.
    #[tokio::test]
    async fn dev_queues_dead_letter_poison_messages_like_production() {
        let (ingest, batches) = embedded_queues();
        for queue in [ingest, batches] {
            queue.send("poison".into()).await.unwrap();
            let mut deliveries = 0;
            loop {
                let got = queue
                    .receive(1, Duration::ZERO, Duration::from_millis(50))
                    .await
                    .unwrap();
                if got.is_empty() {
                    break;
                }
                deliveries += 1;
                assert!(deliveries <= MAX_RECEIVES, "redelivered forever");
            }
            assert_eq!(deliveries, MAX_RECEIVES);
            assert_eq!(queue.approximate_depth().await.unwrap(), 0);
        }
    }

    #[test]
    fn missing_anvil_is_explained() {
        let empty = std::env::temp_dir().join(format!("cas-no-anvil-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = find_anvil_in(
            None,
            Some(empty.clone().into_os_string()),
            std::slice::from_ref(&empty),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("was not found"), "{err}");
        assert!(err.contains(ANVIL_NPM_PACKAGE), "{err}");
        assert!(err.contains("ANVIL_BIN"), "{err}");
        assert!(err.contains("--eth-rpc-url"), "{err}");
    }

    #[test]
    fn anvil_is_found_on_path_and_in_the_tools_folder() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("cas-anvil-root-{}", std::process::id()));
        let bin = root.join(ANVIL_LOCAL_PATH);
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_anvil_in(None, None, std::slice::from_ref(&root)).unwrap(),
            bin
        );
        let dir = bin.parent().unwrap().as_os_str().to_owned();
        assert_eq!(find_anvil_in(None, Some(dir), &[]).unwrap(), bin);
        // A file that is not executable does not count.
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(find_anvil_in(None, None, std::slice::from_ref(&root)).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
