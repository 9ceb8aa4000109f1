//! The container image, executed without a Docker engine: the Dockerfile's build stage is run
//! as the engine would run it — a scratch directory holding exactly what its `COPY` lines bring
//! (after `.dockerignore`), its `WORKDIR`, then its `RUN` lines in order, offline from the local
//! cargo cache, with `--locked` — and the binary it builds is started with exactly the image's
//! `ENV`, `ENTRYPOINT`/`CMD` and config path against real PostgreSQL and RabbitMQ, until the
//! image's `HEALTHCHECK` command exits 0. A Dockerfile that cannot build fails here.
//!
//! BuildKit cache mounts (`RUN --mount=type=cache,target=…`) are emulated as what they are: a
//! directory that outlives the build (under `~/.cache/walrelay/image-build`), so a second run
//! recompiles only walrelay. Absolute paths the stage writes must live under `/out`, which maps
//! into the scratch directory; any other absolute path fails the test, by design.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One Dockerfile instruction: its keyword and its arguments (continuations joined).
#[derive(Debug, Clone)]
struct Instruction {
    keyword: String,
    args: String,
}

fn parse(dockerfile: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push(Instruction {
            keyword: keyword.to_uppercase(),
            args: args.trim().to_owned(),
        });
        current.clear();
    }
    out
}

/// The instructions of stage `name` (`FROM … AS name`), or of the last stage for `None`.
fn stage(all: &[Instruction], name: Option<&str>) -> Vec<Instruction> {
    let starts: Vec<usize> = (0..all.len())
        .filter(|i| all[*i].keyword == "FROM")
        .collect();
    let start = match name {
        Some(n) => *starts
            .iter()
            .find(|i| all[**i].args.ends_with(&format!(" AS {n}")))
            .expect("the stage exists"),
        None => *starts.last().unwrap(),
    };
    let end = starts
        .iter()
        .find(|i| **i > start)
        .copied()
        .unwrap_or(all.len());
    all[start + 1..end].to_vec()
}

/// A JSON exec-form array (`["a", "b"]`).
fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("exec form {args}: {e}"))
}

/// `.dockerignore` as path prefixes (the only form it uses; anything else fails loudly).
fn ignored(patterns: &[String], rel: &Path) -> bool {
    patterns.iter().any(|p| {
        let p = p.trim_end_matches('/');
        rel.starts_with(p)
    })
}

fn copy_tree(src: &Path, dst: &Path, rel: &Path, ignore: &[String]) {
    if ignored(ignore, rel) {
        return;
    }
    if src.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy_tree(
                &e.path(),
                &dst.join(e.file_name()),
                &rel.join(e.file_name()),
                ignore,
            );
        }
    } else {
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(src, dst).unwrap();
    }
}

fn cache_root() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/walrelay/image-build")
}

/// Runs the build stage; returns the scratch root (`/out` is `root/out`).
fn build_stage(dockerfile: &[Instruction], ignore: &[String]) -> PathBuf {
    let root = cache_root().join("ctx");
    // A fresh context each time, at a stable path (so cargo's cached fingerprints still apply).
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    let mut workdir = root.join("workdir");
    for ins in stage(dockerfile, Some("build")) {
        match ins.keyword.as_str() {
            "WORKDIR" => {
                workdir = root.join(ins.args.trim_start_matches('/'));
                std::fs::create_dir_all(&workdir).unwrap();
            }
            "COPY" => {
                let parts: Vec<&str> = ins.args.split_whitespace().collect();
                assert!(
                    !parts[0].starts_with("--"),
                    "COPY flags in the build stage are not emulated: {}",
                    ins.args
                );
                let (srcs, dest) = parts.split_at(parts.len() - 1);
                for src in srcs {
                    let rel = Path::new(src);
                    assert!(
                        !ignored(ignore, rel),
                        "COPY {src}: .dockerignore excludes it"
                    );
                    let target = if dest[0].ends_with('/') && Path::new(src).is_file() {
                        workdir.join(dest[0]).join(rel.file_name().unwrap())
                    } else {
                        workdir.join(dest[0])
                    };
                    copy_tree(Path::new(src), &target, rel, ignore);
                }
            }
            "RUN" => {
                let mut rest = ins.args.as_str();
                let mut caches = Vec::new();
                while let Some(r) = rest.strip_prefix("--mount=") {
                    let (opt, tail) = r.split_once(' ').unwrap();
                    let target = opt
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("target="))
                        .expect("a cache mount names its target");
                    assert!(opt.contains("type=cache"), "only cache mounts: {opt}");
                    caches.push(target.to_owned());
                    rest = tail.trim_start();
                }
                for target in &caches {
                    if target.starts_with("/usr/local/cargo") {
                        continue; // the host's cargo registry, read offline
                    }
                    let inside = root.join(target.trim_start_matches('/'));
                    let keep = cache_root()
                        .join("mounts")
                        .join(target.trim_start_matches('/'));
                    std::fs::create_dir_all(&keep).unwrap();
                    std::fs::create_dir_all(inside.parent().unwrap()).unwrap();
                    std::os::unix::fs::symlink(&keep, &inside).unwrap();
                }
                let out = root.join("out");
                let cmd = rest.replace("/out", &out.display().to_string());
                for word in cmd.split_whitespace() {
                    assert!(
                        !word.starts_with('/') || word.starts_with(&root.display().to_string()),
                        "the build stage writes {word}: keep absolute paths under /out"
                    );
                }
                let started = Instant::now();
                let status = Command::new("sh")
                    .args(["-c", &cmd])
                    .current_dir(&workdir)
                    .env("CARGO_NET_OFFLINE", "true")
                    .env_remove("CARGO_TARGET_DIR")
                    .status()
                    .unwrap();
                assert!(status.success(), "RUN failed: {cmd}");
                eprintln!("RUN took {:?}: {cmd}", started.elapsed());
            }
            "FROM" | "ENV" | "ARG" => {}
            other => panic!("{other} in the build stage is not emulated"),
        }
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_builds_and_its_binary_becomes_healthy_under_the_images_settings() {
    let dockerfile = parse(&std::fs::read_to_string("docker/Dockerfile").unwrap());
    let ignore: Vec<String> = std::fs::read_to_string(".dockerignore")
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(!l.contains(['*', '?', '!']), "pattern {l} is not emulated");
            l.to_owned()
        })
        .collect();
    let root = build_stage(&dockerfile, &ignore);

    // The run stage: its files, environment and command.
    let mut files: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut env: Vec<(String, String)> = Vec::new();
    let (mut entrypoint, mut cmd, mut healthcheck) = (Vec::new(), Vec::new(), Vec::new());
    for ins in stage(&dockerfile, None) {
        match ins.keyword.as_str() {
            "COPY" => {
                let parts: Vec<&str> = ins.args.split_whitespace().collect();
                let (src, dest) = match parts.as_slice() {
                    [from, src, dest] if from.starts_with("--from=build") => {
                        (root.join(src.trim_start_matches('/')), dest)
                    }
                    [src, dest] => (PathBuf::from(src), dest),
                    other => panic!("COPY {other:?}"),
                };
                assert!(src.is_file(), "COPY source {} is missing", src.display());
                files.insert((*dest).to_owned(), src);
            }
            "ENV" => {
                for kv in ins.args.split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap();
                    env.push((k.to_owned(), v.to_owned()));
                }
            }
            "ENTRYPOINT" => entrypoint = exec_form(&ins.args),
            "CMD" => cmd = exec_form(&ins.args),
            "HEALTHCHECK" => {
                let at = ins.args.find("CMD ").expect("HEALTHCHECK CMD");
                healthcheck = exec_form(&ins.args[at + 4..]);
            }
            _ => {}
        }
    }
    // The image's paths, as they are in the scratch root.
    let map = |s: &str| {
        files
            .get(s)
            .map_or_else(|| s.to_owned(), |p| p.display().to_string())
    };
    let binary = files
        .get("/usr/local/bin/walrelay")
        .expect("the image ships the binary");
    let size = std::fs::metadata(binary).unwrap().len();
    eprintln!("shipped binary: {:.1} MB", size as f64 / 1e6);
    assert!(
        size < 20_000_000,
        "the shipped binary is {size} bytes: debug info?"
    );

    let (pg, db, client) =
        PgCluster::with_db(&std::fs::read_to_string("docker/demo/schema.sql").unwrap()).await;
    let exchange = unique("image");
    let queue = TestQueue::new(&exchange, Some("#")).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("walrelay.log");
    let argv: Vec<String> = entrypoint.iter().chain(&cmd).map(|a| map(a)).collect();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().map(|(k, v)| (k.clone(), map(v))))
        // What a deployment adds (docker-compose.yml does the same).
        .env("DATABASE_URL", pg.url(&db))
        .env("AMQP_URL", amqp_url())
        .env("WALRELAY_RABBITMQ_EXCHANGE", &exchange)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let health: Vec<String> = healthcheck.iter().map(|a| map(a)).collect();
    let start = Instant::now();
    loop {
        let ok = Command::new(&health[0])
            .args(&health[1..])
            .output()
            .unwrap()
            .status
            .success();
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the HEALTHCHECK never passed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("\"streaming\""),
        "JSON logs, streaming: {text}"
    );
    client
        .batch_execute("INSERT INTO customers (email, password_hash) VALUES ('a@b.c', 'x')")
        .await
        .unwrap();
    let got = queue.take(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].routing_key, "public.customers.insert");
    assert!(got[0].body["new"].get("password_hash").is_none());
    // STOPSIGNAL SIGTERM: a clean exit.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    queue.delete().await;
}
