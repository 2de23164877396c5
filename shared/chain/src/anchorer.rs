//! [`EvmAnchorer`]: the real node behind [`AnchorChain`], over JSON-RPC with alloy.
//!
//! It only observes and acts, one call at a time (nonces, fees, signing, sending, receipts,
//! blocks). Nothing here anchors a batch on its own: the journaled transaction manager in
//! `cas-worker` decides what to send and when, so every transaction goes through its journal.

use std::fmt;
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::eips::eip2718::Encodable2718;
use alloy::network::{NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use async_trait::async_trait;
use secrecy::SecretString;

use crate::contract::{ANCHOR_CONTRACT_ADDRESS, CeramicAnchor};
use crate::error::{from_contract, from_transport, is_already_known};
use crate::node::{AnchorChain, BlockInfo, Inclusion, Payload, WalletTx};
use crate::signer::{AnchorSigner, SignerSource, parse_key};
use crate::{ChainError, ChainId, connect_root};

/// Gas of a plain transfer: what a [`Payload::Filler`] costs.
const TRANSFER_GAS: u64 = 21_000;

/// Settings for [`EvmAnchorer::connect`]. `Debug` never shows the signing key.
#[derive(Debug, Clone)]
pub struct AnchorerConfig {
    /// HTTP(S) JSON-RPC endpoint.
    pub rpc_url: String,
    /// The wallet's key: a private key or an AWS KMS key.
    pub signer: SignerSource,
    /// The anchor contract. Default: [`ANCHOR_CONTRACT_ADDRESS`].
    pub contract: Address,
    /// If set, [`EvmAnchorer::connect`] fails unless the endpoint serves this chain.
    pub expected_chain_id: Option<ChainId>,
    /// Blocks that must include or follow the transaction's block (1 = included). Default 1.
    pub confirmations: u64,
    /// How often to poll for receipts and new blocks. Default 1 s.
    pub poll_interval: Duration,
    /// Extra gas on top of `eth_estimateGas`, in percent. Default 10.
    pub gas_limit_margin_percent: u64,
}

impl AnchorerConfig {
    /// A config with the defaults: the official contract, any chain, 1 confirmation, 1 s
    /// polling.
    pub fn new(rpc_url: impl Into<String>, signing_key: SecretString) -> Self {
        Self::with_signer(rpc_url, SignerSource::PrivateKey(signing_key))
    }

    /// Like [`AnchorerConfig::new`], with any [`SignerSource`].
    pub fn with_signer(rpc_url: impl Into<String>, signer: SignerSource) -> Self {
        Self {
            rpc_url: rpc_url.into(),
            signer,
            contract: ANCHOR_CONTRACT_ADDRESS,
            expected_chain_id: None,
            confirmations: 1,
            poll_interval: Duration::from_secs(1),
            gas_limit_margin_percent: 10,
        }
    }
}

/// A mined, confirmed and successful anchor transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnchorTx {
    /// The transaction hash (the digest of the proof's `txHash` CID).
    pub tx_hash: [u8; 32],
    /// The block that includes it.
    pub block_number: u64,
    /// That block's timestamp, in seconds.
    pub block_timestamp: u64,
    /// Gas used by the transaction.
    pub gas_used: u64,
    /// The price paid per gas, in wei.
    pub effective_gas_price: u128,
}

/// EIP-1559 fee caps for one transaction, in wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// `maxFeePerGas`.
    pub max_fee_per_gas: u128,
    /// `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: u128,
}

/// A signed transaction, not yet broadcast. Everything a journal would record.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedAnchorTx {
    /// The transaction hash.
    pub tx_hash: B256,
    /// The root digest it anchors (all zeros for a [`Payload::Filler`]).
    pub root_digest: [u8; 32],
    /// The sender's nonce it uses.
    pub nonce: u64,
    /// Its fee caps.
    pub fees: Fees,
    /// Its gas limit.
    pub gas_limit: u64,
    /// The EIP-2718 encoding, as sent with `eth_sendRawTransaction`.
    pub raw: Bytes,
}

impl SignedAnchorTx {
    /// The gas limit × max fee per gas: the most the transaction can cost, in wei.
    pub fn max_cost(&self) -> U256 {
        U256::from(self.gas_limit) * U256::from(self.fees.max_fee_per_gas)
    }
}

impl fmt::Debug for SignedAnchorTx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedAnchorTx")
            .field("tx_hash", &self.tx_hash)
            .field("root_digest", &B256::from(self.root_digest))
            .field("nonce", &self.nonce)
            .field("fees", &self.fees)
            .field("gas_limit", &self.gas_limit)
            .field("raw_len", &self.raw.len())
            .finish()
    }
}

/// A real Ethereum node: signs and sends from one wallet to the anchor contract, and reads
/// what the transaction manager needs ([`AnchorChain`]).
#[derive(Clone)]
pub struct EvmAnchorer {
    provider: RootProvider,
    signer: AnchorSigner,
    address: Address,
    contract: Address,
    chain_id: ChainId,
    confirmations: u64,
    poll_interval: Duration,
    gas_limit_margin_percent: u64,
}

impl fmt::Debug for EvmAnchorer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EvmAnchorer")
            .field("wallet", &self.address)
            .field("contract", &self.contract)
            .field("chain_id", &self.chain_id)
            .field("confirmations", &self.confirmations)
            .finish_non_exhaustive()
    }
}

impl EvmAnchorer {
    /// Connect to the endpoint and check that this wallet can anchor there: the chain id
    /// matches `expected_chain_id` (if set), the contract address holds code, and the wallet
    /// is allow-listed or the contract's owner.
    pub async fn connect(config: AnchorerConfig) -> Result<Self, ChainError> {
        let provider = connect_root(&config.rpc_url)?;
        if let SignerSource::PrivateKey(key) = &config.signer {
            parse_key(key)?; // a malformed key fails before any network call
        }

        let actual = ChainId(provider.get_chain_id().await.map_err(from_transport)?);
        if let Some(expected) = config.expected_chain_id
            && expected != actual
        {
            return Err(ChainError::WrongChain { expected, actual });
        }
        let signer = AnchorSigner::load(&config.signer, Some(actual.0)).await?;
        let address = signer.address();

        let code = provider
            .get_code_at(config.contract)
            .await
            .map_err(from_transport)?;
        if code.is_empty() {
            return Err(ChainError::NoContractCode(config.contract));
        }

        let anchorer = Self {
            provider,
            signer,
            address,
            contract: config.contract,
            chain_id: actual,
            confirmations: config.confirmations.max(1),
            poll_interval: config.poll_interval,
            gas_limit_margin_percent: config.gas_limit_margin_percent,
        };
        if !anchorer.allowed().await? {
            return Err(ChainError::NotAllowed {
                wallet: address,
                contract: config.contract,
            });
        }
        tracing::info!(wallet = %address, signer = anchorer.signer.kind(), contract = %config.contract, chain = %actual, "connected to the anchor contract");
        Ok(anchorer)
    }

    /// `isServiceAllowed(wallet) || owner() == wallet`.
    async fn allowed(&self) -> Result<bool, ChainError> {
        let contract = CeramicAnchor::new(self.contract, &self.provider);
        let allowed = contract
            .isServiceAllowed(self.address)
            .call()
            .await
            .map_err(|e| from_contract(self.contract, e))?;
        if allowed {
            return Ok(true);
        }
        let owner = contract
            .owner()
            .call()
            .await
            .map_err(|e| from_contract(self.contract, e))?;
        Ok(owner == self.address)
    }

    /// The transaction request for `anchorDagCbor(root_digest)` from this wallet, without
    /// nonce, fees or gas limit.
    pub fn anchor_request(&self, root_digest: [u8; 32]) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(self.address)
            .with_to(self.contract)
            .with_input(anchor_calldata(root_digest))
            .with_chain_id(self.chain_id.0)
    }

    /// Gas for the anchor call plus the configured margin. Fails with
    /// [`ChainError::NotAllowed`] if the wallet is not (or no longer) allowed by the contract,
    /// and with [`ChainError::WouldRevert`] if the call would revert for another reason.
    async fn anchor_gas(&self, request: &TransactionRequest) -> Result<u64, ChainError> {
        let estimate = match self.provider.estimate_gas(request.clone()).await {
            Ok(gas) => gas,
            Err(e) => {
                let err = from_transport(e);
                if matches!(err, ChainError::WouldRevert(_)) && !self.allowed().await? {
                    return Err(ChainError::NotAllowed {
                        wallet: self.address,
                        contract: self.contract,
                    });
                }
                return Err(err);
            }
        };
        Ok(estimate.saturating_add(estimate * self.gas_limit_margin_percent / 100))
    }
}

#[async_trait]
impl AnchorChain for EvmAnchorer {
    fn chain_id(&self) -> ChainId {
        self.chain_id
    }

    fn wallet(&self) -> Address {
        self.address
    }

    fn contract(&self) -> Address {
        self.contract
    }

    fn confirmations(&self) -> u64 {
        self.confirmations
    }

    fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    async fn balance(&self) -> Result<U256, ChainError> {
        self.provider
            .get_balance(self.address)
            .await
            .map_err(from_transport)
    }

    async fn is_allowed(&self) -> Result<bool, ChainError> {
        self.allowed().await
    }

    async fn head(&self) -> Result<u64, ChainError> {
        self.provider
            .get_block_number()
            .await
            .map_err(from_transport)
    }

    async fn nonce_at(&self, block: Option<u64>) -> Result<u64, ChainError> {
        let count = self.provider.get_transaction_count(self.address);
        match block {
            Some(number) => count.number(number).await,
            None => count.latest().await,
        }
        .map_err(from_transport)
    }

    async fn suggest_fees(&self) -> Result<Fees, ChainError> {
        let estimate = self
            .provider
            .estimate_eip1559_fees()
            .await
            .map_err(from_transport)?;
        Ok(Fees {
            max_fee_per_gas: estimate.max_fee_per_gas,
            max_priority_fee_per_gas: estimate.max_priority_fee_per_gas,
        })
    }

    async fn sign(
        &self,
        payload: Payload,
        nonce: u64,
        fees: Fees,
    ) -> Result<SignedAnchorTx, ChainError> {
        let (request, gas_limit, root_digest) = match payload {
            Payload::Anchor { root_digest } => {
                let request = self.anchor_request(root_digest);
                let gas = self.anchor_gas(&request).await?;
                (request, gas, root_digest)
            }
            Payload::Filler => {
                let request = TransactionRequest::default()
                    .with_from(self.address)
                    .with_to(self.address)
                    .with_value(U256::ZERO)
                    .with_chain_id(self.chain_id.0);
                (request, TRANSFER_GAS, [0; 32])
            }
        };
        let mut request = request
            .with_nonce(nonce)
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        request.transaction_type = Some(2);
        let envelope = request
            .build(self.signer.wallet())
            .await
            .map_err(|e| ChainError::Signing(e.to_string()))?;
        Ok(SignedAnchorTx {
            tx_hash: *envelope.tx_hash(),
            root_digest,
            nonce,
            fees,
            gas_limit,
            raw: envelope.encoded_2718().into(),
        })
    }

    async fn broadcast(&self, tx: &SignedAnchorTx) -> Result<(), ChainError> {
        match self.provider.send_raw_transaction(&tx.raw).await {
            Ok(pending) => {
                if *pending.tx_hash() != tx.tx_hash {
                    return Err(ChainError::Rpc(format!(
                        "node reported hash {} for transaction {}",
                        pending.tx_hash(),
                        tx.tx_hash
                    )));
                }
                Ok(())
            }
            Err(e) if is_already_known(&e) => Ok(()),
            Err(e) => Err(from_transport(e)),
        }
    }

    async fn receipt(&self, tx_hash: B256) -> Result<Option<Inclusion>, ChainError> {
        let Some(receipt) = self
            .provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(from_transport)?
        else {
            return Ok(None);
        };
        let (Some(block_number), Some(block_hash)) = (receipt.block_number, receipt.block_hash)
        else {
            return Ok(None); // pending
        };
        Ok(Some(Inclusion {
            block_number,
            block_hash,
            success: receipt.status(),
            gas_used: receipt.gas_used,
            effective_gas_price: receipt.effective_gas_price,
        }))
    }

    async fn block(&self, number: u64) -> Result<Option<BlockInfo>, ChainError> {
        let Some(block) = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number))
            .full()
            .await
            .map_err(from_transport)?
        else {
            return Ok(None);
        };
        let wallet_txs = block
            .transactions
            .txns()
            .filter(|tx| tx.inner.signer() == self.address)
            .map(|tx| WalletTx {
                nonce: alloy::consensus::Transaction::nonce(tx.inner.inner()),
                tx_hash: *tx.inner.tx_hash(),
            })
            .collect();
        Ok(Some(BlockInfo {
            number: block.header.number,
            hash: block.header.hash,
            timestamp: block.header.timestamp,
            wallet_txs,
        }))
    }
}

/// The calldata of `anchorDagCbor(root_digest)`: `0x97ad09eb` ‖ the 32-byte digest.
pub fn anchor_calldata(root_digest: [u8; 32]) -> Bytes {
    CeramicAnchor::anchorDagCborCall {
        _root: root_digest.into(),
    }
    .abi_encode()
    .into()
}

/// The address of the wallet a signing key controls (for logs and for making that wallet the
/// owner of a dev contract). Fails on a malformed key without echoing it.
pub fn wallet_address(signing_key: &SecretString) -> Result<Address, ChainError> {
    parse_key(signing_key).map(|signer| signer.address())
}
