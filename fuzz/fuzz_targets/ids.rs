//! CID strings, stream ids (text and binary) and client timestamps: never panic, and what
//! parses round-trips.
#![no_main]

use cas_core::{ClientTimestamp, StreamId, parse_cid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(id) = StreamId::from_bytes(data) {
        assert_eq!(StreamId::from_bytes(&id.to_bytes()).unwrap(), id);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cid) = parse_cid(text) {
        assert_eq!(parse_cid(&cid.to_string()).unwrap(), cid);
    }
    if let Ok(id) = text.parse::<StreamId>() {
        assert_eq!(id.to_string().parse::<StreamId>().unwrap(), id);
    }
    if let Ok(ts) = ClientTimestamp::parse(text) {
        assert_eq!(ClientTimestamp::parse(&ts.to_string()).unwrap(), ts);
    }
});
