//! The Ethereum transaction manager: one wallet per cluster, no root anchored twice, no batch
//! stuck.
//!
//! [`TxManager`] puts a batch's root on chain through the chain seam ([`AnchorChain`]: a real
//! node, or the scripted fake chain in tests) under four rules:
//!
//! 1. **One sender per wallet.** Everything that signs, broadcasts or replaces happens under
//!    the wallet lock ([`TxJournal::lock_wallet`], a PostgreSQL advisory lock shared by every
//!    worker of the cluster). A lock kept by a database connection can be lost without notice
//!    (the connection dies, the database fails over), so it is checked right before every
//!    broadcast.
//! 2. **Journal first.** Every signed attempt is recorded before it is broadcast. The journal,
//!    not memory, says what was sent.
//! 3. **A batch stays on its nonce.** A send that failed may still have reached a pool (a
//!    provider can answer an error after taking a transaction, or the answer can be lost), so
//!    every later attempt of the batch uses the same nonce, and at most one of them can ever
//!    be mined. A batch moves to a new nonce only once its nonce is **proven** used by a
//!    transaction that is not the batch's: the block that used the nonce is found on chain,
//!    it holds another transaction at that nonce, and it has the configured confirmations.
//!    Silence (no receipt for a while) proves nothing: receipts can lag the nonce a provider
//!    reports.
//! 4. **Confirmed on the canonical chain.** An anchor counts when its block has the
//!    configured confirmations and is still the block at that height. One that a
//!    reorganisation removed is sent again, the same signed transaction first, so the
//!    witnesses already built from it stay valid when it is mined again.
//!
//! Anchoring a batch ([`TxManager::anchor`]):
//!
//! 1. If the journal has the batch's transaction mined and confirmed: return it. Nothing is
//!    sent, and no lock is taken.
//! 2. Take the wallet lock (bounded wait; `cas_nonce_lock_wait_seconds`).
//! 3. Settle every open nonce of the wallet, oldest first (attempts left pending by a worker
//!    that died or gave up, of this batch or another): drive each to an outcome (mined,
//!    reverted, or proven used by another transaction). A gap below an open nonce (a lower
//!    nonce the chain has not used, so nothing above it can be mined) is refilled: with the
//!    journaled transaction the chain lost, or with a transfer of nothing to the wallet
//!    itself.
//! 4. If that mined this batch's transaction: wait for its confirmations, and return it.
//!    Otherwise send one: at the batch's nonce if it has one that is not proven used
//!    (replacing whatever of it may be pending, at least 12.5 % higher on both fee fields),
//!    else at a fresh nonce; fees from the node's estimate under the cap; balance check;
//!    sign, **journal**, check the lock, broadcast. Then back to 3.
//!
//! Driving a nonce: poll the receipts of every attempt at it (an older attempt can beat its
//! replacement); re-broadcast the newest pending attempt now and then (a pool may have lost
//! it); after the attempt timeout replace it with higher fees (never above the cap: at the
//! cap it is re-broadcast and waited for); after `max_attempts` the call gives up with
//! [`TxError::StillPending`] and the attempts stay journaled for the next call. A node's
//! refusal of a broadcast ("nonce too low", "underpriced", "insufficient funds") is final for
//! that attempt; any other error (a transport failure, an internal error) leaves it possibly
//! pending.
//!
//! Stopping anywhere is safe: what was broadcast is journaled first, and whoever takes the
//! wallet lock next resumes it. The worker drops an anchor in progress when it is told to
//! stop.
//!
//! Metrics: `cas_anchor_attempts_total{outcome}` (each attempt once, when its fate is known:
//! `mined`, `reverted`, `replaced`, `dropped`, `rejected`), `cas_fee_bumps_total`,
//! `cas_nonce_gaps_filled_total`, `cas_anchors_reorganised_total`, `cas_wallet_balance_wei`,
//! `cas_nonce_lock_wait_seconds`.

use std::{sync::Arc, time::Duration};

use cas_chain::{
    Address, AnchorChain, AnchorTx, B256, ChainError, FeePolicy, Fees, Inclusion, Payload,
    Rejection, SignedAnchorTx, U256,
};
use cas_core::fault;
use cas_store::{NewTxAttempt, StoreError, TxAttempt, TxJournal, TxState, WalletKey, WalletLock};
use tokio::time::Instant;
use uuid::Uuid;

/// Tuning of the transaction manager.
#[derive(Debug, Clone)]
pub struct TxManagerConfig {
    /// How long one attempt may stay unmined before it is replaced with higher fees. Also
    /// bounds the wait for confirmations.
    pub attempt_timeout: Duration,
    /// Attempts per nonce in one call (the first send or resumption, plus replacements)
    /// before the call gives up; the attempts stay journaled and the next call continues.
    pub max_attempts: u32,
    /// Fee cap.
    pub fees: FeePolicy,
    /// Longest wait for the wallet lock.
    pub lock_timeout: Duration,
    /// Waits for the wallet lock longer than this are logged as warnings.
    pub lock_wait_warning: Duration,
    /// Longest wait for the wallet lock when resuming journaled attempts at start (whoever
    /// holds it settles them anyway).
    pub recovery_lock_timeout: Duration,
    /// A wallet balance below this (wei) is logged as a warning.
    pub low_balance_wei: u128,
}

impl Default for TxManagerConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_secs(120),
            max_attempts: 5,
            fees: FeePolicy::default(),
            lock_timeout: Duration::from_secs(15 * 60),
            lock_wait_warning: Duration::from_secs(60),
            recovery_lock_timeout: Duration::from_secs(5),
            low_balance_wei: 100_000_000_000_000_000, // 0.1 ETH
        }
    }
}

/// Why anchoring did not finish.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The chain or the signer failed or refused.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The journal could not be read or written, or the wallet lock was lost (nothing is
    /// broadcast without both).
    #[error("transaction journal: {0}")]
    Journal(#[from] StoreError),
    /// Another worker held the wallet lock for the whole wait.
    #[error(
        "the wallet lock of {wallet} was not free within {waited:?}: another worker is sending"
    )]
    LockTimeout {
        /// The wallet.
        wallet: Address,
        /// How long this call waited.
        waited: Duration,
    },
    /// A nonce is still unsettled after the attempts this call may make. Its attempts stay
    /// journaled; the next call (of any worker) resumes them.
    #[error(
        "nonce {nonce} is still unsettled after {attempts} attempts (newest transaction {tx_hash}); \
         it stays journaled and is resumed by the next call"
    )]
    StillPending {
        /// The newest attempt.
        tx_hash: B256,
        /// Its nonce.
        nonce: u64,
        /// Attempts made in this call.
        attempts: u32,
    },
    /// The nonces this call picked kept being used by other transactions of the wallet.
    #[error("nonces kept being used by other transactions of wallet {0}; is it used elsewhere?")]
    NonceRace(Address),
}

impl TxError {
    /// Whether retrying later may help without an operator (see [`ChainError::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            TxError::Chain(e) => e.is_retryable(),
            TxError::Journal(e) => e.is_retryable(),
            TxError::LockTimeout { .. } | TxError::StillPending { .. } | TxError::NonceRace(_) => {
                true
            }
        }
    }
}

/// What [`TxManager::recover`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Open nonces driven to an outcome.
    pub settled: usize,
    /// Batches whose mined anchor the chain no longer has (a reorganisation, or a dev chain
    /// restarted from an older state). Their transactions were reopened and sent again.
    pub reorganised: Vec<Uuid>,
}

/// How a nonce ended.
#[derive(Debug)]
enum NonceOutcome {
    /// This attempt was mined and succeeded.
    Mined(TxAttempt),
    /// This attempt was mined and reverted.
    Reverted(TxAttempt, u64),
    /// Proven used by a transaction that is not journaled at this nonce.
    Dropped,
    /// The chain has not used this nonce and none of our attempts at it can be pending.
    Unused,
    /// Nonces from this one up to the driven one are unused by the chain and have nothing
    /// of ours pending: the driven nonce cannot be mined until they are filled.
    Gap(u64),
}

/// The transaction that used a nonce, found in a block.
#[derive(Debug, Clone, Copy)]
struct Consumer {
    tx_hash: B256,
    block_number: u64,
    block_hash: B256,
}

/// How waiting for confirmations ended.
enum Confirmation {
    Confirmed(AnchorTx),
    /// The transaction's block is no longer in the chain, and its nonce is unused again.
    Reorganised,
}

/// How a node answered a broadcast.
enum Sent {
    /// Taken (or known already).
    Taken,
    /// Refused: this attempt will never be mined.
    Refused(ChainError),
    /// No usable answer: it may or may not be in a pool.
    Unknown(ChainError),
}

fn hash_of(a: &NewTxAttempt) -> B256 {
    B256::from(a.tx_hash)
}

fn fees_of(a: &NewTxAttempt) -> Fees {
    Fees {
        max_fee_per_gas: a.max_fee_per_gas,
        max_priority_fee_per_gas: a.max_priority_fee_per_gas,
    }
}

fn payload_of(a: &NewTxAttempt) -> Payload {
    if a.batch_id.is_nil() {
        Payload::Filler
    } else {
        Payload::Anchor {
            root_digest: a.root_digest,
        }
    }
}

fn signed_of(a: &NewTxAttempt) -> SignedAnchorTx {
    SignedAnchorTx {
        tx_hash: hash_of(a),
        root_digest: a.root_digest,
        nonce: a.nonce,
        fees: fees_of(a),
        gas_limit: a.gas_limit,
        raw: a.raw_tx.clone().into(),
    }
}

/// Attempts that may sit in some pool: accepted or possibly accepted, and not known to be
/// mined or refused.
fn may_be_pending(a: &TxAttempt) -> bool {
    matches!(
        a.state,
        TxState::Signed | TxState::Broadcast | TxState::Replaced
    )
}

/// Field by field, the highest fees among `attempts`.
fn highest_fees<'a>(attempts: impl Iterator<Item = &'a TxAttempt>) -> Option<Fees> {
    attempts.map(|a| fees_of(a)).reduce(|x, y| Fees {
        max_fee_per_gas: x.max_fee_per_gas.max(y.max_fee_per_gas),
        max_priority_fee_per_gas: x.max_priority_fee_per_gas.max(y.max_priority_fee_per_gas),
    })
}

fn count_attempt(outcome: &'static str) {
    metrics::counter!("cas_anchor_attempts_total", "outcome" => outcome).increment(1);
}

/// Sends anchor transactions for batches from one wallet; see the [module docs](self).
pub struct TxManager {
    chain: Arc<dyn AnchorChain>,
    journal: Arc<dyn TxJournal>,
    wallet: WalletKey,
    config: TxManagerConfig,
}

impl std::fmt::Debug for TxManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxManager")
            .field("chain", &self.chain)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TxManager {
    /// A manager for the chain's wallet, journaling into `journal`.
    pub fn new(
        chain: Arc<dyn AnchorChain>,
        journal: Arc<dyn TxJournal>,
        config: TxManagerConfig,
    ) -> Self {
        let wallet = WalletKey {
            chain_id: chain.chain_id().0,
            address: chain.wallet().into_array(),
        };
        Self {
            chain,
            journal,
            wallet,
            config,
        }
    }

    /// The anchoring wallet.
    pub fn wallet(&self) -> Address {
        self.chain.wallet()
    }

    /// The chain it sends to.
    pub fn chain(&self) -> &dyn AnchorChain {
        self.chain.as_ref()
    }

    /// Put `root_digest` on chain for `batch_id`, exactly once however often it is asked
    /// (see the [module docs](self)). Returns the confirmed transaction.
    #[tracing::instrument(skip_all, fields(batch.id = %batch_id))]
    pub async fn anchor(&self, batch_id: Uuid, root_digest: [u8; 32]) -> Result<AnchorTx, TxError> {
        if let Some(tx) = self.confirmed(batch_id).await? {
            tracing::info!(
                tx.hash = %B256::from(tx.tx_hash),
                "the journal has this batch's transaction mined; nothing is sent"
            );
            return Ok(tx);
        }
        let mut lock = self.lock_wallet(self.config.lock_timeout).await?;
        // A hung RPC call must not keep the wallet locked forever. Stopping anywhere is safe:
        // what was broadcast is journaled first, and the next lock holder resumes it.
        let limit = self.locked_time_limit();
        let result =
            tokio::time::timeout(limit, self.anchor_locked(&mut lock, batch_id, root_digest))
                .await
                .unwrap_or_else(|_| {
                    Err(ChainError::Timeout {
                        tx_hash: None,
                        after: limit,
                    }
                    .into())
                });
        drop(lock);
        self.report_balance().await;
        result
    }

    /// The batch's transaction if the journal has it mined and the chain has it confirmed in
    /// its canonical chain right now; `None` otherwise (not sent, pending, not confirmed yet,
    /// or removed by a reorganisation). Reads only; sends nothing.
    pub async fn confirmed(&self, batch_id: Uuid) -> Result<Option<AnchorTx>, TxError> {
        let attempts = self.journal.batch_attempts(batch_id).await?;
        for attempt in attempts.iter().rev().filter(|a| a.state == TxState::Mined) {
            let Some(inclusion) = self.chain.receipt(hash_of(attempt)).await? else {
                continue;
            };
            if let Some(tx) = self.final_tx(attempt, &inclusion).await? {
                return Ok(Some(tx));
            }
        }
        Ok(None)
    }

    /// The longest one call may hold the wallet lock: enough for every attempt at two
    /// nonces (an open one left by someone else, and this batch's) and the confirmations.
    fn locked_time_limit(&self) -> Duration {
        self.config.attempt_timeout * (2 * self.config.max_attempts + 4)
    }

    /// After a start, and now and then: reopen the mined anchors the chain no longer has
    /// ([`TxManager::reopen_lost`]) and settle the wallet's open nonces
    /// ([`TxManager::settle`]).
    pub async fn recover(&self) -> Result<Recovery, TxError> {
        let reorganised = self.reopen_lost().await?;
        let settled = self.settle().await?;
        Ok(Recovery {
            settled,
            reorganised,
        })
    }

    /// Find mined transactions the chain no longer has (a reorganisation deeper than the
    /// confirmations, a dev chain restarted from an older state) and reopen them, so that
    /// they are sent again (the same signed transaction first). Returns their batches,
    /// which must not be reported COMPLETED until their anchor is back. Takes the wallet
    /// lock only when there is something to reopen; if another worker holds it, that one
    /// finds them.
    pub async fn reopen_lost(&self) -> Result<Vec<Uuid>, TxError> {
        if self.vanished_mined(64).await?.is_empty() {
            return Ok(Vec::new());
        }
        let Some(_lock) = self.recovery_lock().await? else {
            return Ok(Vec::new());
        };
        let mut batches = Vec::new();
        // Again under the lock: whoever held it may have dealt with them.
        for attempt in self.vanished_mined(64).await? {
            tracing::warn!(
                tx.hash = %hash_of(&attempt),
                nonce = attempt.nonce,
                batch.id = %attempt.batch_id,
                "a mined transaction is no longer in the chain; sending it again"
            );
            metrics::counter!("cas_anchors_reorganised_total").increment(1);
            self.set_state(&attempt, TxState::Signed, None).await?;
            if !attempt.batch_id.is_nil() && !batches.contains(&attempt.batch_id) {
                batches.push(attempt.batch_id);
            }
        }
        Ok(batches)
    }

    /// Drive the wallet's open nonces to an outcome (attempts left by a worker that died or
    /// gave up), if the wallet lock is free soon (whoever holds it settles them anyway).
    /// Returns how many nonces were settled.
    pub async fn settle(&self) -> Result<usize, TxError> {
        self.report_balance().await;
        if self.journal.open_attempts(&self.wallet).await?.is_empty() {
            return Ok(0);
        }
        let Some(mut lock) = self.recovery_lock().await? else {
            return Ok(0);
        };
        let limit = self.locked_time_limit();
        tokio::time::timeout(limit, self.settle_open(&mut lock))
            .await
            .unwrap_or_else(|_| {
                Err(ChainError::Timeout {
                    tx_hash: None,
                    after: limit,
                }
                .into())
            })
    }

    /// The wallet lock if it is free within the recovery wait; `None` if someone else holds it.
    async fn recovery_lock(&self) -> Result<Option<WalletLock>, TxError> {
        match self.lock_wallet(self.config.recovery_lock_timeout).await {
            Ok(lock) => Ok(Some(lock)),
            Err(TxError::LockTimeout { .. }) => {
                tracing::info!(
                    "another worker holds the wallet lock; it resumes the journaled transactions"
                );
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The newest mined attempts whose transaction the chain no longer has and whose nonce
    /// it has not used (so they were not just replaced): newest first, looking at no more
    /// than `limit` and stopping at the first one still there.
    async fn vanished_mined(&self, limit: i64) -> Result<Vec<TxAttempt>, TxError> {
        let mined = self.journal.mined_attempts(&self.wallet, limit).await?;
        if mined.is_empty() {
            return Ok(Vec::new());
        }
        let used = self.chain.nonce_at(None).await?;
        let mut vanished = Vec::new();
        for attempt in mined {
            if attempt.nonce < used || self.chain.receipt(hash_of(&attempt)).await?.is_some() {
                break;
            }
            vanished.push(attempt);
        }
        Ok(vanished)
    }

    /// Publish the wallet balance and warn when it is low.
    pub async fn report_balance(&self) {
        match self.chain.balance().await {
            Ok(balance) => {
                let wei: u128 = balance.saturating_to();
                metrics::gauge!("cas_wallet_balance_wei").set(wei as f64);
                if wei < self.config.low_balance_wei {
                    tracing::warn!(
                        wallet = %self.wallet(),
                        balance_wei = %balance,
                        threshold_wei = %self.config.low_balance_wei,
                        "the anchoring wallet's balance is low; fund it"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "reading the wallet balance failed"),
        }
    }

    async fn lock_wallet(&self, max_wait: Duration) -> Result<WalletLock, TxError> {
        let started = Instant::now();
        let lock = self.journal.lock_wallet(&self.wallet, max_wait).await?;
        let waited = started.elapsed();
        metrics::histogram!("cas_nonce_lock_wait_seconds").record(waited.as_secs_f64());
        if waited >= self.config.lock_wait_warning {
            tracing::warn!(
                wallet = %self.wallet(),
                waited_ms = waited.as_millis() as u64,
                acquired = lock.is_some(),
                "waited long for the wallet lock"
            );
        }
        lock.ok_or(TxError::LockTimeout {
            wallet: self.wallet(),
            waited,
        })
    }

    async fn anchor_locked(
        &self,
        lock: &mut WalletLock,
        batch_id: Uuid,
        root_digest: [u8; 32],
    ) -> Result<AnchorTx, TxError> {
        const ROUNDS: usize = 4;
        let mut sent_at: Option<u64> = None;
        for _ in 0..ROUNDS {
            self.reopen_vanished(batch_id).await?;
            self.settle_open(lock).await?;
            let attempts = self.journal.batch_attempts(batch_id).await?;
            if let Some(mined) = attempts.iter().rev().find(|a| a.state == TxState::Mined) {
                fault::point("worker::after_mined");
                match self.wait_confirmed(mined).await? {
                    Confirmation::Confirmed(tx) => {
                        tracing::info!(
                            tx.hash = %hash_of(mined),
                            nonce = mined.nonce,
                            block = tx.block_number,
                            gas_used = tx.gas_used,
                            "anchor transaction confirmed"
                        );
                        return Ok(tx);
                    }
                    Confirmation::Reorganised => {
                        self.reopen(mined).await?;
                        continue;
                    }
                }
            }
            if let Some(nonce) = sent_at
                && let Some(reverted) = attempts.iter().find(|a| {
                    a.nonce == nonce && a.state == TxState::Failed && a.block_number.is_some()
                })
            {
                return Err(ChainError::Reverted {
                    tx_hash: hash_of(reverted),
                    block_number: reverted.block_number.unwrap_or_default(),
                }
                .into());
            }
            sent_at = Some(self.send(lock, batch_id, root_digest, &attempts).await?);
        }
        Err(TxError::NonceRace(self.wallet()))
    }

    /// Reopen the batch's mined attempts that the chain lost (receipt gone, nonce unused):
    /// they are sent again, the same signed transaction first.
    async fn reopen_vanished(&self, batch_id: Uuid) -> Result<(), TxError> {
        let attempts = self.journal.batch_attempts(batch_id).await?;
        for attempt in attempts.iter().filter(|a| a.state == TxState::Mined) {
            if self.chain.receipt(hash_of(attempt)).await?.is_none()
                && self.chain.nonce_at(None).await? <= attempt.nonce
            {
                self.reopen(attempt).await?;
            }
        }
        Ok(())
    }

    async fn reopen(&self, attempt: &TxAttempt) -> Result<(), TxError> {
        tracing::warn!(
            tx.hash = %hash_of(attempt),
            nonce = attempt.nonce,
            "a mined anchor transaction is no longer in the chain (reorganisation); sending it again"
        );
        metrics::counter!("cas_anchors_reorganised_total").increment(1);
        self.set_state(attempt, TxState::Signed, None).await
    }

    /// Drive every open nonce of the wallet to an outcome, oldest first. Returns how many
    /// nonces were driven.
    async fn settle_open(&self, lock: &mut WalletLock) -> Result<usize, TxError> {
        let mut driven = 0;
        loop {
            let open = self.journal.open_attempts(&self.wallet).await?;
            let Some(first) = open.first() else {
                return Ok(driven);
            };
            let (nonce, batch_id) = (first.nonce, first.batch_id);
            driven += 1;
            match self.drive(lock, nonce).await? {
                NonceOutcome::Mined(a) => {
                    tracing::info!(nonce, batch.id = %a.batch_id, tx.hash = %hash_of(&a), "transaction mined")
                }
                NonceOutcome::Reverted(a, block) => {
                    tracing::error!(nonce, batch.id = %a.batch_id, tx.hash = %hash_of(&a), block, "anchor transaction reverted")
                }
                NonceOutcome::Dropped => {
                    tracing::warn!(nonce, batch.id = %batch_id, "the nonce was used by another transaction; its attempts are dropped")
                }
                NonceOutcome::Unused => {}
                NonceOutcome::Gap(gap) => self.refill(lock, gap).await?,
            }
            if driven > 10_000 {
                // Every round settles a nonce or fills a lower one; this is a guard against a
                // journal that keeps changing under us.
                return Err(TxError::NonceRace(self.wallet()));
            }
        }
    }

    /// Send one new attempt for the batch: at its nonce if that is not proven used, else at a
    /// fresh one. Returns the nonce used.
    async fn send(
        &self,
        lock: &mut WalletLock,
        batch_id: Uuid,
        root_digest: [u8; 32],
        attempts: &[TxAttempt],
    ) -> Result<u64, TxError> {
        let estimate = self.chain.suggest_fees().await?;
        let own_nonce = match attempts.iter().map(|a| a.nonce).max() {
            Some(nonce) if !self.nonce_used(nonce).await? => Some(nonce),
            _ => None,
        };
        let (nonce, fees) = match own_nonce {
            Some(nonce) => {
                // Whatever of this nonce may still be pending must be outbid.
                let at_nonce = self.journal.nonce_attempts(&self.wallet, nonce).await?;
                match highest_fees(at_nonce.iter().filter(|a| may_be_pending(a))) {
                    None => (nonce, self.config.fees.initial(estimate)),
                    Some(floor) => match self.config.fees.replacement(floor, estimate) {
                        Some(fees) => (nonce, fees),
                        None => {
                            tracing::warn!(
                                nonce,
                                cap = self.config.fees.max_fee_per_gas_cap,
                                "the fee cap leaves no room for another attempt at this batch's nonce; waiting for the pending one"
                            );
                            if let Some(newest) = at_nonce.iter().rev().find(|a| may_be_pending(a))
                            {
                                self.set_state(newest, TxState::Signed, None).await?;
                            }
                            return Ok(nonce);
                        }
                    },
                }
            }
            None => (
                self.fresh_nonce().await?,
                self.config.fees.initial(estimate),
            ),
        };
        let signed = self
            .chain
            .sign(Payload::Anchor { root_digest }, nonce, fees)
            .await?;
        self.ensure_funds(&signed).await?;
        let attempt = self.record(batch_id, &signed).await?;
        fault::point("worker::after_signing");
        tracing::info!(
            tx.hash = %signed.tx_hash,
            nonce,
            max_fee_per_gas = fees.max_fee_per_gas,
            max_priority_fee_per_gas = fees.max_priority_fee_per_gas,
            "sending anchor transaction"
        );
        match self.broadcast(lock, &signed).await? {
            Sent::Taken => {
                fault::point("worker::after_broadcast");
                self.set_state(&attempt, TxState::Broadcast, None).await?;
                self.mark_replaced(nonce, &signed.tx_hash).await?;
            }
            Sent::Refused(err) => {
                self.set_state(&attempt, TxState::Failed, None).await?;
                count_attempt("rejected");
                match err.rejection() {
                    Some(Rejection::InsufficientFunds) => {
                        return Err(self.insufficient_funds(&signed).await);
                    }
                    Some(Rejection::FeeTooLow) => return Err(err.into()),
                    Some(Rejection::NonceTooLow) => {
                        // The nonce is used: by one of ours (a send whose answer was lost) or by
                        // someone else. Only the chain can tell.
                        tracing::warn!(nonce, error = %err, "the node says the nonce is used; finding the transaction that used it");
                        self.drive(lock, nonce).await?;
                    }
                    _ => {
                        tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "the node refused the anchor transaction")
                    }
                }
            }
            Sent::Unknown(err) => {
                // It may be in a pool: it stays `Signed`, and driving its nonce sends it again.
                tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "no answer to the broadcast; the transaction may be pending, and is sent again while waiting")
            }
        }
        Ok(nonce)
    }

    /// Whether the journal shows `nonce` used on chain.
    async fn nonce_used(&self, nonce: u64) -> Result<bool, TxError> {
        Ok(self
            .journal
            .nonce_attempts(&self.wallet, nonce)
            .await?
            .iter()
            .any(TxAttempt::nonce_used))
    }

    /// A nonce for a transaction of a new batch: above everything the chain or the journal
    /// shows used.
    async fn fresh_nonce(&self) -> Result<u64, TxError> {
        let chain = self.chain.nonce_at(None).await?;
        let journal = self
            .journal
            .highest_used_nonce(&self.wallet)
            .await?
            .map_or(0, |n| n + 1);
        Ok(chain.max(journal))
    }

    /// Drive one nonce's attempts to an outcome (see the [module docs](self)).
    async fn drive(&self, lock: &mut WalletLock, nonce: u64) -> Result<NonceOutcome, TxError> {
        let poll = self.chain.poll_interval();
        let timeout = self.config.attempt_timeout;
        // Re-broadcast the pending attempt this often: a pool may have lost it.
        let rebroadcast_every = (timeout / 4).max(poll);
        // A gap must persist this long before it is filled: a node behind the chain's head
        // reports too low a nonce for a while.
        let gap_grace = (timeout / 4).max(poll * 3);
        let started = Instant::now();
        let mut made: u32 = 1;
        let mut current_since = Instant::now();
        let mut last_broadcast: Option<Instant> = None;
        let mut gap_since: Option<Instant> = None;
        let mut waiting_for_receipt = false;
        loop {
            let attempts = self.journal.nonce_attempts(&self.wallet, nonce).await?;
            if let Some(outcome) = self.check_receipts(&attempts).await? {
                return Ok(outcome);
            }
            let used = self.chain.nonce_at(None).await?;
            if used > nonce {
                gap_since = None;
                // `None`: the node's answers disagree (backends at different heights); look
                // again next time.
                if let Some(c) = self.consumer_of(nonce).await {
                    if attempts.iter().any(|a| hash_of(a) == c.tx_hash) {
                        if !waiting_for_receipt {
                            tracing::info!(nonce, tx.hash = %c.tx_hash, block = c.block_number, "the transaction is in a block; waiting for its receipt");
                            waiting_for_receipt = true;
                        }
                    } else if self.is_final(c.block_number, c.block_hash).await? {
                        // Refused attempts too: the journal must show the nonce used.
                        for a in attempts.iter().filter(|a| !a.nonce_used()) {
                            self.set_state(a, TxState::Dropped, None).await?;
                            if may_be_pending(a) {
                                count_attempt("dropped");
                            }
                        }
                        tracing::warn!(nonce, used_by = %c.tx_hash, block = c.block_number, "the nonce was used by a transaction that is not journaled at it");
                        return Ok(NonceOutcome::Dropped);
                    }
                }
            } else {
                match attempts.iter().rev().find(|a| a.state.is_open()) {
                    None => {
                        // Nothing of ours can be pending here, and the chain has not used it.
                        if current_since.elapsed() >= (timeout / 4).max(poll * 3) {
                            return Ok(NonceOutcome::Unused);
                        }
                    }
                    Some(current) => {
                        if used < nonce {
                            let since = *gap_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= gap_grace {
                                return Ok(NonceOutcome::Gap(used));
                            }
                        } else {
                            gap_since = None;
                        }
                        if current_since.elapsed() >= timeout {
                            if made >= self.config.max_attempts {
                                return Err(TxError::StillPending {
                                    tx_hash: hash_of(current),
                                    nonce,
                                    attempts: made,
                                });
                            }
                            made += 1;
                            current_since = Instant::now();
                            last_broadcast = Some(Instant::now());
                            self.replace(lock, current, &attempts).await?;
                            continue;
                        }
                        let due = current.state == TxState::Signed
                            || last_broadcast.is_none_or(|at| at.elapsed() >= rebroadcast_every);
                        if due {
                            last_broadcast = Some(Instant::now());
                            self.rebroadcast(lock, current).await?;
                        }
                    }
                }
            }
            if started.elapsed() >= timeout * (self.config.max_attempts + 1) {
                let newest = attempts.last().map(|a| hash_of(a)).unwrap_or_default();
                return Err(TxError::StillPending {
                    tx_hash: newest,
                    nonce,
                    attempts: made,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The outcome of a nonce if one of its attempts has a receipt; records it.
    async fn check_receipts(
        &self,
        attempts: &[TxAttempt],
    ) -> Result<Option<NonceOutcome>, TxError> {
        for attempt in attempts.iter().rev() {
            let Some(inclusion) = self.chain.receipt(hash_of(attempt)).await? else {
                continue;
            };
            for other in attempts.iter().filter(|a| a.tx_hash != attempt.tx_hash) {
                if other.state.is_open() {
                    self.set_state(other, TxState::Replaced, None).await?;
                    count_attempt("replaced");
                }
            }
            let block = inclusion.block_number;
            let mut settled = attempt.clone();
            settled.block_number = Some(block);
            if inclusion.success {
                if attempt.state != TxState::Mined || attempt.block_number != Some(block) {
                    self.set_state(attempt, TxState::Mined, Some(block)).await?;
                    count_attempt("mined");
                }
                settled.state = TxState::Mined;
                return Ok(Some(NonceOutcome::Mined(settled)));
            }
            self.set_state(attempt, TxState::Failed, Some(block))
                .await?;
            count_attempt("reverted");
            settled.state = TxState::Failed;
            return Ok(Some(NonceOutcome::Reverted(settled, block)));
        }
        Ok(None)
    }

    /// The transaction of the wallet that used `nonce`, found in the block where the wallet's
    /// nonce passed it. `None` when the node cannot show it (yet): its answers disagree, or it
    /// no longer keeps the state of that block.
    async fn consumer_of(&self, nonce: u64) -> Option<Consumer> {
        match self.find_consumer(nonce).await {
            Ok(found) => found,
            Err(err) => {
                tracing::debug!(nonce, error = %err, "cannot locate the transaction that used the nonce yet");
                None
            }
        }
    }

    async fn find_consumer(&self, nonce: u64) -> Result<Option<Consumer>, ChainError> {
        let head = self.chain.head().await?;
        if self.chain.nonce_at(Some(head)).await? <= nonce {
            return Ok(None);
        }
        // Search back from the head (recent blocks first: a node that prunes old state can
        // still answer), doubling the step, then bisect: the first block after which the
        // wallet's transaction count exceeds `nonce`.
        let mut high = head;
        let mut step = 1;
        let low = loop {
            let probe = high.saturating_sub(step);
            if probe == 0 || self.chain.nonce_at(Some(probe)).await? <= nonce {
                break probe;
            }
            high = probe;
            step *= 2;
        };
        let mut low = low;
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.chain.nonce_at(Some(mid)).await? > nonce {
                high = mid;
            } else {
                low = mid;
            }
        }
        let Some(block) = self.chain.block(high).await? else {
            return Ok(None);
        };
        Ok(block
            .wallet_txs
            .iter()
            .find(|tx| tx.nonce == nonce)
            .map(|tx| Consumer {
                tx_hash: tx.tx_hash,
                block_number: block.number,
                block_hash: block.hash,
            }))
    }

    /// Whether the block has the configured confirmations and is still in the chain.
    async fn is_final(&self, number: u64, hash: B256) -> Result<bool, TxError> {
        let head = self.chain.head().await?;
        if head.saturating_add(1) < number.saturating_add(self.chain.confirmations()) {
            return Ok(false);
        }
        Ok(self
            .chain
            .block(number)
            .await?
            .is_some_and(|b| b.hash == hash))
    }

    /// The confirmed transaction if this inclusion is final now.
    async fn final_tx(
        &self,
        attempt: &TxAttempt,
        inclusion: &Inclusion,
    ) -> Result<Option<AnchorTx>, TxError> {
        if !inclusion.success {
            return Ok(None);
        }
        let head = self.chain.head().await?;
        if head.saturating_add(1)
            < inclusion
                .block_number
                .saturating_add(self.chain.confirmations())
        {
            return Ok(None);
        }
        let Some(block) = self.chain.block(inclusion.block_number).await? else {
            return Ok(None);
        };
        if block.hash != inclusion.block_hash {
            return Ok(None);
        }
        Ok(Some(AnchorTx {
            tx_hash: attempt.tx_hash,
            block_number: inclusion.block_number,
            block_timestamp: block.timestamp,
            gas_used: inclusion.gas_used,
            effective_gas_price: inclusion.effective_gas_price,
        }))
    }

    /// Wait (at most the attempt timeout) until a mined attempt has its confirmations on the
    /// canonical chain, or turns out to be reorganised away.
    async fn wait_confirmed(&self, attempt: &TxAttempt) -> Result<Confirmation, TxError> {
        let hash = hash_of(attempt);
        let deadline = Instant::now() + self.config.attempt_timeout;
        loop {
            match self.chain.receipt(hash).await? {
                Some(inclusion) => {
                    if !inclusion.success {
                        return Err(ChainError::Reverted {
                            tx_hash: hash,
                            block_number: inclusion.block_number,
                        }
                        .into());
                    }
                    if let Some(tx) = self.final_tx(attempt, &inclusion).await? {
                        return Ok(Confirmation::Confirmed(tx));
                    }
                }
                None => {
                    if self.chain.nonce_at(None).await? <= attempt.nonce {
                        return Ok(Confirmation::Reorganised);
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ChainError::Timeout {
                    tx_hash: Some(hash),
                    after: self.config.attempt_timeout,
                }
                .into());
            }
            tokio::time::sleep(self.chain.poll_interval()).await;
        }
    }

    /// Broadcast after checking that the wallet lock is still held.
    async fn broadcast(
        &self,
        lock: &mut WalletLock,
        signed: &SignedAnchorTx,
    ) -> Result<Sent, TxError> {
        lock.ensure_held().await?;
        Ok(match self.chain.broadcast(signed).await {
            Ok(()) => Sent::Taken,
            Err(err) if err.rejection().is_some() => Sent::Refused(err),
            Err(err) => Sent::Unknown(err),
        })
    }

    /// Send the attempt again (harmless if a node has it). Refusals are logged, not acted
    /// on: the caller checks receipts and the chain's nonce.
    async fn rebroadcast(&self, lock: &mut WalletLock, attempt: &TxAttempt) -> Result<(), TxError> {
        match self.broadcast(lock, &signed_of(attempt)).await? {
            Sent::Taken => {
                if attempt.state == TxState::Signed {
                    self.set_state(attempt, TxState::Broadcast, None).await?;
                }
            }
            Sent::Refused(err) | Sent::Unknown(err) => tracing::info!(
                tx.hash = %hash_of(attempt),
                error = %err,
                "re-broadcasting a journaled transaction was refused; checking for inclusion"
            ),
        }
        Ok(())
    }

    /// Replace the pending attempt at its nonce with one paying more than anything that may
    /// be pending there; at the cap, send the pending one again instead.
    async fn replace(
        &self,
        lock: &mut WalletLock,
        current: &TxAttempt,
        attempts: &[TxAttempt],
    ) -> Result<(), TxError> {
        let estimate = self.chain.suggest_fees().await?;
        let floor = highest_fees(attempts.iter().filter(|a| may_be_pending(a)))
            .unwrap_or_else(|| fees_of(current));
        let Some(fees) = self.config.fees.replacement(floor, estimate) else {
            tracing::warn!(
                tx.hash = %hash_of(current),
                max_fee_per_gas = floor.max_fee_per_gas,
                cap = self.config.fees.max_fee_per_gas_cap,
                "the fee cap leaves no room for a replacement; waiting for the pending transaction"
            );
            return self.rebroadcast(lock, current).await;
        };
        let signed = self
            .chain
            .sign(payload_of(current), current.nonce, fees)
            .await?;
        self.ensure_funds(&signed).await?;
        let attempt = self.record(current.batch_id, &signed).await?;
        tracing::info!(
            tx.hash = %signed.tx_hash,
            replaces = %hash_of(current),
            nonce = current.nonce,
            max_fee_per_gas = fees.max_fee_per_gas,
            max_priority_fee_per_gas = fees.max_priority_fee_per_gas,
            "replacing a pending anchor transaction with higher fees"
        );
        match self.broadcast(lock, &signed).await? {
            Sent::Taken => {
                self.set_state(&attempt, TxState::Broadcast, None).await?;
                self.mark_replaced(current.nonce, &signed.tx_hash).await?;
                metrics::counter!("cas_fee_bumps_total").increment(1);
            }
            Sent::Refused(err) => {
                self.set_state(&attempt, TxState::Failed, None).await?;
                count_attempt("rejected");
                if err.rejection() == Some(Rejection::InsufficientFunds) {
                    return Err(self.insufficient_funds(&signed).await);
                }
                tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "the replacement was refused");
            }
            Sent::Unknown(err) => {
                tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "no answer to the replacement; it may be pending, and is sent again while waiting");
            }
        }
        Ok(())
    }

    /// Every other open attempt at `nonce` is superseded by `newest`.
    async fn mark_replaced(&self, nonce: u64, newest: &B256) -> Result<(), TxError> {
        for other in self.journal.nonce_attempts(&self.wallet, nonce).await? {
            if other.state.is_open() && hash_of(&other) != *newest {
                self.set_state(&other, TxState::Replaced, None).await?;
            }
        }
        Ok(())
    }

    /// Fill the unused nonce `gap` below a pending transaction: with the journaled
    /// transaction the chain lost (mined once, then reorganised away), else with a transfer
    /// of nothing to the wallet itself.
    async fn refill(&self, lock: &mut WalletLock, gap: u64) -> Result<(), TxError> {
        let attempts = self.journal.nonce_attempts(&self.wallet, gap).await?;
        if let Some(lost) = attempts.iter().rev().find(|a| a.state == TxState::Mined) {
            return self.reopen(lost).await;
        }
        let estimate = self.chain.suggest_fees().await?;
        let fees = match highest_fees(attempts.iter().filter(|a| may_be_pending(a))) {
            Some(floor) => self
                .config
                .fees
                .replacement(floor, estimate)
                .unwrap_or(floor),
            None => self.config.fees.initial(estimate),
        };
        let signed = self.chain.sign(Payload::Filler, gap, fees).await?;
        self.ensure_funds(&signed).await?;
        let attempt = self.record(Uuid::nil(), &signed).await?;
        tracing::warn!(
            nonce = gap,
            tx.hash = %signed.tx_hash,
            "a nonce gap keeps a pending transaction from being mined; filling it with a transfer to the wallet itself"
        );
        metrics::counter!("cas_nonce_gaps_filled_total").increment(1);
        match self.broadcast(lock, &signed).await? {
            Sent::Taken => self.set_state(&attempt, TxState::Broadcast, None).await?,
            Sent::Refused(err) => {
                // Kept `Signed`: the gap must be filled, so driving it sends it again.
                tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "the filler was refused; sending it again while waiting")
            }
            Sent::Unknown(_) => {}
        }
        Ok(())
    }

    /// Fail with a clear error, before anything is journaled, if the wallet cannot pay.
    async fn ensure_funds(&self, signed: &SignedAnchorTx) -> Result<(), TxError> {
        let balance = self.chain.balance().await?;
        if balance < signed.max_cost() {
            return Err(self.insufficient_funds(signed).await);
        }
        Ok(())
    }

    async fn insufficient_funds(&self, signed: &SignedAnchorTx) -> TxError {
        let balance = self.chain.balance().await.unwrap_or(U256::ZERO);
        metrics::gauge!("cas_wallet_balance_wei").set(balance.saturating_to::<u128>() as f64);
        ChainError::InsufficientFunds {
            wallet: self.wallet(),
            balance,
            needed: signed.max_cost(),
        }
        .into()
    }

    async fn record(
        &self,
        batch_id: Uuid,
        signed: &SignedAnchorTx,
    ) -> Result<NewTxAttempt, TxError> {
        let attempt = NewTxAttempt {
            batch_id,
            wallet: self.wallet,
            nonce: signed.nonce,
            tx_hash: signed.tx_hash.0,
            root_digest: signed.root_digest,
            max_fee_per_gas: signed.fees.max_fee_per_gas,
            max_priority_fee_per_gas: signed.fees.max_priority_fee_per_gas,
            gas_limit: signed.gas_limit,
            raw_tx: signed.raw.to_vec(),
        };
        self.journal.record_attempt(&attempt).await?;
        Ok(attempt)
    }

    async fn set_state(
        &self,
        attempt: &NewTxAttempt,
        state: TxState,
        block_number: Option<u64>,
    ) -> Result<(), TxError> {
        self.journal
            .set_attempt_state(&attempt.tx_hash, state, block_number)
            .await?;
        Ok(())
    }
}
