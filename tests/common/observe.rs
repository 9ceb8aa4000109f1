//! What a test reads off a running walrelay: HTTP endpoints, metric samples and names, and
//! the peak memory of a process.

/// A plain HTTP GET on 127.0.0.1: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of a Prometheus sample (`name{labels}`), or 0 when absent.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A histogram's cumulative buckets in an exposition (the benches read confirm latencies): `(upper bound, observations at or
/// below it)` in the exposition's order (ascending, `+Inf` last).
#[allow(dead_code)]
pub fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q` of the observations made between two
/// readings of a histogram (`before`, `after`: [`histogram`]); `None` when none were made.
#[allow(dead_code)]
pub fn histogram_quantile_bound(
    before: &[(f64, f64)],
    after: &[(f64, f64)],
    q: f64,
) -> Option<f64> {
    let count =
        |h: &[(f64, f64)], le: f64| h.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
    let total = after.last().map(|&(le, c)| c - count(before, le))?;
    if total <= 0.0 {
        return None;
    }
    after
        .iter()
        .find(|&&(le, c)| c - count(before, le) >= q * total)
        .map(|&(le, _)| le)
}

/// The peak resident set (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The sample names an exposition (OpenMetrics or Prometheus text) defines, from its `# TYPE`
/// lines: a counter's `_total`, a histogram's `_bucket`, `_count` and `_sum`.
pub fn exported_metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(|l| {
            let mut it = l.split_whitespace();
            let (name, kind) = (it.next().unwrap().to_owned(), it.next().unwrap());
            match kind {
                "counter" if name.ends_with("_total") => vec![name],
                "counter" => vec![format!("{name}_total")],
                "histogram" => ["_bucket", "_count", "_sum"]
                    .iter()
                    .map(|s| format!("{name}{s}"))
                    .collect(),
                "info" => vec![format!("{name}_info")],
                _ => vec![name],
            }
        })
        .collect()
}

/// The `walrelay_…` metric names a PromQL expression queries.
pub fn queried_metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("walrelay_")
        .map(|(i, _)| {
            expr[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}
