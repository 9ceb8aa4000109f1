//! The PostgreSQL error codes (SQLSTATE) walrelay acts on, in one table: what each means for
//! a replication client. `crate::error` turns the meaning into a decision; nothing else in the
//! crate compares error codes.

/// What a SQLSTATE means for walrelay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// The connection or the server is going away, or short of a resource: a new connection
    /// later may succeed.
    Retry,
    /// Another process streams from the slot (hot standby: wait for it to let go).
    SlotBusy,
    /// On `START_REPLICATION`: the slot can no longer give changes (invalidated, dropped, its
    /// state file gone).
    SlotLost,
    /// The role lacks a privilege: the remedy is a `GRANT` (or an owner's action).
    Privilege,
    /// Anything else: an operator must act.
    Permanent,
}

struct Entry {
    /// A full code (`55006`) or a class (`08`).
    code: &'static str,
    meaning: Meaning,
    /// What an operator should check while walrelay retries (empty: nothing but wait).
    hint: &'static str,
}

/// Full codes first, then classes; the first match wins.
#[rustfmt::skip]
const TABLE: &[Entry] = &[
    Entry { code: "55006", meaning: Meaning::SlotBusy, hint: "" },
    Entry { code: "55000", meaning: Meaning::SlotLost, hint: "" },
    Entry { code: "42704", meaning: Meaning::SlotLost, hint: "" },
    Entry { code: "58P01", meaning: Meaning::SlotLost, hint: "" },
    Entry { code: "42501", meaning: Meaning::Privilege, hint: "" },
    Entry { code: "40001", meaning: Meaning::Retry, hint: "" },
    Entry {
        code: "08",
        meaning: Meaning::Retry,
        hint: "the connection to PostgreSQL failed: check the server and the network path to it",
    },
    Entry {
        code: "53",
        meaning: Meaning::Retry,
        hint: "PostgreSQL is out of a resource (connections, memory, disk): check max_connections and the server's log",
    },
    Entry {
        code: "57",
        meaning: Meaning::Retry,
        hint: "PostgreSQL is shutting down or restarting: walrelay resumes when it is back",
    },
];

/// `insufficient_privilege`, for callers that explain a refused `CREATE`.
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";

fn entry(code: &str) -> Option<&'static Entry> {
    TABLE.iter().find(|e| e.code == code).or_else(|| {
        TABLE
            .iter()
            .find(|e| e.code.len() == 2 && code.starts_with(e.code))
    })
}

/// What `code` means; unknown codes are permanent (an operator looks, walrelay does not guess).
pub fn meaning(code: &str) -> Meaning {
    entry(code).map_or(Meaning::Permanent, |e| e.meaning)
}

/// The operator's hint for a retried code ("" when there is nothing to do but wait).
pub fn hint(code: &str) -> &'static str {
    entry(code).map_or("", |e| e.hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_codes_win_over_classes_and_unknown_codes_are_permanent() {
        assert_eq!(meaning("55006"), Meaning::SlotBusy);
        assert_eq!(meaning("55000"), Meaning::SlotLost);
        assert_eq!(meaning("08006"), Meaning::Retry);
        assert_eq!(meaning("57P01"), Meaning::Retry);
        assert_eq!(meaning("53300"), Meaning::Retry);
        assert_eq!(meaning("42501"), Meaning::Privilege);
        assert_eq!(meaning("28P01"), Meaning::Permanent);
        assert_eq!(meaning("XX000"), Meaning::Permanent);
        assert!(hint("57P01").contains("shutting down"));
        assert_eq!(hint("28P01"), "");
    }
}
