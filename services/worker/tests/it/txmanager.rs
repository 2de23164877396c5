//! The transaction manager against the scripted fake chain ([`FakeChain`]), with tokio's clock
//! paused: every fault a real provider shows only by accident happens here on demand, and
//! every wait is instant and deterministic.
//!
//! Each test checks the chain itself: how many successful `anchorDagCbor` transactions carry
//! each root (never more than one), and that the transaction returned is in the chain.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use cas_chain::{
    AnchorChain, Payload, U256,
    fake::{FakeChain, FakeChainConfig, ReorgTxs, SendFault},
    fees::GWEI,
};
use cas_store::{
    HeldLock, MemoryTxJournal, NewTxAttempt, StoreError, TxAttempt, TxJournal, TxState, WalletKey,
    WalletLock,
};
use cas_worker::{TxError, TxManager, TxManagerConfig};
use uuid::Uuid;

fn config() -> TxManagerConfig {
    TxManagerConfig {
        attempt_timeout: Duration::from_secs(30),
        max_attempts: 3,
        ..TxManagerConfig::default()
    }
}

fn manager(chain: &FakeChain, journal: &Arc<dyn TxJournal>) -> TxManager {
    TxManager::new(Arc::new(chain.clone()), Arc::clone(journal), config())
}

fn memory_journal() -> Arc<dyn TxJournal> {
    Arc::new(MemoryTxJournal::new())
}

fn root(n: u8) -> [u8; 32] {
    [n; 32]
}

fn manual() -> FakeChain {
    FakeChain::new(FakeChainConfig {
        automine: false,
        ..FakeChainConfig::default()
    })
}

fn wallet_key(chain: &FakeChain) -> WalletKey {
    WalletKey {
        chain_id: chain.chain_id().0,
        address: chain.wallet().into_array(),
    }
}

/// Mine a block every `every` until the returned guard is dropped.
fn miner(chain: &FakeChain, every: Duration) -> tokio::task::JoinHandle<()> {
    let chain = chain.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            chain.mine();
        }
    })
}

/// Wait (in paused time: instantly) until `condition` holds.
async fn until(mut condition: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached in 1000 s of simulated time");
}

/// Exactly one anchor of `root` on chain, and it is `tx_hash`.
fn assert_one_anchor(chain: &FakeChain, root: [u8; 32], tx_hash: [u8; 32]) {
    let anchors = chain.anchors_of(root);
    assert_eq!(anchors.len(), 1, "one anchor of the root: {anchors:?}");
    assert_eq!(
        anchors[0].0, tx_hash,
        "the transaction returned is the one on chain"
    );
}

// ---------------------------------------------------------------------------------------
// The faults of the issue: errors after a send, lagging receipts
// ---------------------------------------------------------------------------------------

/// A load-balanced provider answers `eth_sendRawTransaction` with an internal error although
/// it took the transaction. The attempt stays possibly pending, and the batch stays on its
/// nonce: it is anchored once. (The manager used to mark it failed and send the batch again
/// at the next nonce: three anchors for one batch.)
#[tokio::test(start_paused = true)]
async fn an_error_after_the_node_took_the_transaction_anchors_once() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    chain.fail_next_sends([
        SendFault::AcceptThenError,
        SendFault::AcceptThenError,
        SendFault::AcceptThenError,
    ]);
    let tx = manager(&chain, &journal)
        .anchor(Uuid::now_v7(), root(1))
        .await
        .expect("anchored");
    assert_one_anchor(&chain, root(1), tx.tx_hash);
    assert_eq!(chain.account_nonce(), 1, "one transaction in all");
    // Asking again (a redelivered batch message) sends nothing.
    let batch = Uuid::now_v7();
    let first = manager(&chain, &journal)
        .anchor(batch, root(2))
        .await
        .unwrap();
    let again = manager(&chain, &journal)
        .anchor(batch, root(2))
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(chain.account_nonce(), 2);
}

/// The same, when the errored transaction is mined only later, and when the error comes
/// before the node took it or the answer is lost in transport: the manager sends the same
/// transaction again while it waits, never another nonce.
#[tokio::test(start_paused = true)]
async fn errors_on_send_never_move_a_batch_to_another_nonce() {
    for fault in [
        SendFault::AcceptThenError,
        SendFault::Error,
        SendFault::Transport,
    ] {
        let chain = manual();
        let journal = memory_journal();
        let _miner = miner(&chain, Duration::from_secs(12));
        chain.fail_next_sends([fault, fault]);
        let batch = Uuid::now_v7();
        let tx = manager(&chain, &journal)
            .anchor(batch, root(3))
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_one_anchor(&chain, root(3), tx.tx_hash);
        let attempts = journal.batch_attempts(batch).await.unwrap();
        assert!(
            attempts.iter().all(|a| a.nonce == 0),
            "{fault:?}: every attempt at nonce 0: {attempts:#?}"
        );
        assert_eq!(chain.account_nonce(), 1, "{fault:?}");
    }
}

/// Receipts lag the provider's nonce view by 20 s. A nonce that is used while no receipt
/// shows is not taken as "dropped": the block that used it holds the batch's transaction,
/// so the manager waits for its receipt. (It used to send again after 2 s: 81 sends in
/// 5 minutes, and the batch never completed.)
#[tokio::test(start_paused = true)]
async fn receipts_lagging_the_nonce_do_not_cause_a_second_send() {
    let chain = FakeChain::default();
    chain.set_receipt_lag(Duration::from_secs(20));
    let journal = memory_journal();
    let started = tokio::time::Instant::now();
    let tx = manager(&chain, &journal)
        .anchor(Uuid::now_v7(), root(4))
        .await
        .expect("anchored once the receipt shows");
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_one_anchor(&chain, root(4), tx.tx_hash);
    assert_eq!(chain.taken(), 1, "one transaction sent");
    assert_eq!(chain.signed(), 1, "one transaction signed");

    // Lagging receipts for longer than the manager's patience: it gives up with the
    // transaction journaled (nothing else sent), and the next call finds it.
    let chain = FakeChain::default();
    let journal = memory_journal();
    chain.set_receipt_lag(Duration::from_secs(600));
    let batch = Uuid::now_v7();
    let err = manager(&chain, &journal)
        .anchor(batch, root(5))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TxError::StillPending { .. }) && err.is_retryable(),
        "{err}"
    );
    assert_eq!(chain.taken(), 1);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let tx = manager(&chain, &journal)
        .anchor(batch, root(5))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(5), tx.tx_hash);
    assert_eq!(chain.taken(), 1);
}

// ---------------------------------------------------------------------------------------
// Pools, reorganisations, gaps
// ---------------------------------------------------------------------------------------

/// The pool loses the pending transaction: it is sent again at the same nonce while the
/// manager waits.
#[tokio::test(start_paused = true)]
async fn a_transaction_dropped_from_the_pool_is_sent_again_at_its_nonce() {
    let chain = manual();
    let journal = memory_journal();
    let batch = Uuid::now_v7();
    let task = tokio::spawn({
        let m = manager(&chain, &journal);
        async move { m.anchor(batch, root(6)).await }
    });
    until(|| chain.pool_len() == 1).await;
    assert_eq!(chain.drop_pool().len(), 1);
    until(|| chain.pool_len() == 1).await; // sent again
    chain.mine();
    let tx = task.await.unwrap().expect("anchored");
    assert_one_anchor(&chain, root(6), tx.tx_hash);
    let attempts = journal.batch_attempts(batch).await.unwrap();
    assert!(attempts.iter().all(|a| a.nonce == 0), "{attempts:#?}");
}

/// A reorganisation removes the confirmed anchor. The manager no longer reports it
/// confirmed, and anchoring again sends the same signed transaction, so the proof built
/// from it stays valid: one anchor, the same hash.
#[tokio::test(start_paused = true)]
async fn a_reorganised_anchor_is_sent_again_as_the_same_transaction() {
    for txs in [ReorgTxs::Lost, ReorgTxs::BackToPool] {
        let chain = FakeChain::default();
        let journal = memory_journal();
        let batch = Uuid::now_v7();
        let m = manager(&chain, &journal);
        let tx = m.anchor(batch, root(7)).await.unwrap();
        assert_eq!(m.confirmed(batch).await.unwrap(), Some(tx));

        chain.reorg(1, txs);
        assert!(chain.anchors_of(root(7)).is_empty(), "{txs:?}: gone");
        assert_eq!(m.confirmed(batch).await.unwrap(), None, "{txs:?}");
        let _miner = miner(&chain, Duration::from_secs(12));
        let again = m.anchor(batch, root(7)).await.unwrap();
        assert_eq!(again.tx_hash, tx.tx_hash, "{txs:?}: the same transaction");
        assert_ne!(again.block_number, 0);
        assert_one_anchor(&chain, root(7), tx.tx_hash);
        assert_eq!(chain.signed(), 1, "{txs:?}: nothing signed again");
    }
}

/// After a restart from an older chain state (a dev chain killed with the service), the
/// manager finds the mined transactions the chain lost and sends them again at start.
#[tokio::test(start_paused = true)]
async fn recovery_finds_anchors_the_chain_lost() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    let m = manager(&chain, &journal);
    let (kept, lost) = (Uuid::now_v7(), Uuid::now_v7());
    m.anchor(kept, root(8)).await.unwrap();
    let tx = m.anchor(lost, root(9)).await.unwrap();
    chain.reorg(1, ReorgTxs::Lost);
    let recovery = manager(&chain, &journal).recover().await.unwrap();
    assert_eq!(recovery.reorganised, vec![lost]);
    assert_eq!(recovery.settled, 1);
    assert_one_anchor(&chain, root(9), tx.tx_hash);
    assert_eq!(chain.anchors_of(root(8)).len(), 1);
    assert_eq!(
        manager(&chain, &journal).recover().await.unwrap(),
        cas_worker::Recovery::default()
    );
}

/// A transaction waits at a nonce above one the chain has not used and nothing of ours is
/// pending at (a nonce view that lagged, a reorganised filler): the gap is filled with a
/// transfer to the wallet itself, and the batch is anchored at its nonce.
#[tokio::test(start_paused = true)]
async fn a_nonce_gap_is_filled() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    let batch = Uuid::now_v7();
    // Journaled and sent at nonce 1, as if nonce 0 had looked used.
    let fees = chain.suggest_fees().await.unwrap();
    let signed = chain
        .sign(
            Payload::Anchor {
                root_digest: root(10),
            },
            1,
            fees,
        )
        .await
        .unwrap();
    journal
        .record_attempt(&attempt(&chain, batch, &signed))
        .await
        .unwrap();
    chain.broadcast(&signed).await.unwrap();
    assert_eq!(chain.account_nonce(), 0, "stuck behind the gap");

    let tx = manager(&chain, &journal)
        .anchor(batch, root(10))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(10), tx.tx_hash);
    assert_eq!(tx.tx_hash, signed.tx_hash.0);
    assert_eq!(chain.fillers(), 1);
    assert_eq!(chain.account_nonce(), 2);
}

/// A lower nonce whose mined anchor a reorganisation lost is refilled with that same
/// transaction (not a filler) before the next one can be mined.
#[tokio::test(start_paused = true)]
async fn a_lost_lower_anchor_refills_its_own_gap() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    let m = manager(&chain, &journal);
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let first = m.anchor(a, root(11)).await.unwrap();
    chain.reorg(1, ReorgTxs::Lost);
    // The next batch goes above what the journal knows used: nonce 1, over the gap at 0.
    let second = m.anchor(b, root(12)).await.unwrap();
    assert_one_anchor(&chain, root(11), first.tx_hash);
    assert_one_anchor(&chain, root(12), second.tx_hash);
    assert_eq!(chain.fillers(), 0);
    let attempts = journal.batch_attempts(b).await.unwrap();
    assert_eq!(attempts[0].nonce, 1);
}

// ---------------------------------------------------------------------------------------
// Nonces used elsewhere, refusals, fees, funds, reverts
// ---------------------------------------------------------------------------------------

/// A journaled attempt that never reached a node (the worker died in between) whose nonce
/// another transaction of the wallet then used: proven dropped from the block that used the
/// nonce, and only then sent again at a new nonce.
#[tokio::test(start_paused = true)]
async fn only_a_transaction_proven_dropped_is_sent_again() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    let batch = Uuid::now_v7();
    let fees = chain.suggest_fees().await.unwrap();
    let lost = chain
        .sign(
            Payload::Anchor {
                root_digest: root(13),
            },
            0,
            fees,
        )
        .await
        .unwrap();
    journal
        .record_attempt(&attempt(&chain, batch, &lost))
        .await
        .unwrap();
    chain.send_foreign(0);
    assert_eq!(chain.account_nonce(), 1);

    let tx = manager(&chain, &journal)
        .anchor(batch, root(13))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(13), tx.tx_hash);
    let attempts = journal.batch_attempts(batch).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(
        (attempts[0].nonce, attempts[0].state),
        (0, TxState::Dropped)
    );
    assert_eq!((attempts[1].nonce, attempts[1].state), (1, TxState::Mined));
}

/// A node that answers "nonce too low" for a nonce that is free (a lagging backend) does not
/// move the batch: the chain is asked, and the same nonce is used again.
#[tokio::test(start_paused = true)]
async fn a_false_nonce_too_low_keeps_the_batch_on_its_nonce() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    chain.fail_next_sends([SendFault::NonceTooLow]);
    let batch = Uuid::now_v7();
    let tx = manager(&chain, &journal)
        .anchor(batch, root(14))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(14), tx.tx_hash);
    let attempts = journal.batch_attempts(batch).await.unwrap();
    assert!(attempts.iter().all(|a| a.nonce == 0), "{attempts:#?}");
}

/// Fees rise above the cap for longer than the manager's patience: replacements stop at
/// the cap, the call gives up with everything journaled at one nonce, and once fees fall
/// the next call finds the pending transaction mined. No second nonce, one anchor.
#[tokio::test(start_paused = true)]
async fn fees_above_the_cap_wait_and_resume_at_the_same_nonce() {
    let chain = manual();
    let journal = memory_journal();
    let _miner = miner(&chain, Duration::from_secs(12));
    let cap = 50 * GWEI;
    let capped = |chain: &FakeChain| {
        TxManager::new(
            Arc::new(chain.clone()),
            Arc::clone(&journal),
            TxManagerConfig {
                fees: cas_chain::FeePolicy::with_cap(cap),
                ..config()
            },
        )
    };
    chain.set_base_fee(300 * GWEI);
    let batch = Uuid::now_v7();
    let err = capped(&chain).anchor(batch, root(15)).await.unwrap_err();
    assert!(matches!(err, TxError::StillPending { .. }), "{err}");
    let attempts = journal.batch_attempts(batch).await.unwrap();
    assert!(attempts.iter().all(|a| a.nonce == 0), "{attempts:#?}");
    assert!(attempts.iter().all(|a| a.max_fee_per_gas <= cap));
    assert!(chain.anchors_of(root(15)).is_empty());

    chain.set_base_fee(GWEI);
    let tx = capped(&chain).anchor(batch, root(15)).await.unwrap();
    assert_one_anchor(&chain, root(15), tx.tx_hash);
    assert_eq!(chain.account_nonce(), 1);
}

/// An unfunded wallet is reported before anything is journaled or sent; once funded, the
/// batch is anchored at the first nonce.
#[tokio::test(start_paused = true)]
async fn an_unfunded_wallet_sends_nothing_until_funded() {
    let chain = FakeChain::default();
    let journal = memory_journal();
    chain.set_balance(U256::ZERO);
    let batch = Uuid::now_v7();
    let err = manager(&chain, &journal)
        .anchor(batch, root(16))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("fund the wallet") && err.is_retryable(),
        "{err}"
    );
    assert!(journal.batch_attempts(batch).await.unwrap().is_empty());
    assert_eq!(chain.broadcasts(), 0);
    chain.set_balance(U256::from(10u64).pow(U256::from(18u64)));
    let tx = manager(&chain, &journal)
        .anchor(batch, root(16))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(16), tx.tx_hash);
}

/// The wallet loses the contract's permission between signing and mining: the transaction
/// reverts (an error that needs an operator), and once allowed again the batch is anchored
/// at a new nonce, since the reverted one used its nonce.
#[tokio::test(start_paused = true)]
async fn a_reverted_anchor_is_reported_and_sent_again_once_allowed() {
    let chain = manual();
    let journal = memory_journal();
    let batch = Uuid::now_v7();
    let task = tokio::spawn({
        let m = manager(&chain, &journal);
        async move { m.anchor(batch, root(17)).await }
    });
    until(|| chain.pool_len() == 1).await;
    chain.set_allowed(false);
    chain.mine();
    let err = task.await.unwrap().unwrap_err();
    assert!(
        err.to_string().contains("reverted") && !err.is_retryable(),
        "{err}"
    );
    chain.set_allowed(true);
    let _miner = miner(&chain, Duration::from_secs(12));
    let tx = manager(&chain, &journal)
        .anchor(batch, root(17))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(17), tx.tx_hash);
    let attempts = journal.batch_attempts(batch).await.unwrap();
    assert_eq!(
        attempts
            .iter()
            .map(|a| (a.nonce, a.state))
            .collect::<Vec<_>>(),
        [(0, TxState::Failed), (1, TxState::Mined)]
    );
}

// ---------------------------------------------------------------------------------------
// The wallet lock, stopping midway
// ---------------------------------------------------------------------------------------

/// A journal whose wallet lock can be lost (as a PostgreSQL advisory lock is when its
/// connection dies) at a moment the test chooses.
struct LossyJournal {
    inner: MemoryTxJournal,
    lost: Arc<AtomicBool>,
}

struct LossyLock {
    _inner: WalletLock,
    lost: Arc<AtomicBool>,
}

#[async_trait]
impl HeldLock for LossyLock {
    async fn is_held(&mut self) -> Result<bool, StoreError> {
        Ok(!self.lost.load(Ordering::SeqCst))
    }
}

#[async_trait]
impl TxJournal for LossyJournal {
    async fn record_attempt(&self, attempt: &NewTxAttempt) -> Result<(), StoreError> {
        self.inner.record_attempt(attempt).await
    }
    async fn set_attempt_state(
        &self,
        tx_hash: &[u8; 32],
        state: TxState,
        block_number: Option<u64>,
    ) -> Result<bool, StoreError> {
        self.inner
            .set_attempt_state(tx_hash, state, block_number)
            .await
    }
    async fn batch_attempts(&self, batch_id: Uuid) -> Result<Vec<TxAttempt>, StoreError> {
        self.inner.batch_attempts(batch_id).await
    }
    async fn nonce_attempts(
        &self,
        w: &WalletKey,
        nonce: u64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        self.inner.nonce_attempts(w, nonce).await
    }
    async fn open_attempts(&self, w: &WalletKey) -> Result<Vec<TxAttempt>, StoreError> {
        self.inner.open_attempts(w).await
    }
    async fn highest_used_nonce(&self, w: &WalletKey) -> Result<Option<u64>, StoreError> {
        self.inner.highest_used_nonce(w).await
    }
    async fn mined_attempts(
        &self,
        w: &WalletKey,
        limit: i64,
    ) -> Result<Vec<TxAttempt>, StoreError> {
        self.inner.mined_attempts(w, limit).await
    }
    async fn lock_wallet(
        &self,
        w: &WalletKey,
        max_wait: Duration,
    ) -> Result<Option<WalletLock>, StoreError> {
        Ok(self.inner.lock_wallet(w, max_wait).await?.map(|inner| {
            WalletLock::checked(LossyLock {
                _inner: inner,
                lost: Arc::clone(&self.lost),
            })
        }))
    }
}

/// A lost wallet lock is noticed before the broadcast: nothing is sent without it (the
/// attempt stays journaled), and the next holder resumes that very transaction.
#[tokio::test(start_paused = true)]
async fn nothing_is_broadcast_once_the_wallet_lock_is_lost() {
    let chain = FakeChain::default();
    let lost = Arc::new(AtomicBool::new(true));
    let journal: Arc<dyn TxJournal> = Arc::new(LossyJournal {
        inner: MemoryTxJournal::new(),
        lost: Arc::clone(&lost),
    });
    let batch = Uuid::now_v7();
    let err = manager(&chain, &journal)
        .anchor(batch, root(18))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TxError::Journal(StoreError::LockLost(_))) && err.is_retryable(),
        "{err}"
    );
    assert_eq!(chain.broadcasts(), 0, "nothing sent without the lock");
    let journaled = journal.batch_attempts(batch).await.unwrap();
    assert_eq!(journaled.len(), 1);
    assert_eq!(journaled[0].state, TxState::Signed);

    lost.store(false, Ordering::SeqCst);
    let tx = manager(&chain, &journal)
        .anchor(batch, root(18))
        .await
        .unwrap();
    assert_eq!(
        tx.tx_hash, journaled[0].tx_hash,
        "the journaled transaction"
    );
    assert_one_anchor(&chain, root(18), tx.tx_hash);
    assert_eq!(chain.signed(), 1);
}

/// A worker stopped in the middle of an anchor (SIGTERM drops the call) leaves the sent
/// transaction journaled; the next worker resumes it and sends nothing else.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_midway_is_resumed_without_a_second_send() {
    let chain = manual();
    let journal = memory_journal();
    let batch = Uuid::now_v7();
    let stopped = tokio::time::timeout(
        Duration::from_secs(5),
        manager(&chain, &journal).anchor(batch, root(19)),
    )
    .await;
    assert!(stopped.is_err(), "still waiting for a block when stopped");
    assert_eq!(chain.pool_len(), 1);
    let _miner = miner(&chain, Duration::from_secs(12));
    let tx = manager(&chain, &journal)
        .anchor(batch, root(19))
        .await
        .unwrap();
    assert_one_anchor(&chain, root(19), tx.tx_hash);
    assert_eq!(chain.signed(), 1);
}

// ---------------------------------------------------------------------------------------
// Everything at once
// ---------------------------------------------------------------------------------------

/// A small deterministic generator (no dependency needed for a test's dice).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, sides: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % sides
    }
}

/// Several managers (workers) sharing one journal anchor several batches, each batch asked
/// for by two of them (a duplicated message), while the chain misbehaves at random: errors
/// after sends, lost answers, lagging receipts, pools that lose transactions,
/// reorganisations that return or lose them, fees above the cap. For 30 seeds: every root
/// is anchored exactly once, at the transaction the managers report.
#[tokio::test(start_paused = true)]
async fn random_faults_never_anchor_a_root_twice() {
    for seed in 0..30u64 {
        let mut dice = Dice(seed * 7919 + 1);
        let chain = manual();
        let journal = memory_journal();
        let batches: Vec<(Uuid, [u8; 32])> = (0..5)
            .map(|i| (Uuid::now_v7(), root(100 + i as u8)))
            .collect();
        let mut tasks = Vec::new();
        for (i, (batch, digest)) in batches.iter().copied().enumerate() {
            for copy in 0..2 {
                let m = TxManager::new(
                    Arc::new(chain.clone()),
                    Arc::clone(&journal),
                    TxManagerConfig {
                        fees: cas_chain::FeePolicy::with_cap(100 * GWEI),
                        ..config()
                    },
                );
                let delay = Duration::from_secs(dice.roll(40) + (i * 3 + copy) as u64);
                tasks.push(tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    loop {
                        match m.anchor(batch, digest).await {
                            Ok(tx) => return tx,
                            Err(_) => tokio::time::sleep(Duration::from_secs(10)).await,
                        }
                    }
                }));
            }
        }
        // The chain: a block every 12 s, with a fault now and then for the first 15 minutes.
        for _tick in 0..75 {
            tokio::time::sleep(Duration::from_secs(12)).await;
            match dice.roll(12) {
                0 => chain.fail_next_sends([SendFault::AcceptThenError]),
                1 => chain.fail_next_sends([SendFault::Error, SendFault::Transport]),
                2 => chain.set_receipt_lag(Duration::from_secs(dice.roll(60))),
                3 => {
                    chain.drop_pool();
                }
                4 => chain.reorg(1 + dice.roll(3), ReorgTxs::BackToPool),
                5 => chain.reorg(1 + dice.roll(2), ReorgTxs::Lost),
                6 => chain.set_base_fee(300 * GWEI),
                7 => chain.set_base_fee(GWEI),
                8 => chain.fail_next_sends([SendFault::NonceTooLow]),
                _ => {}
            }
            chain.mine();
        }
        chain.set_receipt_lag(Duration::ZERO);
        chain.set_base_fee(GWEI);
        let _miner = miner(&chain, Duration::from_secs(12));
        for task in tasks {
            task.await.unwrap();
        }
        // A reorganisation may have removed an anchor after its call returned: asking again,
        // as the worker does before recording the batch, brings back the same transaction.
        for (batch, digest) in &batches {
            let tx = manager(&chain, &journal)
                .anchor(*batch, *digest)
                .await
                .unwrap();
            let anchors = chain.anchors_of(*digest);
            assert_eq!(anchors.len(), 1, "seed {seed}: {anchors:?}");
            assert_eq!(anchors[0].0, tx.tx_hash, "seed {seed}");
        }
        let anchored: usize = chain.anchors().values().sum();
        assert_eq!(anchored, batches.len(), "seed {seed}: no other anchors");
    }
}

fn attempt(chain: &FakeChain, batch_id: Uuid, signed: &cas_chain::SignedAnchorTx) -> NewTxAttempt {
    NewTxAttempt {
        batch_id,
        wallet: wallet_key(chain),
        nonce: signed.nonce,
        tx_hash: signed.tx_hash.0,
        root_digest: signed.root_digest,
        max_fee_per_gas: signed.fees.max_fee_per_gas,
        max_priority_fee_per_gas: signed.fees.max_priority_fee_per_gas,
        gas_limit: signed.gas_limit,
        raw_tx: signed.raw.to_vec(),
    }
}
