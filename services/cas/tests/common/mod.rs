//! Running the `cas` binary from tests.
#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub const CAS: &str = env!("CARGO_BIN_EXE_cas");

/// A running `cas` process whose JSON log lines are collected.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> Self {
        Self::start_without(args, envs, &[])
    }

    /// Like [`Running::start`], with some inherited variables removed first.
    pub fn start_without(args: &[&str], envs: &[(&str, &str)], remove: &[&str]) -> Self {
        let mut command = Command::new(CAS);
        for name in remove {
            command.env_remove(name);
        }
        command
            .args(args)
            .env_remove("DATABASE_URL")
            .env("CAS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn cas");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Wait for a log line whose message is `message`; return it parsed.
    pub fn wait_for(&mut self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && value["message"] == message
                {
                    return value;
                }
            }
        }
        panic!("no {message:?} log line; saw:\n{}", self.seen.join("\n"));
    }

    /// Wait up to `timeout` for a log line whose message is `message` and that satisfies
    /// `matches`; `None` if none came.
    pub fn wait_for_matching(
        &mut self,
        message: &str,
        timeout: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if let Ok(value) = serde_json::from_str::<Value>(&line)
                    && value["message"] == message
                    && matches(&value)
                {
                    return Some(value);
                }
            }
        }
        None
    }

    /// Collect the lines logged so far without waiting.
    pub fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// Wait for exit and collect the remaining output.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                while let Ok(line) = self.lines.try_recv() {
                    self.seen.push(line);
                }
                return status;
            }
            assert!(Instant::now() < deadline, "cas did not exit");
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}
