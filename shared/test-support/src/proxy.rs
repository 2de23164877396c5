//! [`FaultProxy`]: an HTTP/1 proxy in front of one part (the SQS/S3 emulator, an Ethereum
//! node) that breaks it on demand, so the roles see the faults through their real clients:
//!
//! - [`FaultProxy::set_down`]: the part is gone: open connections are cut, new ones are
//!   closed at once (an emulator stopped, a load balancer with no backend);
//! - [`FaultProxy::set_sqs_copies`]: every SQS `SendMessage`/`SendMessageBatch` is sent that
//!   many times, the extra copies a moment later (every message delivered several times,
//!   out of order);
//! - [`FaultProxy::fail_sends_after_accepting`]: the next `eth_sendRawTransaction` calls are
//!   forwarded to the node, which takes the transaction, and answered with a JSON-RPC
//!   internal error (-32603), as load-balanced providers do;
//! - [`FaultProxy::set_receipt_lag`]: `eth_getTransactionReceipt` answers `null` until a
//!   receipt has been seen for that long, while nonces and blocks are current (backends at
//!   different heights).
//!
//! Each fault injected is counted by kind ([`FaultProxy::injected`]).

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, time::Instant};

#[derive(Default)]
struct RpcFaults {
    errors_after_send: u32,
    receipt_lag: Duration,
    first_seen: HashMap<String, Instant>,
}

struct State {
    upstream: String,
    client: reqwest::Client,
    down: AtomicBool,
    /// Bumped when the proxy goes down: every open connection ends.
    cut: watch::Sender<u64>,
    sqs_copies: AtomicU32,
    rpc: Mutex<RpcFaults>,
    injected: Mutex<BTreeMap<&'static str, u64>>,
}

impl State {
    fn count(&self, kind: &'static str) {
        *self
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// A running fault proxy; stops when dropped.
pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`: give this to the roles instead of the part's own URL.
    pub url: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("url", &self.url)
            .field("upstream", &self.state.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// A proxy to `upstream` (`http://host:port`), on a free loopback port.
    pub async fn start(upstream: &str) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr: SocketAddr = listener.local_addr()?;
        let state = Arc::new(State {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(120))
                .build()?,
            down: AtomicBool::new(false),
            cut: watch::channel(0).0,
            sqs_copies: AtomicU32::new(1),
            rpc: Mutex::default(),
            injected: Mutex::default(),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&state)));
        Ok(Self {
            url: format!("http://{addr}"),
            state,
            task,
        })
    }

    /// Make the part unreachable (cut every connection, refuse new ones), or reachable again.
    pub fn set_down(&self, down: bool) {
        let was = self.state.down.swap(down, Ordering::SeqCst);
        if down && !was {
            self.state.cut.send_modify(|g| *g += 1);
            self.state.count("outage");
        }
    }

    /// Send every SQS message this many times (1: normally).
    pub fn set_sqs_copies(&self, copies: u32) {
        self.state.sqs_copies.store(copies.max(1), Ordering::SeqCst);
    }

    /// Answer the next `n` `eth_sendRawTransaction` calls with an error after the node took
    /// the transaction.
    pub fn fail_sends_after_accepting(&self, n: u32) {
        self.state
            .rpc
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .errors_after_send += n;
    }

    /// Hide receipts until they have been seen for `lag` (zero: show them at once).
    pub fn set_receipt_lag(&self, lag: Duration) {
        let mut rpc = self.state.rpc.lock().unwrap_or_else(|e| e.into_inner());
        rpc.receipt_lag = lag;
    }

    /// Faults injected so far, by kind.
    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        self.state
            .injected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.state.cut.send_modify(|g| *g += 1);
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if state.down.load(Ordering::SeqCst) {
            drop(stream); // refused
            continue;
        }
        let state = Arc::clone(&state);
        let mut cut = state.cut.subscribe();
        tokio::spawn(async move {
            let service_state = Arc::clone(&state);
            let service = service_fn(move |request| forward(Arc::clone(&service_state), request));
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = cut.changed() => {} // dropped: the socket closes mid-flight
            }
        });
    }
}

fn respond(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::builder().status(status);
    for (name, value) in headers {
        if name != "transfer-encoding" && name != "content-length" && name != "connection" {
            response = response.header(name, value);
        }
    }
    response
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

async fn forward(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(respond(400, &Default::default(), Bytes::new())),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let url = format!("{}{path}", state.upstream);
    let build = |state: &State| {
        let mut builder = state.client.request(parts.method.clone(), &url);
        for (name, value) in &parts.headers {
            if name != "host" && name != "content-length" && name != "connection" {
                builder = builder.header(name, value);
            }
        }
        builder.body(body.clone())
    };

    // SQS: extra copies of every send, a moment later (out of order with other sends).
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let copies = state.sqs_copies.load(Ordering::SeqCst);
    if copies > 1 && target.starts_with("AmazonSQS.SendMessage") {
        for copy in 1..copies {
            let extra = build(&state);
            state.count("sqs_duplicate");
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(150 * u64::from(copy))).await;
                let _ = extra.send().await;
            });
        }
    }

    // JSON-RPC: what the call is.
    let call: Option<Value> = serde_json::from_slice(&body).ok();
    let method = call
        .as_ref()
        .and_then(|c| c["method"].as_str())
        .unwrap_or_default()
        .to_owned();
    let id = call
        .as_ref()
        .map(|c| c["id"].clone())
        .unwrap_or(Value::Null);

    let answer = match build(&state).send().await {
        Ok(answer) => answer,
        Err(_) => return Ok(respond(502, &Default::default(), Bytes::new())),
    };
    let status = answer.status().as_u16();
    let headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap_or_default();

    if method == "eth_sendRawTransaction" {
        let fail = {
            let mut rpc = state.rpc.lock().unwrap_or_else(|e| e.into_inner());
            let fail = rpc.errors_after_send > 0;
            if fail {
                rpc.errors_after_send -= 1;
            }
            fail
        };
        if fail {
            state.count("rpc_error_after_send");
            let error = json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32603, "message": "internal error"}});
            return Ok(respond(200, &headers, Bytes::from(error.to_string())));
        }
    }
    if method == "eth_getTransactionReceipt" {
        let hidden = {
            let mut rpc = state.rpc.lock().unwrap_or_else(|e| e.into_inner());
            let lag = rpc.receipt_lag;
            let answered: Option<Value> = serde_json::from_slice(&bytes).ok();
            let has_receipt = answered.as_ref().is_some_and(|a| !a["result"].is_null());
            let hash = call
                .as_ref()
                .and_then(|c| c["params"][0].as_str())
                .unwrap_or_default()
                .to_owned();
            if has_receipt && !lag.is_zero() {
                let seen = *rpc.first_seen.entry(hash).or_insert_with(Instant::now);
                seen.elapsed() < lag
            } else {
                false
            }
        };
        if hidden {
            state.count("rpc_receipt_lagged");
            let none = json!({"jsonrpc": "2.0", "id": id, "result": null});
            return Ok(respond(200, &headers, Bytes::from(none.to_string())));
        }
    }
    Ok(respond(status, &headers, bytes))
}
