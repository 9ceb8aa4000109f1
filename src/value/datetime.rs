//! Timestamps as `to_jsonb()` writes them (XSD style): the ISO text output with `T` between date
//! and time, and for `timestamptz` a zone offset that always has minutes (`+00:00`, not `+00`).
//! `date`, `infinity` and `-infinity` are the text output unchanged.
//! This relies on the session settings walrelay sets on its connection (DateStyle=ISO).

use super::json_string::write_json_string;

/// `timestamp`: `2024-01-02 03:04:05.5` → `"2024-01-02T03:04:05.5"` (a trailing ` BC` stays).
pub(super) fn write_timestamp(out: &mut String, text: &str) {
    write_json_string(out, &xsd(text, false));
}

/// `timestamptz`: `2024-01-02 03:04:05+00` → `"2024-01-02T03:04:05+00:00"`.
pub(super) fn write_timestamptz(out: &mut String, text: &str) {
    write_json_string(out, &xsd(text, true));
}

fn xsd(text: &str, with_zone: bool) -> String {
    // Finite ISO output starts with a date `YYYY-MM-DD` followed by a space.
    let Some(space) = text.find(' ') else {
        return text.to_owned();
    };
    if !text[..space].contains('-') {
        return text.to_owned();
    }
    let (date, rest) = (&text[..space], &text[space + 1..]);
    let (time, era) = match rest.strip_suffix(" BC") {
        Some(t) => (t, " BC"),
        None => (rest, ""),
    };
    let mut s = String::with_capacity(text.len() + 3);
    s.push_str(date);
    s.push('T');
    if with_zone {
        // The offset starts at the last '+' or '-' in the time part (the time has neither).
        match time.rfind(['+', '-']) {
            Some(at) => {
                let (clock, zone) = time.split_at(at);
                s.push_str(clock);
                s.push_str(zone);
                // `+05` → `+05:00`; `+05:30` and `+05:30:15` are already complete.
                if zone.len() == 3 {
                    s.push_str(":00");
                }
            }
            None => s.push_str(time),
        }
    } else {
        s.push_str(time);
    }
    s.push_str(era);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(t: &str) -> String {
        let mut o = String::new();
        write_timestamp(&mut o, t);
        o
    }
    fn tstz(t: &str) -> String {
        let mut o = String::new();
        write_timestamptz(&mut o, t);
        o
    }

    #[test]
    fn timestamps_use_a_t_separator() {
        assert_eq!(
            ts("2024-01-02 03:04:05.123456"),
            "\"2024-01-02T03:04:05.123456\""
        );
        assert_eq!(ts("0044-03-15 12:00:00 BC"), "\"0044-03-15T12:00:00 BC\"");
        assert_eq!(ts("infinity"), "\"infinity\"");
        assert_eq!(ts("-infinity"), "\"-infinity\"");
    }

    #[test]
    fn zone_offsets_always_have_minutes() {
        assert_eq!(
            tstz("2024-01-02 03:04:05+00"),
            "\"2024-01-02T03:04:05+00:00\""
        );
        assert_eq!(
            tstz("2024-01-02 03:04:05.5-03:30"),
            "\"2024-01-02T03:04:05.5-03:30\""
        );
        assert_eq!(
            tstz("1900-01-01 00:00:00+00:09:21"),
            "\"1900-01-01T00:00:00+00:09:21\""
        );
        assert_eq!(
            tstz("0044-03-15 12:00:00+00 BC"),
            "\"0044-03-15T12:00:00+00:00 BC\""
        );
        assert_eq!(tstz("infinity"), "\"infinity\"");
    }
}
