//! [`FakeChain`]: a scripted Ethereum chain in memory, behind the same [`AnchorChain`] trait as
//! the real node, for tests of the transaction manager (feature `fake`).
//!
//! It keeps what a node keeps for one wallet: a canonical chain of blocks, a pool of pending
//! transactions (one per nonce, replaced only by one paying at least 12.5 % more on both fee
//! fields), a base fee, a balance and the contract's allowlist flag. Blocks are mined when a
//! test asks ([`FakeChain::mine`]) or, with automine on, as soon as a sent transaction can be
//! included. A transaction is included only at the wallet's next nonce and only if its max
//! fee covers the base fee.
//!
//! On top of that it produces, on demand, the faults a real provider shows only by accident:
//!
//! - [`SendFault`]: the next sends are answered with a JSON-RPC error after the transaction
//!   was taken (as load-balanced providers do), refused with an error, refused with
//!   "nonce too low", or lost in transport;
//! - [`FakeChain::set_receipt_lag`]: receipts appear only some time after their block, while
//!   nonces and blocks are current (backends at different heights);
//! - [`FakeChain::drop_pool`]: pending transactions vanish from the pool;
//! - [`FakeChain::reorg`]: the newest blocks are replaced, their transactions returned to the
//!   pool or lost;
//! - [`FakeChain::set_base_fee`]: fees above any cap, and back;
//! - [`FakeChain::set_down`]: every call fails, as during an outage;
//! - [`FakeChain::send_foreign`]: a transaction of the same wallet sent by someone else.
//!
//! Time is tokio's clock, so tests can run with paused time and every wait is instant and
//! deterministic.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use async_trait::async_trait;
use tokio::time::Instant;

use crate::{
    AnchorChain, BlockInfo, ChainError, ChainId, Fees, Inclusion, Payload, SignedAnchorTx,
    WalletTx, contract::ANCHOR_CONTRACT_ADDRESS, fees::bumped,
};

/// Gas an anchor transaction uses on the fake chain (about what the real contract uses).
pub const ANCHOR_GAS: u64 = 26_000;
/// Gas a transfer uses.
pub const TRANSFER_GAS: u64 = 21_000;

/// How the fake chain answers one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFault {
    /// Take the transaction (into the pool, mined as usual), then answer with a JSON-RPC
    /// internal error (-32603), as a load-balanced provider does.
    AcceptThenError,
    /// Refuse with a JSON-RPC internal error (-32603) without taking it.
    Error,
    /// Refuse with "nonce too low" without taking it.
    NonceTooLow,
    /// Lose the call in transport (no answer), without taking it.
    Transport,
}

/// What happens to the transactions of blocks removed by [`FakeChain::reorg`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReorgTxs {
    /// They go back to the pool (the usual case: the new branch has not included them yet).
    BackToPool,
    /// They are gone from every pool (the node restarted, or they were evicted).
    Lost,
}

/// Settings of a [`FakeChain`].
#[derive(Debug, Clone)]
pub struct FakeChainConfig {
    /// Its chain id.
    pub chain_id: ChainId,
    /// The wallet that sends.
    pub wallet: Address,
    /// Confirmations the manager must wait for.
    pub confirmations: u64,
    /// How often the manager polls.
    pub poll_interval: Duration,
    /// The base fee of the next block, wei.
    pub base_fee: u128,
    /// The priority fee the node suggests, wei.
    pub priority_fee: u128,
    /// Mine a block as soon as a sent transaction can be included.
    pub automine: bool,
}

impl Default for FakeChainConfig {
    /// Chain 1337, a fixed wallet, 1 confirmation, 1 s polling, 1 gwei base and priority
    /// fees, automine on.
    fn default() -> Self {
        Self {
            chain_id: ChainId(1337),
            wallet: Address::repeat_byte(0xa1),
            confirmations: 1,
            poll_interval: Duration::from_secs(1),
            base_fee: 1_000_000_000,
            priority_fee: 1_000_000_000,
            automine: true,
        }
    }
}

/// What a fake transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Anchor([u8; 32]),
    Filler,
    /// Sent by someone else holding the wallet's key.
    Foreign,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tx {
    hash: B256,
    nonce: u64,
    kind: Kind,
    fees: Fees,
    gas_limit: u64,
}

impl Tx {
    /// The fake's "EIP-2718" encoding: a tag, the kind, nonce, fees and gas limit.
    fn encode(&self) -> Bytes {
        let mut raw = Vec::with_capacity(100);
        raw.extend_from_slice(b"fake");
        match self.kind {
            Kind::Anchor(root) => {
                raw.push(0);
                raw.extend_from_slice(&root);
            }
            Kind::Filler => raw.push(1),
            Kind::Foreign => raw.push(2),
        }
        raw.extend_from_slice(&self.nonce.to_be_bytes());
        raw.extend_from_slice(&self.fees.max_fee_per_gas.to_be_bytes());
        raw.extend_from_slice(&self.fees.max_priority_fee_per_gas.to_be_bytes());
        raw.extend_from_slice(&self.gas_limit.to_be_bytes());
        raw.into()
    }

    fn decode(raw: &[u8]) -> Option<Self> {
        let rest = raw.strip_prefix(b"fake")?;
        let (kind, rest) = match rest.first()? {
            0 => (Kind::Anchor(rest.get(1..33)?.try_into().ok()?), &rest[33..]),
            1 => (Kind::Filler, &rest[1..]),
            2 => (Kind::Foreign, &rest[1..]),
            _ => return None,
        };
        if rest.len() != 8 + 16 + 16 + 8 {
            return None;
        }
        let nonce = u64::from_be_bytes(rest[..8].try_into().ok()?);
        let max_fee = u128::from_be_bytes(rest[8..24].try_into().ok()?);
        let priority = u128::from_be_bytes(rest[24..40].try_into().ok()?);
        let gas_limit = u64::from_be_bytes(rest[40..48].try_into().ok()?);
        Some(Self {
            hash: keccak256(raw),
            nonce,
            kind,
            fees: Fees {
                max_fee_per_gas: max_fee,
                max_priority_fee_per_gas: priority,
            },
            gas_limit,
        })
    }

    fn gas_used(&self) -> u64 {
        match self.kind {
            Kind::Anchor(_) => ANCHOR_GAS,
            Kind::Filler | Kind::Foreign => TRANSFER_GAS,
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    hash: B256,
    timestamp: u64,
    /// Transactions and whether each succeeded.
    txs: Vec<(Tx, bool, u128)>,
    mined_at: Instant,
}

#[derive(Debug)]
struct State {
    blocks: Vec<Block>,
    /// Pending transactions of the wallet, one per nonce.
    pool: BTreeMap<u64, Tx>,
    base_fee: u128,
    priority_fee: u128,
    balance: U256,
    allowed: bool,
    automine: bool,
    receipt_lag: Duration,
    faults: VecDeque<SendFault>,
    down: bool,
    /// Distinguishes the hashes of blocks mined on different branches at one height.
    branch: u64,
    /// Successful broadcasts (a new transaction taken), for assertions.
    taken: u64,
    /// Every broadcast call, answered or not.
    broadcasts: u64,
    /// Every signing call.
    signed: u64,
}

impl State {
    fn account_nonce(&self) -> u64 {
        self.blocks.iter().map(|b| b.txs.len() as u64).sum()
    }

    fn find_mined(&self, hash: B256) -> Option<(u64, &Block, usize)> {
        self.blocks.iter().enumerate().find_map(|(n, b)| {
            b.txs
                .iter()
                .position(|(tx, _, _)| tx.hash == hash)
                .map(|i| (n as u64, b, i))
        })
    }

    /// Mine one block with every pool transaction that can be included now.
    fn mine(&mut self) {
        let number = self.blocks.len() as u64;
        let mut next = self.account_nonce();
        let mut txs = Vec::new();
        while let Some(tx) = self.pool.get(&next) {
            if tx.fees.max_fee_per_gas < self.base_fee {
                break;
            }
            let tx = self.pool.remove(&next).expect("present");
            let tip = tx
                .fees
                .max_priority_fee_per_gas
                .min(tx.fees.max_fee_per_gas - self.base_fee);
            let price = self.base_fee + tip;
            let cost = U256::from(tx.gas_used()) * U256::from(price);
            self.balance = self.balance.saturating_sub(cost);
            let success = match tx.kind {
                Kind::Anchor(_) => self.allowed,
                Kind::Filler | Kind::Foreign => true,
            };
            txs.push((tx, success, price));
            next += 1;
        }
        let parent = self.blocks.last().map(|b| b.hash).unwrap_or_default();
        let mut seed = Vec::with_capacity(48);
        seed.extend_from_slice(parent.as_slice());
        seed.extend_from_slice(&number.to_be_bytes());
        seed.extend_from_slice(&self.branch.to_be_bytes());
        self.blocks.push(Block {
            hash: keccak256(&seed),
            timestamp: 1_700_000_000 + number * 12,
            txs,
            mined_at: Instant::now(),
        });
    }

    fn mineable(&self) -> bool {
        self.pool
            .get(&self.account_nonce())
            .is_some_and(|tx| tx.fees.max_fee_per_gas >= self.base_fee)
    }

    /// Take a transaction into the pool, as a node's `eth_sendRawTransaction` does.
    fn take(&mut self, tx: Tx) -> Result<(), ChainError> {
        if self.pool.values().any(|p| p.hash == tx.hash) || self.find_mined(tx.hash).is_some() {
            return Ok(()); // already known
        }
        if tx.nonce < self.account_nonce() {
            return Err(rejected(-32000, "nonce too low"));
        }
        let cost = U256::from(tx.gas_limit) * U256::from(tx.fees.max_fee_per_gas);
        if cost > self.balance {
            return Err(rejected(
                -32000,
                "insufficient funds for gas * price + value",
            ));
        }
        if let Some(pending) = self.pool.get(&tx.nonce)
            && (tx.fees.max_fee_per_gas < bumped(pending.fees.max_fee_per_gas)
                || tx.fees.max_priority_fee_per_gas < bumped(pending.fees.max_priority_fee_per_gas))
        {
            return Err(rejected(-32000, "replacement transaction underpriced"));
        }
        self.pool.insert(tx.nonce, tx);
        self.taken += 1;
        if self.automine && self.mineable() {
            self.mine();
        }
        Ok(())
    }
}

fn rejected(code: i64, message: &str) -> ChainError {
    ChainError::Rejected {
        code,
        message: message.to_owned(),
    }
}

/// A scripted chain in memory; see the [module docs](self). Clones share one chain, so a
/// test keeps a handle to script faults while the code under test uses another.
#[derive(Debug, Clone)]
pub struct FakeChain {
    config: Arc<FakeChainConfig>,
    state: Arc<Mutex<State>>,
}

impl Default for FakeChain {
    fn default() -> Self {
        Self::new(FakeChainConfig::default())
    }
}

impl FakeChain {
    /// A chain with only a genesis block, the wallet funded with 100 ETH and allowed.
    pub fn new(config: FakeChainConfig) -> Self {
        let mut state = State {
            blocks: Vec::new(),
            pool: BTreeMap::new(),
            base_fee: config.base_fee,
            priority_fee: config.priority_fee,
            balance: U256::from(10u64).pow(U256::from(20u64)),
            allowed: true,
            automine: config.automine,
            receipt_lag: Duration::ZERO,
            faults: VecDeque::new(),
            down: false,
            branch: 0,
            taken: 0,
            broadcasts: 0,
            signed: 0,
        };
        state.mine(); // genesis
        Self {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_up(&self) -> Result<(), ChainError> {
        if self.state().down {
            Err(ChainError::Rpc(
                "connection refused (fake chain is down)".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Mine one block now (with whatever the pool can include, possibly nothing).
    pub fn mine(&self) {
        self.state().mine();
    }

    /// Mine `n` blocks.
    pub fn mine_blocks(&self, n: u64) {
        let mut state = self.state();
        for _ in 0..n {
            state.mine();
        }
    }

    /// Mine as soon as a sent transaction can be included (on), or only when asked (off).
    pub fn set_automine(&self, on: bool) {
        let mut state = self.state();
        state.automine = on;
        if on && state.mineable() {
            state.mine();
        }
    }

    /// Answer the next sends with these faults, in order; later sends behave normally.
    pub fn fail_next_sends(&self, faults: impl IntoIterator<Item = SendFault>) {
        self.state().faults.extend(faults);
    }

    /// Show receipts only this long after their block was mined (nonces and blocks stay
    /// current).
    pub fn set_receipt_lag(&self, lag: Duration) {
        self.state().receipt_lag = lag;
    }

    /// Remove every pending transaction from the pool; returns their hashes.
    pub fn drop_pool(&self) -> Vec<B256> {
        let mut state = self.state();
        let dropped = state.pool.values().map(|tx| tx.hash).collect();
        state.pool.clear();
        dropped
    }

    /// Replace the newest `depth` blocks by empty ones on another branch (the chain gets no
    /// shorter). Their transactions go back to the pool or are lost.
    pub fn reorg(&self, depth: u64, txs: ReorgTxs) {
        let mut state = self.state();
        let keep = (state.blocks.len() as u64).saturating_sub(depth).max(1);
        let removed: Vec<Block> = state.blocks.drain(keep as usize..).collect();
        state.branch += 1;
        if txs == ReorgTxs::BackToPool {
            for block in &removed {
                for (tx, _, _) in &block.txs {
                    state.pool.insert(tx.nonce, tx.clone());
                }
            }
        }
        let automine = state.automine;
        state.automine = false;
        for _ in 0..removed.len() {
            // Empty blocks: the new branch has not included the returned transactions yet.
            let pool = std::mem::take(&mut state.pool);
            state.mine();
            state.pool = pool;
        }
        state.automine = automine;
    }

    /// The base fee of the next blocks. A transaction whose max fee is below it waits in the
    /// pool.
    pub fn set_base_fee(&self, wei: u128) {
        let mut state = self.state();
        state.base_fee = wei;
        if state.automine && state.mineable() {
            state.mine();
        }
    }

    /// Make every call fail (an outage), or work again.
    pub fn set_down(&self, down: bool) {
        self.state().down = down;
    }

    /// Whether the contract allows the wallet (anchors revert otherwise).
    pub fn set_allowed(&self, allowed: bool) {
        self.state().allowed = allowed;
    }

    /// Set the wallet's balance.
    pub fn set_balance(&self, wei: U256) {
        self.state().balance = wei;
    }

    /// A transaction of the wallet sent by someone else at `nonce` (taken like any send,
    /// replacing whatever is pending at that nonce). Returns its hash.
    pub fn send_foreign(&self, nonce: u64) -> B256 {
        let mut state = self.state();
        let mut tx = Tx {
            hash: B256::ZERO,
            nonce,
            kind: Kind::Foreign,
            fees: Fees {
                max_fee_per_gas: state.base_fee * 10,
                max_priority_fee_per_gas: state.priority_fee * 10,
            },
            gas_limit: TRANSFER_GAS,
        };
        tx.hash = keccak256(tx.encode());
        state.pool.remove(&nonce);
        state.pool.insert(nonce, tx.clone());
        if state.automine && state.mineable() {
            state.mine();
        }
        tx.hash
    }

    /// Hashes of the transactions in the canonical chain that anchor `root_digest`.
    pub fn anchors_of(&self, root_digest: [u8; 32]) -> Vec<B256> {
        self.state()
            .blocks
            .iter()
            .flat_map(|b| &b.txs)
            .filter(|(tx, success, _)| *success && tx.kind == Kind::Anchor(root_digest))
            .map(|(tx, _, _)| tx.hash)
            .collect()
    }

    /// Successful anchors in the canonical chain, by root.
    pub fn anchors(&self) -> HashMap<[u8; 32], usize> {
        let mut roots = HashMap::new();
        for (tx, success, _) in self.state().blocks.iter().flat_map(|b| &b.txs) {
            if let (Kind::Anchor(root), true) = (tx.kind, success) {
                *roots.entry(root).or_default() += 1;
            }
        }
        roots
    }

    /// Filler transactions in the canonical chain.
    pub fn fillers(&self) -> usize {
        self.state()
            .blocks
            .iter()
            .flat_map(|b| &b.txs)
            .filter(|(tx, _, _)| tx.kind == Kind::Filler)
            .count()
    }

    /// The wallet's next nonce on the canonical chain.
    pub fn account_nonce(&self) -> u64 {
        self.state().account_nonce()
    }

    /// Pending transactions.
    pub fn pool_len(&self) -> usize {
        self.state().pool.len()
    }

    /// New transactions taken by sends so far.
    pub fn taken(&self) -> u64 {
        self.state().taken
    }

    /// `eth_sendRawTransaction` calls so far.
    pub fn broadcasts(&self) -> u64 {
        self.state().broadcasts
    }

    /// Transactions signed so far.
    pub fn signed(&self) -> u64 {
        self.state().signed
    }

    /// The newest block's number.
    pub fn head_number(&self) -> u64 {
        self.state().blocks.len() as u64 - 1
    }

    /// Whether the canonical chain includes this transaction.
    pub fn is_mined(&self, hash: B256) -> bool {
        self.state().find_mined(hash).is_some()
    }
}

#[async_trait]
impl AnchorChain for FakeChain {
    fn chain_id(&self) -> ChainId {
        self.config.chain_id
    }

    fn wallet(&self) -> Address {
        self.config.wallet
    }

    fn contract(&self) -> Address {
        ANCHOR_CONTRACT_ADDRESS
    }

    fn confirmations(&self) -> u64 {
        self.config.confirmations.max(1)
    }

    fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    async fn balance(&self) -> Result<U256, ChainError> {
        self.check_up()?;
        Ok(self.state().balance)
    }

    async fn is_allowed(&self) -> Result<bool, ChainError> {
        self.check_up()?;
        Ok(self.state().allowed)
    }

    async fn head(&self) -> Result<u64, ChainError> {
        self.check_up()?;
        Ok(self.head_number())
    }

    async fn nonce_at(&self, block: Option<u64>) -> Result<u64, ChainError> {
        self.check_up()?;
        let state = self.state();
        let last = block.unwrap_or(state.blocks.len() as u64 - 1);
        if last >= state.blocks.len() as u64 {
            return Err(rejected(-32000, "header not found"));
        }
        Ok(state.blocks[..=last as usize]
            .iter()
            .map(|b| b.txs.len() as u64)
            .sum())
    }

    async fn suggest_fees(&self) -> Result<Fees, ChainError> {
        self.check_up()?;
        let state = self.state();
        Ok(Fees {
            max_fee_per_gas: 2 * state.base_fee + state.priority_fee,
            max_priority_fee_per_gas: state.priority_fee,
        })
    }

    async fn sign(
        &self,
        payload: Payload,
        nonce: u64,
        fees: Fees,
    ) -> Result<SignedAnchorTx, ChainError> {
        self.check_up()?;
        let mut state = self.state();
        let (kind, root_digest, gas_limit) = match payload {
            Payload::Anchor { root_digest } => {
                if !state.allowed {
                    return Err(ChainError::NotAllowed {
                        wallet: self.config.wallet,
                        contract: ANCHOR_CONTRACT_ADDRESS,
                    });
                }
                (Kind::Anchor(root_digest), root_digest, ANCHOR_GAS * 11 / 10)
            }
            Payload::Filler => (Kind::Filler, [0; 32], TRANSFER_GAS),
        };
        state.signed += 1;
        let mut tx = Tx {
            hash: B256::ZERO,
            nonce,
            kind,
            fees,
            gas_limit,
        };
        let raw = tx.encode();
        tx.hash = keccak256(&raw);
        Ok(SignedAnchorTx {
            tx_hash: tx.hash,
            root_digest,
            nonce,
            fees,
            gas_limit,
            raw,
        })
    }

    async fn broadcast(&self, signed: &SignedAnchorTx) -> Result<(), ChainError> {
        self.check_up()?;
        let tx = Tx::decode(&signed.raw)
            .ok_or_else(|| rejected(-32602, "invalid raw transaction (not the fake's)"))?;
        let mut state = self.state();
        state.broadcasts += 1;
        match state.faults.pop_front() {
            None => state.take(tx),
            Some(SendFault::AcceptThenError) => {
                state.take(tx)?;
                Err(rejected(-32603, "internal error"))
            }
            Some(SendFault::Error) => Err(rejected(-32603, "internal error")),
            Some(SendFault::NonceTooLow) => Err(rejected(-32000, "nonce too low")),
            Some(SendFault::Transport) => Err(ChainError::Rpc(
                "error sending request: connection reset".into(),
            )),
        }
    }

    async fn receipt(&self, tx_hash: B256) -> Result<Option<Inclusion>, ChainError> {
        self.check_up()?;
        let state = self.state();
        let Some((number, block, index)) = state.find_mined(tx_hash) else {
            return Ok(None);
        };
        if Instant::now() < block.mined_at + state.receipt_lag {
            return Ok(None);
        }
        let (tx, success, price) = &block.txs[index];
        Ok(Some(Inclusion {
            block_number: number,
            block_hash: block.hash,
            success: *success,
            gas_used: tx.gas_used(),
            effective_gas_price: *price,
        }))
    }

    async fn block(&self, number: u64) -> Result<Option<BlockInfo>, ChainError> {
        self.check_up()?;
        let state = self.state();
        Ok(state.blocks.get(number as usize).map(|b| BlockInfo {
            number,
            hash: b.hash,
            timestamp: b.timestamp,
            wallet_txs: b
                .txs
                .iter()
                .map(|(tx, _, _)| WalletTx {
                    nonce: tx.nonce,
                    tx_hash: tx.hash,
                })
                .collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fees(max: u128, tip: u128) -> Fees {
        Fees {
            max_fee_per_gas: max,
            max_priority_fee_per_gas: tip,
        }
    }

    #[tokio::test]
    async fn sends_are_mined_in_nonce_order_and_replacements_need_a_bump() {
        let chain = FakeChain::new(FakeChainConfig {
            automine: false,
            ..FakeChainConfig::default()
        });
        let f = fees(3_000_000_000, 1_000_000_000);
        let a = chain
            .sign(
                Payload::Anchor {
                    root_digest: [1; 32],
                },
                0,
                f,
            )
            .await
            .unwrap();
        let b = chain
            .sign(
                Payload::Anchor {
                    root_digest: [2; 32],
                },
                1,
                f,
            )
            .await
            .unwrap();
        chain.broadcast(&b).await.unwrap();
        chain.mine();
        assert_eq!(chain.account_nonce(), 0, "nonce 1 waits for nonce 0");
        chain.broadcast(&a).await.unwrap();
        chain.broadcast(&a).await.unwrap(); // already known
        let same_fees = chain
            .sign(
                Payload::Anchor {
                    root_digest: [3; 32],
                },
                0,
                f,
            )
            .await
            .unwrap();
        let err = chain.broadcast(&same_fees).await.unwrap_err();
        assert!(err.to_string().contains("underpriced"), "{err}");
        chain.mine();
        assert_eq!(chain.account_nonce(), 2);
        assert_eq!(chain.anchors_of([1; 32]), vec![a.tx_hash]);
        let receipt = chain.receipt(b.tx_hash).await.unwrap().unwrap();
        assert!(receipt.success);
        let late = chain.broadcast(&same_fees).await.unwrap_err();
        assert!(late.to_string().contains("nonce too low"), "{late}");
    }

    #[tokio::test(start_paused = true)]
    async fn faults_happen_on_demand() {
        let chain = FakeChain::default();
        let f = fees(3_000_000_000, 1_000_000_000);
        let a = chain
            .sign(
                Payload::Anchor {
                    root_digest: [1; 32],
                },
                0,
                f,
            )
            .await
            .unwrap();
        chain.fail_next_sends([SendFault::AcceptThenError]);
        chain.set_receipt_lag(Duration::from_secs(20));
        assert!(chain.broadcast(&a).await.is_err(), "answered with an error");
        assert!(chain.is_mined(a.tx_hash), "but taken and mined");
        assert_eq!(chain.nonce_at(None).await.unwrap(), 1);
        assert!(
            chain.receipt(a.tx_hash).await.unwrap().is_none(),
            "receipt lags"
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(chain.receipt(a.tx_hash).await.unwrap().is_some());

        chain.reorg(1, ReorgTxs::BackToPool);
        assert!(!chain.is_mined(a.tx_hash));
        assert_eq!(chain.pool_len(), 1);
        chain.mine();
        assert!(chain.is_mined(a.tx_hash), "re-mined on the new branch");

        chain.set_down(true);
        assert!(chain.head().await.is_err());
    }
}
