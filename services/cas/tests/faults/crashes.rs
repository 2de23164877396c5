//! SIGKILL at every fault point of the data path (`cas_core::fault::POINTS`): the role dies
//! on the spot (no destructor, no flush), is started again, and nothing is lost, sent twice
//! or left stuck.

use std::time::{Duration, Instant};

use super::{Options, cluster, settle_and_check};

/// Kill `role` at each of `points` in turn (a fresh load each time, some of it for shared
/// streams so that REPLACED happens too), start it again, and check.
async fn crash_at(role: &'static str, points: &[&str]) {
    let mut cluster = cluster(Options::default()).await;
    let mut accepted = Vec::new();
    for point in points {
        cluster
            .start_role(role, Some(&format!("{point}=1*return(kill)")))
            .await
            .unwrap();
        let load = cluster.load(40, &["--streams", "25"]).unwrap();
        let died = cluster.role(role).wait_exit(Duration::from_secs(90)).await;
        assert!(
            died.is_ok(),
            "{point}: the {role} never reached its fault point;\n{}",
            cluster.logs()
        );
        let killed_at = Instant::now();
        cluster.start_role(role, None).await.unwrap();
        accepted.extend(load.finish().await.unwrap());
        settle_and_check(&cluster, &accepted, killed_at, point).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_in_the_api_after_its_commit_loses_nothing() {
    crash_at("api", &["api::after_commit"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_each_step_of_a_batch_close_loses_nothing() {
    crash_at(
        "scheduler",
        &[
            "scheduler::after_replaced",
            "scheduler::after_batch_file",
            "scheduler::after_batch_record",
            "scheduler::after_announce",
            "scheduler::before_ack",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_each_step_of_an_anchor_loses_nothing_and_sends_nothing_twice() {
    crash_at(
        "worker",
        &[
            "worker::after_signing",
            "worker::after_broadcast",
            "worker::after_mined",
            "worker::after_artifact",
            "worker::before_mark_anchored",
            "worker::after_mark_anchored",
        ],
    )
    .await;
}
