//! Abuse limits: rate limits, header and connection limits, slow clients, timeouts, and load
//! shedding by the bounded ingest queue.

use std::{sync::Arc, time::Duration};

use cas_api::{ApiSettings, AuthMode, AuthSettings, NoWitnesses, RateLimit, ServerLimits};
use cas_auth::{Ed25519Signer, RequestSigner, sha256_digest};
use cas_store::{GroupCommitConfig, test_support::TestDb};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::{Instant, timeout},
};

use crate::helpers::*;

async fn app_with(settings: ApiSettings) -> TestApp {
    let db = TestDb::new().await.unwrap();
    spawn_app_with(db.store, Arc::new(NoWitnesses), settings).await
}

/// Read until the server closes the connection (or `limit` passes); what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, ()> {
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    loop {
        match timeout(deadline - Instant::now(), stream.read(&mut buf)).await {
            Err(_) => return Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn clients_over_their_ip_rate_get_429_with_retry_after() {
    let app = app_with(ApiSettings {
        ip_rate: RateLimit {
            per_second: 0.2,
            burst: 2,
        },
        ..ApiSettings::default()
    })
    .await;
    let path = format!("/requests/{}", cid_for("rate"));
    assert_eq!(app.get(&path).await.0, 404);
    assert_eq!(app.get(&path).await.0, 404);
    let response = app
        .client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 429);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=5).contains(&retry), "retry-after {retry}");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    // POSTs count too; the health check does not (load balancers poll it).
    assert_eq!(
        app.post_json(&request_body(&cid_for("r2").to_string()))
            .await
            .0,
        429
    );
    assert_eq!(app.get("/healthcheck").await.0, 200);
}

#[tokio::test]
async fn each_did_has_its_own_rate() {
    let app = app_with(ApiSettings {
        auth: AuthSettings {
            mode: AuthMode::Relaxed,
            ..AuthSettings::default()
        },
        did_rate: RateLimit {
            per_second: 0.2,
            burst: 1,
        },
        ..ApiSettings::default()
    })
    .await;
    let url = format!("{}/requests", app.base);
    let post = |signer: &dyn RequestSigner, tag: &str| {
        let bytes = serde_json::to_vec(&request_body(&cid_for(tag).to_string())).unwrap();
        let token = signer.sign(&url, Some(&sha256_digest(&bytes)));
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(bytes)
            .send()
    };
    let busy = Ed25519Signer::generate();
    let quiet = Ed25519Signer::generate();
    assert_eq!(post(&busy, "d1").await.unwrap().status().as_u16(), 201);
    let limited = post(&busy, "d2").await.unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(post(&quiet, "d3").await.unwrap().status().as_u16(), 201);
}

#[tokio::test]
async fn oversize_or_too_many_headers_answer_431() {
    let app = app_with(ApiSettings {
        server: ServerLimits {
            max_header_bytes: 8192,
            max_headers: 16,
            ..ServerLimits::default()
        },
        ..ApiSettings::default()
    })
    .await;
    let url = format!("{}/healthcheck", app.base);
    let big = app
        .client
        .get(&url)
        .header("x-padding", "a".repeat(10_000))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 431);
    let mut many = app.client.get(&url);
    for i in 0..30 {
        many = many.header(format!("x-h{i}"), "v");
    }
    assert_eq!(many.send().await.unwrap().status().as_u16(), 431);
    assert_eq!(app.get("/healthcheck").await.0, 200);
}

#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    let app = app_with(ApiSettings {
        server: ServerLimits {
            header_read_timeout: Duration::from_millis(300),
            ..ServerLimits::default()
        },
        ..ApiSettings::default()
    })
    .await;
    // Slowloris: the headers never end.
    let mut slow = TcpStream::connect(app.addr()).await.unwrap();
    slow.write_all(b"GET /api/v0/healthcheck HTTP/1.1\r\nHost: cas\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    let sent = read_to_close(&mut slow, Duration::from_secs(5))
        .await
        .expect("the server closes a connection whose headers do not arrive");
    assert!(
        sent.is_empty() || sent.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&sent)
    );
    // A connection that never sends anything is closed too (it would hold a slot).
    let mut idle = TcpStream::connect(app.addr()).await.unwrap();
    assert!(
        read_to_close(&mut idle, Duration::from_secs(5))
            .await
            .is_ok()
    );
    // So is a keep-alive connection that goes quiet after a request.
    let mut quiet = TcpStream::connect(app.addr()).await.unwrap();
    quiet
        .write_all(b"GET /api/v0/healthcheck HTTP/1.1\r\nHost: cas\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut quiet, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let app = app_with(ApiSettings {
        server: ServerLimits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
            ..ServerLimits::default()
        },
        ..ApiSettings::default()
    })
    .await;
    let first = TcpStream::connect(app.addr()).await.unwrap();
    let _second = TcpStream::connect(app.addr()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(app.addr()).await.unwrap();
    third
        .write_all(b"GET /api/v0/healthcheck HTTP/1.1\r\nHost: cas\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        timeout(Duration::from_millis(700), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection is not served while two are open"
    );
    drop(first);
    let answer = read_to_close(&mut third, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// Hold an exclusive lock on the request table: inserts wait, as on an overloaded database.
async fn block_inserts(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = app.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE request IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

#[tokio::test]
async fn a_full_ingest_queue_sheds_load_with_503_instead_of_growing() {
    let app = app_with(ApiSettings {
        group_commit: GroupCommitConfig {
            max_batch: 1,
            workers: 1,
            queue_capacity: 1,
        },
        ..ApiSettings::default()
    })
    .await;
    let lock = block_inserts(&app).await;
    let url = format!("{}/requests", app.base);
    let mut posts = tokio::task::JoinSet::new();
    for i in 0..8 {
        let request = app
            .client
            .post(&url)
            .json(&request_body(&cid_for(&format!("shed{i}")).to_string()));
        posts.spawn(async move {
            let response = request.send().await.unwrap();
            (
                response.status().as_u16(),
                response.headers().contains_key("retry-after"),
            )
        });
    }
    // At most one insert in flight and one queued; the rest is refused at once.
    let mut shed = 0;
    while shed < 6 {
        let (status, retry_after) = timeout(Duration::from_secs(10), posts.join_next())
            .await
            .expect("shed requests are answered without waiting for the database")
            .unwrap()
            .unwrap();
        assert_eq!((status, retry_after), (503, true));
        shed += 1;
    }
    drop(lock);
    let mut created = 0;
    while let Some(answer) = posts.join_next().await {
        match answer.unwrap() {
            (201, _) => created += 1,
            (503, true) => shed += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&created),
        "the waiting requests complete: {created}"
    );
    assert_eq!(shed + created, 8);
    assert_eq!(app.request_count().await, created as i64);
}

#[tokio::test]
async fn a_request_over_its_time_limit_answers_503() {
    let app = app_with(ApiSettings {
        request_timeout: Duration::from_millis(300),
        ..ApiSettings::default()
    })
    .await;
    let lock = block_inserts(&app).await;
    let started = Instant::now();
    let (status, _) = app
        .post_json(&request_body(&cid_for("slow").to_string()))
        .await;
    assert_eq!(status, 503);
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(lock);
}
