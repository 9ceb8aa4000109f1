//! Numbers as `to_jsonb()` writes them: the type's text output, checked to be a JSON number and
//! then passed through `numeric_in`/`numeric_out`. That turns float exponents into plain digits
//! (`1e+100` becomes a 1 followed by 100 zeros, `1.5e-07` becomes `0.00000015`) and `-0` into `0`.
//! Text that is not a JSON number (`NaN`, `Infinity`, `-Infinity`) becomes a JSON string.

use super::json_string::write_json_string;

/// Appends the JSON for a number type's text output.
pub(super) fn write_number(out: &mut String, text: &str) {
    match normalize(text) {
        Some(Normalized::Unchanged) => out.push_str(text),
        Some(Normalized::Rewritten(s)) => out.push_str(&s),
        None => write_json_string(out, text),
    }
}

enum Normalized {
    Unchanged,
    Rewritten(String),
}

/// Splits a JSON number into (negative, integer digits, fraction digits, exponent), or `None`
/// when `text` is not a JSON number.
fn parse_json_number(text: &str) -> Option<(bool, &str, &str, i64)> {
    let b = text.as_bytes();
    let mut i = 0;
    let neg = b.first() == Some(&b'-');
    if neg {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int = &text[int_start..i];
    if int.is_empty() || (int.len() > 1 && int.starts_with('0')) {
        return None;
    }
    let mut frac = "";
    if i < b.len() && b[i] == b'.' {
        let s = i + 1;
        i = s;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac = &text[s..i];
        if frac.is_empty() {
            return None;
        }
    }
    let mut exp = 0i64;
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        let exp_neg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if s == i {
            return None;
        }
        // Float exponents stay within a few hundred; anything larger is not a float's output.
        let magnitude: i64 = text[s..i].parse().ok().filter(|m: &i64| *m <= 100_000)?;
        exp = if exp_neg { -magnitude } else { magnitude };
    }
    if i != b.len() {
        return None;
    }
    Some((neg, int, frac, exp))
}

fn normalize(text: &str) -> Option<Normalized> {
    let (neg, int, frac, exp) = parse_json_number(text)?;
    let is_zero = int.bytes().chain(frac.bytes()).all(|d| d == b'0');
    if exp == 0 && !(neg && is_zero) {
        return Some(Normalized::Unchanged);
    }
    // numeric_in keeps max(0, fraction digits - exponent) digits after the point.
    let scale = (frac.len() as i64 - exp).max(0) as usize;
    let digits: String = format!("{int}{frac}");
    // Position of the decimal point within `digits` after applying the exponent.
    let point = int.len() as i64 + exp;
    let mut s = String::new();
    if neg && !is_zero {
        s.push('-');
    }
    let int_part: String = if point <= 0 {
        "0".to_owned()
    } else {
        let p = point as usize;
        let mut ip: String = digits.chars().take(p).collect();
        while ip.len() < p {
            ip.push('0');
        }
        let trimmed = ip.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".to_owned()
        } else {
            trimmed.to_owned()
        }
    };
    s.push_str(&int_part);
    if scale > 0 {
        s.push('.');
        // Fraction digits: those after `point`, with zeros in front when point < 0.
        let mut frac_digits = String::with_capacity(scale);
        for k in 0..scale as i64 {
            let idx = point + k;
            let d = if idx < 0 {
                '0'
            } else {
                digits
                    .as_bytes()
                    .get(idx as usize)
                    .map_or('0', |&b| b as char)
            };
            frac_digits.push(d);
        }
        s.push_str(&frac_digits);
    }
    Some(Normalized::Rewritten(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str) -> String {
        let mut out = String::new();
        write_number(&mut out, t);
        out
    }

    #[test]
    fn plain_numbers_pass_through() {
        assert_eq!(render("42"), "42");
        assert_eq!(render("-7"), "-7");
        assert_eq!(render("123.4500"), "123.4500");
        assert_eq!(render("0.5"), "0.5");
        assert_eq!(render("0"), "0");
    }

    #[test]
    fn special_values_become_strings() {
        assert_eq!(render("NaN"), "\"NaN\"");
        assert_eq!(render("Infinity"), "\"Infinity\"");
        assert_eq!(render("-Infinity"), "\"-Infinity\"");
    }

    #[test]
    fn exponents_expand_like_numeric_in() {
        assert_eq!(render("1e+100"), format!("1{}", "0".repeat(100)));
        assert_eq!(render("1.5e-07"), "0.00000015");
        assert_eq!(render("1.2345e+20"), "123450000000000000000");
        assert_eq!(render("-1.5e-07"), "-0.00000015");
        assert_eq!(render("1.2345e+02"), "123.45");
        assert_eq!(render("9.87e-1"), "0.987");
    }

    #[test]
    fn negative_zero_loses_its_sign() {
        assert_eq!(render("-0"), "0");
        assert_eq!(render("-0.00"), "0.00");
    }
}
