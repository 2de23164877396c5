//! HTTP metrics and the `/metrics` endpoint.

use std::time::Instant;

use tracing::Instrument as _;

use axum::{
    extract::{MatchedPath, Request},
    http::{StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};

/// Count every answer by route template and status, and time it.
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // The route template, never the raw path: CIDs in paths would explode the label set.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_label(p.as_str()));
    // DEBUG: exported as a trace when OTLP is on, kept out of the logs unless RUST_LOG asks
    // (see cas_telemetry::init).
    let span = tracing::debug_span!(
        "http.request",
        http.request.method = %request.method(),
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    let status = status_label(response.status());
    metrics::counter!("cas_http_requests_total", "route" => route, "status" => status).increment(1);
    metrics::histogram!("cas_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// The status code as a label, without an allocation for the usual ones.
fn status_label(status: StatusCode) -> std::borrow::Cow<'static, str> {
    let known = match status.as_u16() {
        200 => "200",
        201 => "201",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        413 => "413",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return other.to_string().into(),
    };
    known.into()
}

/// The known route templates as static labels.
fn route_label(path: &str) -> &'static str {
    match path {
        "/api/v0/requests" => "/api/v0/requests",
        "/api/v0/requests/" => "/api/v0/requests/",
        "/api/v0/requests/{cid}" => "/api/v0/requests/{cid}",
        "/api/v0/service-info/supported_chains" => "/api/v0/service-info/supported_chains",
        "/api/v0/healthcheck" => "/api/v0/healthcheck",
        "/metrics" => "/metrics",
        _ => "other",
    }
}

/// `GET /metrics`: the Prometheus text format.
pub(crate) async fn render() -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        cas_telemetry::metrics::render(),
    )
        .into_response()
}
