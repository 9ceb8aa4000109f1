//! Writes an event body as compact JSON, field by field, without an intermediate tree: column
//! values are already JSON fragments from the `value` module.

use crate::pgoutput::{Datum, Relation, TupleData};
use crate::schema::QualifiedName;
use crate::value::{TypeRegistry, ValueError, write_json_string, write_value};

use super::identity::TableIdentity;
use super::time::write_pg_timestamp;
use super::{Op, TxContext};

/// Which columns of a row image [`Body::row`] writes.
#[derive(Clone, Copy, Debug)]
pub enum Columns<'a> {
    All,
    /// The replica identity columns as pgoutput flags them (what an old key image holds).
    ReplicaIdentity,
    /// These positions (the row's key).
    Only(&'a [usize]),
}

/// The key columns of `tuple` as a JSON object, exactly as [`Body::row`] writes a `key`.
pub(super) fn key_object(
    rel: &Relation,
    tuple: &TupleData<'_>,
    key: &[usize],
    types: &TypeRegistry,
) -> Result<String, (String, ValueError)> {
    let mut b = Body {
        out: String::with_capacity(32),
    };
    let range = b.row("k", rel, tuple, Columns::Only(key), None, types)?;
    Ok(b.out[range].to_owned())
}

thread_local! {
    /// The transaction fields of the last transaction [`Body::start`] wrote, as JSON: every
    /// event of a transaction carries the same, so they are formatted once per transaction
    /// rather than once per event (a pure memo: the text depends only on the `TxContext`).
    static TX_FIELDS: std::cell::RefCell<(Option<TxContext>, String)> =
        const { std::cell::RefCell::new((None, String::new())) };
}

/// `,"commit_lsn":…,"xid":…,"commit_time":…` (after the fields before them).
fn write_tx_fields(out: &mut String, tx: &TxContext) {
    // An LSN and a timestamp are ASCII without characters JSON escapes.
    out.push_str(",\"commit_lsn\":\"");
    tx.commit_lsn.push_to(out);
    out.push('"');
    match tx.xid {
        Some(xid) => {
            out.push_str(",\"xid\":");
            push_decimal(out, u64::from(xid), 1);
        }
        None => out.push_str(",\"xid\":null"),
    }
    match tx.commit_time_us {
        Some(t) => {
            out.push_str(",\"commit_time\":\"");
            write_pg_timestamp(out, t);
            out.push('"');
        }
        None => out.push_str(",\"commit_time\":null"),
    }
}

/// Appends the decimal digits of `n`, zero-padded to at least `width`, without the
/// formatting machinery: ids, xids and commit times are per-event text.
pub(super) fn push_decimal(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    at = at.min(buf.len().saturating_sub(width));
    for &b in &buf[at..] {
        out.push(char::from(b));
    }
}

/// A JSON object under construction.
pub struct Body {
    out: String,
}

impl Body {
    /// Opens the object with the fields every event has.
    pub fn start(id: &str, op: Op, table: Option<&TableIdentity>, tx: &TxContext) -> Body {
        let mut b = Body {
            out: String::with_capacity(256),
        };
        b.out.push('{');
        b.key("id");
        write_json_string(&mut b.out, id);
        b.key("op");
        b.out.push('"');
        b.out.push_str(op.as_str());
        b.out.push('"');
        match table {
            Some(t) => {
                b.string_field("schema", &t.schema);
                b.string_field("table", &t.name);
                b.name_field("partition", t.partition.as_ref());
            }
            None => {
                b.null_field("schema");
                b.null_field("table");
                b.null_field("partition");
            }
        }
        TX_FIELDS.with_borrow_mut(|(of, fields)| {
            if *of != Some(*tx) {
                fields.clear();
                write_tx_fields(fields, tx);
                *of = Some(*tx);
            }
            b.out.push_str(fields);
        });
        b
    }

    fn key(&mut self, name: &str) {
        if !self.out.ends_with('{') {
            self.out.push(',');
        }
        write_json_string(&mut self.out, name);
        self.out.push(':');
    }

    pub fn raw_field(&mut self, name: &str, json: &str) {
        self.key(name);
        self.out.push_str(json);
    }

    pub fn null_field(&mut self, name: &str) {
        self.raw_field(name, "null");
    }

    pub fn string_field(&mut self, name: &str, value: &str) {
        self.key(name);
        write_json_string(&mut self.out, value);
    }

    /// `{"schema":…,"table":…}`, or null.
    pub fn name_field(&mut self, name: &str, value: Option<&QualifiedName>) {
        let Some(q) = value else {
            return self.null_field(name);
        };
        self.key(name);
        self.out.push_str("{\"schema\":");
        write_json_string(&mut self.out, &q.schema);
        self.out.push_str(",\"table\":");
        write_json_string(&mut self.out, &q.name);
        self.out.push('}');
    }

    pub fn string_list(&mut self, name: &str, values: &[&str]) {
        self.key(name);
        self.out.push('[');
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            write_json_string(&mut self.out, v);
        }
        self.out.push(']');
    }

    /// Writes a row image as an object of column name → value: the `columns` chosen and, with
    /// a `mask`, only those it marks (filters drop the others).
    /// Unchanged TOAST values are left out (they are listed separately).
    /// Returns the byte range of the object; on a bad value, the column name with the error.
    pub fn row(
        &mut self,
        name: &str,
        rel: &Relation,
        tuple: &TupleData<'_>,
        columns: Columns<'_>,
        mask: Option<&[bool]>,
        types: &TypeRegistry,
    ) -> Result<std::ops::Range<usize>, (String, ValueError)> {
        self.key(name);
        let start = self.out.len();
        self.out.push('{');
        let mut first = true;
        for (i, (col, datum)) in rel.columns.iter().zip(&tuple.columns).enumerate() {
            let wanted = match columns {
                Columns::All => true,
                Columns::ReplicaIdentity => col.is_key,
                Columns::Only(positions) => positions.contains(&i),
            };
            if !wanted {
                continue;
            }
            if mask.is_some_and(|m| !m.get(i).copied().unwrap_or(true)) {
                continue;
            }
            if matches!(datum, Datum::UnchangedToast) {
                continue;
            }
            if !first {
                self.out.push(',');
            }
            first = false;
            write_json_string(&mut self.out, &col.name);
            self.out.push(':');
            match datum {
                Datum::Null => self.out.push_str("null"),
                Datum::Text(bytes) => write_value(&mut self.out, types.kind(col.type_oid), bytes)
                    .map_err(|e| (col.name.clone(), e))?,
                Datum::Binary(_) => return Err((col.name.clone(), ValueError::Binary)),
                Datum::UnchangedToast => {}
            }
        }
        self.out.push('}');
        Ok(start..self.out.len())
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.out.push('}');
        self.out.into_bytes()
    }
}
