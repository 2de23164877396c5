//! Compact JWS (RFC 7515) verification against the `did:key` named in the header.

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use serde::Deserialize;
use uuid::Uuid;

use crate::{AuthError, DidKey};

/// Longest token accepted. Real ones are about 400 characters.
pub const MAX_TOKEN_LEN: usize = 4096;

/// base64url; padding tolerated (some encoders add it), non-canonical trailing bits not.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The claims of a request token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The URL the client signed the request for.
    pub url: String,
    /// The one-time nonce. Compared as a UUID, so other spellings of it are the same nonce.
    pub nonce: Uuid,
    /// The body digest; absent on requests without a body.
    pub digest: Option<String>,
}

/// A token whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The signer.
    pub did: DidKey,
    /// What it signed.
    pub claims: Claims,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default)]
    crit: Option<serde_json::Value>,
    #[serde(default)]
    b64: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Payload {
    url: String,
    nonce: String,
    #[serde(default)]
    digest: Option<String>,
}

/// The token of an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer_token(header_value: &str) -> Option<&str> {
    let (scheme, token) = header_value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Verify a compact JWS signed by a `did:key`, and read its request claims.
pub fn verify_compact(token: &str) -> Result<VerifiedToken, AuthError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(AuthError::Malformed(format!(
            "longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let mut parts = token.split('.');
    let (Some(protected), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed(
            "a compact jws has three parts".to_owned(),
        ));
    };
    let header: Header = serde_json::from_slice(&decode(protected, "header")?)
        .map_err(|e| AuthError::BadHeader(e.to_string()))?;
    if header.crit.is_some() || header.b64.is_some() {
        // RFC 7515 §4.1.11: extensions we do not understand must be refused.
        return Err(AuthError::BadHeader("crit/b64 extensions".to_owned()));
    }
    let (did, fragment) = match header.kid.split_once('#') {
        Some((did, fragment)) => (did, Some(fragment)),
        None => (header.kid.as_str(), None),
    };
    let did = DidKey::parse(did)?;
    // A did:key has exactly one verification method, `<did>#<method id>`.
    if fragment.is_some_and(|f| f != did.method_id()) {
        return Err(AuthError::BadHeader(
            "kid names a key the did does not have".to_owned(),
        ));
    }
    let signature = decode(signature, "signature")?;
    let signing_input = &token[..protected.len() + 1 + payload.len()];
    did.verify(&header.alg, signing_input.as_bytes(), &signature)?;

    let payload: Payload = serde_json::from_slice(&decode(payload, "payload")?)
        .map_err(|e| AuthError::BadPayload(e.to_string()))?;
    let nonce = Uuid::parse_str(&payload.nonce)
        .map_err(|_| AuthError::BadPayload("nonce is not a uuid".to_owned()))?;
    Ok(VerifiedToken {
        did,
        claims: Claims {
            url: payload.url,
            nonce,
            digest: payload.digest,
        },
    })
}

fn decode(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    B64URL
        .decode(part)
        .map_err(|_| AuthError::Malformed(format!("{what} is not base64url")))
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::{Ed25519Signer, RequestSigner, Secp256k1Signer};

    const URL: &str = "http://127.0.0.1:8081/api/v0/requests";

    #[test]
    fn bearer_header_values() {
        assert_eq!(bearer_token("Bearer a.b.c"), Some("a.b.c"));
        assert_eq!(bearer_token("bearer  a.b.c "), Some("a.b.c"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }

    #[test]
    fn ed25519_and_secp256k1_tokens_verify() {
        let signers: [Box<dyn RequestSigner>; 2] = [
            Box::new(Ed25519Signer::from_seed([7; 32])),
            Box::new(Secp256k1Signer::from_seed([9; 32]).unwrap()),
        ];
        for signer in signers {
            let nonce = Uuid::new_v4();
            let token = signer.sign_with_nonce(URL, nonce, Some("0xabc"));
            let verified = verify_compact(&token).unwrap();
            assert_eq!(verified.did.as_str(), signer.did());
            assert_eq!(
                verified.claims,
                Claims {
                    url: URL.to_owned(),
                    nonce,
                    digest: Some("0xabc".to_owned())
                }
            );
            let no_digest = verify_compact(&signer.sign_with_nonce(URL, nonce, None)).unwrap();
            assert_eq!(no_digest.claims.digest, None);
        }
    }

    /// The token layout ceramic-one builds by hand (`rc:anchor-remote/src/cas_remote.rs`):
    /// header `{"alg":"EdDSA","kid":"<did>#<msid>","typ":"JWT"}`, claims in the order
    /// digest, nonce, url.
    #[test]
    fn ceramic_one_layout_verifies() {
        let signer = Ed25519Signer::from_seed([1; 32]);
        let did = signer.did().to_owned();
        let header = format!(
            r#"{{"alg":"EdDSA","kid":"{did}#{}","typ":"JWT"}}"#,
            &did["did:key:".len()..]
        );
        let claims = format!(
            r#"{{"digest":"0x00","nonce":"{}","url":"{URL}"}}"#,
            Uuid::new_v4()
        );
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = signer.sign_raw(input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature));
        assert_eq!(verify_compact(&token).unwrap().did.as_str(), did);
    }

    #[test]
    fn tampering_is_detected() {
        let signer = Ed25519Signer::from_seed([2; 32]);
        let other = Ed25519Signer::from_seed([3; 32]);
        let token = signer.sign_with_nonce(URL, Uuid::new_v4(), Some("0x01"));
        let parts: Vec<&str> = token.split('.').collect();

        // Another payload under the same signature.
        let forged_payload = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"url":"{URL}","nonce":"{}","digest":"0x02"}}"#,
            Uuid::new_v4()
        ));
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert_eq!(verify_compact(&forged), Err(AuthError::BadSignature));

        // Someone else's kid on this signature.
        let other_header = other
            .sign_with_nonce(URL, Uuid::new_v4(), None)
            .split('.')
            .next()
            .unwrap()
            .to_owned();
        let swapped = format!("{other_header}.{}.{}", parts[1], parts[2]);
        assert_eq!(verify_compact(&swapped), Err(AuthError::BadSignature));

        // alg none, a kid fragment of another key, crit, wrong part counts.
        let did = signer.did();
        for header in [
            format!(r#"{{"alg":"none","kid":"{did}"}}"#),
            format!(r#"{{"alg":"ES256K","kid":"{did}"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{did}#z6MkOther"}}"#),
            format!(r#"{{"alg":"EdDSA","kid":"{did}","crit":["exp"]}}"#),
            r#"{"alg":"EdDSA"}"#.to_owned(),
        ] {
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                parts[1],
                parts[2]
            );
            assert!(
                matches!(
                    verify_compact(&token),
                    Err(AuthError::BadHeader(_) | AuthError::BadSignature)
                ),
                "{token}"
            );
        }
        for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", &format!("{token}.")] {
            assert!(
                matches!(verify_compact(bad), Err(AuthError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            verify_compact(&"a".repeat(MAX_TOKEN_LEN + 1)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn the_nonce_must_be_a_uuid() {
        let signer = Ed25519Signer::from_seed([4; 32]);
        for payload in [
            format!(r#"{{"url":"{URL}","nonce":"12345"}}"#),
            format!(r#"{{"url":"{URL}"}}"#),
            format!(r#"{{"nonce":"{}"}}"#, Uuid::new_v4()),
            format!(
                r#"{{"url":"{URL}","nonce":"{}","digest":5}}"#,
                Uuid::new_v4()
            ),
        ] {
            let token = signer.sign_payload(payload.as_bytes());
            assert!(
                matches!(verify_compact(&token), Err(AuthError::BadPayload(_))),
                "{payload}"
            );
        }
    }
}
