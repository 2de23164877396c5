//! DID authentication of anchor requests, as Ceramic nodes send it.
//!
//! A node signs each request with its `did:key` and sends
//! `Authorization: Bearer <protected>.<payload>.<signature>`, a compact JWS whose protected
//! header names the key (`kid` = `did:key:z…#z…`) and whose payload is
//! `{"url": <request URL>, "nonce": <UUID>, "digest": <body digest>}`. The digest of a JSON
//! body is `0x` + hex(sha256(body)); of a CAR body, the string of its root CID.
//!
//! This crate is pure: it decodes and verifies tokens and computes digests. Replay protection
//! (remembering nonces) and the allowlist live in the API, which owns the state.

mod did_key;
mod digest;
mod jws;
mod signer;

pub use did_key::{DidKey, MAX_DID_LEN, PublicKey};
pub use digest::{BodyDigest, canonical_json_digest, sha256_digest};
pub use jws::{Claims, MAX_TOKEN_LEN, VerifiedToken, bearer_token, verify_compact};
pub use signer::{Ed25519Signer, RequestSigner, Secp256k1Signer};

/// Why a token was rejected. Clients only ever see "Unauthorized"; the reason goes to logs
/// and metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is not three base64url parts of a sane length.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The protected header is unusable (not JSON, no `kid`, unsupported `alg` or `crit`).
    #[error("unusable jws header: {0}")]
    BadHeader(String),
    /// The key id is not a supported `did:key`.
    #[error("unsupported did: {0}")]
    BadDid(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The payload lacks `url` or a UUID `nonce`, or is not JSON.
    #[error("unusable jws payload: {0}")]
    BadPayload(String),
}

impl AuthError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadHeader(_) => "bad-header",
            Self::BadDid(_) => "bad-did",
            Self::BadSignature => "bad-signature",
            Self::BadPayload(_) => "bad-payload",
        }
    }
}
