//! The Prometheus text format from prometheus-client's OpenMetrics output (`/metrics` serves
//! the text format, which every scraper reads).

/// Rewrites an OpenMetrics exposition as Prometheus text: counters' metadata names the `_total`
/// sample, `# EOF` and `# UNIT` lines go. Pure, so it is unit-tested.
pub fn openmetrics_to_text(om: &str) -> String {
    let mut counters: Vec<&str> = Vec::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            if let (Some(name), Some("counter")) = (it.next(), it.next()) {
                counters.push(name);
            }
        }
    }
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (*p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let name = if counters.contains(&name) {
                    format!("{name}_total")
                } else {
                    name.to_owned()
                };
                out.push_str(prefix);
                out.push_str(&name);
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::Metrics;

    #[test]
    fn the_text_format_names_counter_samples_and_has_no_eof() {
        let m = Metrics::new();
        m.filtered("op");
        let text = m.render_text();
        assert!(
            text.contains("# TYPE walrelay_events_filtered_total counter"),
            "{text}"
        );
        assert!(text.contains("# HELP walrelay_events_filtered_total "));
        assert!(text.contains("walrelay_events_filtered_total{reason=\"op\"} 1"));
        assert!(text.contains("# TYPE walrelay_streaming gauge"));
        assert!(!text.contains("# EOF"));
        assert!(m.render().ends_with("# EOF\n"));
    }
}
