//! The JSON request parser: never panics, and what it accepts round-trips through its
//! canonical form.
#![no_main]

use cas_core::{ClientTimestamp, StreamId, parse_cid, parse_json_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_json_request(data) {
        assert_eq!(parse_cid(&request.cid.to_string()).unwrap(), request.cid);
        assert_eq!(
            request.stream_id.to_string().parse::<StreamId>().unwrap(),
            request.stream_id
        );
        assert_eq!(
            ClientTimestamp::parse(&request.timestamp.to_string()).unwrap(),
            request.timestamp
        );
    }
});
