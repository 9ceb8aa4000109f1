//! `flood.then = "backfill"`: the rows a skipped or summarized flood touched are read again
//! after it commits, so consumers that keep state get each touched row's final state (as
//! `read` events) instead of every intermediate change. [`Touched`] bounds what to read with
//! a few bytes per table: with a single integer key, the range of keys the flood changed
//! (`"id" BETWEEN min AND max`); with any other key (text, uuid, composite, where Rust's order
//! is not the collation's), the whole table.

use crate::source::setup::{TableName, quote_ident};

/// The keys one table's flood rows had, reduced to what the backfill needs.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Touched {
    pub table: TableName,
    /// The key column and the smallest and largest value seen, while every key seen was one
    /// integer column; `None` once one was not (the whole table is read).
    range: Option<(String, i64, i64)>,
    /// No key seen yet.
    empty: bool,
}

impl Touched {
    pub(crate) fn new(table: TableName) -> Touched {
        Touched {
            table,
            range: None,
            empty: true,
        }
    }

    /// One changed row's `key` object, as the event renders it (`None`: no key).
    pub(crate) fn saw(&mut self, key: Option<&str>) {
        let single = key
            .and_then(|k| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(k).ok()
            })
            .filter(|m| m.len() == 1)
            .and_then(|m| {
                let (col, v) = m.into_iter().next()?;
                Some((col, v.as_i64()?))
            });
        match (self.empty, single, self.range.as_mut()) {
            (true, Some((col, v)), _) => self.range = Some((col, v, v)),
            (false, Some((col, v)), Some((c, lo, hi))) if *c == col => {
                *lo = (*lo).min(v);
                *hi = (*hi).max(v);
            }
            _ => self.range = None,
        }
        self.empty = false;
    }

    /// What the bulk event says about the backfill that follows.
    pub(crate) fn note(&self) -> crate::event::BulkBackfill {
        crate::event::BulkBackfill {
            where_clause: self.where_clause(),
            range: self.range.clone(),
        }
    }

    /// The backfill's `WHERE` condition (`None`: the whole table).
    pub(crate) fn where_clause(&self) -> Option<String> {
        self.range
            .as_ref()
            .map(|(col, lo, hi)| format!("{} BETWEEN {lo} AND {hi}", quote_ident(col)))
    }
}

/// A backfill a flood asks for once it commits.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FloodBackfill {
    pub table: TableName,
    pub where_clause: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Touched {
        Touched::new(TableName {
            schema: "public".into(),
            name: "orders".into(),
        })
    }

    #[test]
    fn an_integer_key_makes_a_range_anything_else_the_whole_table() {
        let mut a = t();
        for k in [r#"{"id": 7}"#, r#"{"id": 3}"#, r#"{"id": 12}"#] {
            a.saw(Some(k));
        }
        assert_eq!(a.where_clause().as_deref(), Some("\"id\" BETWEEN 3 AND 12"));
        let mut b = t();
        b.saw(Some(r#"{"id": 7}"#));
        b.saw(Some(r#"{"code": "x"}"#));
        assert_eq!(b.where_clause(), None, "a text key: the whole table");
        let mut c = t();
        c.saw(Some(r#"{"a": 1, "b": 2}"#));
        c.saw(Some(r#"{"a": 1, "b": 3}"#));
        assert_eq!(c.where_clause(), None, "a composite key");
        let mut d = t();
        d.saw(None);
        d.saw(Some(r#"{"id": 1}"#));
        assert_eq!(d.where_clause(), None, "a row without a key");
        let mut e = t();
        e.saw(Some(r#"{"id": 5}"#));
        e.saw(None);
        assert_eq!(e.where_clause(), None);
    }
}
