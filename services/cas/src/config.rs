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

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve the HTTP API (POST/GET requests, supported chains, healthcheck).
    Api(ApiArgs),
    /// Apply database migrations, then exit.
    Migrate(MigrateArgs),
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
}

fn parse_secret(text: &str) -> Result<SecretString, String> {
    if text.is_empty() {
        return Err("must not be empty".to_owned());
    }
    Ok(SecretString::from(text.to_owned()))
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
