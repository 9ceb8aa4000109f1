//! Row predicates (`where = "new.status == 'paid'"`): CEL syntax, parsed by the `cel` crate,
//! compiled here into a small tree that is evaluated directly on pgoutput's text values.
//!
//! Why not run CEL's own interpreter: it wants every row converted into a map of CEL values
//! (allocations per row and per column), and most of CEL (macros, arithmetic, maps) has no use
//! in a row filter. The subset we accept is compiled once; evaluating it reads the borrowed
//! column bytes and allocates nothing. Anything outside the subset is a config error.
//!
//! Accepted: `new.col` and `old.col`; `op`; string, integer, double, bool and `null` literals;
//! `== != < <= > >=`; `&& || !`; `x in [literal, ...]`; `new.col.startsWith('p')`,
//! `.endsWith(...)`, `.contains(...)`; a bare boolean column (`new.active`).

use cel::common::ast::{Expr as CelExpr, IdedExpr, LiteralValue};

use crate::pgoutput::{Datum, Relation, TupleData};

/// Which row image a column reference reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Image {
    New,
    Old,
    /// The row the change is about: `new` for inserts and updates, `old` for deletes.
    Row,
}

impl Image {
    fn as_str(self) -> &'static str {
        match self {
            Image::New => "new",
            Image::Old => "old",
            Image::Row => "row",
        }
    }
}

/// A literal from the expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Lit {
    Null,
    Bool(bool),
    Number(f64),
    Str(String),
}

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    /// A column; `index` is bound per relation (`usize::MAX` until bound).
    Column {
        image: Image,
        name: String,
        index: usize,
    },
    /// The change's operation: `"insert"`, `"update"` or `"delete"`.
    Op,
    Lit(Lit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrFn {
    StartsWith,
    EndsWith,
    Contains,
}

/// A compiled predicate.
#[derive(Clone, Debug, PartialEq)]
pub enum Predicate {
    And(Box<Predicate>, Box<Predicate>),
    Or(Box<Predicate>, Box<Predicate>),
    Not(Box<Predicate>),
    Cmp(Operand, CmpOp, Operand),
    In(Operand, Vec<Lit>),
    Str(Operand, StrFn, String),
    /// A bare operand used as a condition: true only for a boolean `true`.
    Truthy(Operand),
    Const(bool),
}

/// The row a predicate is evaluated against.
pub struct RowView<'a> {
    pub op: &'a str,
    pub new: Option<&'a TupleData<'a>>,
    pub old: Option<&'a TupleData<'a>>,
}

/// A value during evaluation, borrowed from the row or the expression.
#[derive(Clone, Copy, Debug)]
enum Val<'a> {
    Null,
    /// An unchanged TOAST value: it exists, but its content was not sent.
    Unknown,
    /// A column's text form, or a string literal.
    Text(&'a [u8]),
    Bool(bool),
    Number(f64),
}

impl Predicate {
    /// Parses and compiles a CEL expression.
    pub fn compile(source: &str) -> Result<Predicate, String> {
        let ast = cel::parser::Parser::new()
            .parse(source)
            .map_err(|e| format!("not a valid expression: {e}"))?;
        compile(&ast)
    }

    /// Resolves column names to positions in `rel`; an unknown column is an error naming it.
    pub fn bind(&self, rel: &Relation) -> Result<Predicate, String> {
        let mut out = self.clone();
        out.visit_columns(&mut |image, name, index| {
            *index = rel
                .columns
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| {
                    format!(
                        "{}.{name}: {}.{} has no column {name:?}",
                        image.as_str(),
                        rel.schema,
                        rel.name
                    )
                })?;
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether the predicate decides deletes. A delete has no new row, so a predicate that
    /// reads only `new.…` would drop every delete — the consumer would keep deleted rows
    /// forever. Such a predicate does not apply to deletes: they pass. Naming `old`, `row` or
    /// `op` anywhere makes it apply to deletes too.
    pub fn applies_to_deletes(&self) -> bool {
        let mut decides = self.reads_op();
        let mut copy = self.clone();
        let _ = copy.visit_columns(&mut |image, _, _| {
            decides |= image != Image::New;
            Ok(())
        });
        decides
    }

    fn reads_op(&self) -> bool {
        let op = |o: &Operand| matches!(o, Operand::Op);
        match self {
            Predicate::And(a, b) | Predicate::Or(a, b) => a.reads_op() || b.reads_op(),
            Predicate::Not(a) => a.reads_op(),
            Predicate::Cmp(a, _, b) => op(a) || op(b),
            Predicate::In(a, _) | Predicate::Str(a, _, _) | Predicate::Truthy(a) => op(a),
            Predicate::Const(_) => false,
        }
    }

    /// The column names the predicate reads.
    pub fn columns(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut copy = self.clone();
        let _ = copy.visit_columns(&mut |_, name, _| {
            if !names.contains(name) {
                names.push(name.clone());
            }
            Ok(())
        });
        names
    }

    fn visit_columns(
        &mut self,
        f: &mut dyn FnMut(Image, &String, &mut usize) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut operand = |o: &mut Operand| match o {
            Operand::Column { image, name, index } => f(*image, name, index),
            _ => Ok(()),
        };
        match self {
            Predicate::And(a, b) | Predicate::Or(a, b) => {
                a.visit_columns(f)?;
                b.visit_columns(f)
            }
            Predicate::Not(a) => a.visit_columns(f),
            Predicate::Cmp(a, _, b) => {
                operand(a)?;
                operand(b)
            }
            Predicate::In(a, _) | Predicate::Str(a, _, _) | Predicate::Truthy(a) => operand(a),
            Predicate::Const(_) => Ok(()),
        }
    }

    /// Evaluates a bound predicate. Allocates nothing.
    pub fn eval(&self, row: &RowView<'_>) -> bool {
        match self {
            Predicate::And(a, b) => a.eval(row) && b.eval(row),
            Predicate::Or(a, b) => a.eval(row) || b.eval(row),
            Predicate::Not(a) => !a.eval(row),
            Predicate::Cmp(a, op, b) => compare(value(a, row), *op, value(b, row)),
            Predicate::In(a, list) => {
                let v = value(a, row);
                list.iter().any(|l| compare(v, CmpOp::Eq, lit_value(l)))
            }
            Predicate::Str(a, f, needle) => match value(a, row) {
                Val::Text(t) => {
                    let n = needle.as_bytes();
                    match f {
                        StrFn::StartsWith => t.starts_with(n),
                        StrFn::EndsWith => t.ends_with(n),
                        StrFn::Contains => n.is_empty() || t.windows(n.len()).any(|w| w == n),
                    }
                }
                _ => false,
            },
            Predicate::Truthy(a) => matches!(as_bool(value(a, row)), Some(true)),
            Predicate::Const(b) => *b,
        }
    }
}

fn lit_value(l: &Lit) -> Val<'_> {
    match l {
        Lit::Null => Val::Null,
        Lit::Bool(b) => Val::Bool(*b),
        Lit::Number(n) => Val::Number(*n),
        Lit::Str(s) => Val::Text(s.as_bytes()),
    }
}

fn value<'a>(o: &'a Operand, row: &RowView<'a>) -> Val<'a> {
    match o {
        Operand::Lit(l) => lit_value(l),
        Operand::Op => Val::Text(row.op.as_bytes()),
        Operand::Column { image, index, .. } => {
            let tuple = match image {
                Image::New => row.new,
                Image::Old => row.old,
                Image::Row if row.op == "delete" => row.old,
                Image::Row => row.new,
            };
            match tuple.and_then(|t| t.columns.get(*index)) {
                None | Some(Datum::Null) => Val::Null,
                Some(Datum::UnchangedToast) => Val::Unknown,
                Some(Datum::Text(b) | Datum::Binary(b)) => Val::Text(b),
            }
        }
    }
}

/// A column's text as a boolean (`t`/`f`, Postgres' text form), or a boolean literal.
fn as_bool(v: Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(b),
        Val::Text(b"t") | Val::Text(b"true") => Some(true),
        Val::Text(b"f") | Val::Text(b"false") => Some(false),
        _ => None,
    }
}

fn as_number(v: Val<'_>) -> Option<f64> {
    match v {
        Val::Number(n) => Some(n),
        Val::Text(t) => std::str::from_utf8(t).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// SQL-like comparison: anything compared with null (or an unknown TOAST value) is false,
/// except `== null` / `!= null`. Numbers compare numerically, booleans as booleans, and text
/// byte-wise (Postgres sends UTF-8, so this is code point order, not a collation).
fn compare(a: Val<'_>, op: CmpOp, b: Val<'_>) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match (a, b) {
        (Val::Null, Val::Null) => Some(Ordering::Equal),
        (Val::Unknown, Val::Null) | (Val::Null, Val::Unknown) => return op == CmpOp::Ne,
        (Val::Null, _) | (_, Val::Null) => return op == CmpOp::Ne,
        (Val::Unknown, _) | (_, Val::Unknown) => return false,
        (Val::Bool(_), _) | (_, Val::Bool(_)) => match (as_bool(a), as_bool(b)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => None,
        },
        (Val::Number(_), _) | (_, Val::Number(_)) => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => None,
        },
        (Val::Text(x), Val::Text(y)) => match (as_number(a), as_number(b)) {
            (Some(x), Some(y)) => x.partial_cmp(&y),
            _ => Some(x.cmp(y)),
        },
    };
    let Some(o) = ordering else {
        return op == CmpOp::Ne;
    };
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    }
}

#[path = "predicate_compile.rs"]
mod compile;
use compile::compile;

#[cfg(test)]
#[path = "predicate_tests.rs"]
mod tests;
