//! [`Cluster`]: the production roles as real processes on parts of their own, load from
//! `loadgen`, and the checks of the service's promise ([`Verdict`]).
//!
//! Each cluster has its own PostgreSQL server, its own anvil (behind a [`FaultProxy`] for
//! JSON-RPC faults), and its own queues and bucket on the shared SQS/S3 emulator (behind a
//! [`FaultProxy`] for outages and duplicated messages). The roles run the `cas` binary built
//! with fault points (`cas-failpoints`), with short timings so that a scenario takes seconds:
//! batches close 1 s after their first request, the sweeper re-publishes after 4 s,
//! transactions are replaced after 6 s, and a message a killed role held comes back after
//! 15 to 20 s.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::{anvil::Anvil, pg::PgCluster, proxy::FaultProxy, role::Role};

/// The roles of a cluster.
pub const ROLES: [&str; 3] = ["api", "scheduler", "worker"];

/// How long a request may stay PENDING after the load in these scenarios' timings:
/// a message held by a killed role returns after at most 20 s, a transaction is replaced
/// after 6 s, and the sweeper re-publishes after 4 s.
pub const SETTLE: Duration = Duration::from_secs(150);

/// Settings of a cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Confirmations the worker waits for (`CAS_ETH_CONFIRMATIONS`).
    pub confirmations: u64,
    /// Extra environment for every role.
    pub env: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            confirmations: 1,
            env: Vec::new(),
        }
    }
}

/// A whole service; every part stops when dropped.
pub struct Cluster {
    /// Its PostgreSQL server.
    pub pg: PgCluster,
    /// The `cas` database's URL.
    pub db_url: String,
    /// Its chain.
    pub anvil: Anvil,
    /// The proxy the roles reach the chain through.
    pub rpc: FaultProxy,
    /// The proxy the roles reach SQS and S3 through.
    pub aws: FaultProxy,
    /// The roles, by name.
    pub roles: BTreeMap<&'static str, Role>,
    /// The API's base URL.
    pub api_url: String,
    db: sqlx::PgPool,
    prefix: String,
    bucket: String,
    key: String,
    dir: PathBuf,
    bin: PathBuf,
    ports: HashMap<&'static str, u16>,
    options: Options,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("api_url", &self.api_url)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A `loadgen ingest` run in the background.
#[derive(Debug)]
pub struct Load {
    child: tokio::process::Child,
    accepted: PathBuf,
}

impl Load {
    /// Wait for it to end; the CIDs it got accepted (201 or 202).
    pub async fn finish(mut self) -> anyhow::Result<Vec<String>> {
        let status = tokio::time::timeout(Duration::from_secs(600), self.child.wait())
            .await
            .context("loadgen did not finish in 10 minutes")??;
        let text = std::fs::read_to_string(&self.accepted)
            .with_context(|| format!("loadgen wrote no accepted list ({status})"))?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}

/// Start `loadgen ingest` against the service at `api_url`: `requests` requests, 8 at a
/// time, each retried (as nodes do) while the service cannot take it; `args` are added. The
/// list of accepted CIDs is written under `dir`.
pub fn load(
    api_url: &str,
    dir: &std::path::Path,
    requests: u64,
    args: &[&str],
) -> anyhow::Result<Load> {
    let loadgen = crate::binary("CAS_LOADGEN_BIN", "loadgen");
    let accepted = dir.join(format!("{}.accepted", crate::unique("load")));
    let child = tokio::process::Command::new(loadgen)
        .args(["ingest", "--url", api_url])
        .args(["--requests", &requests.to_string()])
        .args(["--concurrency", "8", "--retries", "60"])
        .arg("--accepted-out")
        .arg(&accepted)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting loadgen")?;
    Ok(Load { child, accepted })
}

impl Cluster {
    /// Start every part and the three roles, and wait until they are ready.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let bin = crate::binary("CAS_FAILPOINTS_BIN", "cas-failpoints");
        let dir = std::env::temp_dir().join(crate::unique("cas-cluster"));
        std::fs::create_dir_all(&dir)?;
        let pg = tokio::task::spawn_blocking(PgCluster::start).await??;
        let admin = sqlx::PgPool::connect(&pg.url("postgres")).await?;
        sqlx::query("CREATE DATABASE cas").execute(&admin).await?;
        admin.close().await;
        let db_url = pg.url("cas");

        let anvil = Anvil::start(1337).await?;
        let key = cas_chain::dev::generate_key();
        let wallet = cas_chain::wallet_address(&key)?;
        cas_chain::dev::fund_for_dev(&anvil.url, wallet).await?;
        cas_chain::install_contract_for_dev(&anvil.url, cas_chain::ANCHOR_CONTRACT_ADDRESS, wallet)
            .await?;
        let rpc = FaultProxy::start(&anvil.url).await?;
        let aws = FaultProxy::start(&crate::required_env("AWS_ENDPOINT_URL")).await?;

        let status = tokio::process::Command::new(&bin)
            .arg("migrate")
            .env("DATABASE_URL", &db_url)
            .env_remove("FAILPOINTS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await?;
        if !status.success() {
            bail!("cas migrate failed: {status}");
        }
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await?;
        let ports = ROLES.iter().map(|r| (*r, crate::free_port())).collect();
        let run = crate::unique("f");
        let mut cluster = Self {
            pg,
            db_url,
            anvil,
            rpc,
            aws,
            roles: BTreeMap::new(),
            api_url: String::new(),
            db,
            prefix: format!("{run}-"),
            bucket: run,
            key: secrecy::ExposeSecret::expose_secret(&key).to_owned(),
            dir,
            bin,
            ports,
            options,
        };
        cluster.api_url = format!("http://127.0.0.1:{}", cluster.ports["api"]);
        for role in ROLES {
            cluster.start_role(role, None).await?;
        }
        Ok(cluster)
    }

    /// The environment of a role.
    pub fn env(&self, role: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", self.db_url.clone()),
            ("AWS_ENDPOINT_URL", self.aws.url.clone()),
            ("ETH_RPC_URL", self.rpc.url.clone()),
            ("CAS_SQS_QUEUE_PREFIX", self.prefix.clone()),
            ("CAS_INGEST_QUEUES", "2".into()),
            ("CAS_CREATE_QUEUES", "true".into()),
            ("CAS_S3_BUCKET", self.bucket.clone()),
            ("CAS_CREATE_BUCKET", "true".into()),
            // A client of the emulator gives up fast (the proxy can be down for a while).
            ("AWS_MAX_ATTEMPTS", "2".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let port = self.ports[role].to_string();
        let own: Vec<(&str, String)> = match role {
            "api" => vec![("CAS_HTTP_ADDR", format!("127.0.0.1:{port}"))],
            "scheduler" => vec![
                ("CAS_METRICS_ADDR", format!("127.0.0.1:{port}")),
                ("CAS_BATCH_LINGER", "1s".into()),
                ("CAS_SWEEP_AGE", "4s".into()),
                ("CAS_SWEEP_INTERVAL", "1s".into()),
                ("CAS_REDISPATCH_AFTER", "30s".into()),
                ("CAS_INGEST_VISIBILITY", "20s".into()),
            ],
            _ => vec![
                ("CAS_METRICS_ADDR", format!("127.0.0.1:{port}")),
                ("CAS_ETH_PRIVATE_KEY", self.key.clone()),
                ("CAS_ETH_TX_TIMEOUT", "6s".into()),
                (
                    "CAS_ETH_CONFIRMATIONS",
                    self.options.confirmations.to_string(),
                ),
                ("CAS_BATCH_VISIBILITY", "15s".into()),
                ("CAS_REORG_CHECK_INTERVAL", "2s".into()),
            ],
        };
        env.extend(own.into_iter().map(|(k, v)| (k.to_owned(), v)));
        for (k, v) in &self.options.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// Start (or restart) a role, with `FAILPOINTS` if given; wait until it is ready.
    pub async fn start_role(
        &mut self,
        role: &'static str,
        failpoints: Option<&str>,
    ) -> anyhow::Result<()> {
        self.roles.remove(role);
        let mut env = self.env(role);
        if let Some(points) = failpoints {
            env.push(("FAILPOINTS".into(), points.to_owned()));
        }
        let ready = match role {
            "api" => format!("{}/api/v0/healthcheck", self.api_url),
            _ => format!("http://127.0.0.1:{}/metrics", self.ports[role]),
        };
        let mut process = Role::spawn(
            &self.bin,
            role,
            &[role],
            &env,
            self.dir.join(format!("{role}.log")),
            ready,
        )?;
        process.wait_ready(Duration::from_secs(60)).await?;
        self.roles.insert(role, process);
        Ok(())
    }

    /// A running role.
    pub fn role(&mut self, role: &str) -> &mut Role {
        self.roles.get_mut(role).expect("a role of this cluster")
    }

    /// Start `loadgen ingest` against the API; see [`load`].
    pub fn load(&self, requests: u64, args: &[&str]) -> anyhow::Result<Load> {
        load(&self.api_url, &self.dir, requests, args)
    }

    /// Wait until no request is PENDING (all COMPLETED or REPLACED), at most `timeout`.
    pub async fn wait_settled(&self, timeout: Duration) -> anyhow::Result<()> {
        let settled = crate::wait_until(timeout, Duration::from_millis(250), || async {
            self.pending_requests().await.is_ok_and(|p| p.is_empty())
        })
        .await;
        if !settled {
            let pending = self.pending_requests().await.unwrap_or_default();
            bail!(
                "{} requests still PENDING after {timeout:?} (first: {:?});\n{}",
                pending.len(),
                pending.first(),
                self.logs()
            );
        }
        Ok(())
    }

    /// CIDs of requests that are PENDING: neither REPLACED nor in an anchored batch.
    async fn pending_requests(&self) -> anyhow::Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT r.cid FROM request r \
             WHERE r.status = 0 AND NOT EXISTS ( \
                 SELECT 1 FROM batch_member m JOIN batch b ON b.id = m.batch_id \
                 WHERE m.request_id = r.id AND b.anchored_at IS NOT NULL)",
        )
        .fetch_all(&self.db)
        .await?)
    }

    /// The tail of every role's log.
    pub fn logs(&self) -> String {
        self.roles
            .values()
            .map(|r| format!("--- {} ---\n{}", r.name, r.log_tail(25)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Check the promise for the requests in `accepted` (and every request stored).
    pub async fn verdict(&self, accepted: &[String]) -> anyhow::Result<Verdict> {
        let mut verdict = Verdict {
            accepted: accepted.len(),
            ..Verdict::default()
        };
        // L: every accepted request is COMPLETED or REPLACED; so is every request stored.
        let rows: Vec<(String, i16, Option<String>)> = sqlx::query_as(
            "SELECT r.cid, r.status, b.root_cid FROM request r \
             LEFT JOIN batch_member m ON m.request_id = r.id \
             LEFT JOIN batch b ON b.id = m.batch_id AND b.anchored_at IS NOT NULL",
        )
        .fetch_all(&self.db)
        .await?;
        let stored: HashMap<&str, (i16, Option<&str>)> = rows
            .iter()
            .map(|(cid, status, root)| (cid.as_str(), (*status, root.as_deref())))
            .collect();
        let mut completed = Vec::new();
        for cid in accepted {
            match stored.get(cid.as_str()) {
                Some((_, Some(_))) => completed.push(cid.clone()),
                Some((5, None)) => verdict.replaced += 1,
                _ => verdict.lost.push(cid.clone()),
            }
        }
        verdict.completed = completed.len();
        for (cid, (status, root)) in &stored {
            if *status == 0 && root.is_none() {
                verdict.stuck.push(format!("request {cid} is PENDING"));
            }
        }
        // S: nothing left open.
        let open: Vec<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT tx_hash, nonce FROM eth_tx_attempt WHERE state IN ('signed', 'broadcast')",
        )
        .fetch_all(&self.db)
        .await?;
        for (hash, nonce) in open {
            verdict.stuck.push(format!(
                "transaction 0x{} at nonce {nonce} is still open",
                hex(&hash)
            ));
        }
        let unfinished: Vec<(uuid::Uuid,)> = sqlx::query_as(
            "SELECT id FROM batch WHERE anchored_at IS NULL \
               AND (failed_at IS NULL OR replaced_by IS NULL)",
        )
        .fetch_all(&self.db)
        .await?;
        for (id,) in unfinished {
            verdict
                .stuck
                .push(format!("batch {id} is neither anchored nor replaced"));
        }
        // D: no root on chain twice; every anchored batch's root on chain once.
        let anchors = self.anvil.anchors().await?;
        for (root, txs) in &anchors {
            if txs.len() > 1 {
                verdict
                    .double
                    .push(format!("root {root} anchored by {txs:?}"));
            }
        }
        let batches: Vec<(uuid::Uuid, String, String)> =
            sqlx::query_as("SELECT id, root_cid, tx_hash FROM batch WHERE anchored_at IS NOT NULL")
                .fetch_all(&self.db)
                .await?;
        verdict.batches = batches.len();
        verdict.transactions = anchors.values().map(Vec::len).sum();
        for (id, root, tx) in &batches {
            let digest = cas_merkle::Cid::try_from(root.as_str())
                .map(|c| hex(c.hash().digest()))
                .unwrap_or_default();
            match anchors.get(&digest) {
                Some(txs) if txs.iter().any(|t| t.eq_ignore_ascii_case(tx)) => {}
                other => verdict.invalid.push(format!(
                    "batch {id}: its transaction {tx} is not on the chain (chain has {other:?})"
                )),
            }
        }
        // W: every completed request's witness verifies and points at a transaction of the
        // canonical chain that carries its root.
        let mut witnesses = Witnesses::new(&self.api_url, &self.anvil.url)?;
        for cid in &completed {
            if let Err(problem) = witnesses.check(cid).await {
                verdict.invalid.push(format!("{cid}: {problem}"));
            }
        }
        verdict.faults = self.rpc.injected();
        for (kind, n) in self.aws.injected() {
            *verdict.faults.entry(kind).or_default() += n;
        }
        Ok(verdict)
    }

    /// The batch files' keys of recorded batches not anchored yet.
    pub async fn unanchored_batches(&self) -> anyhow::Result<Vec<uuid::Uuid>> {
        Ok(sqlx::query_scalar(
            "SELECT id FROM batch WHERE anchored_at IS NULL AND failed_at IS NULL ORDER BY created_at",
        )
        .fetch_all(&self.db)
        .await?)
    }

    /// Overwrite (with `Some(bytes)`) or delete (`None`) the batch file of a batch.
    pub async fn tamper_batch_file(
        &self,
        batch: uuid::Uuid,
        bytes: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        let key = format!("cas/{}", cas_core::pipeline::batch_file_key(batch));
        match bytes {
            Some(bytes) => {
                s3.put_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .body(bytes.to_vec().into())
                    .send()
                    .await?;
            }
            None => {
                s3.delete_object()
                    .bucket(&self.bucket)
                    .key(&key)
                    .send()
                    .await?;
            }
        }
        Ok(())
    }

    /// Run a query on the service's database (for checks a scenario adds).
    pub fn db(&self) -> &sqlx::PgPool {
        &self.db
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.roles.clear();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("cluster logs kept in {}", self.dir.display());
        }
    }
}

/// Checks of witnesses: the API's answer for a CID carries a witness that verifies, proves
/// that CID, and points at a successful transaction of the canonical chain that carries the
/// witness's root.
#[derive(Debug)]
pub struct Witnesses {
    client: reqwest::Client,
    api_url: String,
    rpc_url: String,
    transactions: HashMap<String, Result<(), String>>,
}

impl Witnesses {
    /// Checks against the API at `api_url` and the node at `rpc_url`.
    pub fn new(api_url: &str, rpc_url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder().no_proxy().build()?,
            api_url: api_url.to_owned(),
            rpc_url: rpc_url.to_owned(),
            transactions: HashMap::new(),
        })
    }

    /// The request's status as the API answers it (`COMPLETED`, `REPLACED`, ...).
    pub async fn status(&self, cid: &str) -> Result<Value, String> {
        self.client
            .get(format!("{}/api/v0/requests/{cid}", self.api_url))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    /// Check one COMPLETED request's witness.
    pub async fn check(&mut self, cid: &str) -> Result<(), String> {
        let answer = self.status(cid).await?;
        if answer["status"] != "COMPLETED" {
            return Err(format!("answered {answer}"));
        }
        let car = answer["witnessCar"].as_str().ok_or("no witnessCar")?;
        let car = cas_merkle::decode_base64(car).map_err(|e| e.to_string())?;
        let verified = cas_merkle::verify_witness_car(&car)
            .await
            .map_err(|e| format!("witness does not verify: {e}"))?;
        if verified.commit.prev.to_string() != cid {
            return Err("the witness proves another CID".into());
        }
        let tx = format!("0x{}", hex(verified.proof.tx_hash.hash().digest()));
        let root = hex(verified.proof.root.hash().digest());
        if let Some(known) = self.transactions.get(&tx) {
            return known.clone();
        }
        let result = self.check_transaction(&tx, &root).await;
        self.transactions.insert(tx, result.clone());
        result
    }

    /// The transaction is in the canonical chain, succeeded, and carries `root`.
    async fn check_transaction(&self, tx: &str, root: &str) -> Result<(), String> {
        let call = |method: &'static str, params: Value| async move {
            crate::anvil::rpc(&self.rpc_url, method, params)
                .await
                .map_err(|e| e.to_string())
        };
        let found = call("eth_getTransactionByHash", json!([tx])).await?;
        if found.is_null() {
            return Err(format!("transaction {tx} is not on the chain"));
        }
        let input = found["input"].as_str().unwrap_or_default().to_lowercase();
        if input != format!("0x97ad09eb{root}") {
            return Err(format!("transaction {tx} anchors another root"));
        }
        let receipt = call("eth_getTransactionReceipt", json!([tx])).await?;
        if receipt["status"] != "0x1" {
            return Err(format!(
                "transaction {tx} is not mined or reverted: {receipt}"
            ));
        }
        let block = call(
            "eth_getBlockByNumber",
            json!([receipt["blockNumber"], false]),
        )
        .await?;
        if block["hash"] != receipt["blockHash"] {
            return Err(format!(
                "transaction {tx} is in a block off the canonical chain"
            ));
        }
        Ok(())
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the checks found. The promise is kept when `lost`, `double`, `stuck` and `invalid`
/// are all empty.
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    /// Requests accepted (201 or 202).
    pub accepted: usize,
    /// Of those, COMPLETED.
    pub completed: usize,
    /// Of those, REPLACED.
    pub replaced: usize,
    /// Accepted requests neither COMPLETED nor REPLACED (**L**).
    pub lost: Vec<String>,
    /// Roots anchored by more than one transaction (**D**).
    pub double: Vec<String>,
    /// Open transactions, unfinished batches, PENDING requests (**S**).
    pub stuck: Vec<String>,
    /// Witnesses that do not verify on the canonical chain, anchored batches whose
    /// transaction is not on it (**W**).
    pub invalid: Vec<String>,
    /// Anchored batches.
    pub batches: usize,
    /// Anchor transactions on the chain.
    pub transactions: usize,
    /// Faults the proxies injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
}

impl Verdict {
    /// Panic with the details unless the promise was kept.
    pub fn assert_kept(&self, scenario: &str) {
        let broken = !(self.lost.is_empty()
            && self.double.is_empty()
            && self.stuck.is_empty()
            && self.invalid.is_empty());
        assert!(!broken, "{scenario}: the promise was broken: {self:#?}");
        assert!(self.accepted > 0, "{scenario}: nothing was accepted");
    }

    /// One JSON object: the counts.
    pub fn summary(&self) -> Value {
        json!({
            "accepted": self.accepted,
            "completed": self.completed,
            "replaced": self.replaced,
            "lost": self.lost.len(),
            "double_anchored": self.double.len(),
            "stuck": self.stuck.len(),
            "invalid_witnesses": self.invalid.len(),
            "batches": self.batches,
            "transactions": self.transactions,
            "faults": self.faults,
        })
    }
}
