//! `--otlp-endpoint` / `CAS_OTLP_ENDPOINT`: spans go to an OpenTelemetry collector over
//! OTLP/HTTP (protobuf) when it is set, and nowhere when it is not.

mod common;

use std::{
    net::SocketAddr,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cas_core::StreamId;
use cas_merkle::dag_cbor_cid;
use common::{CAS, Running};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use uuid::Uuid;

/// One HTTP request the fake collector received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A minimal OTLP/HTTP collector: answers every request `200` with an empty protobuf body
/// (an `ExportTraceServiceResponse` with nothing rejected) and records it.
struct FakeCollector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<Mutex<usize>>,
}

impl FakeCollector {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (log, count) = (Arc::clone(&received), Arc::clone(&connections));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                *count.lock().unwrap() += 1;
                tokio::spawn(serve(stream, Arc::clone(&log)));
            }
        });
        Self {
            addr,
            received,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

/// Serve HTTP/1.1 requests on one (keep-alive) connection until the client closes it.
async fn serve(stream: TcpStream, log: Arc<Mutex<Vec<Received>>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let mut content_length = 0;
        let mut chunked = false;
        let mut content_type = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse().unwrap(),
                "content-type" => content_type = Some(value.to_owned()),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size).await.unwrap();
                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                let mut chunk = vec![0; size + 2]; // the data and its CRLF
                reader.read_exact(&mut chunk).await.unwrap();
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            body.resize(content_length, 0);
            reader.read_exact(&mut body).await.unwrap();
        }
        log.lock().unwrap().push(Received {
            method,
            path,
            content_type,
            body,
        });
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Run `cas dev` with `envs` (without inheriting `remove`), anchor one request, stop it
/// with SIGTERM and return its log.
async fn anchor_one_request_with_dev(envs: &[(&str, &str)], remove: &[&str]) -> Vec<String> {
    let data = std::env::temp_dir().join(format!("cas-otlp-test-{}", Uuid::new_v4().simple()));
    let args = [
        "dev",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--batch-linger",
        "500ms",
    ];
    let mut remove = remove.to_vec();
    remove.extend(["ETH_RPC_URL", "CAS_HTTP_ADDR"]);
    let mut dev = Running::start_without(&args, envs, &remove);
    let ready = dev.wait_for("cas dev ready");
    let base = format!("http://{}/api/v0", ready["addr"].as_str().unwrap());

    let tag = Uuid::new_v4().simple().to_string();
    let cid = dag_cbor_cid(tag.as_bytes()).to_string();
    let stream = StreamId::new(3, dag_cbor_cid(format!("{tag}-stream").as_bytes())).to_string();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("{base}/requests"))
        .json(&json!({"streamId": stream, "cid": cid, "timestamp": "2026-11-22T00:00:00.000Z"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let body: Value = client
            .get(format!("{base}/requests/{cid}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if body["status"] == "COMPLETED" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{cid} not completed: {body}\n{}",
            dev.drain().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    dev.terminate();
    let status = dev.wait_exit();
    let _ = std::fs::remove_dir_all(&data);
    assert!(status.success(), "{}", dev.seen.join("\n"));
    dev.seen.clone()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn dev_exports_its_spans_to_the_otlp_endpoint_and_flushes_them_on_sigterm() {
    let collector = FakeCollector::start().await;
    let url = collector.url();
    let log = anchor_one_request_with_dev(&[("CAS_OTLP_ENDPOINT", url.as_str())], &[]).await;

    let received = collector.received();
    let traces: Vec<&Received> = received
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/traces")
        .collect();
    assert!(
        !traces.is_empty(),
        "no POST /v1/traces; got {received:?}\n{}",
        log.join("\n")
    );
    for post in &traces {
        assert_eq!(
            post.content_type.as_deref(),
            Some("application/x-protobuf"),
            "{post:?}"
        );
        assert!(!post.body.is_empty(), "an empty export");
    }
    // The resource names the role; the worker's tx-manager span (with its batch id) is there.
    assert!(
        traces.iter().any(|p| contains(&p.body, b"cas-dev")),
        "no export carries the service name cas-dev"
    );
    assert!(
        traces.iter().any(|p| contains(&p.body, b"batch.id")),
        "no export carries the tx manager's span (batch.id)"
    );
    // The API's per-request span, named by route template.
    assert!(
        traces
            .iter()
            .any(|p| contains(&p.body, b"http.request") && contains(&p.body, b"/api/v0/requests")),
        "no export carries the API's request span"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("exporting traces over OTLP/HTTP")),
        "{}",
        log.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_cas_otlp_endpoint_nothing_is_exported() {
    // Even the standard OpenTelemetry variable does not turn the exporter on by itself.
    let collector = FakeCollector::start().await;
    let url = collector.url();
    let log = anchor_one_request_with_dev(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", url.as_str()),
        ],
        &["CAS_OTLP_ENDPOINT"],
    )
    .await;
    assert_eq!(
        collector.connections(),
        0,
        "{:?}\n{}",
        collector.received(),
        log.join("\n")
    );
    assert!(!log.iter().any(|l| l.contains("exporting traces")));
}

#[test]
fn help_lists_the_otlp_endpoint_for_every_role() {
    for args in [&["--help"][..], &["api", "--help"], &["worker", "--help"]] {
        let output = Command::new(CAS).args(args).output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(
            help.contains("--otlp-endpoint") && help.contains("CAS_OTLP_ENDPOINT"),
            "`cas {}`:\n{help}",
            args.join(" ")
        );
    }
}

#[test]
fn an_endpoint_that_is_not_an_http_url_is_refused_at_start() {
    for (endpoint, expected) in [
        ("not a url", "invalid value"),
        ("ftp://collector:4318", "not an http(s) URL"),
    ] {
        let output = Command::new(CAS)
            .args(["migrate", "--database-url", "postgres://127.0.0.1:1/none"])
            .env("CAS_OTLP_ENDPOINT", endpoint)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{endpoint}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{endpoint}: {stderr}");
    }
}
