//! The Ethereum transaction manager: one wallet per cluster, no double anchors, no stuck
//! batches.
//!
//! [`TxManager`] puts a batch's root on chain with [`EvmAnchorer`]'s steps, under two rules:
//!
//! 1. **One sender per wallet.** Everything that reads a nonce, signs, broadcasts or replaces
//!    happens under the wallet lock ([`TxJournal::lock_wallet`], a PostgreSQL advisory lock
//!    shared by every worker of the cluster), held until the transaction is confirmed.
//! 2. **Journal first.** Every signed attempt is recorded in the journal before it is
//!    broadcast. The journal, not memory, says what was sent: a batch whose transaction is
//!    mined is never anchored again; a pending one is awaited or replaced at the same nonce;
//!    only a transaction proven dropped (its nonce used by another transaction, no receipt)
//!    leads to a new send.
//!
//! Anchoring a batch ([`TxManager::anchor`]):
//!
//! 1. If the journal has a mined attempt for the batch: wait for its confirmations and
//!    return it. Nothing is sent.
//! 2. Take the wallet lock (bounded wait; `cas_nonce_lock_wait_seconds`).
//! 3. Settle every open nonce of the wallet, oldest first: an attempt left pending by a
//!    worker that died or gave up, of this batch or another. Settling drives the nonce to an
//!    outcome: mined (or reverted), or proven dropped.
//! 4. If that mined this batch's transaction, done. Otherwise send a new one: pending nonce,
//!    fees from the node's estimate under the cap, balance check, sign, **journal**, then
//!    broadcast, and drive its nonce like in 3.
//!
//! Driving a nonce: poll the receipts of *every* attempt at that nonce (an older attempt can
//! beat its replacement); a nonce used while none of our attempts has a receipt (checked
//! twice) is proven dropped; an attempt still pending after the attempt timeout is replaced
//! at the same nonce with both fee fields raised by at least 12.5 % (never above the cap);
//! after `max_attempts` the call gives up and the attempts stay journaled for the next one. A
//! "nonce too low" answer is never acted on before every attempt at that nonce is checked
//! for inclusion.
//!
//! Metrics: `cas_anchor_attempts_total{outcome}` (each transaction attempt once, when its
//! fate is known: `mined`, `reverted`, `replaced`, `dropped`, `rejected`),
//! `cas_fee_bumps_total`, `cas_wallet_balance_wei`, `cas_nonce_lock_wait_seconds`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use cas_chain::{
    Address, AnchorTx, B256, ChainError, EvmAnchorer, FeePolicy, Fees, Rejection, SignedAnchorTx,
    U256,
};
use cas_store::{NewTxAttempt, StoreError, TxAttempt, TxJournal, TxState, WalletKey, WalletLock};
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
    /// The journal could not be read or written (nothing is broadcast without it).
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
    /// An attempt is still pending after the attempts this call may make. It stays journaled;
    /// the next call (of any worker) resumes it.
    #[error(
        "transaction {tx_hash} (nonce {nonce}) is still pending after {attempts} attempts; \
         it stays journaled and is resumed by the next attempt"
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

/// How a nonce ended.
#[derive(Debug)]
enum NonceOutcome {
    /// This attempt was mined and succeeded.
    Mined(TxAttempt),
    /// This attempt was mined and reverted.
    Reverted(TxAttempt, u64),
    /// None of the attempts will ever be mined: the nonce was used by another transaction.
    Dropped,
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

fn count_attempt(outcome: &'static str) {
    metrics::counter!("cas_anchor_attempts_total", "outcome" => outcome).increment(1);
}

/// Sends anchor transactions for batches from one wallet; see the [module docs](self).
pub struct TxManager {
    chain: EvmAnchorer,
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
    /// A manager for the anchorer's wallet and chain, journaling into `journal`.
    pub fn new(chain: EvmAnchorer, journal: Arc<dyn TxJournal>, config: TxManagerConfig) -> Self {
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

    /// The underlying step functions.
    pub fn chain(&self) -> &EvmAnchorer {
        &self.chain
    }

    /// Put `root_digest` on chain for `batch_id`, exactly once however often it is asked
    /// (see the [module docs](self)). Returns the confirmed transaction.
    #[tracing::instrument(skip_all, fields(batch.id = %batch_id))]
    pub async fn anchor(&self, batch_id: Uuid, root_digest: [u8; 32]) -> Result<AnchorTx, TxError> {
        if let Some(tx) = self.mined_for_batch(batch_id).await? {
            return Ok(tx);
        }
        let lock = self.lock_wallet(self.config.lock_timeout).await?;
        // A hung RPC call must not keep the wallet locked forever. Stopping anywhere is
        // safe: what was broadcast is journaled first, and the next lock holder resumes it.
        let limit = self.locked_time_limit();
        let result = tokio::time::timeout(limit, self.anchor_locked(batch_id, root_digest))
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

    /// The longest one call may hold the wallet lock: enough for every attempt at two
    /// nonces (an open one left by someone else, and this batch's) and the confirmations.
    fn locked_time_limit(&self) -> Duration {
        self.config.attempt_timeout * (2 * self.config.max_attempts + 2)
    }

    /// Settle the wallet's journaled attempts that are still open (after a crash or a call
    /// that gave up), if the wallet lock is free soon; whoever holds it settles them anyway.
    /// Returns how many nonces were settled.
    pub async fn recover(&self) -> Result<usize, TxError> {
        self.report_balance().await;
        let open = self.journal.open_attempts(&self.wallet).await?;
        if open.is_empty() {
            return Ok(0);
        }
        let lock = match self.lock_wallet(self.config.recovery_lock_timeout).await {
            Ok(lock) => lock,
            Err(TxError::LockTimeout { .. }) => {
                tracing::info!(
                    "another worker holds the wallet lock; it resumes the journaled transactions"
                );
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let limit = self.locked_time_limit();
        let settled = tokio::time::timeout(limit, self.settle_open())
            .await
            .unwrap_or_else(|_| {
                Err(ChainError::Timeout {
                    tx_hash: None,
                    after: limit,
                }
                .into())
            });
        drop(lock);
        settled
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

    /// A confirmed transaction of this batch that the journal knows as mined, if any. An
    /// attempt whose receipt vanished (a reorganisation) is reopened for settling.
    async fn mined_for_batch(&self, batch_id: Uuid) -> Result<Option<AnchorTx>, TxError> {
        let attempts = self.journal.batch_attempts(batch_id).await?;
        for attempt in attempts.iter().filter(|a| a.state == TxState::Mined) {
            match self.chain.inclusion(hash_of(attempt)).await? {
                Some(inclusion) if inclusion.success => {
                    tracing::info!(
                        tx.hash = %hash_of(attempt),
                        nonce = attempt.nonce,
                        "the journal has this batch's transaction mined; nothing is sent"
                    );
                    return self.confirm(attempt).await.map(Some);
                }
                Some(inclusion) => {
                    self.journal
                        .set_attempt_state(
                            &attempt.tx_hash,
                            TxState::Failed,
                            Some(inclusion.block_number),
                        )
                        .await?;
                }
                None => {
                    tracing::warn!(
                        tx.hash = %hash_of(attempt),
                        "a mined anchor transaction is no longer in the chain (reorganisation); resuming it"
                    );
                    self.journal
                        .set_attempt_state(&attempt.tx_hash, TxState::Broadcast, None)
                        .await?;
                }
            }
        }
        Ok(None)
    }

    /// Wait for the configured confirmations of a mined attempt (bounded by the attempt
    /// timeout).
    async fn confirm(&self, attempt: &TxAttempt) -> Result<AnchorTx, TxError> {
        let hash = hash_of(attempt);
        let limit = self.config.attempt_timeout;
        match tokio::time::timeout(limit, self.chain.wait_for_confirmation(hash)).await {
            Ok(confirmed) => Ok(confirmed?),
            Err(_) => Err(ChainError::Timeout {
                tx_hash: Some(hash),
                after: limit,
            }
            .into()),
        }
    }

    async fn anchor_locked(
        &self,
        batch_id: Uuid,
        root_digest: [u8; 32],
    ) -> Result<AnchorTx, TxError> {
        const ROUNDS: usize = 3;
        for _ in 0..ROUNDS {
            self.settle_open().await?;
            // Settling may have found this batch's own transaction (left by a crash).
            if let Some(tx) = self.mined_for_batch(batch_id).await? {
                return Ok(tx);
            }
            match self.send_new(batch_id, root_digest).await? {
                NonceOutcome::Mined(attempt) => {
                    let tx = self.confirm(&attempt).await?;
                    tracing::info!(
                        tx.hash = %hash_of(&attempt),
                        nonce = attempt.nonce,
                        block = tx.block_number,
                        gas_used = tx.gas_used,
                        "anchor transaction confirmed"
                    );
                    return Ok(tx);
                }
                NonceOutcome::Reverted(attempt, block_number) => {
                    return Err(ChainError::Reverted {
                        tx_hash: hash_of(&attempt),
                        block_number,
                    }
                    .into());
                }
                NonceOutcome::Dropped => {
                    tracing::warn!("the nonce was used by another transaction; sending again");
                }
            }
        }
        Err(TxError::NonceRace(self.wallet()))
    }

    /// Drive every open nonce of the wallet to an outcome, oldest first.
    async fn settle_open(&self) -> Result<usize, TxError> {
        let open = self.journal.open_attempts(&self.wallet).await?;
        let mut groups: Vec<Vec<TxAttempt>> = Vec::new();
        for attempt in open {
            match groups.last_mut() {
                Some(group) if group[0].nonce == attempt.nonce => group.push(attempt),
                _ => groups.push(vec![attempt]),
            }
        }
        let settled = groups.len();
        for group in groups {
            let (nonce, batch_id) = (group[0].nonce, group[0].batch_id);
            tracing::info!(nonce, batch.id = %batch_id, attempts = group.len(), "resuming a journaled transaction");
            match self.drive(group, false).await? {
                NonceOutcome::Mined(a) => {
                    tracing::info!(nonce, batch.id = %batch_id, tx.hash = %hash_of(&a), "journaled transaction mined")
                }
                NonceOutcome::Reverted(a, block) => {
                    tracing::warn!(nonce, batch.id = %batch_id, tx.hash = %hash_of(&a), block, "journaled transaction reverted")
                }
                NonceOutcome::Dropped => {
                    tracing::warn!(nonce, batch.id = %batch_id, "journaled transaction dropped: its nonce was used by another transaction")
                }
            }
        }
        Ok(settled)
    }

    /// Sign, journal and broadcast a new transaction for the batch, then drive its nonce.
    async fn send_new(
        &self,
        batch_id: Uuid,
        root_digest: [u8; 32],
    ) -> Result<NonceOutcome, TxError> {
        let nonce = self.chain.pending_nonce().await?;
        let fees = self.config.fees.initial(self.chain.suggest_fees().await?);
        let signed = self.chain.sign_anchor(root_digest, nonce, fees).await?;
        self.ensure_funds(&signed).await?;
        let attempt = self.record(batch_id, &signed).await?;
        tracing::info!(
            tx.hash = %signed.tx_hash,
            nonce,
            max_fee_per_gas = fees.max_fee_per_gas,
            max_priority_fee_per_gas = fees.max_priority_fee_per_gas,
            "sending anchor transaction"
        );
        match self.chain.broadcast(&signed).await {
            Ok(()) => {
                self.set_state(&attempt, TxState::Broadcast, None).await?;
            }
            Err(err) => match err.rejection() {
                Some(Rejection::NonceTooLow) => {
                    // Before anything else: was an earlier attempt at this nonce mined?
                    self.set_state(&attempt, TxState::Failed, None).await?;
                    count_attempt("rejected");
                    let earlier = self.journal.nonce_attempts(&self.wallet, nonce).await?;
                    if let Some(outcome) = self.check_inclusion(&earlier).await? {
                        return Ok(match outcome {
                            NonceOutcome::Mined(a) if a.batch_id == batch_id => {
                                NonceOutcome::Mined(a)
                            }
                            _ => NonceOutcome::Dropped,
                        });
                    }
                    return Ok(NonceOutcome::Dropped);
                }
                Some(Rejection::InsufficientFunds) => {
                    self.set_state(&attempt, TxState::Failed, None).await?;
                    count_attempt("rejected");
                    return Err(self.insufficient_funds(&signed).await);
                }
                _ if matches!(err, ChainError::Rejected { .. }) => {
                    self.set_state(&attempt, TxState::Failed, None).await?;
                    count_attempt("rejected");
                    return Err(err.into());
                }
                // A transport failure: the node may have it. It stays Signed; driving the
                // nonce re-broadcasts it.
                _ => {
                    tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "broadcast failed; retrying while waiting")
                }
            },
        }
        let row = self.row(&attempt).await?;
        self.drive(vec![row], true).await
    }

    /// Drive one nonce's attempts to an outcome. `fresh`: the newest attempt was just
    /// broadcast (otherwise it is re-broadcast first, in case no node has it any more).
    async fn drive(
        &self,
        mut attempts: Vec<TxAttempt>,
        fresh: bool,
    ) -> Result<NonceOutcome, TxError> {
        let nonce = attempts[0].nonce;
        let Some(mut current) = attempts
            .iter()
            .rev()
            .find(|a| a.state.may_be_mined())
            .cloned()
        else {
            return Ok(NonceOutcome::Dropped);
        };
        if !fresh {
            self.rebroadcast(&current).await?;
        }
        let poll = self.chain.poll_interval();
        // Receipts can lag behind the nonce (load-balanced endpoints): a nonce counts as used
        // by another transaction only after this long without a receipt for any attempt.
        let proof_delay = (poll * 3).max(Duration::from_secs(2));
        let mut attempt_started = Instant::now();
        let mut made: u32 = 1;
        let mut used_since: Option<Instant> = None;
        loop {
            if let Some(outcome) = self.check_inclusion(&attempts).await? {
                return Ok(outcome);
            }
            if self.chain.latest_nonce().await? > nonce {
                let since = *used_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= proof_delay {
                    for a in attempts.iter().filter(|a| a.state.may_be_mined()) {
                        self.set_state(a, TxState::Dropped, None).await?;
                        count_attempt("dropped");
                    }
                    return Ok(NonceOutcome::Dropped);
                }
            } else if attempt_started.elapsed() >= self.config.attempt_timeout {
                if made >= self.config.max_attempts {
                    return Err(TxError::StillPending {
                        tx_hash: hash_of(&current),
                        nonce,
                        attempts: made,
                    });
                }
                made += 1;
                attempt_started = Instant::now();
                if let Some(replacement) = self.replace(&current).await? {
                    attempts.push(replacement.clone());
                    if replacement.state == TxState::Broadcast
                        || replacement.state == TxState::Signed
                    {
                        current = replacement;
                    }
                }
                continue;
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The outcome of a nonce if one of its attempts has a receipt; records it.
    async fn check_inclusion(
        &self,
        attempts: &[TxAttempt],
    ) -> Result<Option<NonceOutcome>, TxError> {
        for attempt in attempts.iter().rev() {
            if !attempt.state.may_be_mined() && attempt.state != TxState::Mined {
                continue;
            }
            let Some(inclusion) = self.chain.inclusion(hash_of(attempt)).await? else {
                continue;
            };
            for other in attempts.iter().filter(|a| a.tx_hash != attempt.tx_hash) {
                if other.state.may_be_mined() {
                    self.set_state(other, TxState::Replaced, None).await?;
                    count_attempt("replaced");
                }
            }
            let block = inclusion.block_number;
            if inclusion.success {
                if attempt.state != TxState::Mined {
                    self.set_state(attempt, TxState::Mined, Some(block)).await?;
                    count_attempt("mined");
                }
                let mut mined = attempt.clone();
                mined.state = TxState::Mined;
                mined.block_number = Some(block);
                return Ok(Some(NonceOutcome::Mined(mined)));
            }
            self.set_state(attempt, TxState::Failed, Some(block))
                .await?;
            count_attempt("reverted");
            tracing::error!(tx.hash = %hash_of(attempt), block, "anchor transaction reverted");
            return Ok(Some(NonceOutcome::Reverted(attempt.clone(), block)));
        }
        Ok(None)
    }

    /// Send the attempt again (harmless if a node has it). Refusals are logged, not fatal:
    /// the caller checks inclusion and replaces as needed.
    async fn rebroadcast(&self, attempt: &TxAttempt) -> Result<(), TxError> {
        match self.chain.broadcast(&signed_of(attempt)).await {
            Ok(()) => {
                if attempt.state == TxState::Signed {
                    self.set_state(attempt, TxState::Broadcast, None).await?;
                }
            }
            Err(err) => tracing::info!(
                tx.hash = %hash_of(attempt),
                error = %err,
                "re-broadcasting a journaled transaction was refused; checking for inclusion"
            ),
        }
        Ok(())
    }

    /// Replace a pending attempt at the same nonce with higher fees. Returns the new attempt
    /// (`Broadcast`, `Signed` if the node could not be reached, or `Failed` if it was
    /// refused), or `None` when the fee cap leaves no room and the current one is kept.
    async fn replace(&self, current: &TxAttempt) -> Result<Option<TxAttempt>, TxError> {
        let estimate = self.chain.suggest_fees().await?;
        let Some(fees) = self.config.fees.replacement(fees_of(current), estimate) else {
            tracing::warn!(
                tx.hash = %hash_of(current),
                max_fee_per_gas = current.max_fee_per_gas,
                cap = self.config.fees.max_fee_per_gas_cap,
                "the fee cap leaves no room for a replacement; waiting for the pending transaction"
            );
            self.rebroadcast(current).await?;
            return Ok(None);
        };
        let signed = self
            .chain
            .sign_anchor(current.root_digest, current.nonce, fees)
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
        let state = match self.chain.broadcast(&signed).await {
            Ok(()) => {
                self.set_state(&attempt, TxState::Broadcast, None).await?;
                self.set_state(current, TxState::Replaced, None).await?;
                metrics::counter!("cas_fee_bumps_total").increment(1);
                TxState::Broadcast
            }
            Err(err) if matches!(err, ChainError::Rejected { .. }) => {
                // Never in a mempool. A nonce error means an attempt was mined: the caller
                // checks every attempt at this nonce next.
                self.set_state(&attempt, TxState::Failed, None).await?;
                count_attempt("rejected");
                if err.rejection() == Some(Rejection::InsufficientFunds) {
                    return Err(self.insufficient_funds(&signed).await);
                }
                tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "the replacement was refused");
                TxState::Failed
            }
            Err(err) => {
                tracing::warn!(tx.hash = %signed.tx_hash, error = %err, "broadcasting the replacement failed");
                TxState::Signed
            }
        };
        let mut row = self.row(&attempt).await?;
        row.state = state;
        Ok(Some(row))
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

    async fn row(&self, attempt: &NewTxAttempt) -> Result<TxAttempt, TxError> {
        self.journal
            .batch_attempts(attempt.batch_id)
            .await?
            .into_iter()
            .find(|a| a.tx_hash == attempt.tx_hash)
            .ok_or_else(|| {
                TxError::Journal(StoreError::Internal(format!(
                    "attempt {} missing from the journal",
                    hash_of(attempt)
                )))
            })
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
