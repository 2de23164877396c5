//! API tests: real HTTP against the app on a random port, each with its own PostgreSQL
//! database.

mod auth;
mod ceramic_one;
mod helpers;
mod hostile;
mod limits;
mod pipeline;

use std::sync::Arc;

use cas_api::ApiSettings;
use cas_merkle::{AnchorProof, MerkleTree, verify_witness_car};
use cas_store::{AnchoredBatch, NewBatch, RequestStore, test_support::TestDb};
use helpers::*;
use serde_json::{Value, json};

fn assert_presentation_shape(body: &Value, status: &str) {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {body}"));
    assert_eq!(obj["status"], status);
    for key in ["id", "cid", "streamId", "message"] {
        assert!(obj[key].is_string(), "{key} must be a string in {body}");
    }
    for key in ["createdAt", "updatedAt"] {
        assert!(
            obj[key].is_i64(),
            "{key} must be an integer (unix ms) in {body}"
        );
    }
    let created = obj["createdAt"].as_i64().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        (now - 600_000..=now + 1_000).contains(&created),
        "createdAt is unix ms: {created}"
    );
    uuid::Uuid::parse_str(obj["id"].as_str().unwrap()).expect("id is a uuid");
}

#[tokio::test]
async fn post_then_get_round_trip_has_the_reference_shape() {
    let app = spawn_app().await;
    let cid = cid_for("round-trip").to_string();
    let (status, created) = app.post_json(&request_body(&cid)).await;
    assert_eq!(status, 201, "{created}");
    assert_presentation_shape(&created, "PENDING");
    assert_eq!(created["cid"], cid.as_str());
    assert_eq!(created["streamId"], STREAM);
    assert_eq!(created["message"], "Request is pending.");
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(
        keys.len(),
        7,
        "no anchorCommit/witnessCar while pending: {keys:?}"
    );

    let (status, fetched) = app.get(&format!("/requests/{cid}")).await;
    assert_eq!(status, 200);
    assert_eq!(fetched, created);

    // Re-POST (how ceramic-one polls): 202 with the same request.
    let (status, again) = app.post_json(&request_body(&cid)).await;
    assert_eq!(status, 202);
    assert_eq!(again, created);
    assert_eq!(app.request_count().await, 1);
}

#[tokio::test]
async fn cid_strings_are_canonicalized() {
    let app = spawn_app().await;
    let cid = cid_for("canonical");
    let b58 = cid
        .to_string_of_base(cid::multibase::Base::Base58Btc)
        .unwrap();
    let (status, body) = app.post_json(&request_body(&b58)).await;
    assert_eq!(status, 201);
    assert_eq!(body["cid"], cid.to_string());
    let (status, _) = app.get(&format!("/requests/{b58}")).await;
    assert_eq!(
        status, 200,
        "GET by another encoding of the same CID finds it"
    );
}

#[tokio::test]
async fn car_form_request_from_the_recorded_sample() {
    let app = spawn_app().await;
    let car = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/cas-car-request.car"
    ))
    .unwrap();
    let expect: Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/cas-car-request.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let expect = &expect["expect"];
    let (status, body) = app
        .post_raw(Some("application/vnd.ipld.car"), car.clone())
        .await;
    assert_eq!(status, expect["status"].as_u64().unwrap() as u16, "{body}");
    assert_eq!(body["cid"], expect["cid"]);
    assert_eq!(body["streamId"], expect["streamId"]);
    let stored = app
        .store
        .get_request(expect["cid"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.timestamp,
        cas_core::ClientTimestamp::parse(expect["timestamp"].as_str().unwrap()).unwrap()
    );
    let (status, _) = app.post_raw(Some("application/vnd.ipld.car"), car).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn every_malformed_input_class_is_a_400_and_stores_nothing() {
    let app = spawn_app().await;
    let good_cid = cid_for("malformed").to_string();
    let cases: Vec<(&str, Option<&str>, Vec<u8>, &str)> = vec![
        ("bad cid", Some("application/json"),
         serde_json::to_vec(&json!({"streamId": STREAM, "cid": "bafy-nope", "timestamp": "2024-01-01T00:00:00Z"})).unwrap(),
         "not a valid CID"),
        ("empty cid", Some("application/json"),
         serde_json::to_vec(&json!({"streamId": STREAM, "cid": "", "timestamp": "2024-01-01T00:00:00Z"})).unwrap(),
         "cid is empty"),
        ("bad stream id", Some("application/json"),
         serde_json::to_vec(&json!({"streamId": "k123", "cid": good_cid, "timestamp": "2024-01-01T00:00:00Z"})).unwrap(),
         "invalid streamId"),
        ("missing timestamp", Some("application/json"),
         serde_json::to_vec(&json!({"streamId": STREAM, "cid": good_cid})).unwrap(),
         "timestamp is required"),
        ("bad timestamp", Some("application/json"),
         serde_json::to_vec(&json!({"streamId": STREAM, "cid": good_cid, "timestamp": "soon"})).unwrap(),
         "not an RFC 3339"),
        ("not json", Some("application/json"), b"{\"streamId\":".to_vec(), "not a JSON object"),
        ("json array", None, b"[1,2]".to_vec(), "not a JSON object"),
        ("garbage car", Some("application/vnd.ipld.car"), b"\x01\x02garbage".to_vec(), "not a valid CAR"),
        ("empty car", Some("application/vnd.ipld.car"), Vec::new(), "not a valid CAR"),
        ("wrong content type", Some("text/plain"),
         serde_json::to_vec(&request_body(&good_cid)).unwrap(), "unsupported content type"),
        ("form content type", Some("application/x-www-form-urlencoded"),
         b"cid=x".to_vec(), "unsupported content type"),
    ];
    for (name, content_type, body, needle) in cases {
        let (status, answer) = app.post_raw(content_type, body).await;
        assert_eq!(status, 400, "{name}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no error string in {answer}"));
        assert!(
            error.contains(needle),
            "{name}: {error:?} should mention {needle:?}"
        );
    }
    assert_eq!(app.request_count().await, 0, "bad input stores nothing");
}

#[tokio::test]
async fn oversize_bodies_are_rejected_with_413() {
    let app = spawn_app().await;
    let mut body = request_body(&cid_for("big").to_string());
    body["padding"] = json!("x".repeat(200 * 1024));
    let (status, answer) = app.post_json(&body).await;
    assert_eq!(status, 413, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("exceeds"));

    let car = vec![0u8; 1024 * 1024 + 1];
    let (status, answer) = app.post_raw(Some("application/vnd.ipld.car"), car).await;
    assert_eq!(status, 413, "{answer}");

    // Without a content-length (chunked), the limit still holds.
    let stream = futures::stream::iter((0..300).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])));
    let response = app
        .client
        .post(format!("{}/requests", app.base))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(app.request_count().await, 0);
}

/// A client that sends a whole 3 MB body before reading (as HTTP clients do), at the pace of
/// a network rather than all at once, reads a 413, not a broken pipe or a connection reset:
/// the service reads the oversize body to its end and throws it away before answering,
/// rather than closing the connection while the client is still sending.
#[tokio::test]
async fn an_oversize_body_gets_its_413_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let addr = app
        .base
        .trim_start_matches("http://")
        .trim_end_matches("/api/v0")
        .to_owned();
    let body = vec![b' '; 3 * 1024 * 1024];
    for chunked in [false, true] {
        for _ in 0..3 {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_owned()
            } else {
                format!("Content-Length: {}", body.len())
            };
            let head = format!(
                "POST /api/v0/requests HTTP/1.1\r\nHost: cas\r\nContent-Type: application/json\r\n\
                 {framing}\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            for piece in body.chunks(64 * 1024) {
                if chunked {
                    let size = format!("{:x}\r\n", piece.len());
                    stream.write_all(size.as_bytes()).await.expect("sent");
                }
                stream
                    .write_all(piece)
                    .await
                    .expect("the whole body is taken");
                if chunked {
                    stream.write_all(b"\r\n").await.expect("sent");
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            if chunked {
                stream.write_all(b"0\r\n\r\n").await.expect("sent");
            }
            let mut answer = Vec::new();
            stream
                .read_to_end(&mut answer)
                .await
                .expect("the answer is read, not reset");
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.starts_with("HTTP/1.1 413"),
                "chunked {chunked}: {answer}"
            );
            assert!(answer.contains("exceeds"), "{answer}");
        }
    }
    assert_eq!(app.request_count().await, 0);
}

#[tokio::test]
async fn get_answers_400_for_bad_cids_and_404_for_unknown_ones() {
    let app = spawn_app().await;
    let (status, body) = app.get("/requests/not-a-cid").await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "CID is empty or malformed"}))
    );
    let (status, body) = app.get("/requests/").await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "CID is empty or malformed"}))
    );
    let cid = cid_for("unknown").to_string();
    let (status, body) = app.get(&format!("/requests/{cid}")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"error": format!("Request does not exist for cid {cid}")})
    );
}

#[tokio::test]
async fn supported_chains_lists_exactly_one_chain_once_known() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/service-info/supported_chains", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.bytes().await.unwrap().is_empty());
    app.chain_id.set("eip155:1337".to_owned()).unwrap();
    let (status, body) = app.get("/service-info/supported_chains").await;
    assert_eq!(
        (status, body),
        (200, json!({"supportedChains": ["eip155:1337"]}))
    );
}

#[tokio::test]
async fn healthcheck_and_cors() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(format!("{}/healthcheck", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert!(response.bytes().await.unwrap().is_empty());

    let preflight = app
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/requests", app.base))
        .header("origin", "https://example.org")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn database_outage_answers_5xx_never_4xx() {
    let store = cas_store::PgStore::connect_lazy(
        "postgres://postgres@127.0.0.1:1/none",
        2,
        std::time::Duration::from_millis(300),
    )
    .unwrap();
    let app = spawn_app_with(
        store,
        Arc::new(cas_api::NoWitnesses),
        ApiSettings::default(),
    )
    .await;
    let cid = cid_for("outage").to_string();
    let (status, body) = app.post_json(&request_body(&cid)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].is_string());
    let (status, _) = app.get(&format!("/requests/{cid}")).await;
    assert_eq!(status, 503);
    let response = app
        .client
        .get(format!("{}/healthcheck", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    let response = app
        .client
        .post(format!("{}/requests", app.base))
        .json(&request_body(&cid))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response.headers()["retry-after"],
        "5",
        "clients are told when to retry"
    );
}

#[tokio::test]
async fn completed_requests_carry_a_verifiable_witness() {
    let db = TestDb::new().await.unwrap();
    // Five requests; anchor them in one tree with a proof, as the worker will.
    let cids: Vec<cas_merkle::Cid> = (0..5).map(|i| cid_for(&format!("done{i}"))).collect();
    let mut leaves = cids.clone();
    cas_merkle::sort_leaves(&mut leaves);
    let tree = MerkleTree::build(leaves.clone()).unwrap();
    let proof = AnchorProof::contract(tree.root(), [7u8; 32], "eip155:1337");
    let witnesses = Arc::new(TreeWitnesses {
        tree,
        proof: proof.clone(),
    });
    let app = spawn_app_with(db.store.clone(), witnesses.clone(), ApiSettings::default()).await;

    for cid in &cids {
        assert_eq!(app.post_json(&request_body(&cid.to_string())).await.0, 201);
    }
    let stream: cas_core::StreamId = STREAM.parse().unwrap();
    let mut members = Vec::new();
    let mut commits = Vec::new();
    for (index, leaf) in leaves.iter().enumerate() {
        let record = db
            .store
            .get_request(&leaf.to_string())
            .await
            .unwrap()
            .unwrap();
        members.push(record.id);
        commits.push(
            witnesses
                .tree
                .anchor_commit(index, *stream.init_cid(), proof.cid())
                .unwrap(),
        );
    }
    let batch_id = uuid::Uuid::now_v7();
    db.store
        .create_batch(&NewBatch {
            id: batch_id,
            members,
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    // Batched but not anchored: still pending.
    assert_eq!(
        app.get(&format!("/requests/{}", leaves[0])).await.1["status"],
        "PENDING"
    );
    db.store
        .mark_batch_anchored(
            batch_id,
            &AnchoredBatch {
                root_cid: witnesses.tree.root().to_string(),
                proof_cid: proof.cid().to_string(),
                tx_hash: format!("0x{}", "07".repeat(32)),
                chain_id: "eip155:1337".to_owned(),
                anchored_at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();

    let mut answers = Vec::new();
    for (leaf, commit) in leaves.iter().zip(&commits) {
        let (status, body) = app.get(&format!("/requests/{leaf}")).await;
        answers.push(body.clone());
        assert_eq!(status, 200);
        assert_presentation_shape(&body, "COMPLETED");
        assert_eq!(body["message"], "CID successfully anchored.");
        assert_eq!(body["anchorCommit"]["cid"], commit.cid().to_string());
        let witness = body["witnessCar"].as_str().expect("witnessCar");
        assert!(!witness.contains('='), "base64 without padding");
        assert!(
            !witness.contains('-') && !witness.contains('_'),
            "standard alphabet"
        );
        let car = cas_merkle::decode_base64(witness).unwrap();
        let verified = verify_witness_car(&car).await.unwrap();
        assert_eq!(verified.commit.prev, *leaf);
        assert_eq!(verified.anchor_commit_cid, commit.cid());
        assert_eq!(verified.proof.root, witnesses.tree.root());
        assert_eq!(verified.commit.path, commit.path);
        assert!(body["updatedAt"].as_i64().unwrap() >= body["createdAt"].as_i64().unwrap());

        // ceramic-one polls by re-POSTing; the 202 carries the witness too.
        let (status, again) = app.post_json(&request_body(&leaf.to_string())).await;
        assert_eq!(status, 202);
        assert_eq!(again, body);
    }

    // Final answers never change, so they are served from memory: with the rows gone, a
    // poll gets the same answer and a re-POST writes nothing.
    sqlx::query("DELETE FROM batch_member")
        .execute(db.store.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM request")
        .execute(db.store.pool())
        .await
        .unwrap();
    for (leaf, first) in leaves.iter().zip(&answers) {
        let (status, body) = app.get(&format!("/requests/{leaf}")).await;
        assert_eq!((status, &body), (200, first));
        let (status, body) = app.post_json(&request_body(&leaf.to_string())).await;
        assert_eq!((status, &body), (202, first));
    }
    assert_eq!(
        app.request_count().await,
        0,
        "re-POSTs of completed requests write nothing"
    );
}

#[tokio::test]
async fn witness_outage_is_a_503_not_a_missing_request() {
    let db = TestDb::new().await.unwrap();
    let app = spawn_app_with(
        db.store.clone(),
        Arc::new(BrokenWitnesses),
        ApiSettings::default(),
    )
    .await;
    let cid = cid_for("broken-witness").to_string();
    assert_eq!(app.post_json(&request_body(&cid)).await.0, 201);
    let record = db.store.get_request(&cid).await.unwrap().unwrap();
    let batch_id = uuid::Uuid::now_v7();
    db.store
        .create_batch(&NewBatch {
            id: batch_id,
            members: vec![record.id],
            created_at: chrono::Utc::now(),
        })
        .await
        .unwrap();
    db.store
        .mark_batch_anchored(
            batch_id,
            &AnchoredBatch {
                root_cid: cid_for("root").to_string(),
                proof_cid: cid_for("proof").to_string(),
                tx_hash: "0x00".to_owned(),
                chain_id: "eip155:1337".to_owned(),
                anchored_at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
    let (status, body) = app.get(&format!("/requests/{cid}")).await;
    assert_eq!(status, 503, "{body}");
    let (status, _) = app.post_json(&request_body(&cid)).await;
    assert_eq!(status, 503);
}

#[tokio::test]
async fn concurrent_posts_of_one_cid_create_it_once() {
    let app = Arc::new(spawn_app().await);
    let cid = cid_for("race").to_string();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let app = Arc::clone(&app);
        let cid = cid.clone();
        tasks.push(tokio::spawn(async move {
            app.post_json(&request_body(&cid)).await
        }));
    }
    let mut statuses = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        statuses.push(status);
        ids.insert(body["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == 202).count(), 49);
    assert_eq!(ids.len(), 1);
}

#[tokio::test]
async fn ceramic_one_and_js_ceramic_bodies_are_accepted() {
    let app = spawn_app().await;
    // ceramic-one: unloadable stream id (type 4 over its node key), nanoseconds, +00:00.
    let unloadable = cas_core::StreamId::new(4, cid_for("node-key")).to_string();
    let body = json!({
        "streamId": unloadable,
        "cid": cid_for("c1-root").to_string(),
        "timestamp": "2024-07-30T00:11:15.631123456+00:00",
        "ceramicOneVersion": "ceramic-one/0.40.0",
    });
    let (status, answer) = app.post_json(&body).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["streamId"], unloadable.as_str());
    let stored = app
        .store
        .get_request(answer["cid"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.timestamp.unix_nanos() % 1_000_000_000, 631_123_456);

    // js-ceramic: Z with milliseconds, both version fields, a dag-jose CID.
    let jose = cid::Cid::new_v1(0x85, cid_for("jose").hash().to_owned());
    let body = json!({
        "streamId": STREAM,
        "cid": jose.to_string(),
        "timestamp": "2024-07-30T00:11:15.631Z",
        "jsCeramicVersion": "6.5.0",
        "ceramicOneVersion": "",
        "someFutureField": {"ignored": true},
    });
    let (status, answer) = app.post_json(&body).await;
    assert_eq!(status, 201, "{answer}");
    assert!(answer["cid"].as_str().unwrap().starts_with("bagcqcera"));
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let app = spawn_app().await;
    let (status, body) = app.get("/nothing-here").await;
    assert_eq!((status, body), (404, json!({"error": "Not found"})));
}
