//! PostgreSQL commit timestamps (microseconds since 2000-01-01 UTC) as ISO 8601 text, in the
//! same form `to_jsonb()` gives a `timestamptz` in UTC: `2026-11-22T10:00:00.123456+00:00`.

use super::encode::push_decimal;

/// Microseconds between 1970-01-01 and 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// Converts a PostgreSQL timestamp to microseconds since the Unix epoch.
pub fn pg_to_unix_us(pg_us: i64) -> i64 {
    pg_us.saturating_add(PG_EPOCH_OFFSET_US)
}

/// Formats a PostgreSQL timestamp; fractional seconds lose trailing zeros, as PostgreSQL prints.
pub fn format_pg_timestamp(pg_us: i64) -> String {
    let mut s = String::with_capacity(32);
    write_pg_timestamp(&mut s, pg_us);
    s
}

/// Appends what [`format_pg_timestamp`] returns, digit by digit: with one row per
/// transaction, every event has a commit time of its own to print.
pub fn write_pg_timestamp(out: &mut String, pg_us: i64) {
    let unix_us = pg_to_unix_us(pg_us);
    let secs = unix_us.div_euclid(1_000_000);
    let micros = unix_us.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if y < 0 {
        // Outside what a commit time can be; printed as `{:04}` would print it.
        out.push('-');
    }
    push_decimal(out, y.unsigned_abs(), if y < 0 { 3 } else { 4 });
    out.push('-');
    push_decimal(out, u64::from(m), 2);
    out.push('-');
    push_decimal(out, u64::from(d), 2);
    out.push('T');
    push_decimal(out, (sod / 3600) as u64, 2);
    out.push(':');
    push_decimal(out, ((sod % 3600) / 60) as u64, 2);
    out.push(':');
    push_decimal(out, (sod % 60) as u64, 2);
    if micros != 0 {
        out.push('.');
        let mut frac = micros as u64;
        let mut width = 6;
        while frac.is_multiple_of(10) {
            frac /= 10;
            width -= 1;
        }
        push_decimal(out, frac, width);
    }
    out.push_str("+00:00");
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the digit-by-digit writer replaced, kept as the reference.
    fn with_format(pg_us: i64) -> String {
        let unix_us = pg_to_unix_us(pg_us);
        let secs = unix_us.div_euclid(1_000_000);
        let micros = unix_us.rem_euclid(1_000_000);
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let sod = secs.rem_euclid(86_400);
        let mut s = format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            (sod % 3600) / 60,
            sod % 60
        );
        if micros != 0 {
            s.push('.');
            s.push_str(format!("{micros:06}").trim_end_matches('0'));
        }
        s.push_str("+00:00");
        s
    }

    proptest::proptest! {
        #[test]
        fn writes_what_the_format_machinery_printed(
            pg_us in -80_000_000_000_000_000i64..252_000_000_000_000_000i64
        ) {
            proptest::prop_assert_eq!(format_pg_timestamp(pg_us), with_format(pg_us));
        }
    }

    #[test]
    fn formats_like_postgres() {
        assert_eq!(format_pg_timestamp(0), "2000-01-01T00:00:00+00:00");
        assert_eq!(
            format_pg_timestamp(1_500_000),
            "2000-01-01T00:00:01.5+00:00"
        );
        // 2024-02-29 12:34:56.000789 UTC
        let unix = 1_709_210_096_000_789i64;
        assert_eq!(
            format_pg_timestamp(unix - PG_EPOCH_OFFSET_US),
            "2024-02-29T12:34:56.000789+00:00"
        );
        assert_eq!(format_pg_timestamp(-1), "1999-12-31T23:59:59.999999+00:00");
    }
}
