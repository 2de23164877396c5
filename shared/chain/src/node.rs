//! The chain seam: everything the transaction manager asks of an Ethereum node, as one trait.
//!
//! [`AnchorChain`] is implemented by [`EvmAnchorer`](crate::EvmAnchorer) for a real node
//! (alloy over JSON-RPC) and, with the `fake` feature, by
//! [`FakeChain`](crate::fake::FakeChain): a scripted chain in memory that can show on demand
//! the faults a real node shows only by accident (an error after a send it took, receipts
//! that lag its nonce view, a transaction dropped from the pool, a reorganisation, fees above
//! the cap). The manager never learns which one it talks to.
//!
//! The trait is deliberately about observations, not decisions: it reads nonces, blocks and
//! receipts, signs and sends. Whether a transaction is mined, dropped or must be replaced is
//! decided by the caller from those observations (and its journal).

use std::{fmt, time::Duration};

use alloy::primitives::{Address, B256, U256};
use async_trait::async_trait;

use crate::{ChainError, ChainId, Fees, SignedAnchorTx};

/// What a transaction carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// `anchorDagCbor(root_digest)` to the anchor contract.
    Anchor {
        /// The sha256 digest of the dag-cbor Merkle root.
        root_digest: [u8; 32],
    },
    /// A transfer of nothing to the wallet itself: it only uses up a nonce, to fill a gap
    /// that keeps later transactions from being mined.
    Filler,
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
    /// Gas used by the transaction.
    pub gas_used: u64,
    /// The price paid per gas, in wei.
    pub effective_gas_price: u128,
}

/// A transaction of the wallet in a block: which nonce it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletTx {
    /// The nonce.
    pub nonce: u64,
    /// The transaction hash.
    pub tx_hash: B256,
}

/// A block of the node's current chain, as far as the wallet is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    /// Its number.
    pub number: u64,
    /// Its hash.
    pub hash: B256,
    /// Its timestamp, in seconds.
    pub timestamp: u64,
    /// The transactions sent by the wallet that it includes.
    pub wallet_txs: Vec<WalletTx>,
}

/// What the transaction manager needs from an Ethereum node, for one wallet and one anchor
/// contract.
///
/// Every method is one observation or action; none waits for anything to happen. Errors are
/// [`ChainError`]s; [`ChainError::rejection`] tells a node's refusal of a transaction apart
/// from a failure to learn anything (a transport error or an unclassified JSON-RPC error,
/// after which a sent transaction may or may not have been taken).
#[async_trait]
pub trait AnchorChain: Send + Sync + fmt::Debug + 'static {
    /// The chain the node serves.
    fn chain_id(&self) -> ChainId;
    /// The sending wallet.
    fn wallet(&self) -> Address;
    /// The anchor contract.
    fn contract(&self) -> Address;
    /// Blocks that must include or follow a transaction's block before it counts (≥ 1).
    fn confirmations(&self) -> u64;
    /// How often to poll the node while waiting.
    fn poll_interval(&self) -> Duration;

    /// The wallet's balance in wei (latest block).
    async fn balance(&self) -> Result<U256, ChainError>;
    /// Whether the contract lets this wallet anchor.
    async fn is_allowed(&self) -> Result<bool, ChainError>;
    /// The number of the newest block.
    async fn head(&self) -> Result<u64, ChainError>;
    /// The wallet's transaction count after `block` (the latest block when `None`): every
    /// nonce below it is used.
    async fn nonce_at(&self, block: Option<u64>) -> Result<u64, ChainError>;
    /// The node's EIP-1559 fee suggestion.
    async fn suggest_fees(&self) -> Result<Fees, ChainError>;
    /// Sign a transaction with this nonce and fees (estimating its gas). Nothing is sent.
    async fn sign(
        &self,
        payload: Payload,
        nonce: u64,
        fees: Fees,
    ) -> Result<SignedAnchorTx, ChainError>;
    /// Send a signed transaction. Sending one the node has already is a success.
    async fn broadcast(&self, tx: &SignedAnchorTx) -> Result<(), ChainError>;
    /// The receipt of a transaction, if the node has one.
    async fn receipt(&self, tx_hash: B256) -> Result<Option<Inclusion>, ChainError>;
    /// A block of the node's current chain by number, with the wallet's transactions in it.
    async fn block(&self, number: u64) -> Result<Option<BlockInfo>, ChainError>;
}
