//! Crash points for the fault-injection suite: `WALRELAY_FAILPOINT=<name>[:<n>]` makes the
//! process abort (like `kill -9`, no cleanup) the n-th time (default: first) execution passes
//! the named point. Unset — always, in production — a check is one relaxed atomic load.
//!
//! Points: `publish.before_confirm` (a message was published, its confirm not yet seen),
//! `confirm.before_status` (a transaction became broker-confirmed, Postgres not yet told),
//! `status.after_send` (a new confirmed position was just reported to Postgres),
//! `resync.after_record` (a gap recorded, the slot not yet repaired), `resync.after_repair`
//! (the slot repaired, the gap not yet announced).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("WALRELAY_FAILPOINT").ok()?;
            let (name, at) = match spec.split_once(':') {
                Some((n, c)) => (n.to_owned(), c.parse().ok()?),
                None => (spec, 1),
            };
            Some(Armed {
                name,
                at,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process if `name` is the armed point and this is the armed hit.
pub(crate) fn hit(name: &str) {
    if let Some(a) = armed()
        && a.name == name
        && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.at
    {
        eprintln!("walrelay: failpoint {name} reached: aborting");
        std::process::abort();
    }
}
