//! `cas dev` killed with SIGKILL together with the anvil it started (the whole process
//! group, as a laptop's crash or `kill -9 -<pgid>` does): anvil saves its chain every 5 s, so
//! it comes back older than the service's database, without anchors the service recorded.
//! At start the worker finds them, reopens their batches and sends the same transactions
//! again, so every witness ends up valid on the chain.

use std::time::Duration;

use cas_test_support::{
    binary,
    cluster::{Witnesses, load},
    free_port,
    role::Role,
    unique, wait_until,
};

const LOST: &str = "a mined transaction is no longer in the chain; sending it again";

/// Wait until the API answers every CID in `cids` as COMPLETED or REPLACED.
async fn wait_terminal(witnesses: &Witnesses, cids: &[String]) -> bool {
    wait_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            for cid in cids {
                match witnesses.status(cid).await {
                    Ok(answer)
                        if answer["status"] == "COMPLETED" || answer["status"] == "REPLACED" => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn cas_dev_killed_with_its_chain_anchors_again_what_the_chain_lost() {
    let bin = binary("CAS_FAILPOINTS_BIN", "cas-failpoints");
    let dir = std::env::temp_dir().join(unique("cas-dev-kill"));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}");
    let addr = format!("127.0.0.1:{port}");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let start = |cycle: usize| {
        Role::spawn_group(
            &bin,
            "dev",
            &[
                "dev",
                "--http-addr",
                &addr,
                "--data-dir",
                data,
                "--batch-linger",
                "1s",
            ],
            &[],
            dir.join(format!("dev-{cycle}.log")),
            format!("{api}/api/v0/healthcheck"),
        )
        .unwrap()
    };
    let mut accepted: Vec<String> = Vec::new();
    let mut lost = 0;
    let mut cycle = 0;
    let dev = loop {
        let mut dev = start(cycle);
        dev.wait_ready(Duration::from_secs(60)).await.unwrap();
        let rpc = dev.log_lines("anvil started")[0]["url"]
            .as_str()
            .unwrap()
            .to_owned();
        let witnesses = Witnesses::new(&api, &rpc).unwrap();
        // Whatever the chain lost is anchored again.
        assert!(
            wait_terminal(&witnesses, &accepted).await,
            "cycle {cycle}: not everything completed again:\n{}",
            dev.log_tail(40)
        );
        lost += dev.log_lines(LOST).len();
        if lost > 0 && cycle >= 2 || cycle == 12 {
            break (dev, witnesses, rpc);
        }
        let more = load(&api, &dir, 20, &[]).unwrap().finish().await.unwrap();
        accepted.extend(more);
        assert!(
            wait_terminal(&witnesses, &accepted).await,
            "{}",
            dev.log_tail(40)
        );
        // The newest anchor is at most a second old: SIGKILL to cas dev and its anvil.
        dev.kill_group();
        cycle += 1;
    };
    let (_dev, mut witnesses, rpc) = dev;
    assert!(
        lost > 0,
        "in {cycle} kills the chain never lost an anchor: the scenario did not happen"
    );
    println!("cas dev: {cycle} kills, {lost} anchors lost by the chain and sent again");
    // L and W: every accepted request is final, every witness valid on the chain now.
    for cid in &accepted {
        let answer = witnesses.status(cid).await.unwrap();
        if answer["status"] == "COMPLETED" {
            witnesses
                .check(cid)
                .await
                .unwrap_or_else(|e| panic!("{cid}: {e}"));
        } else {
            assert_eq!(answer["status"], "REPLACED", "{cid}: {answer}");
        }
    }
    // D: no root anchored twice.
    let anchors = cas_test_support::anvil::anchors(&rpc).await.unwrap();
    for (root, txs) in anchors {
        assert_eq!(txs.len(), 1, "root {root} anchored by {txs:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
