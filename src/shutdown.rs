//! One shutdown signal for the whole process, in the shape of mini-redis's `Shutdown`: cloned
//! into every task that must stop (the pipeline, the HTTP endpoint, the probe, the progress
//! line), triggered once (a signal, or a task that cannot go on), and awaited in `select!`
//! branches. Once triggered it stays triggered, and [`Shutdown::wait`] resolves at once, so a
//! loop that looks again after being busy never misses it.

use std::sync::Arc;

use tokio::sync::watch;

/// A handle on the process's shutdown: every clone sees the same signal.
#[derive(Clone, Debug)]
pub struct Shutdown {
    /// Kept by every handle, so the channel never closes while anyone listens: a closed
    /// channel would read as a shutdown nobody asked for.
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Asks every holder to stop. Idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered (at once if it already is). Cancel-safe: a
    /// `select!` branch may drop it and call it again.
    pub async fn wait(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// A waiter of its own, for a loop that selects on shutdown once per item: its
    /// [`Waiter::wait`] neither clones nor locks (what [`Shutdown::wait`] does on every call
    /// cost the replication loop a measurable share of its CPU per event in a catch-up).
    pub fn waiter(&self) -> Waiter {
        Waiter {
            rx: self.rx.clone(),
            _tx: Arc::clone(&self.tx),
            seen: false,
        }
    }
}

/// See [`Shutdown::waiter`].
#[derive(Debug)]
pub struct Waiter {
    rx: watch::Receiver<bool>,
    /// Keeps the channel open (a closed one would resolve `changed` at once).
    _tx: Arc<watch::Sender<bool>>,
    /// The trigger was seen: resolve at once from now on.
    seen: bool,
}

impl Waiter {
    /// Resolves once shutdown is triggered (at once if it already was). Cancel-safe. The
    /// channel carries one change only, `false` to `true`, so any change is the trigger.
    pub async fn wait(&mut self) {
        if !self.seen {
            let _ = self.rx.changed().await;
            self.seen = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_clone_sees_the_trigger_once_and_for_good() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        let waiter = tokio::spawn(async move { b.wait().await });
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        assert!(!waiter.is_finished());
        a.trigger();
        waiter.await.unwrap();
        assert!(a.is_triggered());
        // Already triggered: resolves at once, as many times as asked.
        a.wait().await;
        a.clone().wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_sees_the_trigger_made_before_or_after_it_and_keeps_it() {
        let s = Shutdown::new();
        let mut early = s.waiter();
        tokio::select! {
            _ = early.wait() => panic!("not triggered yet"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
        s.trigger();
        early.wait().await;
        early.wait().await;
        // Made after the trigger: resolves at once too.
        s.waiter().wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_does_not_lose_the_signal() {
        let s = Shutdown::new();
        let t = s.clone();
        tokio::select! {
            _ = s.wait() => panic!("not triggered yet"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(5)) => {}
        }
        t.trigger();
        s.wait().await;
    }
}
