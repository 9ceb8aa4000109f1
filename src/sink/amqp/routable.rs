//! After a message came back unroutable: wait for a binding that routes it, rather than
//! sleeping out a doubling delay (issue 28: a binding added by the operator was used only at
//! the next retry, 8 s later and doubling).
//!
//! AMQP 0-9-1 has no passive check of a binding, so the management API is asked: the
//! exchange's bindings are polled and, as soon as one matches the returned routing key, the
//! wait ends and the next session publishes again. A binding that already matched when the
//! wait began tells nothing (it may lead to an exchange with no queue behind it), so only a
//! binding that *appears* ends the wait early: a message that stays unroutable never makes
//! walrelay reconnect in a loop. Without a usable API the wait is capped at
//! [`UNROUTABLE_WAIT_MAX`] instead.

use std::time::Duration;

use tokio::time::Instant;

use super::topic;
use crate::shutdown::Shutdown;
use crate::sink::management::{Api, segment};

/// The longest wait after an unroutable message when no management API can tell that a
/// binding appeared: a retry costs one reconnection and the replay of one transaction, so a
/// few seconds is cheap next to an operator waiting for the stream to move.
pub const UNROUTABLE_WAIT_MAX: Duration = Duration::from_secs(5);

/// How often the bindings are read while waiting.
const POLL: Duration = Duration::from_millis(250);

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Waited {
    /// A binding that routes the message appeared.
    Bound,
    /// The delay passed (or no API could be asked).
    Elapsed,
    /// Shutdown was asked for.
    Shutdown,
}

/// Waits at most `delay` (at most [`UNROUTABLE_WAIT_MAX`] without `api`), ending early when
/// a binding of `exchange` that matches `routing_key` appears, or on shutdown.
pub async fn wait(
    api: Option<&Api>,
    vhost: &str,
    exchange: &str,
    routing_key: &str,
    delay: Duration,
    shutdown: &Shutdown,
) -> Waited {
    let Some(api) = api else {
        return sleep(delay.min(UNROUTABLE_WAIT_MAX), shutdown).await;
    };
    let path = format!(
        "/api/exchanges/{}/{}/bindings/source",
        segment(vhost),
        segment(exchange)
    );
    let routed = |list: &serde_json::Value| {
        list.as_array().is_some_and(|l| {
            l.iter().any(|b| {
                b["routing_key"]
                    .as_str()
                    .is_some_and(|k| topic::matches(k, routing_key))
            })
        })
    };
    match api.get(&path).await {
        Ok(list) if !routed(&list) => {}
        // Already bound (the message failed further on), or the API cannot be read.
        Ok(_) => return sleep(delay, shutdown).await,
        Err(_) => return sleep(delay.min(UNROUTABLE_WAIT_MAX), shutdown).await,
    }
    let deadline = Instant::now() + delay;
    loop {
        let step = POLL.min(deadline.saturating_duration_since(Instant::now()));
        if step.is_zero() {
            return Waited::Elapsed;
        }
        if sleep(step, shutdown).await == Waited::Shutdown {
            return Waited::Shutdown;
        }
        if api.get(&path).await.is_ok_and(|list| routed(&list)) {
            return Waited::Bound;
        }
    }
}

async fn sleep(d: Duration, shutdown: &Shutdown) -> Waited {
    tokio::select! {
        _ = tokio::time::sleep(d) => Waited::Elapsed,
        _ = shutdown.wait() => Waited::Shutdown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn without_an_api_the_wait_is_capped() {
        let rx = Shutdown::new();
        let start = Instant::now();
        let w = wait(None, "/", "x", "a.b.insert", Duration::from_secs(30), &rx).await;
        assert_eq!(w, Waited::Elapsed);
        assert_eq!(start.elapsed(), UNROUTABLE_WAIT_MAX);
        let start = Instant::now();
        wait(None, "/", "x", "a.b.insert", Duration::from_secs(1), &rx).await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let tx = Shutdown::new();
        let rx = tx.clone();
        let waiter =
            tokio::spawn(
                async move { wait(None, "/", "x", "k", Duration::from_secs(30), &rx).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        tx.trigger();
        assert_eq!(waiter.await.unwrap(), Waited::Shutdown);
    }
}
