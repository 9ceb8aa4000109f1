//! walrelay as a child process (so a test can `kill -9` it), and the config files it reads.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wait_for;

/// A running walrelay process with its own config file; killed on drop.
pub struct Relay {
    pub child: Child,
    /// Holds the log file's directory for as long as the process runs.
    _dir: tempfile::TempDir,
    pub log_path: PathBuf,
}

/// Writes a config file for this test.
pub fn write_config(
    dir: &Path,
    pg_url: &str,
    amqp_url: &str,
    slot: &str,
    exchange: &str,
    tables: &[&str],
    extra: &str,
) -> PathBuf {
    let tables: Vec<String> = tables.iter().map(|t| format!("{t:?}")).collect();
    // RabbitMQ 4 (scripts/rabbitmq4.sh) listens on 5673 with its management API on 15673; the
    // doctor would otherwise ask the system node's API (15672) about this broker's exchanges.
    let management = if amqp_url.contains("127.0.0.1:5673/") {
        "management_url = \"http://guest:guest@127.0.0.1:15673\"\n"
    } else {
        ""
    };
    let text = format!(
        "[postgres]\nurl = {pg_url:?}\nslot = {slot:?}\npublication = {slot:?}\nstatus_interval_ms = 200\n\
         [rabbitmq]\nurl = {amqp_url:?}\nexchange = {exchange:?}\nconfirm_timeout_ms = 5000\n{management}\
         [service]\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nshutdown_timeout_ms = 5000\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [filter]\ninclude = [{}]\n{extra}",
        tables.join(", ")
    );
    let path = dir.join("walrelay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Sets `key = value` (a TOML value, e.g. `"2000"` or `"true"`) in `[section]` of a config file
/// from `write_config`: replaces the key if the section has it, else adds it under the header
/// (the header is added at the end when the file has none).
pub fn config_set(path: &Path, section: &str, key: &str, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let header = format!("[{section}]");
    let start = match lines.iter().position(|l| l.trim() == header) {
        Some(i) => i,
        None => {
            lines.push(header.clone());
            lines.len() - 1
        }
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |i| start + 1 + i);
    let line = format!("{key} = {value}");
    let prefix = format!("{key} =");
    match lines[start + 1..end]
        .iter()
        .position(|l| l.starts_with(&prefix))
    {
        Some(i) => lines[start + 1 + i] = line,
        None => lines.insert(start + 1, line),
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Runs a walrelay subcommand (`doctor`, `backfill …`, `status`) with `config`, without the
/// URLs of the environment, to its end.
pub fn walrelay(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("DATABASE_URL")
        .env_remove("AMQP_URL")
        .env_remove("WALRELAY_TEST_AMQP_URL")
        .output()
        .unwrap()
}

impl Relay {
    pub fn start(config: &Path) -> Relay {
        Relay::start_env(config, &[])
    }

    /// Starts walrelay with extra environment variables (e.g. a failpoint).
    pub fn start_env(config: &Path, env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("walrelay.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .args(["run", "--config"])
            .arg(config)
            .env("WALRELAY_LOG", "walrelay=debug,info")
            .env_remove("DATABASE_URL")
            .env_remove("AMQP_URL")
            .env_remove("WALRELAY_TEST_AMQP_URL")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Relay {
            child,
            _dir: dir,
            log_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The port of the HTTP endpoint (walrelay logs it; configs listen on port 0).
    pub async fn http_port(&self) -> u16 {
        let log_path = self.log_path.clone();
        wait_for(
            "the HTTP endpoint's address in the log",
            Duration::from_secs(30),
            || {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                async move {
                    let line = text.lines().find(|l| l.contains("serving /metrics"))?;
                    let addr = line.split("listen=").nth(1)?.split_whitespace().next()?;
                    addr.rsplit(':').next()?.parse().ok()
                }
            },
        )
        .await
    }

    /// Waits for the process to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let child = &mut self.child;
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "walrelay did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log contains `needle`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) {
        let log_path = self.log_path.clone();
        wait_for(&format!("walrelay log line {needle:?}"), timeout, || {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            async move { text.contains(needle).then_some(()) }
        })
        .await;
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- walrelay log ----\n{}", self.log());
        }
    }
}
