//! The client side: signing requests as a Ceramic node does. Used by tests and `loadgen`.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use uuid::Uuid;

use crate::DidKey;

/// Something that signs anchor requests with a `did:key`.
pub trait RequestSigner: Send + Sync {
    /// The signer's DID.
    fn did(&self) -> &str;

    /// The JWS `alg` of the key.
    fn alg(&self) -> &'static str;

    /// Sign raw bytes (the JWS signing input).
    fn sign_raw(&self, message: &[u8]) -> Vec<u8>;

    /// A compact JWS over `payload` (JSON bytes), with the header ceramic-one sends.
    fn sign_payload(&self, payload: &[u8]) -> String {
        let did = self.did();
        let header = serde_json::json!({
            "alg": self.alg(),
            "kid": format!("{did}#{}", did.strip_prefix("did:key:").unwrap_or(did)),
            "typ": "JWT",
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = URL_SAFE_NO_PAD.encode(self.sign_raw(input.as_bytes()));
        format!("{input}.{signature}")
    }

    /// A token for one request to `url` whose body has `digest` (see [`crate::BodyDigest`]).
    fn sign_with_nonce(&self, url: &str, nonce: Uuid, digest: Option<&str>) -> String {
        let mut payload = serde_json::json!({ "url": url, "nonce": nonce.to_string() });
        if let Some(digest) = digest {
            payload["digest"] = digest.into();
        }
        self.sign_payload(payload.to_string().as_bytes())
    }

    /// Like [`RequestSigner::sign_with_nonce`], with a fresh random nonce.
    fn sign(&self, url: &str, digest: Option<&str>) -> String {
        self.sign_with_nonce(url, Uuid::new_v4(), digest)
    }
}

/// An Ed25519 `did:key` signer (what js-ceramic and ceramic-one nodes use).
pub struct Ed25519Signer {
    key: aws_lc_rs::signature::Ed25519KeyPair,
    did: DidKey,
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ed25519Signer")
            .field("did", &self.did.as_str())
            .finish_non_exhaustive()
    }
}

impl Ed25519Signer {
    /// A new random key.
    pub fn generate() -> Self {
        let key = aws_lc_rs::signature::Ed25519KeyPair::generate()
            .expect("the system random generator works");
        Self::from_key(key)
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("any 32 bytes are an Ed25519 seed");
        Self::from_key(key)
    }

    fn from_key(key: aws_lc_rs::signature::Ed25519KeyPair) -> Self {
        use aws_lc_rs::signature::KeyPair as _;
        let public: [u8; 32] = key
            .public_key()
            .as_ref()
            .try_into()
            .expect("an Ed25519 public key is 32 bytes");
        Self {
            did: DidKey::from_ed25519(public),
            key,
        }
    }
}

impl RequestSigner for Ed25519Signer {
    fn did(&self) -> &str {
        self.did.as_str()
    }

    fn alg(&self) -> &'static str {
        "EdDSA"
    }

    fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message).as_ref().to_vec()
    }
}

/// A secp256k1 `did:key` signer (JWS `ES256K`).
pub struct Secp256k1Signer {
    key: k256::ecdsa::SigningKey,
    did: DidKey,
}

impl std::fmt::Debug for Secp256k1Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secp256k1Signer")
            .field("did", &self.did.as_str())
            .finish_non_exhaustive()
    }
}

impl Secp256k1Signer {
    /// The key with this 32-byte secret scalar; `None` if it is not a valid scalar.
    pub fn from_seed(seed: [u8; 32]) -> Option<Self> {
        let key = k256::ecdsa::SigningKey::from_slice(&seed).ok()?;
        let did = DidKey::from_secp256k1(*key.verifying_key());
        Some(Self { key, did })
    }
}

impl RequestSigner for Secp256k1Signer {
    fn did(&self) -> &str {
        self.did.as_str()
    }

    fn alg(&self) -> &'static str {
        "ES256K"
    }

    fn sign_raw(&self, message: &[u8]) -> Vec<u8> {
        use k256::ecdsa::{Signature, signature::Signer as _};
        let signature: Signature = self.key.sign(message);
        signature.to_bytes().to_vec()
    }
}
