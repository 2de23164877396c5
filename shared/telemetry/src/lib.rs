//! Logging setup, optional OTLP trace export, Prometheus metrics and the shutdown signal
//! shared by every role.

pub mod metrics;
mod otlp;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, prelude::*};

pub use otlp::OtlpError;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (the default on a terminal).
    #[default]
    Text,
    /// One JSON object per line (for ECS / log shippers).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected text or json)"
            )),
        }
    }
}

/// What [`init`] installed; call [`Telemetry::shutdown`] before the process exits so the
/// spans still buffered reach the collector.
#[derive(Debug)]
#[must_use = "call shutdown() before exiting, or buffered spans are lost"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flush and stop the OTLP exporter (a no-op without one). Waits at most about 5 s.
    pub async fn shutdown(self) {
        let Some(provider) = self.tracer_provider else {
            return;
        };
        // The batch processor's thread exports on this runtime: block a pool thread, not a
        // worker, while it does.
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match result {
            Ok(Ok(())) => tracing::debug!("trace exporter flushed"),
            Ok(Err(err)) => tracing::warn!(error = %err, "trace exporter did not flush"),
            Err(err) => tracing::warn!(error = %err, "trace exporter did not flush"),
        }
    }
}

/// The filter of every layer: `RUST_LOG`, defaulting to `info`.
fn log_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // alloy's HTTP transport puts the whole RPC URL (API keys in its path, credentials) on a
    // debug span that every event inside it repeats; never record it, whatever RUST_LOG says.
    filter.add_directive(
        "alloy_transport_http=info"
            .parse()
            .expect("a valid filter directive"),
    )
}

/// Where the API's per-request span (`http.request`, level DEBUG) is created. The trace
/// exporter always takes it; the log output only when `RUST_LOG` asks for it, because
/// formatting a span's fields for the logs on every request costs a measurable share of
/// the API's CPU.
const REQUEST_SPAN_TARGET: &str = "cas_api::http_metrics";

/// Install the global subscriber. The filter comes from `RUST_LOG`, defaulting to `info`.
///
/// With `otlp_endpoint` (e.g. `http://otel-collector:4318`), spans the filter lets through
/// (and the API's per-request spans) are also exported to `<endpoint>/v1/traces`
/// (OTLP/HTTP, protobuf, batched) under the service name `service` (e.g. `cas-api`). That
/// needs a Tokio runtime. The usual `OTEL_*` variables tune the exporter
/// (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_SCHEDULE_DELAY`, ...).
pub fn init(
    service: &str,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
) -> Result<Telemetry, OtlpError> {
    let tracer_provider = otlp_endpoint
        .map(|endpoint| otlp::provider(service, endpoint))
        .transpose()?;
    let output = match format {
        LogFormat::Text => fmt::layer().with_target(false).boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> =
        vec![output.with_filter(log_filter()).boxed()];
    if let Some(provider) = &tracer_provider {
        let filter = log_filter().add_directive(
            format!("{REQUEST_SPAN_TARGET}=debug")
                .parse()
                .expect("a valid filter directive"),
        );
        layers.push(otlp::layer(provider).with_filter(filter).boxed());
    }
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::registry().with(layers).try_init();
    if let Some(endpoint) = otlp_endpoint {
        let endpoint = otlp::redacted(endpoint);
        tracing::info!(%endpoint, service, "exporting traces over OTLP/HTTP");
    }
    Ok(Telemetry { tracer_provider })
}

/// A token cancelled on SIGTERM or Ctrl-C. Every long-running task watches it.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received, draining");
        cancel.cancel();
    });
    token
}

async fn wait_for_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
