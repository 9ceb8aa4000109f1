//! RabbitMQ 4 (`scripts/rabbitmq4.sh`): one node that every stream test shares, and that a few
//! tests stop, pause or restart. Since all suites run in one binary, those tests take the node
//! alone ([`alone`]) and every other user of it takes it shared ([`shared`]); a scene with the
//! stream sink does so by itself.
//!
//! Readers come first: a test may take the node shared twice (a scene, then a helper) without
//! waiting on itself, and a test that wants it alone waits for a moment when no test uses it.
//! With a test thread or two, that moment comes between two tests.

use std::sync::Mutex;
use std::time::Duration;

/// How many tests use the node, and whether one holds it alone.
static USERS: Mutex<(usize, bool)> = Mutex::new((0, false));

/// A test's use of RabbitMQ 4: ends when dropped (on a panic too).
#[must_use = "the node is used for as long as this lives"]
pub struct Use {
    alone: bool,
}

impl Drop for Use {
    fn drop(&mut self) {
        let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
        if self.alone {
            users.1 = false;
        } else {
            users.0 -= 1;
        }
    }
}

/// Uses RabbitMQ 4 beside other tests, once no test holds it alone.
pub async fn shared() -> Use {
    loop {
        {
            let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
            if !users.1 {
                users.0 += 1;
                return Use { alone: false };
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes RabbitMQ 4 alone, to stop, pause or restart it: waits until no other test uses it.
pub async fn alone() -> Use {
    loop {
        {
            let mut users = USERS.lock().unwrap_or_else(|e| e.into_inner());
            if !users.1 && users.0 == 0 {
                users.1 = true;
                return Use { alone: true };
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The test CA of `scripts/rabbitmq4.sh` (its TLS listeners serve certificates for localhost
/// signed by it): stream TLS on 5554, the management API over https on 15674.
pub fn rabbitmq4_ca() -> String {
    let root = std::env::var("WALRELAY_RABBITMQ4_ROOT")
        .unwrap_or_else(|_| "/var/cache/walrelay/rabbitmq4-root".into());
    let ca = format!("{root}/etc/rabbitmq/tls/ca.pem");
    assert!(
        std::path::Path::new(&ca).exists(),
        "{ca}: the test CA (scripts/rabbitmq4.sh start makes it)"
    );
    ca
}

/// `scripts/rabbitmq4.sh <how>`: restart, crash, pause, resume (hold [`alone`] first).
pub fn rabbitmq4(how: &str) {
    rabbitmq4_env(how, &[]);
}

/// [`rabbitmq4`] with environment variables for the script (`WALRELAY_RABBITMQ4_EXTRA_CONF`).
pub fn rabbitmq4_env(how: &str, env: &[(&str, &str)]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq4.sh");
    let out = std::process::Command::new(script)
        .arg(how)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{how} of RabbitMQ 4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
