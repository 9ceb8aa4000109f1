//! Compiles a CEL expression (as parsed by `cel-parser`) into a [`Predicate`]: only the
//! forms a row filter needs, and a clear error naming anything else.

use super::*;

pub(super) fn compile(e: &IdedExpr) -> Result<Predicate, String> {
    match &e.expr {
        CelExpr::Call(call) if call.target.is_none() => {
            let args = &call.args;
            let two = || -> Result<(&IdedExpr, &IdedExpr), String> {
                match args.as_slice() {
                    [a, b] => Ok((a, b)),
                    _ => Err(format!("{} takes two operands", call.func_name)),
                }
            };
            let cmp = |op| -> Result<Predicate, String> {
                let (a, b) = two()?;
                Ok(Predicate::Cmp(operand(a)?, op, operand(b)?))
            };
            match call.func_name.as_str() {
                "_&&_" => {
                    let (a, b) = two()?;
                    Ok(Predicate::And(Box::new(compile(a)?), Box::new(compile(b)?)))
                }
                "_||_" => {
                    let (a, b) = two()?;
                    Ok(Predicate::Or(Box::new(compile(a)?), Box::new(compile(b)?)))
                }
                "!_" => match args.as_slice() {
                    [a] => Ok(Predicate::Not(Box::new(compile(a)?))),
                    _ => Err("! takes one operand".into()),
                },
                "_==_" => cmp(CmpOp::Eq),
                "_!=_" => cmp(CmpOp::Ne),
                "_<_" => cmp(CmpOp::Lt),
                "_<=_" => cmp(CmpOp::Le),
                "_>_" => cmp(CmpOp::Gt),
                "_>=_" => cmp(CmpOp::Ge),
                "@in" => {
                    let (a, b) = two()?;
                    let CelExpr::List(list) = &b.expr else {
                        return Err("the right side of `in` must be a list of literals".into());
                    };
                    let lits = list
                        .elements
                        .iter()
                        .map(|x| match operand(x)? {
                            Operand::Lit(l) => Ok(l),
                            _ => Err("`in` lists may hold only literals".to_owned()),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(Predicate::In(operand(a)?, lits))
                }
                other => Err(format!("unsupported operator or function {other:?}")),
            }
        }
        CelExpr::Call(call) => {
            let f = match call.func_name.as_str() {
                "startsWith" => StrFn::StartsWith,
                "endsWith" => StrFn::EndsWith,
                "contains" => StrFn::Contains,
                other => return Err(format!("unsupported method {other:?}")),
            };
            let target = call.target.as_deref().ok_or("method without a target")?;
            match (operand(target)?, call.args.as_slice()) {
                (t @ (Operand::Column { .. } | Operand::Op), [arg]) => match operand(arg)? {
                    Operand::Lit(Lit::Str(s)) => Ok(Predicate::Str(t, f, s)),
                    _ => Err(format!("{} takes a string literal", call.func_name)),
                },
                _ => Err(format!(
                    "{} applies to a column and takes one string literal",
                    call.func_name
                )),
            }
        }
        CelExpr::Literal(LiteralValue::Boolean(b)) => Ok(Predicate::Const(**b)),
        _ => match operand(e)? {
            o @ Operand::Column { .. } => Ok(Predicate::Truthy(o)),
            _ => Err("a condition must compare something (e.g. new.status == 'paid')".into()),
        },
    }
}

fn operand(e: &IdedExpr) -> Result<Operand, String> {
    match &e.expr {
        CelExpr::Literal(l) => Ok(Operand::Lit(match l {
            LiteralValue::Null => Lit::Null,
            LiteralValue::Boolean(b) => Lit::Bool(**b),
            LiteralValue::Int(i) => Lit::Number(**i as f64),
            LiteralValue::UInt(u) => Lit::Number(**u as f64),
            LiteralValue::Double(d) => Lit::Number(**d),
            LiteralValue::String(s) => Lit::Str(s.inner().to_owned()),
            LiteralValue::Bytes(_) => return Err("bytes literals are not supported".into()),
        })),
        CelExpr::Call(c) if c.func_name == "-_" && c.args.len() == 1 => {
            match operand(&c.args[0])? {
                Operand::Lit(Lit::Number(n)) => Ok(Operand::Lit(Lit::Number(-n))),
                _ => Err("unary minus applies to number literals only".into()),
            }
        }
        // `new["odd name"]`, for column names that are not CEL identifiers.
        CelExpr::Call(c) if c.func_name == "_[_]" && c.args.len() == 2 => {
            let image = image_of(&c.args[0])?;
            match &c.args[1].expr {
                CelExpr::Literal(LiteralValue::String(s)) => Ok(Operand::Column {
                    image,
                    name: s.inner().to_owned(),
                    index: usize::MAX,
                }),
                _ => Err("index a row with a string literal: new[\"column\"]".into()),
            }
        }
        CelExpr::Ident(name) if name == "op" => Ok(Operand::Op),
        CelExpr::Select(sel) if !sel.test => {
            let image = image_of(&sel.operand)?;
            Ok(Operand::Column {
                image,
                name: sel.field.clone(),
                index: usize::MAX,
            })
        }
        CelExpr::Ident(name) => Err(format!(
            "unknown name {name:?}: use new.<column>, old.<column>, row.<column> or op"
        )),
        _ => Err("unsupported expression: use columns, literals and comparisons".into()),
    }
}

fn image_of(e: &IdedExpr) -> Result<Image, String> {
    match &e.expr {
        CelExpr::Ident(n) if n == "new" => Ok(Image::New),
        CelExpr::Ident(n) if n == "old" => Ok(Image::Old),
        CelExpr::Ident(n) if n == "row" => Ok(Image::Row),
        _ => Err("columns are read as new.<column>, old.<column> or row.<column>".into()),
    }
}
