//! The PostgreSQL error codes (SQLSTATE) walrelay acts on, in one table: what each means for
//! a replication client. `crate::error` turns the meaning into a decision; nothing else in the
//! crate compares error codes.

/// What a SQLSTATE means for walrelay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Meaning {
    /// The connection or the server is going away, short of a resource, or ended walrelay's
    /// transaction (a deadlock victim, a recovery conflict): a new connection later may
    /// succeed, and resuming from the slot loses nothing.
    Retry,
    /// Another process streams from the slot (hot standby: wait for it to let go).
    SlotBusy,
    /// On `START_REPLICATION`: the slot can no longer give changes (invalidated, dropped, its
    /// state file gone).
    SlotLost,
    /// The server refused the role: authentication, `pg_hba.conf`, a missing attribute or
    /// privilege. An operator must act, and walrelay resumes as soon as they have.
    Access,
    /// Anything else: an operator must act.
    Permanent,
}

/// Why the server refused the role ([`Meaning::Access`]), as far as its answer tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The role lacks the REPLICATION attribute (`42501` at connect or slot use).
    Replication,
    /// Another privilege (`42501`).
    Privilege,
    /// The password or the authentication method (`28P01`).
    Password,
    /// No `pg_hba.conf` line admits this role, database and address (`28000`).
    Hba,
    /// The role may not log in, or does not exist (`28000`).
    Login,
}

impl Access {
    /// What `error` (a [`Meaning::Access`] answer) says is missing.
    pub fn of(code: &str, message: &str) -> Access {
        let m = message.to_ascii_lowercase();
        match code {
            "28P01" => Access::Password,
            c if c.starts_with("28") && m.contains("pg_hba") => Access::Hba,
            c if c.starts_with("28") => Access::Login,
            // PostgreSQL 15 and older: "must be superuser or replication role to start
            // walsender" / "... to use replication slots"; 16 and later: "permission denied to
            // start WAL sender" / "... to use replication slots".
            _ if m.contains("replication role")
                || m.contains("wal sender")
                || m.contains("walsender")
                || m.contains("replication slots") =>
            {
                Access::Replication
            }
            _ => Access::Privilege,
        }
    }

    /// What to do, for the log.
    pub fn remedy(self) -> &'static str {
        match self {
            Access::Replication => {
                "the role lacks the REPLICATION attribute: ALTER ROLE <role> REPLICATION (Amazon RDS and Aurora: GRANT rds_replication TO <role>; Cloud SQL: ALTER USER <role> WITH REPLICATION); walrelay resumes once it has it"
            }
            Access::Privilege => {
                "the role lacks a privilege (the error names it; walrelay doctor lists every grant walrelay needs); walrelay resumes once it has it"
            }
            Access::Password => {
                "PostgreSQL rejected the password: put the role's password in postgres.url (or WALRELAY_POSTGRES_URL), or set it on the role; walrelay retries with the configured password, so a changed password needs a restart with the new one"
            }
            Access::Hba => {
                "no pg_hba.conf line admits this connection: add one for walrelay's role, the database (logical replication matches the database name, not the replication keyword) and its address, then SELECT pg_reload_conf(); walrelay resumes once it is in"
            }
            Access::Login => {
                "PostgreSQL refused the role: check the user name in postgres.url, and that the role exists and may log in (ALTER ROLE <role> LOGIN); walrelay resumes once it may"
            }
        }
    }
}

struct Entry {
    /// A full code (`55006`) or a class (`08`).
    code: &'static str,
    meaning: Meaning,
    /// What an operator should check while walrelay retries (empty: nothing but wait).
    hint: &'static str,
}

/// Full codes first, then classes; the first match wins. Classes not listed are permanent:
/// data exceptions (22), integrity (23), syntax and undefined objects (42, but for the slot
/// and privileges), program limits (54), configuration (F0), internal errors (XX). A retried
/// code ends the session, and the next one resumes from the slot, so retrying never skips a
/// change; a code retried wrongly costs a retry every `reconnect_max_ms`, a code stopped
/// wrongly costs an operator's night. docs/troubleshooting.md has this table for operators.
#[rustfmt::skip]
const TABLE: &[Entry] = &[
    // Class 55, object not in prerequisite state.
    Entry { code: "55006", meaning: Meaning::SlotBusy, hint: "" },
    Entry { code: "55000", meaning: Meaning::SlotLost, hint: "" },
    Entry {
        code: "55P03",
        meaning: Meaning::Retry,
        hint: "a lock walrelay needed was not available: check for long-held locks on the catalogs",
    },
    // Class 42: the slot or publication missing; a privilege.
    Entry { code: "42704", meaning: Meaning::SlotLost, hint: "" },
    Entry { code: "42501", meaning: Meaning::Access, hint: "" },
    // Class 58, system error: the slot's state file gone; an I/O error may pass.
    Entry { code: "58P01", meaning: Meaning::SlotLost, hint: "" },
    Entry {
        code: "58",
        meaning: Meaning::Retry,
        hint: "PostgreSQL met a system or I/O error: check the server's log and its disk",
    },
    // Class 57, operator intervention: a dropped database does not come back.
    Entry { code: "57P04", meaning: Meaning::Permanent, hint: "" },
    Entry {
        code: "57014",
        meaning: Meaning::Retry,
        hint: "PostgreSQL canceled walrelay's command (pg_cancel_backend, or a statement_timeout set on the role or database): check for a timeout that applies to walrelay's role",
    },
    Entry {
        code: "57",
        meaning: Meaning::Retry,
        hint: "PostgreSQL is shutting down or restarting, or an administrator ended walrelay's connection: walrelay resumes when it is back",
    },
    // Class 40, transaction rollback: a deadlock victim (40P01, e.g. decoding against a
    // REINDEX of a catalog), a serialization failure or a recovery conflict (40001).
    Entry {
        code: "40",
        meaning: Meaning::Retry,
        hint: "PostgreSQL ended walrelay's transaction (a deadlock, often with DDL or REINDEX on the catalogs, or a recovery conflict): resuming from the slot loses nothing",
    },
    // Class 28, invalid authorization.
    Entry { code: "28", meaning: Meaning::Access, hint: "" },
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
        assert_eq!(meaning("42501"), Meaning::Access);
        assert_eq!(meaning("28P01"), Meaning::Access);
        assert_eq!(meaning("28000"), Meaning::Access);
        assert_eq!(meaning("40P01"), Meaning::Retry);
        assert_eq!(meaning("40001"), Meaning::Retry);
        assert_eq!(meaning("57014"), Meaning::Retry);
        assert_eq!(meaning("57P04"), Meaning::Permanent);
        assert_eq!(meaning("58030"), Meaning::Retry);
        assert_eq!(meaning("XX000"), Meaning::Permanent);
        assert_eq!(meaning("42P01"), Meaning::Permanent);
        assert_eq!(meaning("3D000"), Meaning::Permanent);
        assert!(hint("57P01").contains("shutting down"));
        assert!(hint("40P01").contains("deadlock"));
        assert_eq!(hint("28P01"), "");
    }

    #[test]
    fn a_refused_role_is_told_apart_by_code_and_message() {
        let of = Access::of;
        assert_eq!(
            of(
                "42501",
                "must be superuser or replication role to start walsender"
            ),
            Access::Replication
        );
        assert_eq!(
            of("42501", "permission denied to start WAL sender"),
            Access::Replication
        );
        assert_eq!(
            of("42501", "permission denied to use replication slots"),
            Access::Replication
        );
        assert_eq!(
            of("42501", "permission denied for table orders"),
            Access::Privilege
        );
        assert_eq!(
            of(
                "28P01",
                "password authentication failed for user \"walrelay\""
            ),
            Access::Password
        );
        assert_eq!(
            of(
                "28000",
                "no pg_hba.conf entry for host \"10.0.0.1\", user \"w\", database \"app\""
            ),
            Access::Hba
        );
        assert_eq!(
            of("28000", "role \"w\" is not permitted to log in"),
            Access::Login
        );
    }
}
