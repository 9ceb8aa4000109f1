//! The configuration reference must document every key the config accepts, and nothing else.
//! The accepted keys come from the config structs themselves: serde lists them when it
//! rejects an unknown key.

use std::collections::BTreeSet;

fn accepted_keys(header: &str) -> BTreeSet<String> {
    let text = format!("{header}\n__probe__ = 1\n");
    let err = walrelay::config::from_str_with_env(&text, &[])
        .unwrap_err()
        .to_string();
    // serde says "expected one of `a`, `b`" or, for a single field, "expected `a`".
    let list = err
        .split("expected one of")
        .nth(1)
        .or_else(|| err.split("expected").nth(1))
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    // Two fields read "expected `a` or `b`".
    list.split([',', ' '])
        .filter(|k| *k != "or")
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

fn documented_keys(header: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string("docs/configuration.md").unwrap();
    let start = doc
        .find(&format!("## `{header}`"))
        .unwrap_or_else(|| panic!("no section {header}"));
    let rest = &doc[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end]
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn configuration_reference_matches_the_config_struct() {
    for section in [
        "[postgres]",
        "[rabbitmq]",
        "[service]",
        "[http]",
        "[filter]",
        "[[filter.table]]",
        "[flood]",
        "[backfill]",
        "[snapshot]",
        "[control]",
    ] {
        let accepted = accepted_keys(section);
        assert!(!accepted.is_empty(), "{section}: {accepted:?}");
        let documented = documented_keys(section);
        let undocumented: Vec<_> = accepted.difference(&documented).collect();
        let unknown: Vec<_> = documented.difference(&accepted).collect();
        assert!(
            undocumented.is_empty(),
            "{section} keys missing from docs/configuration.md: {undocumented:?}"
        );
        assert!(
            unknown.is_empty(),
            "{section} docs describe keys the config does not accept: {unknown:?}"
        );
    }
}

#[test]
fn example_config_is_valid() {
    let text = std::fs::read_to_string("walrelay.example.toml").unwrap();
    walrelay::config::from_str_with_env(&text, &[]).expect("walrelay.example.toml is valid");
}
