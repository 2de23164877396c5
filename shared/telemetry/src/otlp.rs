//! Optional export of tracing spans to an OpenTelemetry collector over OTLP/HTTP (protobuf).

use std::time::Duration;

use async_trait::async_trait;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tokio::runtime::Handle;

/// Longest wait for one export (connect, send, answer).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The OTLP trace exporter could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// Building the exporter failed (an endpoint the HTTP stack refuses, a broken TLS setup).
    #[error("cannot export traces to {endpoint}: {reason}")]
    Exporter {
        /// The traces URL (`<endpoint>/v1/traces`).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// There is no Tokio runtime to send the exports on.
    #[error("the OTLP exporter must be set up inside a Tokio runtime")]
    NoRuntime,
}

/// A tracer provider exporting to `<endpoint>/v1/traces` through a batch span processor.
pub(crate) fn provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, OtlpError> {
    let runtime = Handle::try_current().map_err(|_| OtlpError::NoRuntime)?;
    let traces_url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let failed = |reason: String| OtlpError::Exporter {
        endpoint: traces_url.clone(),
        reason,
    };
    match reqwest::Url::parse(endpoint) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
        _ => return Err(failed("not an http(s) URL".to_owned())),
    }
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(traces_url.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(OnRuntime { client, runtime })
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// The endpoint without any password or query string, for logs.
pub(crate) fn redacted(endpoint: &str) -> String {
    match reqwest::Url::parse(endpoint) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("***"));
            }
            if url.query().is_some() {
                url.set_query(Some("***"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of `provider`.
pub(crate) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::SdkTracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("cas"))
}

/// An async reqwest client whose requests run on our Tokio runtime.
///
/// The SDK's batch span processor exports from its own thread, outside any runtime, where
/// an async client cannot do I/O; the blocking reqwest client would work there but would
/// recompile reqwest (and alloy above it) with a second feature set. Handing each export to
/// the runtime keeps the one reqwest build, with the rustls/aws-lc-rs stack it already has.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    runtime: Handle,
}

#[async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_redacted_for_logs() {
        assert_eq!(
            redacted("https://user:hunter2@collector:4318/?token=abc"),
            "https://user:***@collector:4318/?***"
        );
        assert_eq!(redacted("http://collector:4318"), "http://collector:4318/");
        assert!(!redacted("not a url hunter2").contains("hunter2"));
    }

    #[tokio::test]
    async fn only_http_endpoints_are_accepted() {
        for bad in ["ftp://collector:4318", "collector:4318", "not a url"] {
            let err = provider("cas-test", bad).unwrap_err();
            assert!(
                err.to_string().contains("not an http(s) URL"),
                "{bad}: {err}"
            );
        }
        let provider = provider("cas-test", "https://collector.example:4318/").unwrap();
        // Nothing was recorded, so nothing is sent.
        tokio::task::spawn_blocking(move || provider.shutdown())
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn an_exporter_needs_a_runtime() {
        assert!(matches!(
            provider("cas-test", "http://collector:4318"),
            Err(OtlpError::NoRuntime)
        ));
    }
}
