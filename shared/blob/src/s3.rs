//! [`S3BlobStore`]: objects in an S3 bucket (any S3-compatible endpoint, path-style).

use std::ops::Range;

use async_trait::async_trait;
use aws_sdk_s3::{
    Client,
    config::BehaviorVersion,
    error::{DisplayErrorContext, ProvideErrorMetadata, SdkError},
    primitives::ByteStream,
    types::{BucketLocationConstraint, CreateBucketConfiguration},
};
use bytes::Bytes;

use crate::{BlobError, BlobStore, validate_key};

/// A [`BlobStore`] on an S3 bucket, with an optional key prefix.
///
/// Errors: timeouts, connection failures, 5xx answers and throttling are
/// [`BlobError::Unavailable`]; a missing key is `Ok(None)`; everything else is
/// [`BlobError::Internal`]. The SDK's own retries run before an error is returned.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    bucket: String,
    /// Empty, or ends with `/`.
    prefix: String,
}

impl S3BlobStore {
    /// A store on `bucket` through `client`. Object keys are `<prefix>/<key>` when `prefix`
    /// is given (leading and trailing `/` of the prefix are ignored).
    pub fn new(client: Client, bucket: impl Into<String>, prefix: Option<String>) -> Self {
        let prefix = match prefix.as_deref().map(|p| p.trim_matches('/')) {
            None | Some("") => String::new(),
            Some(p) => format!("{p}/"),
        };
        Self {
            client,
            bucket: bucket.into(),
            prefix,
        }
    }

    /// A store whose client is configured from the environment (region, credentials,
    /// `AWS_ENDPOINT_URL`, …) as aws-config does it, with path-style addressing.
    /// `endpoint` overrides the endpoint URL from the environment.
    pub async fn from_env(
        bucket: impl Into<String>,
        prefix: Option<String>,
        endpoint: Option<String>,
    ) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let sdk_config = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(true)
            .build();
        Self::new(Client::from_conf(config), bucket, prefix)
    }

    /// The S3 client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Create the bucket if it does not exist (for development and tests). A bucket that
    /// already exists and is ours counts as success.
    pub async fn ensure_bucket(&self) -> Result<(), BlobError> {
        if self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .is_ok()
        {
            return Ok(());
        }
        let mut request = self.client.create_bucket().bucket(&self.bucket);
        // us-east-1 is the default and must not be named as a location constraint.
        if let Some(region) = self.client.config().region().map(|r| r.as_ref().to_owned())
            && region != "us-east-1"
        {
            request = request.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region.as_str()))
                    .build(),
            );
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("BucketAlreadyOwnedByYou") => Ok(()),
            Err(err) => Err(map_err("create bucket", &self.bucket, err)),
        }
    }

    fn object_key(&self, key: &str) -> Result<String, BlobError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    /// Whether the object exists (a HEAD request).
    async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_not_found(&err) => Ok(false),
            Err(err) => Err(map_err("head", key, err)),
        }
    }
}

/// Whether `err` says the key (or bucket-level object) does not exist.
fn is_not_found<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    matches!(err.code(), Some("NoSuchKey" | "NotFound"))
        || matches!(err, SdkError::ServiceError(e) if e.raw().status().as_u16() == 404
            && err.code() != Some("NoSuchBucket"))
}

/// Error codes that mean "slow down" or "try again".
const RETRYABLE_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "InternalError",
];

fn map_err<E>(op: &str, key: &str, err: SdkError<E>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
        SdkError::ResponseError(e) => e.raw().status().is_server_error(),
        SdkError::ServiceError(e) => {
            let status = e.raw().status().as_u16();
            status >= 500
                || status == 429
                || err
                    .code()
                    .is_some_and(|code| RETRYABLE_CODES.contains(&code))
        }
        _ => false,
    };
    let message = format!("{op} {key:?}: {}", DisplayErrorContext(&err));
    if retryable {
        BlobError::Unavailable(message)
    } else {
        BlobError::Internal(message)
    }
}

async fn collect(key: &str, body: ByteStream) -> Result<Bytes, BlobError> {
    body.collect()
        .await
        .map(|data| data.into_bytes())
        // The connection broke while streaming the body: a retry may work.
        .map_err(|err| BlobError::Unavailable(format!("read body of {key:?}: {err}")))
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        let key = self.object_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|err| map_err("put", &key, err))?;
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>, BlobError> {
        let key = self.object_key(key)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(collect(&key, output.body).await?)),
            Err(err) if is_not_found(&err) => Ok(None),
            Err(err) => Err(map_err("get", &key, err)),
        }
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, BlobError> {
        let key = self.object_key(key)?;
        if range.start >= range.end {
            return Ok(self.exists(&key).await?.then(Bytes::new));
        }
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .range(header)
            .send()
            .await
        {
            Ok(output) => output,
            Err(err) if is_not_found(&err) => return Ok(None),
            // The range starts at or past the end of an existing object.
            Err(err) if err.code() == Some("InvalidRange") => return Ok(Some(Bytes::new())),
            Err(err) => return Err(map_err("get range of", &key, err)),
        };
        let partial = output.content_range().is_some();
        let bytes = collect(&key, output.body).await?;
        if partial {
            return Ok(Some(bytes));
        }
        // No Content-Range: the server ignored the range and sent the whole object
        // (S3 does this for an empty object, some servers always do). Clip it here.
        let len = bytes.len() as u64;
        let start = range.start.min(len);
        let end = range.end.clamp(start, len);
        Ok(Some(bytes.slice(start as usize..end as usize)))
    }
}
