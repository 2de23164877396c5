//! [`Role`]: one `cas` process (`api`, `scheduler`, `worker`, `dev`), its log kept in a file,
//! ready when its HTTP endpoint answers (the API's health check, the other roles' metrics
//! endpoint), never by waiting for a log line.

use std::{
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

/// A running `cas` process; killed when dropped.
#[derive(Debug)]
pub struct Role {
    /// `api`, `scheduler`, `worker`, `dev`.
    pub name: String,
    child: Child,
    log: PathBuf,
    /// The URL that answers once it is ready.
    pub ready_url: String,
}

impl Role {
    /// Start `bin` with `args` and `env` (the inherited environment is kept, but for
    /// `DATABASE_URL`, `ETH_RPC_URL`, `FAILPOINTS` and `RUST_LOG`, which must be given
    /// explicitly), logging
    /// JSON lines to `log`.
    pub fn spawn(
        bin: &std::path::Path,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
        ready_url: String,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(bin, name, args, env, log, ready_url, false)
    }

    /// Like [`Role::spawn`], in a process group of its own, so that
    /// [`Role::kill_group`] kills it with every process it started (`cas dev`'s anvil).
    pub fn spawn_group(
        bin: &std::path::Path,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
        ready_url: String,
    ) -> anyhow::Result<Self> {
        Self::spawn_with(bin, name, args, env, log, ready_url, true)
    }

    fn spawn_with(
        bin: &std::path::Path,
        name: &str,
        args: &[&str],
        env: &[(String, String)],
        log: PathBuf,
        ready_url: String,
        group: bool,
    ) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut command = Command::new(bin);
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("ETH_RPC_URL")
            .env_remove("FAILPOINTS")
            .env("CAS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
        for (k, v) in env {
            command.env(k, v);
        }
        if group {
            std::os::unix::process::CommandExt::process_group(&mut command, 0);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            ready_url,
        })
    }

    /// Wait until the ready URL answers 200, failing at once if the process ends.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited with {status} before it was ready; its log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if let Ok(answer) = client.get(&self.ready_url).send().await
                && answer.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not ready within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal (`libc::SIGTERM`, `libc::SIGKILL`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// SIGKILL to its whole process group (see [`Role::spawn_group`]), then reap it.
    pub fn kill_group(&mut self) {
        // SAFETY: signalling a process group this test created.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// The log lines (parsed JSON) whose message is `message`.
    pub fn log_lines(&self, message: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }

    /// Wait (bounded) for the process to end.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines whose message is `message`.
    pub fn logged(&self, message: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .count()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
