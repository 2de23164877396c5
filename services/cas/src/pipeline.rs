//! Connecting the roles to their queues and blob storage.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use cas_blob::{BlobStore, S3BlobStore};
use cas_queue::{MultiQueue, Queue, SqsQueue, create_queue_with_dlq};

use crate::config::PipelineArgs;

/// The queues and bucket of one cluster.
pub(crate) struct Pipeline {
    /// The ingest multi-queue.
    pub(crate) ingest: Arc<dyn Queue>,
    /// The batch queue.
    pub(crate) batches: Arc<dyn Queue>,
    /// Batch files and tree artifacts.
    pub(crate) blobs: Arc<dyn BlobStore>,
}

/// Visibility timeouts used when the queues are created here.
pub(crate) const INGEST_VISIBILITY: Duration = Duration::from_secs(15 * 60);
pub(crate) const BATCH_VISIBILITY: Duration = Duration::from_secs(90);

async fn queue_url(
    client: &aws_sdk_sqs::Client,
    args: &PipelineArgs,
    name: &str,
    visibility: Duration,
) -> anyhow::Result<String> {
    if args.create_queues {
        let (url, _dlq) = create_queue_with_dlq(client, name, visibility, args.max_receives)
            .await
            .with_context(|| format!("creating queue {name}"))?;
        return Ok(url);
    }
    let output = client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", aws_sdk_sqs::error::DisplayErrorContext(e)))
        .with_context(|| {
            format!("queue {name} not found (create it, or pass --create-queues in development)")
        })?;
    output
        .queue_url()
        .map(str::to_owned)
        .with_context(|| format!("no url for queue {name}"))
}

impl Pipeline {
    /// Resolve (or create) the queues and open the bucket. `None` if no bucket is configured.
    pub(crate) async fn connect(args: &PipelineArgs) -> anyhow::Result<Option<Self>> {
        let Some(bucket) = &args.s3_bucket else {
            return Ok(None);
        };
        anyhow::ensure!(
            args.ingest_queues >= 1,
            "at least one ingest queue is needed"
        );
        let client = SqsQueue::client_from_env(None).await;
        let mut ingest: Vec<Arc<dyn Queue>> = Vec::with_capacity(args.ingest_queues);
        for i in 0..args.ingest_queues {
            let name = format!("{}ingest-{i}", args.queue_prefix);
            let url = queue_url(&client, args, &name, INGEST_VISIBILITY).await?;
            ingest.push(Arc::new(SqsQueue::new(client.clone(), url)));
        }
        let batch_name = format!("{}batch", args.queue_prefix);
        let batch_url = queue_url(&client, args, &batch_name, BATCH_VISIBILITY).await?;
        let prefix = (!args.s3_prefix.is_empty()).then(|| args.s3_prefix.clone());
        let blobs = S3BlobStore::from_env(bucket.clone(), prefix, None).await;
        if args.create_bucket {
            blobs
                .ensure_bucket()
                .await
                .with_context(|| format!("creating bucket {bucket}"))?;
        }
        tracing::info!(
            ingest_queues = args.ingest_queues,
            queue_prefix = %args.queue_prefix,
            bucket = %bucket,
            "queues and bucket ready"
        );
        Ok(Some(Self {
            ingest: Arc::new(MultiQueue::new(ingest)),
            batches: Arc::new(SqsQueue::new(client, batch_url)),
            blobs: Arc::new(blobs),
        }))
    }

    /// Like [`Pipeline::connect`], but a bucket is required.
    pub(crate) async fn require(args: &PipelineArgs) -> anyhow::Result<Self> {
        Self::connect(args)
            .await?
            .context("--s3-bucket (CAS_S3_BUCKET) is required for this role")
    }
}
