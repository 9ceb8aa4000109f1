//! The house plan as a test: every module of `src/` sits in one layer, and an import may only
//! point to its own layer or one below (docs/architecture.md, "Layers"). Between top-level
//! modules of the same layer no circle is allowed either. The test reads the source as text:
//! every `crate::<module>` path outside a comment is an import of that module. Unit-test files
//! may reach up for fixtures (see [`test_only`]).
//!
//! `KNOWN` lists the imports that still go up a layer while the plan is being carried out
//! (issue 29); the test also fails when one of them no longer occurs, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layer of each top-level module (a file `src/x.rs` or a folder `src/x/`).
const LAYERS: &[(&str, u8)] = &[
    // L0 words: values and vocabulary with no policy.
    ("lsn", 0),
    ("value", 0),
    ("pgoutput", 0),
    ("schema", 0),
    ("tls", 0),
    ("metrics", 0),
    ("health", 0),
    ("secret", 0),
    ("failpoint", 0),
    ("shutdown", 0),
    // L1 domain: what a change event is, which are published, what may be confirmed.
    ("event", 1),
    ("filter", 1),
    ("checkpoint", 1),
    ("position_file", 1),
    // L2 stages and clients: the pure transform, PostgreSQL, the sinks, backfill.
    ("transform", 2),
    ("source", 2),
    ("sink", 2),
    ("backfill", 2),
    // L3 policy: what an error means, the validated configuration.
    ("error", 3),
    ("config", 3),
    // L4 running: the pipeline and the process around it.
    ("pipeline", 4),
    ("service", 4),
    ("http", 4),
    ("probe", 4),
    ("preflight", 4),
    ("resync", 4),
    // L5 faces: the binary and its commands.
    ("commands", 5),
    ("main", 5),
    ("lib", 5),
];

/// Imports that still break the plan, up a layer or closing a circle: (from module, to
/// module). Only ever removed.
const KNOWN: &[(&str, &str)] = &[];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .unwrap_or_else(|| {
            panic!("src/{module} has no layer: add it to LAYERS and to docs/architecture.md")
        })
        .1
}

/// Every `crate::<module>` a file names outside comments.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + 7..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
            rest = after;
        }
    }
    out
}

/// A unit-test file (`tests.rs`, `*_tests.rs`, compiled only under `cfg(test)`): it may build
/// its fixtures with a higher layer (the filter's tests write their rules in TOML and let
/// `config` read them); what ships may not.
fn test_only(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_string_lossy();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// (module, file) for every `.rs` file under `src/` that ships.
fn files(dir: &Path, out: &mut Vec<(String, std::path::PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") && !test_only(&path) {
            let rel = path.strip_prefix("src").unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_owned();
            out.push((module, path));
        }
    }
}

/// The edges between top-level modules, with one file that makes each.
fn graph() -> BTreeMap<(String, String), String> {
    let mut all = Vec::new();
    files(Path::new("src"), &mut all);
    let mut edges = BTreeMap::new();
    for (module, path) in all {
        let text = std::fs::read_to_string(&path).unwrap();
        for to in imports(&text) {
            if to != module {
                edges
                    .entry((module.clone(), to))
                    .or_insert_with(|| path.display().to_string());
            }
        }
    }
    edges
}

#[test]
fn imports_point_down_only() {
    let edges = graph();
    let mut up = Vec::new();
    for ((from, to), file) in &edges {
        if layer(to) > layer(from) && !KNOWN.contains(&(from.as_str(), to.as_str())) {
            up.push(format!(
                "{file}: {from} (L{}) imports {to} (L{})",
                layer(from),
                layer(to)
            ));
        }
    }
    assert!(
        up.is_empty(),
        "imports that go up a layer:\n{}",
        up.join("\n")
    );
    let gone: Vec<_> = KNOWN
        .iter()
        .filter(|(f, t)| !edges.contains_key(&(f.to_string(), t.to_string())))
        .collect();
    assert!(
        gone.is_empty(),
        "no longer imported, remove from KNOWN: {gone:?}"
    );
}

#[test]
fn no_circle_between_modules() {
    let edges = graph();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        if !KNOWN.contains(&(from.as_str(), to.as_str())) {
            next.entry(from).or_default().push(to);
        }
    }
    // Depth-first search for a back edge; reports the circle it closes.
    fn visit<'a>(
        n: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        circles: &mut Vec<String>,
    ) {
        if let Some(i) = path.iter().position(|p| *p == n) {
            let mut c: Vec<&str> = path[i..].to_vec();
            c.push(n);
            circles.push(c.join(" -> "));
            return;
        }
        if done.contains(n) {
            return;
        }
        path.push(n);
        for m in next.get(n).into_iter().flatten() {
            visit(m, next, path, done, circles);
        }
        path.pop();
        done.insert(n);
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for n in next.keys() {
        visit(n, &next, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "circles between modules:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_reader_finds_imports_and_skips_comments() {
    let text = "use crate::lsn::Lsn;\n// crate::config in a comment\nlet x = crate::event::Op::Insert; // crate::sink";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["event", "lsn"]);
}

/// Split by concept before a file grows past this (style.md: small files; issue 29).
const MAX_LINES: usize = 450;

#[test]
fn no_source_file_over_450_lines() {
    // Every file, unit tests included.
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    walk(Path::new("src"), &mut all);
    let mut long: Vec<String> = all
        .iter()
        .filter_map(|path| {
            let n = std::fs::read_to_string(path).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{}: {n} lines", path.display()))
        })
        .collect();
    long.sort();
    assert!(
        long.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        long.join("\n")
    );
}
