//! Property tests of the token verifier and digests over hostile input: nothing panics, no
//! altered token verifies, and digests agree with their definition.

use cas_auth::{
    BodyDigest, DidKey, Ed25519Signer, RequestSigner, Secp256k1Signer, canonical_json_digest,
    sha256_digest, verify_compact,
};
use proptest::prelude::*;
use serde_json::Value;
use uuid::Uuid;

const URL: &str = "https://cas.example.com/api/v0/requests";

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn verifier_never_panics_on_text(token in ".{0,300}") {
        let _ = verify_compact(&token);
    }

    #[test]
    fn verifier_never_panics_on_base64_parts(parts in prop::collection::vec("[A-Za-z0-9_=-]{0,200}", 0..5)) {
        let _ = verify_compact(&parts.join("."));
    }

    #[test]
    fn verifier_never_panics_on_json_parts(header in json_value(), payload in json_value(), sig in prop::collection::vec(any::<u8>(), 0..80)) {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
        let token = format!("{}.{}.{}", B64.encode(header.to_string()), B64.encode(payload.to_string()), B64.encode(sig));
        prop_assert!(verify_compact(&token).is_err(), "no signature over random bytes verifies");
    }

    #[test]
    fn no_altered_token_verifies(seed in any::<[u8; 32]>(), k256 in any::<bool>(), at in any::<prop::sample::Index>(), with in "[A-Za-z0-9_.-]") {
        let signer: Box<dyn RequestSigner> = match Secp256k1Signer::from_seed(seed) {
            Some(k) if k256 => Box::new(k),
            _ => Box::new(Ed25519Signer::from_seed(seed)),
        };
        let token = signer.sign_with_nonce(URL, Uuid::new_v4(), Some("0x00"));
        let verified = verify_compact(&token).unwrap();
        prop_assert_eq!(verified.did.as_str(), signer.did());
        let i = at.index(token.len());
        let mut altered = token.clone();
        altered.replace_range(i..=i, &with);
        prop_assume!(altered != token);
        prop_assert!(verify_compact(&altered).is_err(), "{} verified", altered);
    }

    #[test]
    fn did_keys_parse_or_fail_cleanly(text in "did:key:z[1-9A-HJ-NP-Za-km-z]{0,70}", raw in ".{0,80}") {
        for candidate in [&text, &raw] {
            if let Ok(did) = DidKey::parse(candidate) {
                prop_assert_eq!(did.as_str(), candidate.as_str());
            }
        }
    }

    #[test]
    fn json_digest_is_the_raw_hash_or_the_compact_form(value in json_value()) {
        let compact = serde_json::to_vec(&value).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        let signed = sha256_digest(&compact);
        // serde_json sorts object keys, so its compact output is in the order of `pretty`.
        prop_assert_eq!(canonical_json_digest(&pretty), Some(signed.clone()));
        prop_assert!(BodyDigest::Json(&pretty).matches(&signed));
        prop_assert!(BodyDigest::Json(&compact).matches(&signed));
    }

    #[test]
    fn digests_never_panic_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300), claim in ".{0,70}") {
        let _ = BodyDigest::Json(&bytes).matches(&claim);
        let _ = BodyDigest::Car(&bytes).matches(&claim);
        let _ = canonical_json_digest(&bytes);
    }
}
