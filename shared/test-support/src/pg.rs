//! [`PgCluster`]: a PostgreSQL server of the test's own, from the machine's binaries, in a
//! temporary directory, on a free port. Run as the `postgres` user when the test runs as
//! root (`initdb` refuses root).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// A running PostgreSQL cluster, stopped and removed when dropped.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn find_bin(name: &str) -> anyhow::Result<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .collect()
        })
        .unwrap_or_default();
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| {
            dirs.filter_map(Result::ok)
                .map(|d| d.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_else(|_| Vec::new());
    on_path
        .into_iter()
        .chain(debian)
        .find(|p: &PathBuf| p.is_file())
        .with_context(|| format!("the PostgreSQL server binary {name} was not found (scripts/test installs PostgreSQL)"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Run a PostgreSQL server binary, as `postgres` when we are root.
fn pg_command(bin: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(bin);
        command
    } else {
        Command::new(bin)
    }
}

fn run(mut command: Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

impl PgCluster {
    /// Create and start a cluster (fsync off: the tests kill servers, not machines).
    pub fn start() -> anyhow::Result<Self> {
        let initdb = find_bin("initdb")?;
        let bin = find_bin("pg_ctl")?;
        let dir = std::env::temp_dir().join(crate::unique("cas-pg"));
        std::fs::create_dir_all(dir.join("data"))?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres"]).arg(&dir);
                    c
                },
                "chown",
            )?;
        }
        run(
            {
                let mut c = pg_command(&initdb);
                c.arg("-D").arg(dir.join("data")).args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]);
                c
            },
            "initdb",
        )?;
        let cluster = Self {
            dir,
            bin,
            port: crate::free_port(),
        };
        cluster.pg_ctl_start()?;
        Ok(cluster)
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut c = pg_command(&self.bin);
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run(c, "pg_ctl start")
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Restart the server (`-m fast`: every connection is cut, as in a failover).
    pub fn restart(&self) -> anyhow::Result<()> {
        self.stop("fast")?;
        self.pg_ctl_start()
    }

    /// Stop the server (`fast` or `immediate`).
    pub fn stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut c = pg_command(&self.bin);
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"]);
        run(c, "pg_ctl stop")
    }

    /// Start a stopped server again.
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.pg_ctl_start()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = self.stop("immediate");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
