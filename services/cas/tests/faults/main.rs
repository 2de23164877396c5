//! The fault harness: the production roles as real processes (the `cas` binary built with
//! fault points) on PostgreSQL, the SQS/S3 emulator and anvil, driven by `loadgen`, while
//! parts are broken on purpose. After each scenario the checks of `cas_test_support`'s
//! `Verdict` must hold: **L** every accepted request COMPLETED or REPLACED, **D** no root
//! anchored twice, **S** nothing stuck (no open transaction, no unfinished batch, no PENDING
//! request), **W** every witness valid on the canonical chain; and the requests settle within
//! the bound the README states (the batch linger + 2 minutes after the fault ends).
//!
//! `scripts/test` builds `target/debug/cas-failpoints` and `loadgen` and runs these with the
//! rest; `scripts/soak` runs the soak (load plus random faults for N minutes).

mod crashes;
mod dev;
mod parts;
mod soak;

use std::time::{Duration, Instant};

use cas_test_support::cluster::{Cluster, Options, Verdict};

/// The bound on how long a request may wait beyond what it would without a fault: the
/// batch linger (1 s here) plus two minutes, counted from the end of the fault.
const BOUND: Duration = Duration::from_secs(121);

/// Wait for every request to settle (within [`BOUND`] of `fault_over`), then check the
/// promise for `accepted`.
async fn settle_and_check(
    cluster: &Cluster,
    accepted: &[String],
    fault_over: Instant,
    scenario: &str,
) -> Verdict {
    let left = BOUND.saturating_sub(fault_over.elapsed());
    cluster
        .wait_settled(left)
        .await
        .unwrap_or_else(|e| panic!("{scenario}: {e}"));
    let settled_after = fault_over.elapsed();
    let verdict = cluster
        .verdict(accepted)
        .await
        .unwrap_or_else(|e| panic!("{scenario}: checking: {e}"));
    println!(
        "{scenario}: settled {:.1} s after the fault; {}",
        settled_after.as_secs_f64(),
        verdict.summary()
    );
    verdict.assert_kept(scenario);
    verdict
}

async fn cluster(options: Options) -> Cluster {
    Cluster::start(options).await.expect("start a cluster")
}
