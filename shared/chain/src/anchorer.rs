//! Sending `anchorDagCbor(root)` transactions.
//!
//! One attempt is split into steps so that a later transaction journal, nonce mutex and fee
//! bumping can slot in between them: [`EvmAnchorer::pending_nonce`] and
//! [`EvmAnchorer::suggest_fees`] → [`EvmAnchorer::sign_anchor`] (pure signing, nothing sent)
//! → [`EvmAnchorer::broadcast`] → [`EvmAnchorer::wait_for_confirmation`].
//! [`EvmAnchorer::anchor_root`] runs them in order under one time limit. The journaled
//! transaction manager in `cas-worker` drives them itself, with [`EvmAnchorer::inclusion`]
//! and [`EvmAnchorer::latest_nonce`] to follow attempts it sent before.

use std::fmt;
use std::time::Duration;

use alloy::eips::eip2718::Encodable2718;
use alloy::network::{NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, B256, Bytes, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use secrecy::SecretString;
use tokio::time::Instant;

use crate::contract::{ANCHOR_CONTRACT_ADDRESS, CeramicAnchor};
use crate::error::{from_contract, from_transport, is_already_known};
use crate::signer::{AnchorSigner, SignerSource, parse_key};
use crate::{ChainError, ChainId, connect_root};

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
    /// Time limit for one attempt of [`EvmAnchorer::anchor_root`] (build, sign, broadcast,
    /// receipt, confirmations). Default 60 s, as in the reference service.
    pub attempt_timeout: Duration,
    /// How often to poll for the receipt and new blocks. Default 1 s.
    pub poll_interval: Duration,
    /// Extra gas on top of `eth_estimateGas`, in percent. Default 10.
    pub gas_limit_margin_percent: u64,
}

impl AnchorerConfig {
    /// A config with the defaults: the official contract, any chain, 1 confirmation,
    /// 60 s per attempt, 1 s polling.
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
            attempt_timeout: Duration::from_secs(60),
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

/// A transaction's receipt: where it was included and whether it succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inclusion {
    /// The including block.
    pub block_number: u64,
    /// Its hash.
    pub block_hash: B256,
    /// Receipt status: false if it reverted.
    pub success: bool,
}

/// EIP-1559 fee caps for one transaction, in wei per gas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// `maxFeePerGas`.
    pub max_fee_per_gas: u128,
    /// `maxPriorityFeePerGas`.
    pub max_priority_fee_per_gas: u128,
}

/// A signed anchor transaction, not yet broadcast. Everything a journal would record.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedAnchorTx {
    /// The transaction hash.
    pub tx_hash: B256,
    /// The root digest it anchors.
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

/// Sends anchor transactions from one wallet to the anchor contract.
#[derive(Clone)]
pub struct EvmAnchorer {
    provider: RootProvider,
    signer: AnchorSigner,
    address: Address,
    contract: Address,
    chain_id: ChainId,
    confirmations: u64,
    attempt_timeout: Duration,
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
            .field("attempt_timeout", &self.attempt_timeout)
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
            attempt_timeout: config.attempt_timeout,
            poll_interval: config.poll_interval,
            gas_limit_margin_percent: config.gas_limit_margin_percent,
        };
        if !anchorer.is_allowed().await? {
            return Err(ChainError::NotAllowed {
                wallet: address,
                contract: config.contract,
            });
        }
        tracing::info!(wallet = %address, signer = anchorer.signer.kind(), contract = %config.contract, chain = %actual, "connected to the anchor contract");
        Ok(anchorer)
    }

    /// The chain the endpoint serves.
    pub fn chain_id(&self) -> ChainId {
        self.chain_id
    }

    /// The wallet's address.
    pub fn wallet(&self) -> Address {
        self.address
    }

    /// The anchor contract's address.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// Blocks that must include or follow a transaction before it counts.
    pub fn confirmations(&self) -> u64 {
        self.confirmations
    }

    /// How often to poll the node.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// The wallet's balance in wei (latest block).
    pub async fn balance(&self) -> Result<U256, ChainError> {
        self.provider
            .get_balance(self.address)
            .await
            .map_err(from_transport)
    }

    /// Whether the contract lets this wallet anchor:
    /// `isServiceAllowed(wallet) || owner() == wallet`.
    pub async fn is_allowed(&self) -> Result<bool, ChainError> {
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

    /// Anchor `root_digest` (the sha256 digest of the dag-cbor Merkle root, i.e. the root
    /// CID without its `01 71 12 20` prefix): send `anchorDagCbor(root_digest)` as an
    /// EIP-1559 transaction to the contract, wait for its receipt and the configured
    /// confirmations, and fail if it reverted. The whole attempt is bounded by
    /// `attempt_timeout`; on timeout the transaction may still be mined later.
    pub async fn anchor_root(&self, root_digest: [u8; 32]) -> Result<AnchorTx, ChainError> {
        let deadline = Instant::now() + self.attempt_timeout;
        let timeout = |tx_hash| ChainError::Timeout {
            tx_hash,
            after: self.attempt_timeout,
        };

        let signed = tokio::time::timeout_at(deadline, async {
            let nonce = self.pending_nonce().await?;
            let fees = self.suggest_fees().await?;
            self.sign_anchor(root_digest, nonce, fees).await
        })
        .await
        .map_err(|_| timeout(None))??;
        tracing::info!(tx = ?signed, "sending anchor transaction");

        let tx = tokio::time::timeout_at(deadline, async {
            self.broadcast(&signed).await?;
            self.wait_for_confirmation(signed.tx_hash).await
        })
        .await
        .map_err(|_| timeout(Some(signed.tx_hash)))??;
        tracing::info!(
            tx_hash = %B256::from(tx.tx_hash),
            block = tx.block_number,
            gas_used = tx.gas_used,
            "anchor transaction confirmed"
        );
        Ok(tx)
    }

    /// The wallet's next nonce, counting its pending transactions.
    pub async fn pending_nonce(&self) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(self.address)
            .pending()
            .await
            .map_err(from_transport)
    }

    /// The number of the wallet's transactions in the latest block: every nonce below it is
    /// used.
    pub async fn latest_nonce(&self) -> Result<u64, ChainError> {
        self.provider
            .get_transaction_count(self.address)
            .latest()
            .await
            .map_err(from_transport)
    }

    /// The receipt of a transaction, if it is in a block (of the node's current chain).
    pub async fn inclusion(&self, tx_hash: B256) -> Result<Option<Inclusion>, ChainError> {
        let Some(receipt) = self.receipt(tx_hash).await? else {
            return Ok(None);
        };
        let (Some(block_number), Some(block_hash)) = (receipt.block_number, receipt.block_hash)
        else {
            return Ok(None);
        };
        Ok(Some(Inclusion {
            block_number,
            block_hash,
            success: receipt.status(),
        }))
    }

    /// The node's EIP-1559 fee suggestion (from `eth_feeHistory`).
    pub async fn suggest_fees(&self) -> Result<Fees, ChainError> {
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

    /// The transaction request for `anchorDagCbor(root_digest)` from this wallet, without
    /// nonce, fees or gas limit.
    pub fn anchor_request(&self, root_digest: [u8; 32]) -> TransactionRequest {
        TransactionRequest::default()
            .with_from(self.address)
            .with_to(self.contract)
            .with_input(anchor_calldata(root_digest))
            .with_chain_id(self.chain_id.0)
    }

    /// Estimate the gas (plus the configured margin) and sign the anchor transaction with
    /// the given nonce and fees. Nothing is broadcast. Fails with [`ChainError::NotAllowed`]
    /// if the wallet is not (or no longer) allowed by the contract, and with
    /// [`ChainError::WouldRevert`] if the call would revert for another reason.
    pub async fn sign_anchor(
        &self,
        root_digest: [u8; 32],
        nonce: u64,
        fees: Fees,
    ) -> Result<SignedAnchorTx, ChainError> {
        let request = self.anchor_request(root_digest);
        let estimate = match self.provider.estimate_gas(request.clone()).await {
            Ok(gas) => gas,
            Err(e) => {
                let err = from_transport(e);
                if matches!(err, ChainError::WouldRevert(_)) && !self.is_allowed().await? {
                    return Err(ChainError::NotAllowed {
                        wallet: self.address,
                        contract: self.contract,
                    });
                }
                return Err(err);
            }
        };
        let gas_limit = estimate.saturating_add(estimate * self.gas_limit_margin_percent / 100);

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

    /// Send a signed transaction. Sending the same transaction again is harmless: an
    /// "already known" answer counts as success.
    pub async fn broadcast(&self, tx: &SignedAnchorTx) -> Result<(), ChainError> {
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

    /// Wait (without a time limit; wrap it in one) until `tx_hash` is mined and has the
    /// configured number of confirmations, then return it. A reverted transaction is
    /// [`ChainError::Reverted`]. If the including block is reorganised away while waiting,
    /// keeps waiting for the transaction's new inclusion.
    pub async fn wait_for_confirmation(&self, tx_hash: B256) -> Result<AnchorTx, ChainError> {
        loop {
            if let Some(tx) = self.confirmed(tx_hash).await? {
                return Ok(tx);
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    /// One poll of [`Self::wait_for_confirmation`]: `Some` once the transaction is mined,
    /// confirmed and still in the same block.
    async fn confirmed(&self, tx_hash: B256) -> Result<Option<AnchorTx>, ChainError> {
        let Some(receipt) = self.receipt(tx_hash).await? else {
            return Ok(None);
        };
        let (Some(block_number), Some(block_hash)) = (receipt.block_number, receipt.block_hash)
        else {
            return Ok(None); // pending
        };
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(from_transport)?;
        if head.saturating_add(1) < block_number.saturating_add(self.confirmations) {
            return Ok(None);
        }
        let Some(block) = self
            .provider
            .get_block_by_hash(block_hash)
            .await
            .map_err(from_transport)?
        else {
            return Ok(None); // reorganised away; look again
        };
        // After the confirmations the receipt must still point at the same block.
        match self.receipt(tx_hash).await? {
            Some(again) if again.block_hash == Some(block_hash) => {}
            _ => return Ok(None),
        }
        if !receipt.status() {
            return Err(ChainError::Reverted {
                tx_hash,
                block_number,
            });
        }
        Ok(Some(AnchorTx {
            tx_hash: tx_hash.0,
            block_number,
            block_timestamp: block.header.timestamp,
            gas_used: receipt.gas_used,
            effective_gas_price: receipt.effective_gas_price,
        }))
    }

    async fn receipt(
        &self,
        tx_hash: B256,
    ) -> Result<Option<alloy::rpc::types::TransactionReceipt>, ChainError> {
        self.provider
            .get_transaction_receipt(tx_hash)
            .await
            .map_err(from_transport)
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
