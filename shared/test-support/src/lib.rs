//! The test kit of the fault harness (a dev-dependency only): everything needed to run the
//! production roles as real processes on real parts, break those parts on purpose, and check
//! afterwards that the service kept its promise.
//!
//! - [`pg::PgCluster`]: a throwaway PostgreSQL cluster of the test's own (so it can be
//!   restarted without disturbing other tests);
//! - [`anvil::Anvil`]: an anvil of the test's own (reorganisations, restarts, fees);
//! - [`proxy::FaultProxy`]: an HTTP proxy in front of a part that can be stopped, that can
//!   send every SQS message several times, and that can make a JSON-RPC node answer an error
//!   after taking a transaction or show receipts late;
//! - [`role::Role`]: a `cas` process (api, scheduler, worker, or `cas dev`), ready when its
//!   HTTP endpoint answers;
//! - [`cluster::Cluster`]: all of the above wired together, load from `loadgen`, and the
//!   checks of the promise ([`cluster::Verdict`]): **L** every accepted request COMPLETED or
//!   REPLACED, **D** no root anchored twice, **S** nothing stuck, **W** every witness valid
//!   on the canonical chain.

pub mod anvil;
pub mod cluster;
pub mod pg;
pub mod proxy;
pub mod role;

use std::{
    future::Future,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Poll `predicate` every `interval` until it holds or `timeout` passes; true if it held.
pub async fn wait_until<F, Fut>(timeout: Duration, interval: Duration, mut predicate: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if predicate().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
}

/// A name no other test uses: `<what>-<12 random hex digits>`.
pub fn unique(what: &str) -> String {
    format!(
        "{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A free TCP port on loopback (free when asked; the caller binds it soon after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// An environment variable `scripts/test` sets; panics with a clear message when missing.
pub fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through scripts/test (or scripts/faults), which start and build what they need")
    })
}

/// The workspace's `target/<profile>` directory, found from the running test executable
/// (`target/<profile>/deps/<test>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    exe.ancestors()
        .nth(2)
        .map(PathBuf::from)
        .expect("target/<profile>/deps/<test>")
}

/// A binary the harness runs: `$<env>` if set, else `target/<profile>/<name>`. Panics with
/// how to build it when it is missing.
pub fn binary(env: &str, name: &str) -> PathBuf {
    let path = std::env::var(env)
        .map(PathBuf::from)
        .unwrap_or_else(|_| target_dir().join(name));
    assert!(
        path.is_file(),
        "{} is missing: scripts/test and scripts/faults build it (`cargo build -p cas --features failpoints` copied to target/debug/cas-failpoints, and `cargo build -p loadgen`), or set {env}",
        path.display()
    );
    path
}
