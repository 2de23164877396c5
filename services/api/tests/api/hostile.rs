//! Hostile input at the HTTP surface, as property tests: whatever a client sends, the answer
//! is never a 5xx, and whatever is accepted can be anchored (it survives the ingest
//! message, the batch file, the Merkle tree, the tree artifact and a verified witness).

use std::{collections::BTreeMap, sync::Arc};

use cas_api::{ApiSettings, AuthMode, AuthSettings, NoWitnesses};
use cas_auth::{Ed25519Signer, RequestSigner, sha256_digest};
use cas_core::{
    ClientTimestamp, StreamId,
    pipeline::{IngestEntry, decode_batch_file, encode_batch_file, pack_ingest, parse_ingest},
};
use cas_merkle::{
    AnchorProof, ArtifactIndex, Cid, MerkleTree, encode_artifact, verify_witness_car,
};
use cas_store::{PgStore, RequestStore, test_support::TestDb};
use cid::{multibase::Base, multihash::Multihash};
use ipld_core::ipld::Ipld;
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use serde_json::{Value, json};

use crate::helpers::*;

/// Hostile bodies generated per test; each is one HTTP round trip.
const CASES: u32 = 160;

fn any_cid() -> impl Strategy<Value = Cid> {
    let codec = prop_oneof![
        Just(0x71u64),
        Just(0x85),
        Just(0x55),
        Just(0x70),
        any::<u64>()
    ];
    let hash = prop_oneof![
        any::<[u8; 32]>().prop_map(|d| Multihash::<64>::wrap(0x12, &d).unwrap()),
        prop::collection::vec(any::<u8>(), 0..=64)
            .prop_map(|d| Multihash::<64>::wrap(0x00, &d).unwrap()),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 1..=64))
            .prop_map(|(code, d)| Multihash::<64>::wrap(code, &d).unwrap()),
    ];
    (codec, hash, 0..6u8).prop_map(|(codec, hash, v0)| {
        if v0 == 0
            && hash.code() == 0x12
            && let Ok(cid) = Cid::new_v0(hash)
        {
            return cid;
        }
        Cid::new_v1(codec, hash)
    })
}

fn cid_text(cid: Cid, base: u8) -> String {
    let base = [
        Base::Base32Lower,
        Base::Base58Btc,
        Base::Base36Lower,
        Base::Base16Upper,
        Base::Base2,
    ][base as usize % 5];
    cid.to_string_of_base(base)
        .unwrap_or_else(|_| cid.to_string())
}

fn any_stream_id() -> impl Strategy<Value = StreamId> {
    (prop_oneof![0..5u64, any::<u64>()], any_cid())
        .prop_map(|(kind, init)| StreamId::new(kind, init))
}

fn any_timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        (i64::MIN..i64::MAX).prop_map(|n| ClientTimestamp::from_unix_nanos(n).to_string()),
        (0i64..4_000_000_000_000).prop_map(|ms| {
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }),
        Just("2024-07-30T00:11:15.631123456+00:00".to_owned()),
        Just("2023-01-25".to_owned()),
        Just("2023-12-31T23:59:60Z".to_owned()),
        Just("+275760-09-13T00:00:00.000Z".to_owned()),
        Just("1677-09-21T00:12:43.145224191Z".to_owned()),
        ".{0,40}",
    ]
}

/// A JSON field: mostly well formed, sometimes missing, mistyped or junk.
fn field(valid: BoxedStrategy<String>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        6 => valid.prop_map(|s| Some(Value::String(s))),
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        1 => any::<i64>().prop_map(|n| Some(json!(n))),
        1 => ".{0,60}".prop_map(|s| Some(Value::String(s))),
        1 => "[a-z1-9]{1000,3000}".prop_map(|s| Some(Value::String(format!("k{s}")))),
        1 => Just(Some(json!(["bafy"]))),
    ]
}

fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let cid = (any_cid(), any::<u8>())
        .prop_map(|(c, b)| cid_text(c, b))
        .boxed();
    let stream = (any_stream_id(), any::<bool>())
        .prop_map(|(s, b58)| {
            if b58 {
                cid::multibase::encode(Base::Base58Btc, s.to_bytes())
            } else {
                s.to_string()
            }
        })
        .boxed();
    let extra = prop::collection::btree_map("[a-zA-Z]{1,12}", ".{0,20}", 0..3);
    (
        field(stream),
        field(cid),
        field(any_timestamp().boxed()),
        extra,
    )
        .prop_map(|(stream, cid, timestamp, extra)| {
            let mut object: serde_json::Map<String, Value> = extra
                .into_iter()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            for (key, value) in [("streamId", stream), ("cid", cid), ("timestamp", timestamp)] {
                if let Some(value) = value {
                    object.insert(key.to_owned(), value);
                }
            }
            serde_json::to_vec(&object).unwrap()
        })
}

/// A CARv1 whose root block is a request map with fuzzed fields.
fn car_body() -> impl Strategy<Value = Vec<u8>> {
    let stream = prop_oneof![
        4 => any_stream_id().prop_map(|s| Ipld::Bytes(s.to_bytes())),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Ipld::Bytes),
        1 => Just(Ipld::String("k2t6".to_owned())),
    ];
    let tip = prop_oneof![
        4 => any_cid().prop_map(Ipld::Link),
        1 => Just(Ipld::Null),
    ];
    let timestamp = prop_oneof![
        4 => any_timestamp().prop_map(Ipld::String),
        1 => any::<i64>().prop_map(|n| Ipld::Integer(n.into())),
    ];
    (stream, tip, timestamp, any::<u8>()).prop_map(|(stream, tip, timestamp, drop)| {
        let mut map = BTreeMap::new();
        for (i, (key, value)) in [("streamId", stream), ("tip", tip), ("timestamp", timestamp)]
            .into_iter()
            .enumerate()
        {
            if drop as usize % 8 != i {
                map.insert(key.to_owned(), value);
            }
        }
        let block = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).unwrap();
        let root = cas_merkle::dag_cbor_cid(&block);
        let header = serde_ipld_dagcbor::to_vec(&Ipld::Map(BTreeMap::from([
            ("roots".to_owned(), Ipld::List(vec![Ipld::Link(root)])),
            ("version".to_owned(), Ipld::Integer(1)),
        ])))
        .unwrap();
        let mut car = Vec::new();
        push_varint(&mut car, header.len());
        car.extend_from_slice(&header);
        let root_bytes = root.to_bytes();
        push_varint(&mut car, root_bytes.len() + block.len());
        car.extend_from_slice(&root_bytes);
        car.extend_from_slice(&block);
        car
    })
}

fn push_varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn recorded_car() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/core/tests/data/cas-car-request.car"
    ))
    .unwrap()
}

/// The recorded CAR request with bytes flipped, cut or appended.
fn mutated_car() -> impl Strategy<Value = Vec<u8>> {
    let car = recorded_car();
    let len = car.len();
    (
        prop::collection::vec((0..len, any::<u8>()), 0..4),
        0..=len,
        prop::collection::vec(any::<u8>(), 0..8),
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut car = car.clone();
            for (at, byte) in flips {
                car[at] ^= byte;
            }
            car.truncate(cut.max(1));
            car.extend(tail);
            car
        })
}

#[derive(Debug, Clone)]
enum Hostile {
    Json(Vec<u8>),
    Car(Vec<u8>),
    Bytes(&'static str, Vec<u8>),
}

fn hostile() -> impl Strategy<Value = Hostile> {
    prop_oneof![
        8 => json_body().prop_map(Hostile::Json),
        4 => car_body().prop_map(Hostile::Car),
        2 => mutated_car().prop_map(Hostile::Car),
        1 => (
            prop_oneof![
                Just("application/json"),
                Just("application/vnd.ipld.car"),
                Just("text/plain"),
            ],
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(ct, bytes)| Hostile::Bytes(ct, bytes)),
    ]
}

/// Everything the pipeline does with an accepted request, short of the chain.
async fn assert_anchorable(store: &PgStore, cid_text: &str) -> Result<(), TestCaseError> {
    let record = store
        .get_request(cid_text)
        .await
        .unwrap()
        .ok_or_else(|| TestCaseError::fail("accepted but not stored"))?;
    let cid: Cid = cas_core::parse_cid(&record.cid).map_err(TestCaseError::fail)?;
    prop_assert_eq!(cid.to_string(), record.cid.clone(), "canonical cid string");
    let stream: StreamId = record
        .stream_id
        .parse()
        .map_err(|e| TestCaseError::fail(format!("stored stream id: {e}")))?;
    prop_assert_eq!(stream.to_string(), record.stream_id.clone());
    // API → scheduler.
    let entry = IngestEntry {
        id: record.id,
        cid: record.cid.clone(),
        sid: record.stream_id.clone(),
        org: record.origin.clone(),
        ts: record.timestamp.unix_nanos(),
    };
    let messages = pack_ingest(std::slice::from_ref(&entry), 256 * 1024)
        .map_err(|e| TestCaseError::fail(format!("ingest message: {e}")))?;
    prop_assert_eq!(parse_ingest(&messages[0]).unwrap().reqs, vec![entry]);
    // Scheduler → worker.
    let filler = cid_for("filler");
    let mut leaves = vec![cid, filler];
    cas_merkle::sort_leaves(&mut leaves);
    let batch = encode_batch_file(record.id, &leaves);
    prop_assert_eq!(decode_batch_file(&batch).unwrap().1, leaves.clone());
    // Worker: the tree, the artifact, and the witness the API serves from it.
    let index = leaves.iter().position(|l| *l == cid).unwrap();
    let tree = MerkleTree::build(leaves).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let proof = AnchorProof::contract(tree.root(), [1; 32], "eip155:1337");
    let artifact = encode_artifact(&tree, &proof, 4);
    let loaded = ArtifactIndex::load(&artifact).await.unwrap();
    let witness = loaded
        .witness(&artifact, index as u64, *stream.init_cid(), Some(&cid))
        .await
        .map_err(|e| TestCaseError::fail(format!("witness: {e}")))?;
    let verified = verify_witness_car(&witness.car)
        .await
        .map_err(|e| TestCaseError::fail(format!("verify: {e}")))?;
    prop_assert_eq!(verified.commit.prev, cid);
    prop_assert_eq!(verified.proof.root, tree.root());
    Ok(())
}

/// Run `CASES` hostile inputs against one app: each gets a 2xx, 4xx other than 5xx, and
/// accepted ones are anchorable.
fn run_hostile(signer: Option<Arc<Ed25519Signer>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (app, store) = runtime.block_on(async {
        let db = TestDb::new().await.unwrap();
        let mut settings = ApiSettings::default();
        if signer.is_some() {
            settings.auth = AuthSettings {
                mode: AuthMode::Relaxed,
                ..AuthSettings::default()
            };
        }
        let app = spawn_app_with(db.store.clone(), Arc::new(NoWitnesses), settings).await;
        (app, db.store)
    });
    let url = format!("{}/requests", app.base);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&hostile(), |input| {
            runtime.block_on(async {
                let (content_type, bytes) = match input {
                    Hostile::Json(b) => ("application/json", b),
                    Hostile::Car(b) => ("application/vnd.ipld.car", b),
                    Hostile::Bytes(ct, b) => (ct, b),
                };
                let mut request = app
                    .client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(bytes.clone());
                // A CAR without a readable root cannot be signed for: 401 is right for it.
                let mut unsignable = false;
                if let Some(signer) = &signer {
                    let digest = if content_type == "application/vnd.ipld.car" {
                        cas_auth::BodyDigest::Car(&bytes).compute()
                    } else {
                        Some(sha256_digest(&bytes))
                    };
                    unsignable = digest.is_none();
                    let token = signer.sign(&url, digest.as_deref());
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let response = request.send().await.unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                prop_assert!(status < 500, "{status} {body}");
                if status == 201 || status == 202 {
                    let cid = body["cid"]
                        .as_str()
                        .ok_or_else(|| TestCaseError::fail(format!("no cid in {body}")))?;
                    assert_anchorable(&store, cid).await?;
                } else {
                    prop_assert!(
                        [400, 413].contains(&status) || (unsignable && status == 401),
                        "{status} for a signed or unsigned body: {body}"
                    );
                }
                Ok::<(), TestCaseError>(())
            })
        })
        .unwrap();
}

#[test]
fn hostile_bodies_never_get_a_5xx_and_accepted_ones_anchor() {
    run_hostile(None);
}

#[test]
fn hostile_bodies_signed_correctly_behave_the_same() {
    run_hostile(Some(Arc::new(Ed25519Signer::generate())));
}

/// Tokens built from pieces of a valid one, and junk: 401, never 5xx, never accepted.
#[test]
fn hostile_tokens_are_always_401() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let app = runtime.block_on(async {
        let db = TestDb::new().await.unwrap();
        let settings = ApiSettings {
            auth: AuthSettings {
                mode: AuthMode::Relaxed,
                ..AuthSettings::default()
            },
            ..ApiSettings::default()
        };
        spawn_app_with(db.store, Arc::new(NoWitnesses), settings).await
    });
    let url = format!("{}/requests", app.base);
    let signer = Ed25519Signer::generate();
    let body = serde_json::to_vec(&request_body(&cid_for("tokens").to_string())).unwrap();
    let good = signer.sign(&url, Some(&sha256_digest(&body)));
    let pieces: Vec<String> = good.split('.').map(str::to_owned).collect();
    let piece = prop_oneof![
        (0..3usize).prop_map(move |i| pieces[i].clone()),
        "[A-Za-z0-9_-]{0,120}",
        ".{0,30}",
    ];
    let token = prop::collection::vec(piece, 0..5).prop_map(|parts| parts.join("."));
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&token, |token| {
            runtime.block_on(async {
                let Ok(value) = axum_header(&format!("Bearer {token}")) else {
                    return Ok(());
                };
                let response = app
                    .client
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", value)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                if token == good {
                    // The genuine token, once: every later use is a replay.
                    prop_assert!(status == 201 || status == 401);
                } else {
                    prop_assert_eq!(status, 401, "{}", token);
                }
                Ok::<(), TestCaseError>(())
            })
        })
        .unwrap();
}

fn axum_header(value: &str) -> Result<reqwest::header::HeaderValue, ()> {
    reqwest::header::HeaderValue::from_str(value).map_err(|_| ())
}
