//! `did:key` identifiers: the public key is the identifier, so resolving one is decoding it.
//!
//! `did:key:z<base58btc(varint(multicodec) ‖ key bytes)>`; Ed25519 keys are multicodec
//! `0xed` (32 bytes, `z6Mk…`), secp256k1 keys `0xe7` (33-byte compressed point, `zQ3s…`).

use std::fmt;

use crate::AuthError;

/// Multicodec of an Ed25519 public key.
pub(crate) const ED25519_PUB: u64 = 0xed;
/// Multicodec of a compressed secp256k1 public key.
pub(crate) const SECP256K1_PUB: u64 = 0xe7;

/// Longest DID accepted. Real ones are 56 (Ed25519) or 57 (secp256k1) characters; the bound
/// keeps base58 decoding (quadratic in the length) cheap on hostile input.
pub const MAX_DID_LEN: usize = 128;

const PREFIX: &str = "did:key:";

/// A public key named by a `did:key`.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Ed25519 (JWS `alg` `EdDSA`).
    Ed25519([u8; 32]),
    /// secp256k1, compressed SEC1 point (JWS `alg` `ES256K`).
    Secp256k1(k256::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ed25519(_) => f.write_str("Ed25519"),
            Self::Secp256k1(_) => f.write_str("Secp256k1"),
        }
    }
}

/// A parsed `did:key`: its canonical string and the key it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidKey {
    did: String,
    key: PublicKey,
}

impl DidKey {
    /// Parse `did:key:z…`. Only Ed25519 and secp256k1 keys are accepted.
    pub fn parse(did: &str) -> Result<Self, AuthError> {
        if did.len() > MAX_DID_LEN {
            return Err(AuthError::BadDid("too long".to_owned()));
        }
        let msid = did
            .strip_prefix(PREFIX)
            .ok_or_else(|| AuthError::BadDid("not a did:key".to_owned()))?;
        // The method-specific id is base58btc multibase ('z'), nothing else.
        let encoded = msid
            .strip_prefix('z')
            .ok_or_else(|| AuthError::BadDid("key is not base58btc (z…)".to_owned()))?;
        let bytes = multibase::Base::Base58Btc
            .decode(encoded)
            .map_err(|e| AuthError::BadDid(format!("key is not base58btc: {e}")))?;
        let (codec, key) = unsigned_varint::decode::u64(&bytes)
            .map_err(|_| AuthError::BadDid("malformed multicodec".to_owned()))?;
        let key = match codec {
            ED25519_PUB => PublicKey::Ed25519(
                key.try_into()
                    .map_err(|_| AuthError::BadDid("an Ed25519 key is 32 bytes".to_owned()))?,
            ),
            SECP256K1_PUB => {
                if key.len() != 33 {
                    return Err(AuthError::BadDid(
                        "a secp256k1 key is a 33-byte compressed point".to_owned(),
                    ));
                }
                PublicKey::Secp256k1(
                    k256::ecdsa::VerifyingKey::from_sec1_bytes(key)
                        .map_err(|_| AuthError::BadDid("not a secp256k1 point".to_owned()))?,
                )
            }
            other => {
                return Err(AuthError::BadDid(format!(
                    "unsupported key type 0x{other:x} (Ed25519 or secp256k1 only)"
                )));
            }
        };
        Ok(Self {
            did: did.to_owned(),
            key,
        })
    }

    /// The `did:key` of an Ed25519 public key.
    pub fn from_ed25519(public_key: [u8; 32]) -> Self {
        Self {
            did: encode(ED25519_PUB, &public_key),
            key: PublicKey::Ed25519(public_key),
        }
    }

    /// The `did:key` of a secp256k1 public key.
    pub fn from_secp256k1(public_key: k256::ecdsa::VerifyingKey) -> Self {
        Self {
            did: encode(SECP256K1_PUB, &public_key.to_sec1_bytes()),
            key: PublicKey::Secp256k1(public_key),
        }
    }

    /// The DID string (`did:key:z…`).
    pub fn as_str(&self) -> &str {
        &self.did
    }

    /// The method-specific id (`z…`): also the fragment of its only verification method.
    pub fn method_id(&self) -> &str {
        &self.did[PREFIX.len()..]
    }

    /// The key.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }

    /// Check a JWS signature made with `alg` over `message`.
    pub fn verify(&self, alg: &str, message: &[u8], signature: &[u8]) -> Result<(), AuthError> {
        match (&self.key, alg) {
            (PublicKey::Ed25519(key), "EdDSA" | "Ed25519") => {
                use aws_lc_rs::signature::{ED25519, UnparsedPublicKey};
                UnparsedPublicKey::new(&ED25519, key)
                    .verify(message, signature)
                    .map_err(|_| AuthError::BadSignature)
            }
            (PublicKey::Secp256k1(key), "ES256K" | "ES256K-R") => {
                use k256::ecdsa::{Signature, signature::Verifier};
                // ES256K is r ‖ s (64 bytes); ES256K-R appends a recovery byte, which the
                // known key makes unnecessary.
                let rs = match (alg, signature.len()) {
                    ("ES256K", 64) | ("ES256K-R", 65) => &signature[..64],
                    _ => return Err(AuthError::BadSignature),
                };
                let signature = Signature::from_slice(rs).map_err(|_| AuthError::BadSignature)?;
                // Signers are not all low-s; the signature is as good either way.
                let signature = signature.normalize_s().unwrap_or(signature);
                key.verify(message, &signature)
                    .map_err(|_| AuthError::BadSignature)
            }
            _ => Err(AuthError::BadHeader(format!(
                "alg {alg:?} does not match a {:?} key",
                self.key
            ))),
        }
    }
}

impl fmt::Display for DidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did)
    }
}

fn encode(codec: u64, key: &[u8]) -> String {
    let mut buf = unsigned_varint::encode::u64_buffer();
    let mut bytes = unsigned_varint::encode::u64(codec, &mut buf).to_vec();
    bytes.extend_from_slice(key);
    format!(
        "{PREFIX}{}",
        multibase::encode(multibase::Base::Base58Btc, bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The did:key test vectors of the did:key method specification (w3c-ccg/did-method-key).
    const ED25519_DID: &str = "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp";
    const SECP256K1_DID: &str = "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme";

    #[test]
    fn parses_spec_vectors_and_reprints_them() {
        let ed = DidKey::parse(ED25519_DID).unwrap();
        assert!(matches!(ed.public_key(), PublicKey::Ed25519(_)));
        let PublicKey::Ed25519(bytes) = ed.public_key() else {
            unreachable!()
        };
        assert_eq!(DidKey::from_ed25519(*bytes).as_str(), ED25519_DID);
        assert_eq!(ed.method_id(), &ED25519_DID[8..]);

        let k = DidKey::parse(SECP256K1_DID).unwrap();
        let PublicKey::Secp256k1(key) = k.public_key() else {
            panic!("secp256k1 expected")
        };
        assert_eq!(DidKey::from_secp256k1(*key).as_str(), SECP256K1_DID);
    }

    #[test]
    fn rejects_other_dids_and_malformed_keys() {
        for bad in [
            "",
            "did:key:",
            "did:key:z",
            "did:pkh:eip155:1:0xabc",
            "did:key:f00ed",
            "did:key:z6Mk",
            "did:key:z0OIl",
            // A P-256 key (0x1200) is a valid did:key, but not one this service accepts.
            "did:key:zDnaerDaTF5BXEavCrfRZEk316dpbLsfPDZ3WJ5hRTPFU2169",
        ] {
            assert!(DidKey::parse(bad).is_err(), "{bad:?}");
        }
        let long = format!("did:key:z{}", "1".repeat(MAX_DID_LEN));
        assert!(DidKey::parse(&long).is_err());
    }
}
