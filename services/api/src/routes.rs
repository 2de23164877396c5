//! Handlers and the router.

use axum::{
    Json, Router,
    body::Body,
    extract::{DefaultBodyLimit, Path, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use std::time::Duration;

use bytes::Bytes;
use cas_core::{
    AnchorRequest, parse_car_request, parse_cid, parse_json_request, pipeline::IngestEntry,
};
use cas_store::{InsertOutcome, NewRequest, RequestRecord};
use http_body_util::BodyExt as _;
use tower_http::{
    cors::{Any, CorsLayer},
    timeout::TimeoutLayer,
};
use uuid::Uuid;

use crate::{ApiError, AppState, Presentation, auth::Client};

const CAR_CONTENT_TYPE: &str = "application/vnd.ipld.car";

pub(crate) fn router(state: AppState) -> Router {
    let body_limit = state
        .settings
        .json_body_limit
        .max(state.settings.car_body_limit);
    let timeout = state.settings.request_timeout;
    Router::new()
        .route("/api/v0/requests", post(create_request))
        .route("/api/v0/requests/", get(empty_cid))
        .route("/api/v0/requests/{cid}", get(get_request))
        .route(
            "/api/v0/service-info/supported_chains",
            get(supported_chains),
        )
        .route("/api/v0/healthcheck", get(healthcheck))
        .route("/metrics", get(crate::http_metrics::render))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::identify_client,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any),
        )
        .layer(axum::middleware::from_fn(crate::http_metrics::track))
        .with_state(state)
}

/// Which body form a request uses, from its `Content-Type`.
enum BodyForm {
    Json,
    Car,
}

fn body_form(headers: &HeaderMap) -> Result<BodyForm, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        // The reference treats a missing content type as JSON.
        return Ok(BodyForm::Json);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("content-type header is not valid text".to_owned()))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence == CAR_CONTENT_TYPE {
        Ok(BodyForm::Car)
    } else if essence == "application/json" || essence.ends_with("+json") {
        Ok(BodyForm::Json)
    } else {
        Err(ApiError::BadRequest(format!(
            "unsupported content type {text:?}: send application/json or {CAR_CONTENT_TYPE}"
        )))
    }
}

/// Largest body that is read to its end (and thrown away) before an oversize body is
/// answered 413. A client sends its whole body before it reads the answer; closing the
/// connection with its bytes unread makes the kernel reset it, and the client sees a broken
/// pipe or a reset instead of the 413. Bodies above this are answered at once.
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// Longest time spent reading an oversize body to its end.
const DRAIN_TIME: Duration = Duration::from_secs(10);

async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<Vec<u8>, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("request body exceeds {limit} bytes"));
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        if declared.is_some_and(|len| len <= DRAIN_LIMIT) {
            drain(body, Vec::new()).await;
        }
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|err| ApiError::BadRequest(format!("could not read request body: {err}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > limit {
                drain(body, bytes).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes)
}

/// Read the rest of an oversize body and drop it (bounded in bytes and time), so that the
/// client, still sending, gets to read the 413.
async fn drain(mut body: Body, read: Vec<u8>) {
    let mut total = read.len() as u64;
    drop(read);
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                total += data.len() as u64;
                if total > DRAIN_LIMIT {
                    return;
                }
            }
        }
    })
    .await;
}

async fn create_request(
    State(state): State<AppState>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let client = parts
        .extensions
        .get::<Client>()
        .copied()
        .ok_or_else(|| ApiError::Internal("client not identified".to_owned()))?;
    let form = body_form(&parts.headers)?;
    let limit = match form {
        BodyForm::Car => state.settings.car_body_limit,
        BodyForm::Json => state.settings.json_body_limit,
    };
    let bytes = read_body(body, &parts.headers, limit).await?;
    // Who sent it decides its origin (the scope of REPLACED): the DID when authenticated.
    let digest = match form {
        BodyForm::Car => cas_auth::BodyDigest::Car(&bytes),
        BodyForm::Json => cas_auth::BodyDigest::Json(&bytes),
    };
    let origin = state.auth.authorize(&parts, client, digest).await?;
    let parsed: AnchorRequest = match form {
        BodyForm::Car => parse_car_request(&bytes)
            .await
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        BodyForm::Json => {
            parse_json_request(&bytes).map_err(|e| ApiError::BadRequest(e.to_string()))?
        }
    };
    // A final answer is final: a re-POST (how ceramic-one polls) gets it without a write.
    if let Some(body) = cached_answer(&state, &parsed.cid.to_string()) {
        return Ok(json_bytes(StatusCode::ACCEPTED, body));
    }
    let new = NewRequest {
        id: Uuid::now_v7(),
        cid: parsed.cid.to_string(),
        stream_id: parsed.stream_id.to_string(),
        origin,
        timestamp: parsed.timestamp,
        created_at: chrono::Utc::now(),
    };
    let outcome = state.ingest.submit(new).await?;
    let (status, record) = match &outcome {
        InsertOutcome::Created(record) => {
            metrics::counter!("cas_requests_created_total").increment(1);
            cas_core::fault::point("api::after_commit");
            if let Some(publisher) = &state.publisher {
                publisher.publish(IngestEntry {
                    id: record.id,
                    cid: record.cid.clone(),
                    sid: record.stream_id.clone(),
                    org: record.origin.clone(),
                    ts: record.timestamp.unix_nanos(),
                });
            }
            tracing::debug!(
                request.cid = %record.cid,
                stream.id = %record.stream_id,
                origin = %record.origin,
                "anchor request received"
            );
            (StatusCode::CREATED, record)
        }
        InsertOutcome::Existing(record) => (StatusCode::ACCEPTED, record),
    };
    let presentation = present(&state, record).await?;
    Ok(json_bytes(status, answer_bytes(&state, &presentation)?))
}

fn cached_answer(state: &AppState, cid: &str) -> Option<Bytes> {
    state.answers.lock().ok()?.get(cid)
}

/// Serialize an answer, and remember it if it is final (COMPLETED with its witness, or
/// REPLACED): neither ever changes.
fn answer_bytes(state: &AppState, presentation: &Presentation) -> Result<Bytes, ApiError> {
    let body = Bytes::from(
        serde_json::to_vec(presentation)
            .map_err(|e| ApiError::Internal(format!("serializing: {e}")))?,
    );
    let is_final = (presentation.status == "COMPLETED" && presentation.witness_car.is_some())
        || presentation.status == "REPLACED";
    if is_final && let Ok(mut answers) = state.answers.lock() {
        answers.insert(presentation.cid.clone(), body.clone());
    }
    Ok(body)
}

fn json_bytes(status: StatusCode, body: Bytes) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn present(state: &AppState, record: &RequestRecord) -> Result<Presentation, ApiError> {
    let witness = if record.anchor.is_some() {
        state
            .witnesses
            .witness(record)
            .await
            .map_err(|e| ApiError::Unavailable(format!("witness for {}: {e}", record.cid)))?
    } else {
        None
    };
    Ok(Presentation::of(record, witness.as_ref()))
}

async fn empty_cid() -> ApiError {
    ApiError::BadRequest("CID is empty or malformed".to_owned())
}

async fn get_request(
    State(state): State<AppState>,
    Path(cid): Path<String>,
) -> Result<Response, ApiError> {
    // Answers are cached under canonical CIDs, which is how nodes send them: a hit needs no
    // parsing (and proves the CID valid).
    if let Some(body) = cached_answer(&state, &cid) {
        return Ok(json_bytes(StatusCode::OK, body));
    }
    let cid = parse_cid(&cid)
        .map_err(|_| ApiError::BadRequest("CID is empty or malformed".to_owned()))?
        .to_string();
    if let Some(body) = cached_answer(&state, &cid) {
        return Ok(json_bytes(StatusCode::OK, body));
    }
    let record = state
        .reads
        .get(cid.clone())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("Request does not exist for cid {cid}")))?;
    let presentation = present(&state, &record).await?;
    Ok(json_bytes(
        StatusCode::OK,
        answer_bytes(&state, &presentation)?,
    ))
}

async fn supported_chains(State(state): State<AppState>) -> Response {
    match state.chain_id.get() {
        Some(chain) => Json(serde_json::json!({ "supportedChains": [chain] })).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn healthcheck(State(state): State<AppState>) -> StatusCode {
    match tokio::time::timeout(std::time::Duration::from_secs(3), state.store.ping()).await {
        Ok(Ok(())) => StatusCode::OK,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "healthcheck: store unavailable");
            StatusCode::SERVICE_UNAVAILABLE
        }
        Err(_) => {
            tracing::warn!("healthcheck: store ping timed out");
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("Not found".to_owned())
}
