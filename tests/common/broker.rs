//! A private RabbitMQ node started by a test, so the test can `kill -9` it, `stop_app` it or
//! raise a memory alarm without disturbing the shared broker other tests use. It runs the
//! installed RabbitMQ from `/usr/lib/rabbitmq/bin` with its own node name, ports, data
//! directory and Erlang cookie (HOME), and is killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, unique};

const BIN: &str = "/usr/lib/rabbitmq/bin";

pub struct Broker {
    pub port: u16,
    node: String,
    dist_port: u16,
    dir: tempfile::TempDir,
}

impl Broker {
    /// Starts a node and waits until it accepts AMQP connections. `conf` lines go into its
    /// `rabbitmq.conf`.
    pub async fn start(conf: &[&str]) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").unwrap();
        let mut text = String::from("loopback_users = none\n");
        for line in conf {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(dir.path().join("rabbitmq.conf"), text).unwrap();
        let b = Broker {
            port: free_port(),
            node: format!("{}@localhost", unique("wrtest")),
            dist_port: free_port(),
            dir,
        };
        b.boot().await;
        b
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn env(&self, c: &mut Command) {
        let d = self.dir.path();
        c.env("HOME", d)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", self.pid_file())
            .env("ERL_CRASH_DUMP_SECONDS", "0");
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("pid")
    }

    /// Starts the node (again, on the same data directory) and waits for it.
    pub async fn boot(&self) {
        let _ = std::fs::remove_file(self.pid_file());
        let out = std::fs::File::create(self.dir.path().join("server.out")).unwrap();
        let mut c = Command::new(Path::new(BIN).join("rabbitmq-server"));
        self.env(&mut c);
        c.stdout(out.try_clone().unwrap()).stderr(out);
        let mut child = c.spawn().expect("start rabbitmq-server");
        std::thread::spawn(move || child.wait());
        let t = Instant::now();
        self.wait_up(Duration::from_secs(60)).await;
        eprintln!("broker: node {} up after {:?}", self.node, t.elapsed());
    }

    async fn wait_up(&self, timeout: Duration) {
        let start = Instant::now();
        loop {
            // Bounded: polling a closed port in the ephemeral range can connect the socket to
            // itself (TCP simultaneous open), and then the AMQP handshake never completes.
            let url = walrelay::sink::AmqpUrl::parse(&self.url()).unwrap();
            let attempt = walrelay::sink::Link::open(&url, "probe", Duration::from_secs(2));
            if let Ok((link, _)) = attempt.await {
                link.close().await;
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "private RabbitMQ did not come up: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `rabbitmqctl` against this node; panics if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut c = Command::new(Path::new(BIN).join("rabbitmqctl"));
        self.env(&mut c);
        let out = c
            .arg("-n")
            .arg(&self.node)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `rabbitmqctl stop_app` (the node stays up, AMQP goes away) and `start_app`.
    pub fn stop_app(&self) {
        self.ctl(&["stop_app"]);
    }

    pub async fn start_app(&self) {
        self.ctl(&["start_app"]);
        self.wait_up(Duration::from_secs(60)).await;
    }

    /// `kill -9` of the Erlang VM: no clean shutdown, no connection close frames.
    pub fn kill9(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        // Wait until the port is closed.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.path().join("server.out")).unwrap_or_default();
        let log = self
            .dir
            .path()
            .join("log")
            .join(format!("{}.log", self.node));
        s.push_str(&std::fs::read_to_string(log).unwrap_or_default());
        s
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}
