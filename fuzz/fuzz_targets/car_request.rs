//! The CAR request parser and the CAR header reader: never panic, and an accepted CAR has
//! a root a client can sign for.
#![no_main]

use cas_core::{StreamId, car_root, parse_car_request, parse_cid};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = car_root(data);
    if let Ok(request) = futures::executor::block_on(parse_car_request(data)) {
        assert!(root.is_ok(), "accepted a CAR whose root cannot be read");
        assert_eq!(parse_cid(&request.cid.to_string()).unwrap(), request.cid);
        assert_eq!(
            request.stream_id.to_string().parse::<StreamId>().unwrap(),
            request.stream_id
        );
    }
});
