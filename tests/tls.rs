//! TLS refuses what it must: against a PostgreSQL serving a certificate for `localhost` signed
//! by a test CA, `verify-full` accepts only the right CA and host name, `verify-ca` only the
//! right CA, `require` encrypts without checking (libpq's meaning); and an AMQPS server with an
//! untrusted certificate is refused by the publisher.

use crate::common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;
use walrelay::sink::Publisher;
use walrelay::source::{ConnParams, Connection};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for DNS:localhost signed by it, and an unrelated CA.
fn certificates(dir: &Path) {
    let ca = |name: &str| {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
    };
    ca("ca");
    ca("other-ca");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    // PostgreSQL insists on a private key only its owner can read.
    let _ = Command::new("chown")
        .args(["postgres", "server.key", "server.pem"])
        .current_dir(dir)
        .status();
    let _ = Command::new("chmod")
        .args(["600", "server.key"])
        .current_dir(dir)
        .status();
    let _ = Command::new("chmod")
        .args(["755", "."])
        .current_dir(dir)
        .status();
}

async fn try_connect(url: &str) -> Result<(), String> {
    let params = ConnParams::from_url(url).map_err(|e| e.to_string())?;
    match Connection::connect(&params, false).await {
        Ok(c) => {
            c.close().await;
            Ok(())
        }
        Err(e) => Err(walrelay::error::error_chain(&e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_refuse_bad_or_mismatched_certificates() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let d = certs.path().display();
    let pg = PgCluster::start_with(&[
        "ssl = on",
        &format!("ssl_cert_file = '{d}/server.pem'"),
        &format!("ssl_key_file = '{d}/server.key'"),
    ]);
    let url = |host: &str, mode: &str, ca: &str| {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={d}/{ca}.pem",
            pg.port
        )
    };
    try_connect(&url("localhost", "verify-full", "ca"))
        .await
        .expect("right CA and name");
    let e = try_connect(&url("127.0.0.1", "verify-full", "ca"))
        .await
        .unwrap_err();
    assert!(
        e.to_lowercase().contains("tls") || e.contains("certificate"),
        "name mismatch: {e}"
    );
    let e = try_connect(&url("localhost", "verify-full", "other-ca"))
        .await
        .unwrap_err();
    assert!(
        e.to_lowercase().contains("tls") || e.contains("certificate"),
        "unknown CA: {e}"
    );
    let e = try_connect(&url("localhost", "verify-ca", "other-ca"))
        .await
        .unwrap_err();
    assert!(!e.is_empty());
    try_connect(&url("127.0.0.1", "verify-ca", "ca"))
        .await
        .expect("verify-ca ignores the name");
    try_connect(&url("127.0.0.1", "require", "other-ca"))
        .await
        .expect("require does not verify");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_refuses_an_untrusted_broker_certificate() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let certs = tempfile::tempdir().unwrap();
    certificates(certs.path());
    let port = free_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-cert",
            "server.pem",
            "-key",
            "server.key",
        ])
        .current_dir(certs.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the TLS server",
        std::time::Duration::from_secs(10),
        || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    )
    .await;
    let settings = walrelay::config::from_str_with_env(
        &format!(
            "[postgres]\nurl = \"postgres://u@localhost/db\"\n\
             [rabbitmq]\nurl = \"amqps://guest:guest@localhost:{port}/%2f\"\nexchange = \"x\"\ndeclare_exchange = false\n"
        ),
        &[],
    )
    .expect("a valid config")
    .sink;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        Publisher::connect(&settings),
    )
    .await;
    let _ = server.kill();
    let _ = server.wait();
    match result {
        Ok(Ok(_)) => panic!("connected to a broker whose certificate nobody trusts"),
        Ok(Err(e)) => {
            let text = walrelay::error::error_chain(&e);
            assert!(!text.contains("guest:guest"), "credentials leaked: {text}");
            assert!(
                text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
                "refused for another reason than the certificate: {text}"
            );
        }
        Err(_) => panic!("the connection attempt hung instead of failing"),
    }
}
