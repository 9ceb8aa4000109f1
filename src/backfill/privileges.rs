//! What walrelay's role needs before a backfill can run, checked in the database as that role:
//! reading each table, and writing the progress table (`<backfill.schema>.backfill`), which it
//! creates itself on first use. Each missing privilege comes with the `GRANT` (or `CREATE
//! SCHEMA`) that gives it, for the table's owner or a superuser to run.
//!
//! Why ahead of time: a backfill is recorded by `walrelay backfill` and run later, by whichever
//! instance holds the slot. Without this check the command said "recorded" and the backfill
//! failed in the background on `permission denied`, seen only in `--status` or the log
//! (issue 28). `walrelay backfill` refuses instead, and `walrelay doctor` says the same.

use crate::source::setup::{TableName, quote_ident, quote_literal};
use crate::source::{Connection, SourceError};

/// One privilege the role lacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Missing {
    /// What cannot be done without it, e.g. `read public.orders`.
    pub need: String,
    /// The statement that grants it.
    pub grant: String,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "to {} it needs: {}", self.need, self.grant)
    }
}

/// The privileges the current role lacks to backfill `tables` with its progress in `schema`.
pub(crate) async fn missing(
    c: &mut Connection,
    schema: &str,
    tables: &[TableName],
) -> Result<Vec<Missing>, SourceError> {
    let mut out = Vec::new();
    let role = one(c, "SELECT current_user, current_database()").await?;
    let (me, db) = (cell(&role, 0), cell(&role, 1));
    let (me_q, db_q) = (quote_ident(&me), quote_ident(&db));
    let store = progress(c, schema).await?;
    match store {
        Store::Usable => {}
        Store::TableWithout => out.push(Missing {
            need: format!("record backfills in {}.backfill", quote_ident(schema)),
            grant: format!(
                "GRANT SELECT, INSERT, UPDATE ON {s}.backfill TO {me_q}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {me_q};",
                s = quote_ident(schema)
            ),
        }),
        Store::SchemaWithout => out.push(Missing {
            need: format!("create its progress table in schema {}", quote_ident(schema)),
            grant: format!("GRANT USAGE, CREATE ON SCHEMA {} TO {me_q};", quote_ident(schema)),
        }),
        Store::NoSchema => out.push(Missing {
            need: format!(
                "create its progress schema {} (backfill.schema)",
                quote_ident(schema)
            ),
            grant: format!(
                "CREATE SCHEMA {} AUTHORIZATION {me_q}; -- or: GRANT CREATE ON DATABASE {db_q} TO {me_q};",
                quote_ident(schema)
            ),
        }),
    }
    for t in tables {
        let r = one(
            c,
            &format!(
                "SELECT has_schema_privilege({s}, 'USAGE'), \
                   has_schema_privilege({s}, 'USAGE') AND has_table_privilege({t}, 'SELECT')",
                s = quote_literal(&t.schema),
                t = quote_literal(&t.quoted())
            ),
        )
        .await?;
        if cell(&r, 0) != "t" {
            out.push(Missing {
                need: format!("read {t}"),
                grant: format!(
                    "GRANT USAGE ON SCHEMA {} TO {me_q};",
                    quote_ident(&t.schema)
                ),
            });
        } else if cell(&r, 1) != "t" {
            out.push(Missing {
                need: format!("read {t}"),
                grant: format!("GRANT SELECT ON {} TO {me_q};", t.quoted()),
            });
        }
    }
    Ok(out)
}

/// Whether the role can use the progress table, create it, or neither.
enum Store {
    Usable,
    /// The table exists and the role may not write it.
    TableWithout,
    /// The schema exists and the role may not create the table in it.
    SchemaWithout,
    /// No schema, and no `CREATE` on the database to make it.
    NoSchema,
}

async fn progress(c: &mut Connection, schema: &str) -> Result<Store, SourceError> {
    let table = format!("{}.backfill", quote_ident(schema));
    let r = one(
        c,
        &format!(
            "SELECT to_regclass({t}) IS NOT NULL, \
               EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = {s}), \
               has_database_privilege(current_database(), 'CREATE')",
            t = quote_literal(&table),
            s = quote_literal(schema)
        ),
    )
    .await?;
    let (table_exists, schema_exists, create_db) =
        (cell(&r, 0) == "t", cell(&r, 1) == "t", cell(&r, 2) == "t");
    if table_exists {
        // Inserting a request takes the id sequence's next value too.
        let r = one(
            c,
            &format!(
                "SELECT has_schema_privilege({s}, 'USAGE') \
                   AND has_table_privilege({t}, 'SELECT, INSERT, UPDATE') \
                   AND coalesce(has_sequence_privilege(pg_get_serial_sequence({t}, 'id'), 'USAGE'), true)",
                t = quote_literal(&table),
                s = quote_literal(schema)
            ),
        )
        .await?;
        return Ok(if cell(&r, 0) == "t" {
            Store::Usable
        } else {
            Store::TableWithout
        });
    }
    if schema_exists {
        let r = one(
            c,
            &format!(
                "SELECT has_schema_privilege({s}, 'USAGE, CREATE')",
                s = quote_literal(schema)
            ),
        )
        .await?;
        return Ok(if cell(&r, 0) == "t" {
            Store::Usable
        } else {
            Store::SchemaWithout
        });
    }
    Ok(if create_db {
        Store::Usable
    } else {
        Store::NoSchema
    })
}

async fn one(c: &mut Connection, sql: &str) -> Result<Vec<Option<String>>, SourceError> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

fn cell(row: &[Option<String>], i: usize) -> String {
    row.get(i).cloned().flatten().unwrap_or_default()
}
