//! [`Anvil`]: an Ethereum node of the test's own (so reorganisations, restarts and fee
//! changes disturb no other test), keeping its chain in a state file so that it can be
//! restarted: gracefully (the state is saved) or with SIGKILL (the last second is lost, as a
//! dev chain killed with its service loses it).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The official anchor contract address, where the roles send their anchors.
pub const CONTRACT: &str = "0x231055a0852d67c7107ad0d0dfeab60278fe6adc";

/// `anchorDagCbor(bytes32)`.
const SELECTOR: &str = "0x97ad09eb";

/// A running anvil, killed when dropped.
#[derive(Debug)]
pub struct Anvil {
    child: Option<Child>,
    /// Its JSON-RPC URL.
    pub url: String,
    port: u16,
    chain_id: u64,
    dir: PathBuf,
    client: reqwest::Client,
}

fn anvil_bin() -> String {
    std::env::var("ANVIL_BIN").unwrap_or_else(|_| "anvil".to_owned())
}

impl Anvil {
    /// Start an anvil with `chain_id` on a free port.
    pub async fn start(chain_id: u64) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(crate::unique("cas-anvil"));
        std::fs::create_dir_all(&dir)?;
        let port = crate::free_port();
        let mut anvil = Self {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            chain_id,
            dir,
            client: reqwest::Client::builder().no_proxy().build()?,
        };
        anvil.spawn().await?;
        Ok(anvil)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("anvil.log"))?;
        let child = Command::new(anvil_bin())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--chain-id", &self.chain_id.to_string()])
            .arg("--state")
            .arg(self.dir.join("state.json"))
            .args(["--state-interval", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting anvil (ANVIL_BIN; scripts/test installs it)")?;
        self.child = Some(child);
        let up = crate::wait_until(
            Duration::from_secs(30),
            Duration::from_millis(50),
            || async { self.rpc("eth_chainId", json!([])).await.is_ok() },
        )
        .await;
        if !up {
            bail!("anvil did not answer on {}", self.url);
        }
        Ok(())
    }

    /// One JSON-RPC call; an error answer is an error.
    pub async fn rpc(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let answer: Value = self
            .client
            .post(&self.url)
            .json(&body)
            .send()
            .await?
            .json()
            .await?;
        if let Some(error) = answer.get("error") {
            bail!("{method}: {error}");
        }
        Ok(answer["result"].clone())
    }

    /// Stop it (SIGTERM: the state is saved; SIGKILL: up to the last second is lost) and
    /// start it again on the same port from its state file. The pool of pending
    /// transactions is gone either way.
    pub async fn restart(&mut self, kill: bool) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(
                    child.id() as libc::pid_t,
                    if kill { libc::SIGKILL } else { libc::SIGTERM },
                );
            }
            let _ = child.wait();
        }
        self.spawn().await
    }

    /// The newest block's number.
    pub async fn head(&self) -> anyhow::Result<u64> {
        hex_u64(&self.rpc("eth_blockNumber", json!([])).await?)
    }

    /// The chain's successful anchors; see [`anchors`].
    pub async fn anchors(&self) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
        anchors(&self.url).await
    }
}

/// One JSON-RPC call to `url`; an error answer is an error.
pub async fn rpc(url: &str, method: &str, params: Value) -> anyhow::Result<Value> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let answer: Value = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .post(url)
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    if let Some(error) = answer.get("error") {
        bail!("{method}: {error}");
    }
    Ok(answer["result"].clone())
}

/// The successful `anchorDagCbor` transactions to the official contract in the canonical
/// chain of the node at `url`: root digest (hex, no `0x`) → transaction hashes.
pub async fn anchors(url: &str) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let head = hex_u64(&rpc(url, "eth_blockNumber", json!([])).await?)?;
    let mut roots: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for number in 0..=head {
        let block = rpc(
            url,
            "eth_getBlockByNumber",
            json!([format!("0x{number:x}"), true]),
        )
        .await?;
        for tx in block["transactions"].as_array().into_iter().flatten() {
            let to = tx["to"].as_str().unwrap_or_default().to_lowercase();
            let input = tx["input"].as_str().unwrap_or_default();
            if to != CONTRACT || !input.starts_with(SELECTOR) || input.len() != 74 {
                continue;
            }
            let receipt = rpc(url, "eth_getTransactionReceipt", json!([tx["hash"]])).await?;
            if receipt["status"] == "0x1" {
                roots
                    .entry(input[10..].to_lowercase())
                    .or_default()
                    .push(tx["hash"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(roots)
}

impl Drop for Anvil {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `0x…` quantity.
pub fn hex_u64(value: &Value) -> anyhow::Result<u64> {
    let text = value.as_str().context("not a hex string")?;
    Ok(u64::from_str_radix(text.trim_start_matches("0x"), 16)?)
}
