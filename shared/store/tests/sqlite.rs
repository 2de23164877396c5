//! The store conformance suite and group commit, against the embedded SQLite store.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use cas_core::RequestStatus;
use cas_store::{
    AnchoredBatch, GroupCommitConfig, GroupCommitter, InsertOutcome, NewBatch, RequestStore,
    SqliteStore, StoreError, testsuite,
};
use chrono::Utc;
use uuid::Uuid;

/// A fresh directory under the system temp dir, removed (with its contents) when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cas-store-sqlite-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("cas.sqlite")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fresh_store() -> (TempDir, SqliteStore) {
    let dir = TempDir::new();
    let store = SqliteStore::open(&dir.db()).await.unwrap();
    (dir, store)
}

fn anchored() -> AnchoredBatch {
    AnchoredBatch {
        root_cid: "bafy-root".to_owned(),
        proof_cid: "bafy-proof".to_owned(),
        tx_hash: format!("0x{}", "cd".repeat(32)),
        chain_id: "eip155:1337".to_owned(),
        anchored_at: Utc::now(),
    }
}

#[tokio::test]
async fn sqlite_store_passes_the_conformance_suite() {
    let (_dir, store) = fresh_store().await;
    store.check_migrated().await.unwrap();
    testsuite::run_all(&store).await;
}

#[tokio::test]
async fn in_memory_store_passes_the_conformance_suite() {
    let store = SqliteStore::open_in_memory().await.unwrap();
    store.check_migrated().await.unwrap();
    testsuite::run_all(&store).await;
    let other = SqliteStore::open_in_memory().await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(other.pool())
        .await
        .unwrap();
    assert_eq!(count, 0, "each in-memory store is its own database");
}

#[tokio::test]
async fn unmigrated_database_is_reported() {
    let (_dir, store) = fresh_store().await;
    store.check_migrated().await.unwrap();
    // Migrating twice is a no-op.
    store.migrate().await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.check_migrated().await.unwrap_err();
    assert!(matches!(err, StoreError::NotMigrated(_)), "{err}");
    assert!(err.to_string().contains("missing migrations"), "{err}");
    sqlx::query("DROP TABLE _sqlx_migrations")
        .execute(store.pool())
        .await
        .unwrap();
    let err = store.check_migrated().await.unwrap_err();
    assert!(matches!(err, StoreError::NotMigrated(_)), "{err}");
    assert!(err.to_string().contains("cas migrate"));
}

#[tokio::test]
async fn group_commit_coalesces_concurrent_inserts() {
    let (_dir, db) = fresh_store().await;
    testsuite::group_commit_coalesces_concurrent_inserts(Arc::new(db.clone())).await;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM request")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(count, 500);
}

#[tokio::test]
async fn group_commit_creates_a_cid_once_under_concurrency() {
    let (_dir, db) = fresh_store().await;
    testsuite::group_commit_creates_a_cid_once(Arc::new(db)).await;
}

#[tokio::test]
async fn group_reads_answer_every_caller() {
    let (_dir, db) = fresh_store().await;
    testsuite::group_reads_answer_every_caller(Arc::new(db)).await;
}

#[tokio::test]
async fn group_commit_sheds_load_when_its_queue_is_full() {
    let (_dir, db) = fresh_store().await;
    testsuite::group_commit_sheds_load_when_its_queue_is_full(Arc::new(db)).await;
}

/// Every kind of write at once (group-committed inserts, batches, anchors, replacements,
/// cursors) and reads beside them: nothing fails with SQLITE_BUSY.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_and_readers_do_not_fail() {
    let (_dir, db) = fresh_store().await;
    let store: Arc<dyn RequestStore> = Arc::new(db);
    let batched: Vec<_> = (0..8_000)
        .map(|i| testsuite::new_request(&format!("pre{i}")))
        .collect();
    store.insert_requests(&batched).await.unwrap();

    let committer = GroupCommitter::spawn(Arc::clone(&store), GroupCommitConfig::default());
    let mut tasks = Vec::new();
    for i in 0..2_000 {
        let c = committer.clone();
        let r = testsuite::new_request(&format!("load{i}"));
        tasks.push(tokio::spawn(async move {
            c.submit(r).await.map(|outcome| outcome.record().id)
        }));
    }
    let batcher = {
        let store = Arc::clone(&store);
        let ids: Vec<Uuid> = batched.iter().map(|r| r.id).collect();
        tokio::spawn(async move {
            for members in ids.chunks(1_000) {
                let (members, losers) = members.split_at(900);
                store.replace_requests(losers, Utc::now()).await?;
                let batch = NewBatch {
                    id: Uuid::now_v7(),
                    members: members.to_vec(),
                    created_at: Utc::now(),
                };
                assert!(store.create_batch(&batch).await?);
                assert!(store.mark_batch_anchored(batch.id, &anchored()).await?);
                store
                    .set_cursor("load", Utc::now().timestamp_micros())
                    .await?;
                store.unbatched_pending(members).await?;
            }
            Ok::<_, StoreError>(())
        })
    };
    let reader = {
        let store = Arc::clone(&store);
        let stored = batched.clone();
        tokio::spawn(async move {
            for request in stored.iter().step_by(7) {
                assert!(store.get_request(&request.cid).await?.is_some());
                // A re-POST, how ceramic-one polls.
                let again = store.insert_requests(std::slice::from_ref(request)).await?;
                assert!(matches!(again[..], [InsertOutcome::Existing(_)]));
                store.ping().await?;
            }
            Ok::<_, StoreError>(())
        })
    };
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    batcher.await.unwrap().unwrap();
    reader.await.unwrap().unwrap();
    let completed = store.get_request(&batched[0].cid).await.unwrap().unwrap();
    assert_eq!(completed.status(), RequestStatus::Completed);
    let replaced = store.get_request(&batched[999].cid).await.unwrap().unwrap();
    assert_eq!(replaced.status(), RequestStatus::Replaced);
}

#[tokio::test]
async fn data_survives_closing_and_reopening_the_file() {
    let dir = TempDir::new();
    let path = dir.0.join("nested/deeper/cas.sqlite");
    let store = SqliteStore::open(&path).await.unwrap();
    let requests: Vec<_> = (0..3)
        .map(|i| testsuite::new_request(&format!("reopen{i}")))
        .collect();
    store.insert_requests(&requests).await.unwrap();
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: vec![requests[0].id, requests[1].id],
        created_at: Utc::now(),
    };
    store.create_batch(&batch).await.unwrap();
    let anchor = anchored();
    store.mark_batch_anchored(batch.id, &anchor).await.unwrap();
    store.set_cursor("sweeper", 1234).await.unwrap();
    let before: Vec<_> = {
        let mut records = Vec::new();
        for r in &requests {
            records.push(store.get_request(&r.cid).await.unwrap().unwrap());
        }
        records
    };
    store.close().await;
    drop(store);

    let reopened = SqliteStore::open(&path).await.unwrap();
    reopened.check_migrated().await.unwrap();
    for (r, expected) in requests.iter().zip(&before) {
        assert_eq!(
            &reopened.get_request(&r.cid).await.unwrap().unwrap(),
            expected
        );
    }
    assert_eq!(before[1].status(), RequestStatus::Completed);
    assert_eq!(before[1].anchor.as_ref().unwrap().leaf_index, 1);
    let stored = reopened.get_batch(batch.id).await.unwrap().unwrap();
    assert_eq!(stored.request_count, 2);
    assert_eq!(
        stored.anchored.unwrap().anchored_at,
        testsuite_micros(anchor.anchored_at)
    );
    assert_eq!(reopened.cursor("sweeper").await.unwrap(), Some(1234));
    // The reopened store keeps working.
    let outcomes = reopened
        .insert_requests(&[testsuite::new_request("after-reopen")])
        .await
        .unwrap();
    assert!(matches!(outcomes[..], [InsertOutcome::Created(_)]));
}

fn testsuite_micros(at: chrono::DateTime<Utc>) -> chrono::DateTime<Utc> {
    use chrono::SubsecRound;
    at.trunc_subsecs(6)
}

const CRASH_CHILD_DB: &str = "CAS_STORE_SQLITE_CRASH_CHILD_DB";

/// The child half of `accepted_requests_survive_a_crash_of_the_process`: does nothing
/// unless that test started this binary with the database path in the environment.
#[tokio::test]
async fn crash_child() {
    let Some(path) = std::env::var_os(CRASH_CHILD_DB) else {
        return;
    };
    let store: Arc<dyn RequestStore> = Arc::new(SqliteStore::open(Path::new(&path)).await.unwrap());
    let committer = GroupCommitter::spawn(store, GroupCommitConfig::default());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = committer.clone();
        let r = testsuite::new_request(&format!("crash{i}"));
        tasks.push(tokio::spawn(async move { c.submit(r).await }));
    }
    for t in tasks {
        let outcome = t.await.unwrap().unwrap();
        assert!(matches!(outcome, InsertOutcome::Created(_)));
        // What the API would answer 201 for.
        println!("CREATED {}", outcome.record().cid);
    }
    // No close, no destructors: the process dies here.
    std::process::abort();
}

#[tokio::test]
async fn accepted_requests_survive_a_crash_of_the_process() {
    let dir = TempDir::new();
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_CHILD_DB, dir.db())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "the child aborts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let created: Vec<&str> = stdout
        .lines()
        // The test harness may print its own text before the first line.
        .filter_map(|line| line.split_once("CREATED ").map(|(_, cid)| cid))
        .collect();
    assert_eq!(
        created.len(),
        200,
        "child output: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let store = SqliteStore::open(&dir.db()).await.unwrap();
    for cid in created {
        let record = store.get_request(cid).await.unwrap();
        assert!(record.is_some(), "{cid} was answered 201 but is lost");
    }
}

#[tokio::test]
async fn a_directory_that_cannot_be_created_is_a_clear_error() {
    let dir = TempDir::new();
    // A regular file where a directory should be: creating the directory fails even as root.
    let blocker = dir.0.join("not-a-directory");
    std::fs::write(&blocker, b"").unwrap();
    let path = blocker.join("sub/cas.sqlite");
    let err = SqliteStore::open(&path).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("cannot create the directory") && message.contains("not-a-directory"),
        "{message}"
    );
    assert!(!err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_error() {
    let dir = TempDir::new();
    std::fs::write(dir.db(), vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&dir.db()).await.unwrap_err();
    assert!(err.to_string().contains("cas.sqlite"), "{err}");
}

/// Another process holding the write lock longer than the busy timeout: writes fail with a
/// retryable error (the API answers 503), and reads go on.
#[tokio::test]
async fn a_write_lock_held_elsewhere_is_a_retryable_error() {
    use sqlx::{Connection, sqlite::SqliteConnection};

    let (dir, store) = fresh_store().await;
    let request = testsuite::new_request("locked");
    store
        .insert_requests(std::slice::from_ref(&request))
        .await
        .unwrap();
    let mut other = SqliteConnection::connect(&format!("sqlite://{}", dir.db().display()))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let started = Instant::now();
    let err = store
        .insert_requests(&[testsuite::new_request("blocked")])
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "waited for the lock"
    );
    assert!(store.get_request(&request.cid).await.unwrap().is_some());
    store.ping().await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    store
        .insert_requests(&[testsuite::new_request("unblocked")])
        .await
        .unwrap();
}

/// Text is stored as given, whatever characters it holds (requests travel to SQLite as JSON).
#[tokio::test]
async fn text_round_trips_exactly() {
    let (_dir, store) = fresh_store().await;
    let mut request = testsuite::new_request("text");
    request.cid = format!("{}\"quote\\backslash\n\t\u{1}é😀", request.cid);
    request.stream_id = "k\"stream\u{7f}'; DROP TABLE request; --".to_owned();
    request.origin = "did:key:z6Mk\u{0}nul".to_owned();
    let outcomes = store
        .insert_requests(std::slice::from_ref(&request))
        .await
        .unwrap();
    assert!(matches!(outcomes[..], [InsertOutcome::Created(_)]));
    let got = store.get_request(&request.cid).await.unwrap().unwrap();
    assert_eq!(got.cid, request.cid);
    assert_eq!(got.stream_id, request.stream_id);
    assert_eq!(got.origin, request.origin);
    // And found again as an existing row.
    let again = store
        .insert_requests(std::slice::from_ref(&request))
        .await
        .unwrap();
    assert!(matches!(&again[..], [InsertOutcome::Existing(r)] if r.id == request.id));
}

/// Inputs larger than one statement's chunk: leaf indexes continue across chunks, and a
/// conflict in a later chunk rolls back the earlier ones.
#[tokio::test]
async fn large_inputs_span_chunks() {
    const N: usize = 70_000;
    let (_dir, store) = fresh_store().await;
    let requests: Vec<_> = (0..N)
        .map(|i| testsuite::new_request(&format!("big{i}")))
        .collect();
    let outcomes = store.insert_requests(&requests).await.unwrap();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, InsertOutcome::Created(_)))
    );
    let ids: Vec<Uuid> = requests.iter().map(|r| r.id).collect();
    assert_eq!(store.unbatched_pending(&ids).await.unwrap().len(), N);

    // A conflict in the second chunk: nothing of the batch remains.
    let first = NewBatch {
        id: Uuid::now_v7(),
        members: vec![ids[N - 1]],
        created_at: Utc::now(),
    };
    assert!(store.create_batch(&first).await.unwrap());
    let conflicting = NewBatch {
        id: Uuid::now_v7(),
        members: ids.clone(),
        created_at: Utc::now(),
    };
    let err = store.create_batch(&conflicting).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert_eq!(store.get_batch(conflicting.id).await.unwrap(), None);
    assert_eq!(store.unbatched_pending(&ids).await.unwrap().len(), N - 1);

    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: ids[..N - 1].to_vec(),
        created_at: Utc::now(),
    };
    assert!(store.create_batch(&batch).await.unwrap());
    store
        .mark_batch_anchored(batch.id, &anchored())
        .await
        .unwrap();
    for leaf in [0, 1, 65_535, 65_536, 65_537, N - 2] {
        let record = store
            .get_request(&requests[leaf].cid)
            .await
            .unwrap()
            .unwrap();
        let anchor = record.anchor.expect("anchored");
        assert_eq!(
            (anchor.batch_id, anchor.leaf_index),
            (batch.id, leaf as i32)
        );
    }
    assert_eq!(
        store
            .get_batch(batch.id)
            .await
            .unwrap()
            .unwrap()
            .request_count,
        (N - 1) as i32
    );

    // Re-inserting everything reports every request as existing, in input order.
    let again = store.insert_requests(&requests).await.unwrap();
    for (outcome, request) in again.iter().zip(&requests).step_by(997) {
        assert!(matches!(outcome, InsertOutcome::Existing(r) if r.id == request.id));
    }
    assert_eq!(store.replace_requests(&ids, Utc::now()).await.unwrap(), 0);
}

/// CPU time of this process so far (all threads, user + system), from `/proc/self/stat`:
/// on a shared machine it is steadier than wall time.
fn process_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // Linux reports clock ticks of 1/100 s (USER_HZ) on every common architecture.
    Duration::from_millis(ticks * 10)
}

/// How long recording a batch of 2^20 members takes. Run with
/// `cargo test -p cas-store --test sqlite -- --ignored --nocapture create_batch_timing`.
#[tokio::test]
#[ignore = "a measurement, not a check; takes a while in debug builds"]
async fn create_batch_timing() {
    const N: usize = 1 << 20;
    let (_dir, store) = fresh_store().await;
    let requests: Vec<_> = (0..N)
        .map(|i| testsuite::new_request(&format!("t{i}")))
        .collect();
    let (started, cpu) = (Instant::now(), process_cpu_time());
    for chunk in requests.chunks(1024) {
        store.insert_requests(chunk).await.unwrap();
    }
    let inserted = (started.elapsed(), process_cpu_time() - cpu);
    // Leaf order is CID order, so members arrive in no particular id order.
    let mut members: Vec<(&str, Uuid)> = requests.iter().map(|r| (r.cid.as_str(), r.id)).collect();
    members.sort_unstable();
    let batch = NewBatch {
        id: Uuid::now_v7(),
        members: members.into_iter().map(|(_, id)| id).collect(),
        created_at: Utc::now(),
    };
    let (started, cpu) = (Instant::now(), process_cpu_time());
    assert!(store.create_batch(&batch).await.unwrap());
    let created = (started.elapsed(), process_cpu_time() - cpu);
    let started = Instant::now();
    store
        .mark_batch_anchored(batch.id, &anchored())
        .await
        .unwrap();
    let record = store
        .get_request(&requests[N / 2].cid)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status(), RequestStatus::Completed);
    let read = started.elapsed();
    println!(
        "2^20 requests (wall, cpu): insert_requests in calls of 1024 {:?}, {:?}; \
         create_batch {:?}, {:?}; anchor + one read {read:?}",
        inserted.0, inserted.1, created.0, created.1
    );
}

/// The transaction journal and the nonce store of the embedded store: the same conformance
/// suites as PostgreSQL's, plus what only a file-backed store has to show.
mod journal_and_nonce {
    use cas_store::{
        NonceStore, SQLITE_MIGRATOR, TxJournal, TxState, WalletKey, journal_testsuite,
        nonce_testsuite,
    };
    use chrono::Duration as ChronoDuration;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use super::*;

    #[tokio::test]
    async fn sqlite_store_passes_the_journal_conformance_suite() {
        let (_dir, store) = fresh_store().await;
        journal_testsuite::run_all(&store).await;
    }

    #[tokio::test]
    async fn sqlite_store_passes_the_nonce_conformance_suite() {
        let (_dir, store) = fresh_store().await;
        nonce_testsuite::run_all(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn in_memory_store_passes_the_journal_and_nonce_suites() {
        let store = SqliteStore::open_in_memory().await.unwrap();
        journal_testsuite::run_all(&store).await;
        nonce_testsuite::run_all(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn the_journal_survives_closing_and_reopening_the_file() {
        let dir = TempDir::new();
        let store = SqliteStore::open(&dir.db()).await.unwrap();
        let wallet = journal_testsuite::wallet(1337);
        let batch = Uuid::now_v7();
        let mined = journal_testsuite::attempt(batch, wallet, 3);
        let pending = cas_store::NewTxAttempt {
            max_fee_per_gas: u128::MAX,
            max_priority_fee_per_gas: u128::from(u64::MAX) + 1,
            ..journal_testsuite::attempt(batch, wallet, 4)
        };
        for attempt in [&mined, &pending] {
            store.record_attempt(attempt).await.unwrap();
        }
        assert!(
            store
                .set_attempt_state(&mined.tx_hash, TxState::Mined, Some(u64::MAX >> 1))
                .await
                .unwrap()
        );
        assert!(
            store
                .set_attempt_state(&pending.tx_hash, TxState::Broadcast, None)
                .await
                .unwrap()
        );
        let nonce = Uuid::new_v4();
        assert!(
            store
                .claim(nonce, Utc::now() + ChronoDuration::hours(1))
                .await
                .unwrap()
        );
        let before = store.batch_attempts(batch).await.unwrap();
        store.close().await;
        drop(store);

        let reopened = SqliteStore::open(&dir.db()).await.unwrap();
        reopened.check_migrated().await.unwrap();
        assert_eq!(reopened.batch_attempts(batch).await.unwrap(), before);
        assert_eq!(before[0].attempt, mined);
        assert_eq!(before[1].attempt, pending);
        assert_eq!(before[0].block_number, Some(u64::MAX >> 1));
        let open = reopened.open_attempts(&wallet).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].attempt, pending);
        assert_eq!(open[0].state, TxState::Broadcast);
        // The fees are stored as their decimal digits, not as a rounded or wrapped number.
        let (kind, digits): (String, String) = sqlx::query_as(
            "SELECT typeof(max_fee_per_gas), max_fee_per_gas FROM eth_tx_attempt \
             WHERE tx_hash = $1",
        )
        .bind(&pending.tx_hash[..])
        .fetch_one(reopened.pool())
        .await
        .unwrap();
        assert_eq!((kind.as_str(), digits), ("text", u128::MAX.to_string()));
        assert!(
            !reopened
                .claim(nonce, Utc::now() + ChronoDuration::hours(1))
                .await
                .unwrap(),
            "a claimed nonce is still a replay after a restart"
        );
        // Recording again after the restart is still idempotent.
        reopened.record_attempt(&mined).await.unwrap();
        let after = reopened.batch_attempts(batch).await.unwrap();
        assert_eq!(after.len(), 2);
        assert_eq!(after[0].state, TxState::Mined);
    }

    /// Many tasks claim one nonce at once, through clones of one store and through a second
    /// store on the same file (another writer, contending for SQLite's write lock): exactly
    /// one wins, for a fresh nonce and for an expired claim being taken over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_of_one_nonce_have_exactly_one_winner() {
        let (dir, store) = fresh_store().await;
        let second = SqliteStore::open(&dir.db()).await.unwrap();
        let stores: [Arc<dyn NonceStore>; 2] = [Arc::new(store), Arc::new(second)];
        for round in 0..20 {
            let nonce = Uuid::new_v4();
            let until = Utc::now() + ChronoDuration::hours(1);
            if round % 2 == 1 {
                // An expired claim: the row exists, and every claimer races to take it over.
                assert!(
                    stores[0]
                        .claim(nonce, Utc::now() - ChronoDuration::seconds(1))
                        .await
                        .unwrap()
                );
            }
            let mut claims = tokio::task::JoinSet::new();
            for task in 0..32 {
                let store = Arc::clone(&stores[task % 2]);
                claims.spawn(async move { store.claim(nonce, until).await });
            }
            let mut winners = 0;
            for won in claims.join_all().await {
                if won.expect("no claim fails") {
                    winners += 1;
                }
            }
            assert_eq!(winners, 1, "round {round}");
        }
    }

    /// Two stores of this process on one file share the wallet locks.
    #[tokio::test]
    async fn stores_on_one_file_share_the_wallet_locks() {
        let (dir, store) = fresh_store().await;
        // Another spelling of the same path.
        let other_path = dir.0.join(".").join("cas.sqlite");
        let other = SqliteStore::open(&other_path).await.unwrap();
        let wallet: WalletKey = journal_testsuite::wallet(1);
        let held = store
            .lock_wallet(&wallet, Duration::from_secs(1))
            .await
            .unwrap()
            .expect("free");
        assert!(
            other
                .lock_wallet(&wallet, Duration::from_millis(100))
                .await
                .unwrap()
                .is_none()
        );
        drop(held);
        assert!(
            other
                .lock_wallet(&wallet, Duration::from_secs(1))
                .await
                .unwrap()
                .is_some()
        );
    }

    /// A database created by a build that knew only the first migration (requests) upgrades
    /// to the journal and nonce tables when opened, keeping its data.
    #[tokio::test]
    async fn a_database_with_only_the_first_migration_upgrades() {
        const FIRST: i64 = 20261122000001;
        let dir = TempDir::new();
        let request = testsuite::new_request("old-build");
        {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(dir.db())
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal),
                )
                .await
                .unwrap();
            SQLITE_MIGRATOR.run_to(FIRST, &pool).await.unwrap();
            sqlx::query(
                "INSERT INTO request (id, cid, stream_id, origin, client_ts_ns, status, \
                     message, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, 0, 0, 'pending', $5, $5)",
            )
            .bind(request.id)
            .bind(&request.cid)
            .bind(&request.stream_id)
            .bind(&request.origin)
            .bind(request.created_at.timestamp_micros())
            .execute(&pool)
            .await
            .unwrap();
            let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
                .fetch_all(&pool)
                .await
                .unwrap();
            assert_eq!(versions, [FIRST]);
            pool.close().await;
        }

        let store = SqliteStore::open(&dir.db()).await.unwrap();
        store.check_migrated().await.unwrap();
        let versions: Vec<i64> = sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        let known: Vec<i64> = SQLITE_MIGRATOR.iter().map(|m| m.version).collect();
        assert_eq!(versions, known);
        assert!(known.contains(&20261122000002) && known.contains(&20261122000003));
        let stored = store.get_request(&request.cid).await.unwrap().unwrap();
        assert_eq!(stored.id, request.id);
        journal_testsuite::recorded_attempts_read_back_exactly(&store).await;
        nonce_testsuite::a_nonce_is_claimed_once(&store).await;
    }
}
