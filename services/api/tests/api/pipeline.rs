//! The API's pipeline edges: publishing accepted requests, and witnesses from tree artifacts.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use cas_api::{ApiSettings, ArtifactWitnesses, IngestPublisher, PublisherConfig};
use cas_blob::{BlobStore, LocalDirBlobStore, S3BlobStore};
use cas_core::pipeline::{parse_ingest, tree_artifact_key};
use cas_merkle::{AnchorProof, MerkleTree, encode_artifact, verify_witness_car};
use cas_queue::{MemoryQueue, MultiQueue, Queue, SqsQueue, create_queue};
use cas_store::{AnchoredBatch, NewBatch, RequestStore, test_support::TestDb};
use uuid::Uuid;

use crate::helpers::*;

async fn drain(queue: &dyn Queue) -> Vec<cas_core::pipeline::IngestEntry> {
    let mut entries = Vec::new();
    loop {
        let messages = queue
            .receive(10, Duration::from_secs(30), Duration::from_millis(200))
            .await
            .unwrap();
        if messages.is_empty() {
            return entries;
        }
        for m in messages {
            entries.extend(parse_ingest(&m.body).unwrap().reqs);
            queue.ack(&[m.receipt]).await.unwrap();
        }
    }
}

async fn publish_through(queue: Arc<dyn Queue>) {
    let db = TestDb::new().await.unwrap();
    let (publisher, task) = IngestPublisher::spawn(Arc::clone(&queue), PublisherConfig::default());
    let app = spawn_app_with_publisher(db.store.clone(), publisher).await;
    let cids: Vec<String> = (0..30)
        .map(|i| cid_for(&format!("publish{i}")).to_string())
        .collect();
    for cid in &cids {
        assert_eq!(app.post_json(&request_body(cid)).await.0, 201);
    }
    // Re-POSTs of existing requests are not published again.
    assert_eq!(app.post_json(&request_body(&cids[0])).await.0, 202);
    drop(app);
    // The publisher flushes and ends once the API is gone.
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();

    let entries = drain(queue.as_ref()).await;
    let mut published: Vec<String> = entries.iter().map(|e| e.cid.clone()).collect();
    published.sort();
    let mut expected = cids.clone();
    expected.sort();
    assert_eq!(
        published, expected,
        "each created request is published exactly once"
    );
    for entry in &entries {
        let stored = db.store.get_request(&entry.cid).await.unwrap().unwrap();
        assert_eq!(entry.id, stored.id);
        assert_eq!(entry.sid, stored.stream_id);
        assert_eq!(entry.org, stored.origin);
        assert_eq!(entry.ts, stored.timestamp.unix_nanos());
    }
}

#[tokio::test]
async fn created_requests_are_published_packed_to_a_memory_multi_queue() {
    let queues: Vec<Arc<dyn Queue>> = (0..3)
        .map(|_| Arc::new(MemoryQueue::new()) as Arc<dyn Queue>)
        .collect();
    publish_through(Arc::new(MultiQueue::new(queues))).await;
}

#[tokio::test]
async fn created_requests_are_published_to_sqs() {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL (scripts/test starts moto)");
    let client = SqsQueue::client_from_env(Some(endpoint)).await;
    let mut queues: Vec<Arc<dyn Queue>> = Vec::new();
    for i in 0..3 {
        let name = format!("api-ingest-{}-{i}", Uuid::new_v4().simple());
        let url = create_queue(&client, &name, Duration::from_secs(30))
            .await
            .unwrap();
        queues.push(Arc::new(SqsQueue::new(client.clone(), url)));
    }
    publish_through(Arc::new(MultiQueue::new(queues))).await;
}

/// Anchor `cids` in one batch with an artifact in `blobs`, as the worker does.
async fn anchor_batch(
    store: &cas_store::PgStore,
    blobs: &dyn BlobStore,
    cids: &[cas_merkle::Cid],
) -> (Uuid, MerkleTree) {
    let mut leaves = cids.to_vec();
    cas_merkle::sort_leaves(&mut leaves);
    let tree = MerkleTree::build(leaves.clone()).unwrap();
    let proof = AnchorProof::contract(tree.root(), [9u8; 32], "eip155:1337");
    let batch_id = Uuid::now_v7();
    blobs
        .put(
            &tree_artifact_key(batch_id),
            Bytes::from(encode_artifact(&tree, &proof, 4)),
        )
        .await
        .unwrap();
    let mut members = Vec::new();
    for leaf in &leaves {
        members.push(
            store
                .get_request(&leaf.to_string())
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    store
        .create_batch(&NewBatch {
            id: batch_id,
            members,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    store
        .mark_batch_anchored(
            batch_id,
            &AnchoredBatch {
                root_cid: tree.root().to_string(),
                proof_cid: proof.cid().to_string(),
                tx_hash: format!("0x{}", "09".repeat(32)),
                chain_id: "eip155:1337".to_owned(),
                anchored_at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
    (batch_id, tree)
}

async fn witnesses_are_served_from(
    blobs: Arc<dyn BlobStore>,
    local_root: Option<std::path::PathBuf>,
) {
    let db = TestDb::new().await.unwrap();
    let witnesses = Arc::new(ArtifactWitnesses::new(Arc::clone(&blobs), 8, 1000));
    let app = spawn_app_with(db.store.clone(), witnesses, ApiSettings::default()).await;
    let cids: Vec<cas_merkle::Cid> = (0..23).map(|i| cid_for(&format!("artifact{i}"))).collect();
    for cid in &cids {
        assert_eq!(app.post_json(&request_body(&cid.to_string())).await.0, 201);
    }
    let (batch_id, tree) = anchor_batch(&db.store, blobs.as_ref(), &cids).await;
    let mut first_answers = Vec::new();
    for cid in &cids {
        let (status, body) = app.get(&format!("/requests/{cid}")).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "COMPLETED");
        let car = cas_merkle::decode_base64(body["witnessCar"].as_str().unwrap()).unwrap();
        let verified = verify_witness_car(&car).await.unwrap();
        assert_eq!(verified.commit.prev, *cid);
        assert_eq!(verified.proof.root, tree.root());
        assert_eq!(
            body["anchorCommit"]["cid"],
            verified.anchor_commit_cid.to_string()
        );
        first_answers.push(body);
    }
    if let Some(root) = local_root {
        // Completed answers come from the cache once built: remove the artifact and ask again.
        std::fs::remove_file(root.join(tree_artifact_key(batch_id))).unwrap();
        for (cid, first) in cids.iter().zip(&first_answers) {
            let (status, body) = app.get(&format!("/requests/{cid}")).await;
            assert_eq!((status, &body), (200, first));
        }
    }
    // A batch whose artifact is missing answers 503 (retry), not 4xx.
    let lost = cid_for("lost-artifact");
    assert_eq!(app.post_json(&request_body(&lost.to_string())).await.0, 201);
    anchor_batch(&db.store, blobs.as_ref(), &[lost]).await;
    let missing = Arc::new(ArtifactWitnesses::new(
        Arc::new(LocalDirBlobStore::new(
            std::env::temp_dir().join(format!("cas-empty-{}", Uuid::new_v4())),
        )),
        8,
        8,
    ));
    let app2 = spawn_app_with(db.store.clone(), missing, ApiSettings::default()).await;
    let (status, body) = app2.get(&format!("/requests/{lost}")).await;
    assert_eq!(status, 503, "{body}");
}

#[tokio::test]
async fn witnesses_come_from_artifacts_in_a_local_directory() {
    let root = std::env::temp_dir().join(format!("cas-api-blobs-{}", Uuid::new_v4()));
    witnesses_are_served_from(Arc::new(LocalDirBlobStore::new(&root)), Some(root.clone())).await;
    let _ = std::fs::remove_dir_all(root);
}

#[tokio::test]
async fn witnesses_come_from_artifacts_in_s3() {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").expect("AWS_ENDPOINT_URL (scripts/test starts moto)");
    let bucket = format!("api-{}", Uuid::new_v4().simple());
    let store = S3BlobStore::from_env(bucket, Some("cas".to_owned()), Some(endpoint)).await;
    store.ensure_bucket().await.unwrap();
    witnesses_are_served_from(Arc::new(store), None).await;
}
