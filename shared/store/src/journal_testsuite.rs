//! The conformance suite every [`TxJournal`] implementation must pass.
//!
//! Each function takes a journal with an empty, migrated schema and panics on a violation.
//! Every check uses its own random wallets and batches, so the checks can share a journal.

use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::{NewTxAttempt, TxJournal, TxState, WalletKey};

/// A random wallet on `chain_id`.
pub fn wallet(chain_id: u64) -> WalletKey {
    let mut address = [0u8; 20];
    address[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    address[16..].copy_from_slice(&Uuid::new_v4().as_bytes()[..4]);
    WalletKey { chain_id, address }
}

/// An attempt with a random hash; fees above `u64::MAX` check that they round-trip.
pub fn attempt(batch_id: Uuid, wallet: WalletKey, nonce: u64) -> NewTxAttempt {
    let mut tx_hash = [0u8; 32];
    tx_hash[..16].copy_from_slice(Uuid::new_v4().as_bytes());
    tx_hash[16..].copy_from_slice(Uuid::new_v4().as_bytes());
    NewTxAttempt {
        batch_id,
        wallet,
        nonce,
        tx_hash,
        root_digest: [0xab; 32],
        max_fee_per_gas: u128::from(u64::MAX) * 1000 + 7,
        max_priority_fee_per_gas: 1_500_000_000,
        gas_limit: 28_512,
        raw_tx: (0..=255u8).cycle().take(300).collect(),
    }
}

/// Run every check.
pub async fn run_all(journal: &dyn TxJournal) {
    recorded_attempts_read_back_exactly(journal).await;
    recording_is_idempotent(journal).await;
    states_and_blocks_are_updated(journal).await;
    open_attempts_are_the_unsettled_nonces(journal).await;
    nonce_attempts_cover_every_state_and_batch(journal).await;
    used_nonces_and_mined_attempts_are_found(journal).await;
    wallet_locks_are_exclusive_and_bounded(journal).await;
    a_waiting_locker_gets_the_lock_when_it_is_released(journal).await;
}

/// The highest used nonce counts only attempts that show their nonce used on chain; the
/// mined attempts come newest first, bounded.
pub async fn used_nonces_and_mined_attempts_are_found(journal: &dyn TxJournal) {
    let w = wallet(1);
    assert_eq!(journal.highest_used_nonce(&w).await.unwrap(), None);
    assert!(journal.mined_attempts(&w, 10).await.unwrap().is_empty());
    let batch = Uuid::now_v7();
    let rows: Vec<NewTxAttempt> = (0..7).map(|n| attempt(batch, w, n)).collect();
    for row in &rows {
        journal.record_attempt(row).await.unwrap();
    }
    let set = |i: usize, state, block| {
        let hash = rows[i].tx_hash;
        async move {
            journal
                .set_attempt_state(&hash, state, block)
                .await
                .unwrap()
        }
    };
    set(0, TxState::Mined, Some(10)).await;
    set(1, TxState::Dropped, None).await;
    set(2, TxState::Mined, Some(12)).await;
    set(3, TxState::Failed, Some(13)).await; // mined, reverted: used
    set(4, TxState::Failed, None).await; // refused: not used
    set(5, TxState::Replaced, None).await;
    // 6 stays Signed.
    assert_eq!(journal.highest_used_nonce(&w).await.unwrap(), Some(3));
    set(1, TxState::Dropped, None).await;
    let other = wallet(1);
    journal
        .record_attempt(&attempt(batch, other, 99))
        .await
        .unwrap();
    assert_eq!(journal.highest_used_nonce(&w).await.unwrap(), Some(3));

    let mined = journal.mined_attempts(&w, 10).await.unwrap();
    let nonces: Vec<u64> = mined.iter().map(|a| a.nonce).collect();
    assert_eq!(nonces, [2, 0], "newest first, mined only");
    assert_eq!(journal.mined_attempts(&w, 1).await.unwrap().len(), 1);
}

/// What is recorded reads back field for field, as `Signed`, per batch, oldest first.
pub async fn recorded_attempts_read_back_exactly(journal: &dyn TxJournal) {
    let w = wallet(1);
    let batch = Uuid::now_v7();
    let first = attempt(batch, w, 7);
    let second = NewTxAttempt {
        max_fee_per_gas: u128::MAX,
        max_priority_fee_per_gas: 0,
        ..attempt(batch, w, 7)
    };
    let other_batch = attempt(Uuid::now_v7(), w, 8);
    for a in [&first, &second, &other_batch] {
        journal.record_attempt(a).await.expect("record");
    }
    let rows = journal.batch_attempts(batch).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0].attempt, first);
    assert_eq!(rows[1].attempt, second);
    for row in &rows {
        assert_eq!(row.state, TxState::Signed);
        assert_eq!(row.block_number, None);
        assert!(row.updated_at >= row.created_at);
    }
    assert!(rows[0].created_at <= rows[1].created_at);
    assert!(
        journal
            .batch_attempts(Uuid::now_v7())
            .await
            .unwrap()
            .is_empty()
    );
}

/// Recording a hash again changes nothing, not even a state that moved on.
pub async fn recording_is_idempotent(journal: &dyn TxJournal) {
    let w = wallet(1);
    let batch = Uuid::now_v7();
    let a = attempt(batch, w, 1);
    journal.record_attempt(&a).await.unwrap();
    assert!(
        journal
            .set_attempt_state(&a.tx_hash, TxState::Broadcast, None)
            .await
            .unwrap()
    );
    journal.record_attempt(&a).await.expect("record again");
    let rows = journal.batch_attempts(batch).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, TxState::Broadcast);
}

/// Every state can be stored with or without a block; unknown hashes answer `false`.
pub async fn states_and_blocks_are_updated(journal: &dyn TxJournal) {
    let w = wallet(1);
    let batch = Uuid::now_v7();
    let a = attempt(batch, w, 3);
    journal.record_attempt(&a).await.unwrap();
    let before = journal.batch_attempts(batch).await.unwrap()[0].clone();
    for state in TxState::ALL {
        let block = (state == TxState::Mined).then_some(u64::from(u32::MAX) + 5);
        assert!(
            journal
                .set_attempt_state(&a.tx_hash, state, block)
                .await
                .unwrap()
        );
        let row = journal.batch_attempts(batch).await.unwrap()[0].clone();
        assert_eq!((row.state, row.block_number), (state, block));
        assert_eq!(row.attempt, a, "only the state changes");
        assert_eq!(row.created_at, before.created_at);
        assert!(row.updated_at >= before.updated_at);
    }
    assert!(
        !journal
            .set_attempt_state(&[0x42; 32], TxState::Mined, Some(1))
            .await
            .unwrap(),
        "no such attempt"
    );
}

/// `open_attempts` returns every attempt at the nonces that still have a `Signed` or
/// `Broadcast` attempt, of this wallet on this chain only, by nonce.
pub async fn open_attempts_are_the_unsettled_nonces(journal: &dyn TxJournal) {
    let w = wallet(5);
    let batch_a = Uuid::now_v7();
    let batch_b = Uuid::now_v7();
    // Nonce 10: settled (mined + replaced).
    let mined = attempt(batch_a, w, 10);
    let lost = attempt(batch_a, w, 10);
    // Nonce 12 (recorded first): one broadcast attempt.
    let later = attempt(batch_b, w, 12);
    // Nonce 11: a replaced attempt and its broadcast replacement.
    let replaced = attempt(batch_b, w, 11);
    let replacement = attempt(batch_b, w, 11);
    // The same address on another chain, and another wallet: not ours.
    let other_chain = attempt(batch_b, WalletKey { chain_id: 6, ..w }, 11);
    let other_wallet = attempt(batch_b, wallet(5), 11);
    for a in [
        &mined,
        &lost,
        &later,
        &replaced,
        &replacement,
        &other_chain,
        &other_wallet,
    ] {
        journal.record_attempt(a).await.unwrap();
    }
    for (a, state, block) in [
        (&mined, TxState::Mined, Some(100)),
        (&lost, TxState::Replaced, None),
        (&later, TxState::Broadcast, None),
        (&replaced, TxState::Replaced, None),
        (&replacement, TxState::Broadcast, None),
        (&other_chain, TxState::Broadcast, None),
        (&other_wallet, TxState::Broadcast, None),
    ] {
        journal
            .set_attempt_state(&a.tx_hash, state, block)
            .await
            .unwrap();
    }
    let open = journal.open_attempts(&w).await.unwrap();
    let hashes: Vec<[u8; 32]> = open.iter().map(|r| r.tx_hash).collect();
    assert_eq!(
        hashes,
        [replaced.tx_hash, replacement.tx_hash, later.tx_hash],
        "{open:?}"
    );

    // A signed (never broadcast) attempt keeps its nonce open too.
    journal
        .set_attempt_state(&replacement.tx_hash, TxState::Signed, None)
        .await
        .unwrap();
    assert_eq!(journal.open_attempts(&w).await.unwrap().len(), 3);

    // Settling nonce 11 and dropping 12 leaves nothing open.
    journal
        .set_attempt_state(&replacement.tx_hash, TxState::Mined, Some(101))
        .await
        .unwrap();
    journal
        .set_attempt_state(&later.tx_hash, TxState::Dropped, None)
        .await
        .unwrap();
    assert!(journal.open_attempts(&w).await.unwrap().is_empty());
}

/// `nonce_attempts` returns every attempt at a nonce, whatever its state or batch.
pub async fn nonce_attempts_cover_every_state_and_batch(journal: &dyn TxJournal) {
    let w = wallet(1);
    let first = attempt(Uuid::now_v7(), w, 42);
    let second = attempt(Uuid::now_v7(), w, 42);
    let elsewhere = attempt(Uuid::now_v7(), w, 43);
    for a in [&first, &second, &elsewhere] {
        journal.record_attempt(a).await.unwrap();
    }
    journal
        .set_attempt_state(&first.tx_hash, TxState::Dropped, None)
        .await
        .unwrap();
    journal
        .set_attempt_state(&second.tx_hash, TxState::Failed, Some(9))
        .await
        .unwrap();
    let rows = journal.nonce_attempts(&w, 42).await.unwrap();
    let hashes: Vec<[u8; 32]> = rows.iter().map(|r| r.tx_hash).collect();
    assert_eq!(hashes, [first.tx_hash, second.tx_hash]);
    assert_eq!(rows[1].block_number, Some(9));
    assert!(journal.nonce_attempts(&w, 44).await.unwrap().is_empty());
    assert!(
        journal
            .nonce_attempts(&WalletKey { chain_id: 2, ..w }, 42)
            .await
            .unwrap()
            .is_empty()
    );
}

/// One holder per wallet; a second locker gives up after about `max_wait`; other wallets
/// are not blocked; dropping the guard releases the lock.
pub async fn wallet_locks_are_exclusive_and_bounded(journal: &dyn TxJournal) {
    let w = wallet(1);
    let held = journal
        .lock_wallet(&w, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("a free lock is taken at once");

    let started = Instant::now();
    let second = journal
        .lock_wallet(&w, Duration::from_millis(300))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(second.is_none(), "the lock is exclusive");
    assert!(
        waited >= Duration::from_millis(250),
        "gave up after {waited:?}, before max_wait"
    );
    assert!(
        waited < Duration::from_secs(5),
        "waited {waited:?}, far beyond max_wait"
    );

    // The same address on another chain is another wallet.
    let other = journal
        .lock_wallet(&WalletKey { chain_id: 2, ..w }, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(other.is_some(), "other wallets are not blocked");

    let mut held = held;
    held.ensure_held().await.expect("a lock held is held");
    drop(held);
    let again = journal
        .lock_wallet(&w, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(again.is_some(), "released when the guard is dropped");
}

/// A locker waiting within its `max_wait` gets the lock as soon as it is released.
pub async fn a_waiting_locker_gets_the_lock_when_it_is_released(journal: &dyn TxJournal) {
    let w = wallet(1);
    let held = journal
        .lock_wallet(&w, Duration::from_secs(5))
        .await
        .unwrap()
        .expect("lock");
    let started = Instant::now();
    let (second, ()) = tokio::join!(journal.lock_wallet(&w, Duration::from_secs(10)), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(held);
    });
    assert!(second.unwrap().is_some(), "the waiter got the lock");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
        "waited {waited:?}"
    );
}
