//! The wallet that signs anchor transactions: a local private key, or a secp256k1 key held in
//! AWS KMS (feature `aws-kms`, alloy's AWS signer).

use std::fmt;

use alloy::network::EthereumWallet;
use alloy::primitives::Address;
use alloy::signers::Signer;
use alloy::signers::local::PrivateKeySigner;
use secrecy::{ExposeSecret, SecretString};

use crate::ChainError;

/// Where the anchoring wallet's key lives. `Debug` never shows a private key.
#[derive(Clone)]
pub enum SignerSource {
    /// A 32-byte hex private key (with or without `0x`), e.g. from `CAS_ETH_PRIVATE_KEY` or a
    /// file.
    PrivateKey(SecretString),
    /// A key in AWS KMS (`ECC_SECG_P256K1`, `SIGN_VERIFY`): key id, key ARN, alias name or
    /// alias ARN. Credentials, region and endpoint come from the AWS SDK's environment.
    /// Needs the `aws-kms` feature.
    AwsKms {
        /// The KMS key.
        key_id: String,
    },
}

impl fmt::Debug for SignerSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignerSource::PrivateKey(_) => f.write_str("PrivateKey([REDACTED])"),
            SignerSource::AwsKms { key_id } => {
                f.debug_struct("AwsKms").field("key_id", key_id).finish()
            }
        }
    }
}

/// A loaded signer: the wallet that signs and its address.
#[derive(Clone)]
pub struct AnchorSigner {
    wallet: EthereumWallet,
    address: Address,
    kind: &'static str,
}

impl fmt::Debug for AnchorSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnchorSigner")
            .field("address", &self.address)
            .field("kind", &self.kind)
            .finish()
    }
}

impl AnchorSigner {
    /// Load the signer. For a local key this only parses it (a malformed key is
    /// [`ChainError::InvalidKey`], without echoing it); for KMS it fetches the public key
    /// (`GetPublicKey`) to learn the address. `chain_id`, when given, is enforced on every
    /// transaction the signer signs.
    pub async fn load(source: &SignerSource, chain_id: Option<u64>) -> Result<Self, ChainError> {
        match source {
            SignerSource::PrivateKey(key) => {
                let signer = parse_key(key)?.with_chain_id(chain_id);
                let address = signer.address();
                Ok(Self {
                    wallet: EthereumWallet::from(signer),
                    address,
                    kind: "private key",
                })
            }
            // Boxed: the AWS SDK's futures are deep, and would otherwise be inlined into
            // every caller's future (rustc's layout depth limit).
            SignerSource::AwsKms { key_id } => Box::pin(load_kms(key_id, chain_id)).await,
        }
    }

    /// The wallet's address.
    pub fn address(&self) -> Address {
        self.address
    }

    /// `private key` or `aws kms`, for logs.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    pub(crate) fn wallet(&self) -> &EthereumWallet {
        &self.wallet
    }
}

#[cfg(feature = "aws-kms")]
async fn load_kms(key_id: &str, chain_id: Option<u64>) -> Result<AnchorSigner, ChainError> {
    use alloy_signer_aws::{AwsSigner, aws_sdk_kms};

    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let client = aws_sdk_kms::Client::new(&config);
    let signer = AwsSigner::new(client, key_id.to_owned(), chain_id)
        .await
        .map_err(|e| {
            ChainError::Signing(format!(
                "aws kms key {key_id}: {}",
                aws_sdk_kms::error::DisplayErrorContext(&e)
            ))
        })?;
    let address = alloy::signers::Signer::address(&signer);
    Ok(AnchorSigner {
        wallet: EthereumWallet::from(signer),
        address,
        kind: "aws kms",
    })
}

#[cfg(not(feature = "aws-kms"))]
async fn load_kms(key_id: &str, _chain_id: Option<u64>) -> Result<AnchorSigner, ChainError> {
    Err(ChainError::Signing(format!(
        "aws kms key {key_id}: this build has no AWS KMS support (cargo feature `aws-kms`)"
    )))
}

pub(crate) fn parse_key(key: &SecretString) -> Result<PrivateKeySigner, ChainError> {
    // The parse error could echo the input, so it is dropped.
    key.expose_secret()
        .trim()
        .parse::<PrivateKeySigner>()
        .map_err(|_| ChainError::InvalidKey)
}
