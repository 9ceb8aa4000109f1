//! Authentication against a real server: SCRAM-SHA-256, MD5 and cleartext passwords work over
//! a replication connection; a wrong password is a refusal (retried slowly until someone fixes it) that never shows
//! the password.

use crate::common;

use common::*;
use walrelay::source::{ConnParams, Connection};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_md5_and_cleartext_authenticate_and_wrong_passwords_fail_cleanly() {
    let pg = PgCluster::start();
    let admin = connect(&pg.url("postgres")).await;
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scr@m pass';
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-pass';
             CREATE ROLE plain_user LOGIN REPLICATION PASSWORD 'plain-pass';",
        )
        .await
        .unwrap();
    pg.set_hba(
        "local all postgres trust\n\
         host all postgres 127.0.0.1/32 trust\n\
         host all,replication scram_user 127.0.0.1/32 scram-sha-256\n\
         host all,replication md5_user 127.0.0.1/32 md5\n\
         host all,replication plain_user 127.0.0.1/32 password\n",
    );
    for (user, password) in [
        ("scram_user", "scr%40m%20pass"),
        ("md5_user", "md5-pass"),
        ("plain_user", "plain-pass"),
    ] {
        let url = format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres?sslmode=disable",
            pg.port
        );
        let params = ConnParams::from_url(&url).unwrap();
        let mut conn = Connection::connect(&params, true)
            .await
            .unwrap_or_else(|e| panic!("{user} could not authenticate: {e}"));
        let rows = conn.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(
            rows[0][3].as_deref(),
            Some("postgres"),
            "{user}: replication connection to the database"
        );
        conn.close().await;
    }
    let url = format!(
        "postgres://scram_user:wrong-canary@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let err = match Connection::connect(&ConnParams::from_url(&url).unwrap(), true).await {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("28P01"), "{err}");
    assert!(
        !format!("{err} {err:?}").contains("wrong-canary"),
        "the password leaked into the error"
    );
    assert_eq!(
        walrelay::error::RunError::from(err).decision(),
        walrelay::error::Decision::Blocked,
        "a wrong password is refused: retried every reconnect_max_ms until it is fixed"
    );
}
