//! `deploy/kubernetes/`, checked by a real validator and against the binary: every manifest
//! (and the ConfigMaps kustomize generates) passes `kubernetes-validate --strict` with the
//! bundled Kubernetes schemas, the kustomization lists exactly the files that exist, and the
//! Deployment agrees with walrelay itself — its configuration and environment form a valid
//! config, the container port is the one walrelay listens on, the probe and scrape paths are
//! served, the grace period outlasts the shutdown timeout, the user is the image's.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_yaml::Value;

const DIR: &str = "deploy/kubernetes";

fn tool(name: &str) -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    let p = home.join(".cache/walrelay/tools/venv/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: scripts/test.sh installs it (scripts/tools.sh)",
        p.display()
    );
    p
}

fn yaml(file: &str) -> Value {
    let text = std::fs::read_to_string(Path::new(DIR).join(file)).unwrap();
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Runs kubernetes-validate --strict on files; returns (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool("kubernetes-validate"))
        .arg("--strict")
        .args(files)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("ERROR"), text)
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

#[test]
fn the_manifests_validate_and_the_kustomization_lists_them_all() {
    let k = yaml("kustomization.yaml");
    let resources: Vec<String> = k["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(k.get("namespace").is_none(), "namespace-agnostic");
    let mut generated = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    for g in k["configMapGenerator"].as_sequence().unwrap() {
        let name = g["name"].as_str().unwrap();
        let mut data = serde_yaml::Mapping::new();
        for f in g["files"].as_sequence().unwrap() {
            let f = f.as_str().unwrap();
            let text = std::fs::read_to_string(Path::new(DIR).join(f))
                .unwrap_or_else(|e| panic!("generator file {f}: {e}"));
            data.insert(Value::from(f), Value::from(text));
            generated.push(f.to_owned());
        }
        // The ConfigMap kustomize makes of it, validated like the rest.
        let cm = serde_yaml::to_string(
            &serde_yaml::from_str::<Value>(&format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"
            ))
            .map(|mut v| {
                v["data"] = Value::Mapping(data);
                v
            })
            .unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join(format!("{name}.yaml")), cm).unwrap();
    }
    // Every file of the directory is used, and every file used exists.
    for e in std::fs::read_dir(DIR).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            name == "kustomization.yaml" || resources.contains(&name) || generated.contains(&name),
            "{name} is not in kustomization.yaml"
        );
    }
    let mut files: Vec<PathBuf> = resources
        .iter()
        .filter(|r| yaml(r)["kind"] != "PodMonitor")
        .map(|r| Path::new(DIR).join(r))
        .collect();
    for e in std::fs::read_dir(dir.path()).unwrap() {
        files.push(e.unwrap().path());
    }
    let (ok, text) = validate(&files);
    assert!(ok, "{text}");
    assert_eq!(text.matches("passed").count(), files.len(), "{text}");
    // The validator can fail: a port given as a string where the schema wants an integer.
    let broken = dir.path().join("broken.yaml");
    let mut d = yaml("deployment.yaml");
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] =
        Value::from("9187");
    std::fs::write(&broken, serde_yaml::to_string(&d).unwrap()).unwrap();
    assert!(!validate(&[broken]).0, "a broken manifest must fail");
    // The PodMonitor is a CRD the bundled schemas do not know: check its shape here.
    let pm = yaml("podmonitor.yaml");
    assert_eq!(str_at(&pm, &["apiVersion"]), "monitoring.coreos.com/v1");
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert_eq!(str_at(ep, &["port"]), "http");
    assert_eq!(str_at(ep, &["path"]), "/metrics");
    assert_eq!(
        pm["spec"]["selector"],
        yaml("deployment.yaml")["spec"]["selector"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_agrees_with_the_binary() {
    let d = yaml("deployment.yaml");
    let pod = &d["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        d["spec"]["replicas"].as_u64(),
        Some(2),
        "active + hot standby"
    );
    // The config file mounted from the ConfigMap, plus the env, make a valid configuration.
    let mount = str_at(&c["volumeMounts"][0], &["mountPath"]);
    let mut env: Vec<(String, String)> = Vec::new();
    let secret = yaml("secret.yaml");
    for e in c["env"].as_sequence().unwrap() {
        let name = str_at(e, &["name"]).to_owned();
        let value = match e.get("value") {
            Some(v) => v.as_str().unwrap().to_owned(),
            None => {
                let key = str_at(e, &["valueFrom", "secretKeyRef", "key"]);
                assert_eq!(
                    str_at(e, &["valueFrom", "secretKeyRef", "name"]),
                    str_at(&secret, &["metadata", "name"])
                );
                str_at(&secret, &["stringData", key]).to_owned()
            }
        };
        env.push((name, value));
    }
    let config_path = env
        .iter()
        .find(|(k, _)| k == "WALRELAY_CONFIG")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(
        config_path,
        format!("{mount}/walrelay.toml"),
        "WALRELAY_CONFIG points into the mounted ConfigMap"
    );
    let toml = std::fs::read_to_string(Path::new(DIR).join("walrelay.toml")).unwrap();
    let settings = walrelay::config::from_str_with_env(&toml, &env)
        .unwrap_or_else(|e| panic!("the ConfigMap and the env are not a valid config: {e}"));
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(settings.service.http_listen.unwrap().port() as u64, port);
    assert_eq!(str_at(&c["ports"][0], &["name"]), "http");
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        grace * 1000 > settings.service.shutdown_timeout.as_millis() as u64 + 5_000,
        "the grace period ({grace} s) outlasts service.shutdown_timeout_ms with room to exit"
    );
    // The image's user, and a root filesystem walrelay never writes to.
    let dockerfile = std::fs::read_to_string("docker/Dockerfile").unwrap();
    let user = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        dockerfile.contains(&format!("USER {user}:")),
        "runAsUser {user}"
    );
    assert_eq!(
        c["securityContext"]["readOnlyRootFilesystem"],
        Value::Bool(true)
    );
    assert!(
        settings.service.state_file.is_none(),
        "nothing to write on a read-only root"
    );
    // The probe and scrape paths are served by the binary (any status but 404).
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("walrelay.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let mut relay = common::Relay::start_env(
        &cfg,
        &[
            ("WALRELAY_HTTP_LISTEN", "127.0.0.1:0"),
            // Nothing listens there: the endpoints answer while walrelay retries.
            (
                "DATABASE_URL",
                "postgres://walrelay@127.0.0.1:9/app?sslmode=disable",
            ),
            ("AMQP_URL", "amqp://guest:guest@127.0.0.1:9/%2f"),
        ],
    );
    let http = relay.http_port().await;
    let mut paths = vec![
        str_at(&c["livenessProbe"]["httpGet"], &["path"]).to_owned(),
        str_at(&c["readinessProbe"]["httpGet"], &["path"]).to_owned(),
        str_at(
            &yaml("podmonitor.yaml")["spec"]["podMetricsEndpoints"][0],
            &["path"],
        )
        .to_owned(),
    ];
    paths.push("/activez".into());
    for p in &paths {
        let path = p.clone();
        let (code, _) = tokio::task::spawn_blocking(move || common::http_get(http, &path))
            .await
            .unwrap();
        assert_ne!(code, 404, "{p} is not served");
    }
    let (code, _) = common::http_get(http, "/healthz");
    assert_eq!(code, 200, "alive while retrying");
    assert_eq!(common::http_get(http, "/nope").0, 404, "the check can fail");
    relay.kill9();
    let _ = Duration::ZERO;
}
