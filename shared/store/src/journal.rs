//! The Ethereum transaction journal and the wallet (nonce) lock.
//!
//! One wallet anchors for a whole cluster, so its nonces must be used one at a time, and a
//! batch must never be anchored twice, even when a worker dies between broadcasting a
//! transaction and recording the batch as anchored. Two things make that possible:
//!
//! - the **wallet lock** ([`TxJournal::lock_wallet`]): whoever holds it is the only one that
//!   signs, broadcasts or replaces transactions of that wallet, across every process sharing
//!   the journal;
//! - the **journal**: every signed transaction attempt is recorded *before* it is broadcast,
//!   with everything needed to find it on chain, re-broadcast it or replace it (batch, nonce,
//!   hash, fees, the raw signed bytes) and its last known [`TxState`]. A worker that starts,
//!   or receives a batch again, reads the journal instead of guessing.
//!
//! The store only keeps rows; the transaction manager (in `cas-worker`) decides the
//! transitions. The states and the transitions it makes:
//!
//! ```text
//!            record_attempt                broadcast accepted
//!   (none) ───────────────▶ Signed ───────────────────────────▶ Broadcast
//!                             │  rejected by the node                │
//!                             ▼  (never in a mempool)                │ a newer attempt at the
//!                           Failed                                   ▼ same nonce was accepted
//!                                                                 Replaced
//!   Signed | Broadcast | Replaced ──receipt, success──▶ Mined   (the others at that nonce ▶ Replaced)
//!   Signed | Broadcast | Replaced ──receipt, revert───▶ Failed  (with its block number)
//!   Signed | Broadcast | Replaced ──nonce used by another transaction, no receipt──▶ Dropped
//!   Mined ──receipt gone after a reorganisation──▶ Broadcast
//! ```
//!
//! A nonce is *open* while one of its attempts is `Signed` or `Broadcast`: it may still be
//! mined. `Replaced` attempts are still checked for inclusion while their nonce is open
//! (an older attempt can win the race against its replacement).

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::StoreError;

/// The state of one transaction attempt; see the [module docs](self) for the transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxState {
    /// Signed and recorded; it may or may not have reached a node.
    Signed,
    /// A node accepted it into its mempool.
    Broadcast,
    /// Mined with a successful receipt: the batch's root is on chain.
    Mined,
    /// Superseded by a newer attempt at the same nonce (it may still win until the nonce is
    /// settled).
    Replaced,
    /// Proven never to be mined: its nonce was used by another transaction.
    Dropped,
    /// Rejected by the node when broadcast, or mined but reverted (then with a block number).
    Failed,
}

impl TxState {
    /// Every state, in lifecycle order.
    pub const ALL: [TxState; 6] = [
        TxState::Signed,
        TxState::Broadcast,
        TxState::Mined,
        TxState::Replaced,
        TxState::Dropped,
        TxState::Failed,
    ];

    /// The stored name (`signed`, `broadcast`, `mined`, `replaced`, `dropped`, `failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            TxState::Signed => "signed",
            TxState::Broadcast => "broadcast",
            TxState::Mined => "mined",
            TxState::Replaced => "replaced",
            TxState::Dropped => "dropped",
            TxState::Failed => "failed",
        }
    }

    /// The state with this stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// `Signed` or `Broadcast`: the attempt keeps its nonce open.
    pub fn is_open(self) -> bool {
        matches!(self, TxState::Signed | TxState::Broadcast)
    }

    /// Whether an attempt in this state can still turn out to be mined.
    pub fn may_be_mined(self) -> bool {
        matches!(
            self,
            TxState::Signed | TxState::Broadcast | TxState::Replaced
        )
    }
}

impl fmt::Display for TxState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wallet on a chain: the scope of nonces, of the journal's open attempts and of the
/// wallet lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalletKey {
    /// EIP-155 chain id.
    pub chain_id: u64,
    /// The wallet's 20-byte address.
    pub address: [u8; 20],
}

impl WalletKey {
    /// A stable 32-bit digest (FNV-1a) of the chain id and address, the same in every
    /// process: the PostgreSQL advisory lock key.
    pub fn lock_key(&self) -> i32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.chain_id.to_be_bytes().iter().chain(&self.address) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        ((hash >> 32) ^ hash) as u32 as i32
    }
}

/// A signed transaction attempt, as recorded before it is broadcast.
#[derive(Clone, PartialEq, Eq)]
pub struct NewTxAttempt {
    /// The batch whose root it anchors.
    pub batch_id: Uuid,
    /// The sending wallet and chain.
    pub wallet: WalletKey,
    /// The wallet nonce it uses.
    pub nonce: u64,
    /// The transaction hash.
    pub tx_hash: [u8; 32],
    /// The root digest it anchors (the `anchorDagCbor` argument).
    pub root_digest: [u8; 32],
    /// `maxFeePerGas`, wei.
    pub max_fee_per_gas: u128,
    /// `maxPriorityFeePerGas`, wei.
    pub max_priority_fee_per_gas: u128,
    /// The gas limit.
    pub gas_limit: u64,
    /// The signed EIP-2718 bytes, as sent with `eth_sendRawTransaction`.
    pub raw_tx: Vec<u8>,
}

/// A recorded transaction attempt in its current state.
#[derive(Clone, PartialEq, Eq)]
pub struct TxAttempt {
    /// What was recorded.
    pub attempt: NewTxAttempt,
    /// Its last known state.
    pub state: TxState,
    /// The block that includes it (`Mined`, or `Failed` by a revert).
    pub block_number: Option<u64>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When its state last changed.
    pub updated_at: DateTime<Utc>,
}

impl TxAttempt {
    /// Whether this attempt shows its nonce used on chain: `Mined`, `Dropped`, or `Failed`
    /// in a block (reverted).
    pub fn nonce_used(&self) -> bool {
        match self.state {
            TxState::Mined | TxState::Dropped => true,
            TxState::Failed => self.block_number.is_some(),
            TxState::Signed | TxState::Broadcast | TxState::Replaced => false,
        }
    }
}

impl std::ops::Deref for TxAttempt {
    type Target = NewTxAttempt;

    fn deref(&self) -> &NewTxAttempt {
        &self.attempt
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("0x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

impl fmt::Debug for NewTxAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The raw transaction is public once broadcast, but long: only its length.
        f.debug_struct("NewTxAttempt")
            .field("batch_id", &self.batch_id)
            .field("chain_id", &self.wallet.chain_id)
            .field("wallet", &hex(&self.wallet.address))
            .field("nonce", &self.nonce)
            .field("tx_hash", &hex(&self.tx_hash))
            .field("max_fee_per_gas", &self.max_fee_per_gas)
            .field("max_priority_fee_per_gas", &self.max_priority_fee_per_gas)
            .field("gas_limit", &self.gas_limit)
            .field("raw_tx_len", &self.raw_tx.len())
            .finish()
    }
}

impl fmt::Debug for TxAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxAttempt")
            .field("attempt", &self.attempt)
            .field("state", &self.state)
            .field("block_number", &self.block_number)
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// Something that keeps a lock held and can tell whether it still is.
#[async_trait]
pub trait HeldLock: Send + 'static {
    /// Whether the lock is still held. `false` (or an error) means it may have been lost:
    /// its connection died, the database failed over, or an operator killed its backend.
    async fn is_held(&mut self) -> Result<bool, StoreError>;
}

/// A lock held by a guard that cannot lose it while it lives (an in-process mutex guard).
struct Always<T>(T);

#[async_trait]
impl<T: Send + 'static> HeldLock for Always<T> {
    async fn is_held(&mut self) -> Result<bool, StoreError> {
        Ok(true)
    }
}

/// The exclusive right to send transactions from one wallet; released when dropped (or when
/// its holder's connection or process dies).
///
/// A lock kept by a database connection can be lost without the holder noticing (the
/// connection dies, the database fails over): call [`WalletLock::ensure_held`] right before
/// every action that must not happen without it.
pub struct WalletLock {
    held: Box<dyn HeldLock>,
}

impl WalletLock {
    /// A lock held as long as `held` lives (a mutex guard): it cannot be lost.
    pub fn new(held: impl Send + 'static) -> Self {
        Self {
            held: Box::new(Always(held)),
        }
    }

    /// A lock that can be lost; `held` checks.
    pub fn checked(held: impl HeldLock) -> Self {
        Self {
            held: Box::new(held),
        }
    }

    /// `Ok` if the lock is still held, [`StoreError::LockLost`] if not (or if that cannot be
    /// told: then it must be assumed lost).
    pub async fn ensure_held(&mut self) -> Result<(), StoreError> {
        match self.held.is_held().await {
            Ok(true) => Ok(()),
            Ok(false) => Err(StoreError::LockLost("the lock is no longer held".into())),
            Err(e) => Err(StoreError::LockLost(format!(
                "cannot tell whether the lock is still held: {e}"
            ))),
        }
    }
}

impl fmt::Debug for WalletLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WalletLock")
    }
}

/// Durable record of Ethereum transaction attempts, and the wallet lock.
///
/// Contract (checked by `journal_testsuite`):
///
/// - [`record_attempt`](Self::record_attempt) stores the attempt in state `Signed` and is
///   durable when it returns (callers broadcast only after that). Recording a `tx_hash`
///   that exists already changes nothing and succeeds.
/// - [`set_attempt_state`](Self::set_attempt_state) overwrites the state (any transition;
///   the caller enforces the lifecycle) and the block number, and bumps `updated_at`.
/// - Fee fields are full `u128` values and round-trip exactly; the raw transaction and
///   hashes round-trip byte for byte.
/// - Lists are ordered oldest first (insertion order; `open_attempts` by nonce first).
/// - [`lock_wallet`](Self::lock_wallet) is a mutual exclusion per [`WalletKey`] across
///   every process sharing the journal, waits at most `max_wait` and then answers
///   `Ok(None)`. Different wallets never block each other.
#[async_trait]
pub trait TxJournal: Send + Sync + 'static {
    /// Record a signed attempt (state `Signed`) before it is broadcast; idempotent on the
    /// transaction hash.
    async fn record_attempt(&self, attempt: &NewTxAttempt) -> Result<(), StoreError>;

    /// Set the state (and block number) of an attempt. `Ok(false)` if no attempt has this
    /// hash.
    async fn set_attempt_state(
        &self,
        tx_hash: &[u8; 32],
        state: TxState,
        block_number: Option<u64>,
    ) -> Result<bool, StoreError>;

    /// Every attempt made for a batch, oldest first.
    async fn batch_attempts(&self, batch_id: Uuid) -> Result<Vec<TxAttempt>, StoreError>;

    /// Every attempt of the wallet at this nonce (whatever batch or state), oldest first.
    async fn nonce_attempts(
        &self,
        wallet: &WalletKey,
        nonce: u64,
    ) -> Result<Vec<TxAttempt>, StoreError>;

    /// Every attempt at the wallet's open nonces (those with a `Signed` or `Broadcast`
    /// attempt), all states included, ordered by nonce, then oldest first.
    async fn open_attempts(&self, wallet: &WalletKey) -> Result<Vec<TxAttempt>, StoreError>;

    /// The highest nonce of the wallet that the journal knows to be used on chain: one of its
    /// attempts is `Mined`, `Dropped` (used by another transaction), or `Failed` with a block
    /// number (mined and reverted). `None` if there is none.
    async fn highest_used_nonce(&self, wallet: &WalletKey) -> Result<Option<u64>, StoreError>;

    /// The wallet's newest `Mined` attempts, at most `limit`, newest first.
    async fn mined_attempts(
        &self,
        wallet: &WalletKey,
        limit: i64,
    ) -> Result<Vec<TxAttempt>, StoreError>;

    /// Take the wallet's send lock, waiting at most `max_wait`. `Ok(None)`: someone else
    /// held it the whole time.
    async fn lock_wallet(
        &self,
        wallet: &WalletKey,
        max_wait: Duration,
    ) -> Result<Option<WalletLock>, StoreError>;
}

/// Wallet locks within one process (a mutex per wallet), for embedded journals whose
/// database is not shared between processes (`cas dev`, tests). Fair: waiters get the lock
/// in arrival order.
#[derive(Debug, Default)]
pub struct LocalWalletLocks {
    locks: Mutex<HashMap<WalletKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl LocalWalletLocks {
    /// No locks held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take the lock of `wallet`, waiting at most `max_wait`.
    pub async fn lock(&self, wallet: &WalletKey, max_wait: Duration) -> Option<WalletLock> {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(locks.entry(*wallet).or_default())
        };
        tokio::time::timeout(max_wait, mutex.lock_owned())
            .await
            .ok()
            .map(WalletLock::new)
    }
}

/// A journal in memory with in-process wallet locks. Nothing survives the process, so it
/// gives none of the crash recovery the durable journals give: for tests and throwaway
/// single-process setups.
#[derive(Debug, Default)]
pub struct MemoryTxJournal {
    rows: Mutex<Vec<TxAttempt>>,
    locks: LocalWalletLocks,
}

impl MemoryTxJournal {
    /// An empty journal.
    pub fn new() -> Self {
        Self::default()
    }

    fn select(&self, keep: impl Fn(&TxAttempt) -> bool) -> Vec<TxAttempt> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.iter().filter(|r| keep(r)).cloned().collect()
    }
}

#[async_trait]
impl TxJournal for MemoryTxJournal {
    async fn record_attempt(&self, attempt: &NewTxAttempt) -> Result<(), StoreError> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.iter().any(|r| r.tx_hash == attempt.tx_hash) {
            return Ok(());
        }
        let now = Utc::now();
        rows.push(TxAttempt {
            attempt: attempt.clone(),
            state: TxState::Signed,
            block_number: None,
            created_at: now,
            updated_at: now,
        });
        Ok(())
    }

    async fn set_attempt_state(
        &self,
        tx_hash: &[u8; 32],
        state: TxState,
        block_number: Option<u64>,
    ) -> Result<bool, StoreError> {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        match rows.iter_mut().find(|r| &r.tx_hash == tx_hash) {
            Some(row) => {
                row.state = state;
                row.block_number = block_number;
                row.updated_at = Utc::now();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn batch_attempts(&self, batch_id: Uuid) -> Result<Vec<TxAttempt>, StoreError> {
        Ok(self.select(|r| r.batch_id == batch_id))
    }

    async fn nonce_attempts(
        &self,
        wallet: &WalletKey,
        nonce: u64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        Ok(self.select(|r| r.wallet == *wallet && r.nonce == nonce))
    }

    async fn open_attempts(&self, wallet: &WalletKey) -> Result<Vec<TxAttempt>, StoreError> {
        let mine = self.select(|r| r.wallet == *wallet);
        let open: Vec<u64> = mine
            .iter()
            .filter(|r| r.state.is_open())
            .map(|r| r.nonce)
            .collect();
        let mut rows: Vec<TxAttempt> = mine
            .into_iter()
            .filter(|r| open.contains(&r.nonce))
            .collect();
        rows.sort_by_key(|r| r.nonce); // stable: insertion order within a nonce
        Ok(rows)
    }

    async fn highest_used_nonce(&self, wallet: &WalletKey) -> Result<Option<u64>, StoreError> {
        Ok(self
            .select(|r| r.wallet == *wallet && r.nonce_used())
            .iter()
            .map(|r| r.nonce)
            .max())
    }

    async fn mined_attempts(
        &self,
        wallet: &WalletKey,
        limit: i64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        let mut rows = self.select(|r| r.wallet == *wallet && r.state == TxState::Mined);
        rows.reverse();
        rows.truncate(limit.max(0) as usize);
        Ok(rows)
    }

    async fn lock_wallet(
        &self,
        wallet: &WalletKey,
        max_wait: Duration,
    ) -> Result<Option<WalletLock>, StoreError> {
        Ok(self.locks.lock(wallet, max_wait).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for state in TxState::ALL {
            assert_eq!(TxState::parse(state.as_str()), Some(state));
        }
        assert_eq!(TxState::parse("pending"), None);
        let open: Vec<_> = TxState::ALL.into_iter().filter(|s| s.is_open()).collect();
        assert_eq!(open, [TxState::Signed, TxState::Broadcast]);
    }

    #[test]
    fn lock_keys_are_stable_and_distinguish_wallets() {
        let a = WalletKey {
            chain_id: 1,
            address: [0x11; 20],
        };
        // A fixed value: every process must derive the same key.
        assert_eq!(a.lock_key(), a.lock_key());
        assert_eq!(a.lock_key(), 1_261_845_712);
        let other_chain = WalletKey { chain_id: 5, ..a };
        let other_wallet = WalletKey {
            address: [0x12; 20],
            ..a
        };
        assert_ne!(a.lock_key(), other_chain.lock_key());
        assert_ne!(a.lock_key(), other_wallet.lock_key());
    }

    #[cfg(feature = "test-support")]
    #[tokio::test]
    async fn memory_journal_passes_the_conformance_suite() {
        crate::journal_testsuite::run_all(&MemoryTxJournal::new()).await;
    }
}
