//! Failover with a failover slot (PostgreSQL 17+, run by `scripts/pg-matrix.sh 17 18`): a
//! primary with a synchronous physical standby that synchronizes walrelay's slot
//! (`sync_replication_slots`, `synchronized_standby_slots`); the primary crashes mid-workload,
//! the standby is promoted, the address walrelay uses moves to it, and the checker must find
//! lost = 0. Replays are expected (the synchronized copy may lag the primary's slot).

use crate::common;

use std::time::Duration;

use common::bed::{Bed, T, report, verdict};
use common::checker::{Monitor, Run};
use common::proxy::Proxy;
use common::*;

/// Makes a streaming standby of `primary`: a cold copy of its data directory (the npm
/// binaries have no pg_basebackup), started with `standby.signal`.
fn standby_of(primary: &PgCluster, db: &str) -> PgCluster {
    primary.pg_ctl_stop("fast");
    let dir = tempfile::Builder::new()
        .prefix("walrelay-standby")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let copy = std::process::Command::new("cp")
        .arg("-a")
        .arg(primary.dir.path().join("data"))
        .arg(&data)
        .status()
        .unwrap();
    assert!(copy.success());
    let _ = std::fs::remove_file(data.join("postmaster.pid"));
    let port = free_port();
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    conf.push_str(&format!(
        "port = {port}\nunix_socket_directories = '{}'\n\
         primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname={db}'\n\
         primary_slot_name = 'phys'\nhot_standby_feedback = on\nsync_replication_slots = on\n",
        dir.path().display(),
        primary.port
    ));
    std::fs::write(data.join("postgresql.conf"), conf).unwrap();
    std::fs::write(data.join("standby.signal"), "").unwrap();
    if std::process::Command::new("id")
        .arg("-u")
        .output()
        .unwrap()
        .stdout
        .starts_with(b"0\n")
    {
        let _ = std::process::Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status();
    }
    primary.pg_ctl_start();
    let standby = PgCluster { dir, port };
    standby.pg_ctl_start();
    standby
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs PostgreSQL 17+: scripts/pg-matrix.sh 17 18"]
async fn a_standby_promotion_with_a_failover_slot_loses_nothing() {
    let mut bed = Bed::new(&["synchronous_commit = on"]).await;
    let version: i32 = bed
        .client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        version >= 170000,
        "failover slots need PostgreSQL 17+, this is {version}"
    );
    let db = bed
        .url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    bed.client
        .execute(
            "SELECT pg_create_physical_replication_slot('phys', true)",
            &[],
        )
        .await
        .unwrap();
    let standby = standby_of(&bed.pg, &db);
    let primary = connect(&bed.pg.url("postgres")).await;
    for sql in [
        "ALTER SYSTEM SET synchronized_standby_slots = 'phys'",
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "SELECT pg_reload_conf()",
    ] {
        primary.batch_execute(sql).await.unwrap();
    }
    let standby_client = connect(&standby.url(&db)).await;
    wait_for("the standby streaming", T, || async {
        let r = primary
            .query(
                "SELECT 1 FROM pg_stat_replication WHERE state = 'streaming'",
                &[],
            )
            .await
            .unwrap();
        (!r.is_empty()).then_some(())
    })
    .await;

    // Everything (walrelay, the workload, the monitor) reaches the primary by one address.
    let addr = Proxy::start(&format!("127.0.0.1:{}", bed.pg.port)).await;
    let pg_port = bed.pg.port;
    let via = |url: &str| url.replace(&format!(":{pg_port}/"), &format!(":{}/", addr.port));
    bed.url = via(&bed.url);
    bed.other_url = via(&bed.other_url);
    let cfg = bed.config(amqp_url());
    config_set(&cfg, "postgres", "failover_slot", "true");
    let doctor = std::process::Command::new(env!("CARGO_BIN_EXE_walrelay"))
        .args(["doctor", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        text.contains("ok   postgres: synchronized_standby_slots = phys"),
        "{text}"
    );
    let relay = Relay::start(&cfg);
    relay.wait_log("streaming", T).await;
    let monitor = Monitor::start(bed.url.clone(), bed.slot.clone());
    let run = Run::start(&bed.url, &bed.other_url, bed.queue(), 2);
    let slot = bed.slot.clone();
    wait_for("the slot synchronized to the standby", T, || async {
        let r = standby_client
            .query(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND synced AND NOT temporary \
                 AND confirmed_flush_lsn IS NOT NULL",
                &[&slot],
            )
            .await
            .unwrap();
        (!r.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    bed.pg.pg_ctl_stop("immediate");
    standby_client
        .execute("SELECT pg_promote()", &[])
        .await
        .unwrap();
    addr.set_upstream(&format!("127.0.0.1:{}", standby.port));
    addr.sever_all();
    let before = run.committed_so_far();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        run.committed_so_far() > before,
        "the workload did not resume on the new primary"
    );

    let v = verdict(&bed, run, monitor).await;
    report("primary crash, standby promoted, failover slot", &v, 1);
    v.assert_safe_allowing_backwards();
    assert!(!relay.log().contains("by someone else"), "{}", relay.log());
    bed.finish().await;
}
