//! Command-line and environment configuration of every role.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};

/// Anchor service for Ceramic nodes: batches anchor requests into Merkle trees, anchors each
/// root on Ethereum in one transaction, and serves witness CARs.
#[derive(Debug, Parser)]
#[command(name = "cas", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Log format: `text` or `json`. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "CAS_LOG_FORMAT", default_value = "text", global = true)]
    pub(crate) log_format: cas_telemetry::LogFormat,

    /// Also export tracing spans to this OpenTelemetry collector, over OTLP/HTTP (protobuf,
    /// POST <endpoint>/v1/traces), e.g. http://otel-collector:4318. The service name is
    /// `cas-<role>`. Off when unset.
    #[arg(long, env = "CAS_OTLP_ENDPOINT", global = true)]
    pub(crate) otlp_endpoint: Option<url::Url>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve the HTTP API (POST/GET requests, supported chains, healthcheck).
    Api(ApiArgs),
    /// Apply database migrations, then exit.
    Migrate(MigrateArgs),
    /// Batch accepted requests: consume the ingest queues, close batches, hand them to workers.
    Scheduler(SchedulerArgs),
    /// Anchor batches on Ethereum and write the tree artifacts witnesses are built from.
    Worker(WorkerArgs),
    /// Run the whole service in one process for local development: SQLite, in-memory
    /// queues, files for batches and artifacts, and a local anvil chain (started here).
    Dev(crate::dev::DevArgs),
}

/// Queues and blob storage shared by the roles. AWS credentials, region and endpoint come
/// from the AWS SDK's own variables (AWS_REGION, AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ...).
#[derive(Debug, Args)]
pub(crate) struct PipelineArgs {
    /// Prefix of the SQS queue names: `<prefix>ingest-0` ... `<prefix>ingest-<N-1>` and
    /// `<prefix>batch`.
    #[arg(
        long = "sqs-queue-prefix",
        env = "CAS_SQS_QUEUE_PREFIX",
        default_value = "cas-"
    )]
    pub(crate) queue_prefix: String,

    /// Number of ingest queues (requests are spread round-robin; each SQS queue allows about
    /// 120,000 messages in flight).
    #[arg(long, env = "CAS_INGEST_QUEUES", default_value_t = 10)]
    pub(crate) ingest_queues: usize,

    /// Create the queues (with dead-letter queues) if they are missing. For development;
    /// in production Terraform creates them.
    #[arg(long, env = "CAS_CREATE_QUEUES", default_value_t = false)]
    pub(crate) create_queues: bool,

    /// Receives before a message moves to its dead-letter queue: used when creating
    /// queues, and by the worker, which announces a batch afresh before its message would
    /// get there for a passing failure. Set it to the queues' maxReceiveCount.
    #[arg(long, env = "CAS_QUEUE_MAX_RECEIVES", default_value_t = 5)]
    pub(crate) max_receives: u32,

    /// S3 bucket for batch files and tree artifacts.
    #[arg(long, env = "CAS_S3_BUCKET")]
    pub(crate) s3_bucket: Option<String>,

    /// Key prefix inside the bucket.
    #[arg(long, env = "CAS_S3_PREFIX", default_value = "cas")]
    pub(crate) s3_prefix: String,

    /// Create the bucket if it is missing (development).
    #[arg(long, env = "CAS_CREATE_BUCKET", default_value_t = false)]
    pub(crate) create_bucket: bool,
}

/// Where a role without the HTTP API serves its Prometheus metrics.
#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// Serve Prometheus metrics at http://<this address>/metrics (e.g. 0.0.0.0:9464).
    #[arg(long, env = "CAS_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,

    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,

    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,

    /// Most requests in one batch (one Merkle tree, one transaction).
    #[arg(long, env = "CAS_BATCH_MAX", default_value_t = 1 << 20)]
    pub(crate) batch_max: usize,

    /// Longest a request waits for its batch to close.
    #[arg(long, env = "CAS_BATCH_LINGER", default_value = "60s", value_parser = parse_duration)]
    pub(crate) batch_linger: Duration,

    /// Also close batches whenever wall-clock time crosses a multiple of this (e.g. 1h = the
    /// top of every hour).
    #[arg(long, env = "CAS_BATCH_FLUSH_INTERVAL", value_parser = parse_duration)]
    pub(crate) batch_flush_interval: Option<Duration>,

    /// How long received ingest messages stay hidden (extended while they wait).
    #[arg(long, env = "CAS_INGEST_VISIBILITY", default_value = "15m", value_parser = parse_duration)]
    pub(crate) ingest_visibility: Duration,

    /// Requests not in a batch this long after they were accepted are re-published (a lost
    /// publish, a dead-lettered message). Must exceed the linger. Default: the linger + 60 s,
    /// so a request whose publish was lost waits at most about the linger + 90 s more.
    #[arg(long, env = "CAS_SWEEP_AGE", value_parser = parse_duration)]
    pub(crate) sweep_age: Option<Duration>,

    /// How often the sweeper and the re-dispatch of unannounced, stale and failed batches
    /// run.
    #[arg(long, env = "CAS_SWEEP_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub(crate) sweep_interval: Duration,

    /// Batches recorded but not anchored after this long are announced again.
    #[arg(long, env = "CAS_REDISPATCH_AFTER", default_value = "30m", value_parser = parse_duration)]
    pub(crate) redispatch_after: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,

    #[command(flatten)]
    pub(crate) metrics: MetricsArgs,

    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,

    /// Ethereum JSON-RPC URL of the chain to anchor on.
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) eth_rpc_url: SecretString,

    /// Private key (hex) of the anchoring wallet. Never logged.
    #[arg(long, env = "CAS_ETH_PRIVATE_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) eth_private_key: Option<SecretString>,

    /// File holding the private key (instead of CAS_ETH_PRIVATE_KEY).
    #[arg(long, env = "CAS_ETH_PRIVATE_KEY_FILE")]
    pub(crate) eth_private_key_file: Option<std::path::PathBuf>,

    /// AWS KMS key (id, ARN or alias; ECC_SECG_P256K1, SIGN_VERIFY) that signs instead of a
    /// private key. AWS credentials, region and endpoint come from the AWS SDK's variables.
    #[arg(
        long,
        env = "CAS_ETH_KMS_KEY_ID",
        conflicts_with_all = ["eth_private_key", "eth_private_key_file"]
    )]
    pub(crate) eth_kms_key_id: Option<String>,

    /// Address of the anchor contract.
    #[arg(
        long,
        env = "CAS_ANCHOR_CONTRACT",
        default_value = "0x231055A0852D67C7107Ad0d0DFeab60278fE6AdC"
    )]
    pub(crate) anchor_contract: String,

    /// Chain id the RPC must serve (checked at start), e.g. 1 for mainnet.
    #[arg(long, env = "CAS_CHAIN_ID")]
    pub(crate) chain_id: Option<u64>,

    /// Confirmations to wait for (default: 1 on local chains 1337/31337, 4 elsewhere).
    #[arg(long, env = "CAS_ETH_CONFIRMATIONS")]
    pub(crate) eth_confirmations: Option<u64>,

    /// Time limit for one anchor transaction attempt: a transaction not mined by then is
    /// replaced at the same nonce with both fees raised by at least 12.5 %. Also bounds the
    /// wait for confirmations, so it must exceed confirmations × block time.
    #[arg(long, env = "CAS_ETH_TX_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub(crate) eth_tx_timeout: Duration,

    /// Attempts per transaction (the first send plus replacements) before the batch is
    /// retried later; the pending transaction stays journaled and is resumed.
    #[arg(long, env = "CAS_ETH_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) eth_max_attempts: u32,

    /// Highest maxFeePerGas any attempt may offer, in gwei (decimals allowed, e.g. 0.5).
    #[arg(long, env = "CAS_ETH_MAX_FEE_GWEI", default_value = "200", value_parser = parse_gwei)]
    pub(crate) eth_max_fee_gwei: u128,

    /// Longest wait for the wallet (nonce) lock that serializes the cluster's transactions.
    #[arg(long, env = "CAS_NONCE_LOCK_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    pub(crate) nonce_lock_timeout: Duration,

    /// Warn when the wallet holds less than this many wei (default 0.1 ETH).
    #[arg(
        long,
        env = "CAS_LOW_BALANCE_WEI",
        default_value_t = 100_000_000_000_000_000
    )]
    pub(crate) low_balance_wei: u128,

    /// On a local dev chain (1337/31337) only: place the anchor contract at its address,
    /// owned by this wallet, if it is not there yet.
    #[arg(long, env = "CAS_INSTALL_DEV_CONTRACT", default_value_t = false)]
    pub(crate) install_dev_contract: bool,

    /// How long a batch message stays hidden (extended while the batch is worked on).
    #[arg(long, env = "CAS_BATCH_VISIBILITY", default_value = "90s", value_parser = parse_duration)]
    pub(crate) batch_visibility: Duration,

    /// Threads for building Merkle trees (0 = all cores).
    #[arg(long, env = "CAS_BUILD_THREADS", default_value_t = 0)]
    pub(crate) build_threads: usize,

    /// How often to look for recorded anchors the chain lost (a reorganisation deeper than
    /// the confirmations); their batches are anchored again with the same transaction.
    #[arg(long, env = "CAS_REORG_CHECK_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    pub(crate) reorg_check_interval: Duration,
}

/// PostgreSQL connection settings.
#[derive(Debug, Args)]
pub(crate) struct DatabaseArgs {
    /// PostgreSQL URL, e.g. postgres://user:password@host:5432/cas. Never logged.
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) url: SecretString,

    /// Most connections in the pool.
    #[arg(
        long = "db-max-connections",
        env = "CAS_DB_MAX_CONNECTIONS",
        default_value_t = 32
    )]
    pub(crate) max_connections: u32,

    /// Longest wait for a pooled connection before a request is answered 503 (e.g. 5s, 500ms).
    #[arg(long = "db-acquire-timeout", env = "CAS_DB_ACQUIRE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub(crate) acquire_timeout: Duration,
}

impl DatabaseArgs {
    /// The URL with any password replaced, for logs.
    pub(crate) fn redacted_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    #[command(flatten)]
    pub(crate) database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ApiArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "CAS_HTTP_ADDR", default_value = "0.0.0.0:8081")]
    pub(crate) http_addr: SocketAddr,

    #[command(flatten)]
    pub(crate) database: DatabaseArgs,

    /// Ethereum JSON-RPC URL; the API reports its chain id in supported_chains.
    #[arg(long, env = "ETH_RPC_URL", hide_env_values = true, value_parser = parse_secret)]
    pub(crate) eth_rpc_url: Option<SecretString>,

    /// Largest JSON request body in bytes (real requests are about 250 bytes).
    #[arg(long, env = "CAS_JSON_BODY_LIMIT", default_value_t = 100 * 1024)]
    pub(crate) json_body_limit: usize,

    /// Largest CAR request body in bytes.
    #[arg(long, env = "CAS_CAR_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub(crate) car_body_limit: usize,

    /// Longest time one HTTP request may take before it is answered 503.
    #[arg(long, env = "CAS_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) request_timeout: Duration,

    /// Most requests written by one group-commit statement.
    #[arg(long, env = "CAS_INGEST_BATCH_MAX", default_value_t = 1024)]
    pub(crate) ingest_batch_max: usize,

    /// Group-commit statements in flight at once.
    #[arg(long, env = "CAS_INGEST_WORKERS", default_value_t = 4)]
    pub(crate) ingest_workers: usize,

    /// Requests that may wait for a group commit; beyond this POSTs are shed with 503.
    #[arg(long, env = "CAS_INGEST_QUEUE", default_value_t = 65_536)]
    pub(crate) ingest_queue: usize,

    /// Queues and bucket: with --s3-bucket set, accepted requests are published to the ingest
    /// queues and completed requests carry witnesses built from the tree artifacts.
    #[command(flatten)]
    pub(crate) pipeline: PipelineArgs,

    /// Batch indexes (tree artifact headers, ~75 KB each) kept in memory, and twice as
    /// many 1 MiB pages of tree artifact data.
    #[arg(long, env = "CAS_ARTIFACT_CACHE", default_value_t = 64)]
    pub(crate) artifact_cache: usize,

    /// Built witnesses (~3 KB each) kept in memory.
    #[arg(long, env = "CAS_WITNESS_CACHE", default_value_t = 20_000)]
    pub(crate) witness_cache: usize,

    /// Final answers (COMPLETED with witness, REPLACED; ~3.5 KB each) kept serialized in
    /// memory, so repeated polls of them skip the database.
    #[arg(long, env = "CAS_ANSWER_CACHE", default_value_t = 20_000)]
    pub(crate) answer_cache: usize,

    #[command(flatten)]
    pub(crate) auth: AuthArgs,

    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// DID authentication of anchor requests (every role that serves the API).
#[derive(Debug, Args)]
pub(crate) struct AuthArgs {
    /// Authentication of POST /api/v0/requests: `off` (the origin is the client IP),
    /// `allowlist` (a did:key-signed JWS from a DID in --auth-allowed-dids) or `relaxed`
    /// (a JWS from any valid did:key). Failures answer 401. GETs are never authenticated.
    #[arg(long = "auth", env = "CAS_AUTH", default_value = "off")]
    pub(crate) mode: cas_api::AuthMode,

    /// Comma-separated DIDs (did:key:z…) allowed in `allowlist` mode.
    #[arg(
        long = "auth-allowed-dids",
        env = "CAS_AUTH_ALLOWED_DIDS",
        value_delimiter = ',',
        value_parser = parse_allowed_did
    )]
    pub(crate) allowed_dids: Vec<String>,

    /// How long a used nonce is remembered (a signed request replayed within it is refused).
    #[arg(long = "auth-nonce-ttl", env = "CAS_AUTH_NONCE_TTL", default_value = "1h", value_parser = parse_duration)]
    pub(crate) nonce_ttl: Duration,

    /// Comma-separated addresses or CIDR ranges of trusted proxies (an API gateway, the load
    /// balancer). Only on connections from them are the `did`, `digest`, `sourceIp` and
    /// `X-Forwarded-For` headers believed; from anyone else they are ignored.
    #[arg(
        long = "trusted-proxies",
        env = "CAS_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub(crate) trusted_proxies: Vec<cas_api::IpRange>,
}

impl AuthArgs {
    /// The API's auth settings; fails on a configuration that could never accept a request.
    pub(crate) fn settings(&self) -> anyhow::Result<cas_api::AuthSettings> {
        if self.mode == cas_api::AuthMode::Allowlist && self.allowed_dids.is_empty() {
            anyhow::bail!(
                "--auth allowlist needs at least one DID in --auth-allowed-dids (CAS_AUTH_ALLOWED_DIDS)"
            );
        }
        Ok(cas_api::AuthSettings {
            mode: self.mode,
            allowed_dids: self.allowed_dids.clone(),
            nonce_ttl: self.nonce_ttl,
            trusted_proxies: self.trusted_proxies.clone(),
        })
    }
}

fn parse_header_bytes(text: &str) -> Result<usize, String> {
    let bytes: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if bytes < 8192 {
        return Err(format!("{bytes} is below the minimum of 8192 bytes"));
    }
    Ok(bytes)
}

fn parse_allowed_did(text: &str) -> Result<String, String> {
    let did = text.trim();
    cas_auth::DidKey::parse(did)
        .map(|_| did.to_owned())
        .map_err(|e| format!("{did:?} is not a usable did:key ({e})"))
}

/// Abuse limits of the HTTP API (every role that serves it).
#[derive(Debug, Args)]
pub(crate) struct LimitArgs {
    /// Requests per second per client IP (IPv6: per /64), sustained; 0 = no limit. Behind a
    /// proxy, set --trusted-proxies too, or every client shares the proxy's address.
    #[arg(long, env = "CAS_RATE_LIMIT_IP", default_value_t = 0.0)]
    pub(crate) rate_limit_ip: f64,

    /// Requests a client IP may send at once above its sustained rate.
    #[arg(long, env = "CAS_RATE_LIMIT_IP_BURST", default_value_t = 200)]
    pub(crate) rate_limit_ip_burst: u32,

    /// Anchor requests per second per authenticated DID, sustained; 0 = no limit.
    #[arg(long, env = "CAS_RATE_LIMIT_DID", default_value_t = 100.0)]
    pub(crate) rate_limit_did: f64,

    /// Anchor requests a DID may send at once above its sustained rate.
    #[arg(long, env = "CAS_RATE_LIMIT_DID_BURST", default_value_t = 500)]
    pub(crate) rate_limit_did_burst: u32,

    /// Most open HTTP connections; further ones wait in the listen backlog.
    #[arg(
        long = "max-connections",
        env = "CAS_MAX_CONNECTIONS",
        default_value_t = 8192
    )]
    pub(crate) max_http_connections: usize,

    /// Largest request head (request line and headers) in bytes, at least 8192; larger
    /// answers 431.
    #[arg(long, env = "CAS_MAX_HEADER_BYTES", default_value_t = 16 * 1024, value_parser = parse_header_bytes)]
    pub(crate) max_header_bytes: usize,

    /// Most request headers; more answer 431.
    #[arg(long, env = "CAS_MAX_HEADERS", default_value_t = 64)]
    pub(crate) max_headers: usize,

    /// Longest time a client may take to send its request headers; also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "CAS_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub(crate) header_read_timeout: Duration,
}

impl LimitArgs {
    /// Apply these limits to API settings.
    pub(crate) fn apply(&self, settings: &mut cas_api::ApiSettings) {
        settings.ip_rate = cas_api::RateLimit {
            per_second: self.rate_limit_ip,
            burst: self.rate_limit_ip_burst.max(1),
        };
        settings.did_rate = cas_api::RateLimit {
            per_second: self.rate_limit_did,
            burst: self.rate_limit_did_burst.max(1),
        };
        settings.server = cas_api::ServerLimits {
            max_connections: self.max_http_connections.max(1),
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers.max(1),
        };
    }
}

pub(crate) fn parse_secret(text: &str) -> Result<SecretString, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(SecretString::from(text.to_owned()))
}

/// Parse an amount of gwei (`200`, `0.5`, `1.000000001`) into wei, exactly.
pub(crate) fn parse_gwei(text: &str) -> Result<u128, String> {
    let text = text.trim();
    let invalid = || format!("{text:?} is not an amount of gwei like 200 or 1.5");
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole
            .chars()
            .chain(fraction.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(invalid());
    }
    if fraction.len() > 9 {
        return Err(format!(
            "{text:?}: at most 9 decimals (1 wei = 0.000000001 gwei)"
        ));
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| invalid())?
    };
    let fraction: u128 = format!("{fraction:0<9}").parse().map_err(|_| invalid())?;
    whole
        .checked_mul(1_000_000_000)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(invalid)
}

/// Parse `250ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 5s, 2m or 1h"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Replace the password (and any query string, which may hold one) of a URL.
pub(crate) fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            if parsed.query().is_some() {
                parsed.set_query(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }

    #[test]
    fn gwei_amounts() {
        assert_eq!(parse_gwei("200").unwrap(), 200_000_000_000);
        assert_eq!(parse_gwei("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_gwei("1.000000001").unwrap(), 1_000_000_001);
        assert_eq!(parse_gwei(".25").unwrap(), 250_000_000);
        for bad in ["", ".", "abc", "1.0000000001", "-1", "1e9", "1.2.3"] {
            assert!(parse_gwei(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn worker_flags_have_defaults_and_the_signers_exclude_each_other() {
        let base = [
            "cas",
            "worker",
            "--database-url",
            "postgres://h/db",
            "--eth-rpc-url",
            "http://127.0.0.1:8545",
        ];
        let Command::Worker(args) = Cli::try_parse_from(base).unwrap().command else {
            panic!("not a worker");
        };
        assert_eq!(args.eth_max_fee_gwei, 200_000_000_000);
        assert_eq!(args.eth_max_attempts, 5);
        assert_eq!(args.nonce_lock_timeout, Duration::from_secs(900));
        assert_eq!(args.low_balance_wei, 100_000_000_000_000_000);
        assert_eq!(args.eth_kms_key_id, None);

        let with = |extra: &[&'static str]| {
            Cli::try_parse_from(base.iter().chain(extra).copied().collect::<Vec<_>>())
        };
        assert!(with(&["--eth-kms-key-id", "alias/cas"]).is_ok());
        let err =
            with(&["--eth-kms-key-id", "alias/cas", "--eth-private-key", "0x01"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert!(with(&["--eth-max-attempts", "0"]).is_err());
        assert!(with(&["--eth-max-fee-gwei", "lots"]).is_err());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://cas:hunter2@db:5432/cas"),
            "postgres://cas:***@db:5432/cas"
        );
        assert_eq!(
            redact_url("postgres://db/cas?password=x"),
            "postgres://db/cas?***"
        );
        assert_eq!(redact_url("postgres://db/cas"), "postgres://db/cas");
        assert!(!redact_url("not a url hunter2").contains("hunter2"));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let cli = Cli::try_parse_from([
            "cas",
            "api",
            "--database-url",
            "postgres://u:hunter2@h/db",
            "--eth-rpc-url",
            "https://rpc.example/key-abc123",
        ])
        .unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("key-abc123"), "{debug}");
    }
}
