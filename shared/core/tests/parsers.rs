//! Property tests of the request parsers over hostile input: no input makes them panic, and
//! whatever they accept round-trips through its canonical form (so it can be stored,
//! queued, batched and anchored as the same thing).

use std::{collections::BTreeMap, io::Cursor, time::Instant};

use cas_core::{
    ClientTimestamp, MAX_ID_TEXT_LEN, StreamId, car_root, parse_car_request, parse_cid,
    parse_json_request,
    pipeline::{IngestEntry, decode_batch_file, encode_batch_file, pack_ingest, parse_ingest},
};
use cid::{Cid, multibase::Base, multihash::Multihash};
use ipld_core::ipld::Ipld;
use proptest::prelude::*;
use serde_json::{Value, json};
use sha2::Digest as _;
use uuid::Uuid;

const STREAM: &str = "k2t6wzu5p07hecvne3jkdt9vaxy17igipxf62k4acmp5b3h5m3fu5rnuenwc1b";

fn recorded_car() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/cas-car-request.car"
    ))
    .unwrap()
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

fn any_cid() -> impl Strategy<Value = Cid> {
    let hash = prop_oneof![
        any::<[u8; 32]>().prop_map(|d| Multihash::<64>::wrap(0x12, &d).unwrap()),
        (any::<u64>(), prop::collection::vec(any::<u8>(), 0..=64))
            .prop_map(|(code, d)| Multihash::<64>::wrap(code, &d).unwrap()),
    ];
    (any::<u64>(), hash, any::<bool>()).prop_map(|(codec, hash, v0)| match v0 {
        true if hash.code() == 0x12 => Cid::new_v0(hash).unwrap(),
        _ => Cid::new_v1(codec, hash),
    })
}

/// What the pipeline needs of an accepted request: canonical forms that read back as the
/// same values, an ingest message that fits, and a batch file that round-trips.
fn assert_pipeline_safe(request: &cas_core::AnchorRequest) -> Result<(), TestCaseError> {
    let cid_text = request.cid.to_string();
    prop_assert_eq!(parse_cid(&cid_text).unwrap(), request.cid);
    let sid_text = request.stream_id.to_string();
    prop_assert_eq!(
        sid_text.parse::<StreamId>().unwrap(),
        request.stream_id.clone()
    );
    let ts = request.timestamp;
    prop_assert_eq!(ClientTimestamp::parse(&ts.to_string()).unwrap(), ts);
    let entry = IngestEntry {
        id: Uuid::now_v7(),
        cid: cid_text,
        sid: sid_text,
        org: "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp".to_owned(),
        ts: ts.unix_nanos(),
    };
    let messages = pack_ingest(std::slice::from_ref(&entry), 256 * 1024).unwrap();
    prop_assert_eq!(parse_ingest(&messages[0]).unwrap().reqs, vec![entry]);
    let id = Uuid::now_v7();
    let file = encode_batch_file(id, &[request.cid]);
    prop_assert_eq!(decode_batch_file(&file).unwrap(), (id, vec![request.cid]));
    Ok(())
}

fn json_field() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(Value::Null)),
        any::<f64>().prop_map(|f| Some(json!(f))),
        ".{0,64}".prop_map(|s| Some(json!(s))),
        Just(Some(json!([]))),
        Just(Some(json!({"x": "y"}))),
    ]
}

fn json_request() -> impl Strategy<Value = Vec<u8>> {
    let stream = prop_oneof![
        3 => (any::<u64>(), any_cid()).prop_map(|(t, c)| Some(json!(StreamId::new(t, c).to_string()))),
        1 => json_field(),
    ];
    let cid = prop_oneof![
        3 => (any_cid(), 0..4usize).prop_map(|(c, b)| {
            let base = [Base::Base32Lower, Base::Base58Btc, Base::Base36Lower, Base::Base2][b];
            Some(json!(c.to_string_of_base(base).unwrap_or_else(|_| c.to_string())))
        }),
        1 => json_field(),
    ];
    let timestamp = prop_oneof![
        3 => any::<i64>().prop_map(|n| Some(json!(ClientTimestamp::from_unix_nanos(n).to_string()))),
        1 => "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})?)?"
            .prop_map(|s| Some(json!(s))),
        1 => json_field(),
    ];
    (stream, cid, timestamp, json_field()).prop_map(|(stream, cid, timestamp, version)| {
        let mut map = serde_json::Map::new();
        for (key, value) in [
            ("streamId", stream),
            ("cid", cid),
            ("timestamp", timestamp),
            ("jsCeramicVersion", version),
        ] {
            if let Some(value) = value {
                map.insert(key.to_owned(), value);
            }
        }
        serde_json::to_vec(&map).unwrap()
    })
}

fn car_request() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any_cid().prop_map(Ipld::Link),
        (any::<u64>(), any_cid()).prop_map(|(t, c)| Ipld::Bytes(StreamId::new(t, c).to_bytes())),
        any::<i64>().prop_map(|n| Ipld::String(ClientTimestamp::from_unix_nanos(n).to_string())),
        prop::collection::vec(any::<u8>(), 0..50).prop_map(Ipld::Bytes),
        ".{0,30}".prop_map(Ipld::String),
        Just(Ipld::Null),
    ];
    let key = prop_oneof![
        Just("streamId"),
        Just("tip"),
        Just("timestamp"),
        Just("other")
    ];
    (
        prop::collection::btree_map(key, value, 0..5),
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..3),
    )
        .prop_map(|(fields, hash_ok, junk)| {
            let map: BTreeMap<String, Ipld> =
                fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let block = serde_ipld_dagcbor::to_vec(&Ipld::Map(map)).unwrap();
            let digest: [u8; 32] = if hash_ok {
                sha2::Sha256::digest(&block).into()
            } else {
                [7; 32]
            };
            let root = Cid::new_v1(0x71, Multihash::<64>::wrap(0x12, &digest).unwrap());
            let header = serde_ipld_dagcbor::to_vec(&Ipld::Map(BTreeMap::from([
                ("roots".to_owned(), Ipld::List(vec![Ipld::Link(root)])),
                ("version".to_owned(), Ipld::Integer(1)),
            ])))
            .unwrap();
            let mut car = Vec::new();
            let mut buf = unsigned_varint::encode::usize_buffer();
            car.extend_from_slice(unsigned_varint::encode::usize(header.len(), &mut buf));
            car.extend_from_slice(&header);
            let root_bytes = root.to_bytes();
            car.extend_from_slice(unsigned_varint::encode::usize(
                root_bytes.len() + block.len(),
                &mut buf,
            ));
            car.extend_from_slice(&root_bytes);
            car.extend_from_slice(&block);
            car.extend_from_slice(&junk);
            car
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn json_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = parse_json_request(&bytes) {
            assert_pipeline_safe(&request)?;
        }
    }

    #[test]
    fn json_parser_accepts_only_pipeline_safe_requests(body in json_request()) {
        if let Ok(request) = parse_json_request(&body) {
            assert_pipeline_safe(&request)?;
        }
    }

    #[test]
    fn car_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = car_root(&bytes);
        if let Ok(request) = block_on(parse_car_request(&bytes)) {
            assert_pipeline_safe(&request)?;
        }
    }

    #[test]
    fn car_parser_accepts_only_pipeline_safe_requests(car in car_request()) {
        let root = car_root(&car);
        if let Ok(request) = block_on(parse_car_request(&car)) {
            prop_assert!(root.is_ok(), "an accepted CAR has a root a client can sign");
            assert_pipeline_safe(&request)?;
        }
    }

    #[test]
    fn mutated_recorded_car_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut car = recorded_car();
        for (at, byte) in flips {
            let i = at.index(car.len());
            car[i] ^= byte;
        }
        car.truncate(cut.index(car.len()) + 1);
        let root = car_root(&car);
        if let Ok(request) = block_on(parse_car_request(&car)) {
            prop_assert!(root.is_ok());
            assert_pipeline_safe(&request)?;
        }
    }

    #[test]
    fn car_root_agrees_with_the_car_reader(car in car_request()) {
        let ours = car_root(&car).ok();
        let theirs = block_on(async {
            iroh_car::CarReader::new(Cursor::new(&car[..]))
                .await
                .ok()
                .and_then(|r| r.header().roots().first().copied())
        });
        prop_assert_eq!(ours, theirs);
    }

    #[test]
    fn cid_strings_parse_or_fail_cleanly(text in ".{0,200}") {
        if let Ok(cid) = parse_cid(&text) {
            prop_assert_eq!(parse_cid(&cid.to_string()).unwrap(), cid);
        }
    }

    #[test]
    fn cids_in_any_base_parse_to_themselves(cid in any_cid(), base in 0..6usize) {
        let base = [Base::Base32Lower, Base::Base58Btc, Base::Base36Lower, Base::Base16Upper,
            Base::Base64Url, Base::Base2][base];
        let text = cid.to_string_of_base(base).unwrap_or_else(|_| cid.to_string());
        prop_assert!(text.len() <= MAX_ID_TEXT_LEN, "{} chars", text.len());
        prop_assert_eq!(parse_cid(&text).unwrap(), cid);
    }

    #[test]
    fn stream_ids_parse_or_fail_cleanly(text in ".{0,200}", bytes in prop::collection::vec(any::<u8>(), 0..120)) {
        if let Ok(id) = text.parse::<StreamId>() {
            prop_assert_eq!(id.to_string().parse::<StreamId>().unwrap(), id);
        }
        if let Ok(id) = StreamId::from_bytes(&bytes) {
            prop_assert_eq!(StreamId::from_bytes(&id.to_bytes()).unwrap(), id.clone());
            prop_assert_eq!(id.to_string().parse::<StreamId>().unwrap(), id);
        }
    }

    #[test]
    fn timestamps_parse_or_fail_cleanly(text in ".{0,60}") {
        if let Ok(ts) = ClientTimestamp::parse(&text) {
            prop_assert_eq!(ClientTimestamp::parse(&ts.to_string()).unwrap(), ts);
        }
    }

    #[test]
    fn every_representable_timestamp_round_trips(nanos in any::<i64>()) {
        let ts = ClientTimestamp::from_unix_nanos(nanos);
        prop_assert_eq!(ClientTimestamp::parse(&ts.to_string()).unwrap(), ts);
    }
}

/// Multibase decoding is quadratic: ids far longer than any real one must be refused before
/// decoding, or one 100 KB body costs seconds of CPU.
#[test]
fn huge_ids_are_refused_in_constant_time() {
    let huge = format!("z{}", "1".repeat(100_000));
    let body = json!({"streamId": huge, "cid": huge, "timestamp": "2024-01-01T00:00:00Z"});
    let started = Instant::now();
    let err = parse_json_request(&serde_json::to_vec(&body).unwrap()).unwrap_err();
    assert!(
        started.elapsed().as_millis() < 100,
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.to_string().len() < 1000,
        "errors do not echo the whole input"
    );
    assert!("k".repeat(2000).parse::<StreamId>().is_err());
    assert!(parse_cid(&format!("b{}", "a".repeat(2000))).is_err());
    assert!(ClientTimestamp::parse(&"2".repeat(1000)).is_err());
    // Real ones are far below the bound.
    assert!(STREAM.len() < MAX_ID_TEXT_LEN / 8);
}
