//! The bearer token verifier, did:key decoding and body digests: never panic, and nothing
//! built from fuzz data verifies as a signature.
#![no_main]

use cas_auth::{BodyDigest, DidKey, bearer_token, canonical_json_digest, verify_compact};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = canonical_json_digest(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(token) = bearer_token(text) {
        let _ = verify_compact(token);
    }
    if let Ok(verified) = verify_compact(text) {
        // Only a real signature verifies; the fuzzer cannot forge one, so reaching this
        // means the verifier accepted something it should not have.
        panic!("a fuzzed token verified as {}", verified.did);
    }
    if let Ok(did) = DidKey::parse(text) {
        assert_eq!(did.as_str(), text);
    }
    // The first half claims a digest of the second.
    let middle = (0..=text.len() / 2)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let (claim, body) = text.split_at(middle);
    let _ = BodyDigest::Json(body.as_bytes()).matches(claim);
    let _ = BodyDigest::Car(body.as_bytes()).matches(claim);
});
