//! The conformance suite against both blob stores: a local directory, and S3 on the moto
//! emulator that `scripts/test` starts (it exports `AWS_ENDPOINT_URL` and credentials).

use std::time::{Duration, Instant};

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig,
};
use bytes::Bytes;
use cas_blob::{BlobError, BlobStore, LocalDirBlobStore, S3BlobStore, testsuite};

/// The emulator's endpoint; a missing one is a failure, not a skip.
fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!(
            "AWS_ENDPOINT_URL is not set: the S3 tests need the moto emulator. \
             Run them through scripts/test, which starts it and exports AWS_ENDPOINT_URL, \
             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION."
        )
    })
}

fn unique_bucket() -> String {
    format!("cas-blob-test-{}", uuid::Uuid::new_v4().simple())
}

async fn s3_store(prefix: Option<String>) -> S3BlobStore {
    let store = S3BlobStore::from_env(unique_bucket(), prefix, Some(endpoint())).await;
    store.ensure_bucket().await.expect("create bucket");
    store
}

#[tokio::test]
async fn local_dir_passes_suite() {
    let root = std::env::temp_dir().join(format!("cas-blob-test-{}", uuid::Uuid::new_v4()));
    let store = LocalDirBlobStore::new(&root);
    testsuite::run_all(&store).await;
    std::fs::remove_dir_all(&root).expect("remove test directory");
}

#[tokio::test]
async fn s3_passes_suite() {
    let store = s3_store(None).await;
    testsuite::run_all(&store).await;
}

#[tokio::test]
async fn s3_with_prefix_passes_suite() {
    let store = s3_store(Some("some/prefix/".to_owned())).await;
    testsuite::run_all(&store).await;
    // The prefix is really used: the raw object sits under it.
    store.put("k", Bytes::from_static(b"v")).await.expect("put");
    let raw = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key("some/prefix/k")
        .send()
        .await
        .expect("object under the prefix");
    let body = raw.body.collect().await.expect("body").into_bytes();
    assert_eq!(body, Bytes::from_static(b"v"));
}

#[tokio::test]
async fn s3_ensure_bucket_is_idempotent() {
    let store = s3_store(None).await;
    store.ensure_bucket().await.expect("second ensure_bucket");
    store
        .put("x", Bytes::from_static(b"1"))
        .await
        .expect("put after ensure");
}

#[tokio::test]
async fn s3_missing_bucket_is_an_error_not_none() {
    // No ensure_bucket: the bucket does not exist.
    let store = S3BlobStore::from_env(unique_bucket(), None, Some(endpoint())).await;
    let err = store.get("k").await.expect_err("get from a missing bucket");
    assert!(matches!(err, BlobError::Internal(_)), "{err:?}");
    let err = store
        .put("k", Bytes::from_static(b"v"))
        .await
        .expect_err("put to a missing bucket");
    assert!(matches!(err, BlobError::Internal(_)), "{err:?}");
}

#[tokio::test]
async fn unreachable_endpoint_is_retryable() {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .endpoint_url("http://127.0.0.1:1")
        .force_path_style(true)
        .retry_config(RetryConfig::standard().with_max_attempts(2))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(1))
                .operation_timeout(Duration::from_secs(5))
                .build(),
        )
        .build();
    let store = S3BlobStore::new(aws_sdk_s3::Client::from_conf(config), "nowhere", None);
    let started = Instant::now();
    for result in [
        store.put("k", Bytes::from_static(b"v")).await.map(|_| None),
        store.get("k").await,
        store.get_range("k", 0..1).await,
        store.get_range("k", 0..0).await,
    ] {
        let err = result.expect_err("unreachable endpoint");
        assert!(matches!(err, BlobError::Unavailable(_)), "{err:?}");
        assert!(err.is_retryable());
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}
