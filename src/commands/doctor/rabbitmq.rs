//! The doctor's RabbitMQ checks: credentials over AMQP, exchanges probed passively (an existing
//! one is declared again exactly as `run` declares it, which changes nothing and proves the
//! configure permission), and through the management API the user's permissions and tags, the
//! bindings every routing key needs and the queues behind them.

use std::time::Duration;

use amqprs::channel::ExchangeDeclareArguments;
use serde_json::Value;

use super::{Finding, Level, Streamed, topic};
use crate::config::Settings;
use crate::event::routing::{KeyRef, RouteVars, RoutingTemplate};
use crate::pgoutput::{Column, Datum, Relation, ReplicaIdentity, TupleData};
use crate::sink::management::{Api, segment};
use crate::sink::{AmqpUrl, Link};

const SIDE: &str = "rabbitmq";

fn f(level: Level, m: impl Into<String>) -> Finding {
    Finding::new(level, SIDE, m)
}

/// The routing keys (and exchange) the config produces for a table. Key values are unknown
/// ahead of time, so `{key.x}` renders a sample word and `{partition}` every partition.
fn produced(settings: &Settings, t: &Streamed) -> (String, Vec<String>) {
    let rule = settings.filter.rule(&t.schema, &t.name);
    let exchange = rule
        .and_then(|r| r.exchange.clone())
        .unwrap_or_else(|| settings.sink.exchange.clone());
    let template: &RoutingTemplate = rule
        .and_then(|r| r.routing_key.as_ref())
        .unwrap_or(&settings.sink.routing_key);
    let rel = Relation {
        oid: 0,
        schema: t.schema.clone(),
        name: t.name.clone(),
        replica_identity: ReplicaIdentity::Default,
        columns: template
            .key_columns()
            .map(|c| Column {
                name: c.to_owned(),
                is_key: true,
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    };
    let sample = TupleData {
        columns: rel.columns.iter().map(|_| Datum::Text(b"1")).collect(),
    };
    let positions: Vec<usize> = (0..rel.columns.len()).collect();
    let key = KeyRef {
        rel: &rel,
        columns: &positions,
        tuple: &sample,
    };
    let partitions: Vec<Option<u32>> = match rule.and_then(|r| r.partitions) {
        Some(n) => (0..n).map(Some).collect(),
        None => vec![None],
    };
    let mut keys = Vec::new();
    for op in &t.ops {
        for p in &partitions {
            keys.push(template.render(&RouteVars {
                schema: &t.schema,
                table: &t.name,
                op,
                key: Some(key),
                partition: *p,
            }));
        }
    }
    keys.dedup();
    (exchange, keys)
}

/// Credentials and exchanges over AMQP, then bindings and queues over the management API.
pub(super) async fn check(settings: &Settings, tables: &[Streamed], out: &mut Vec<Finding>) {
    let uri = &settings.sink.url;
    super::cluster::nodes(settings, out).await;
    let mut exchanges: Vec<String> = vec![settings.sink.exchange.clone()];
    exchanges.extend(settings.sink.extra_exchanges.iter().cloned());
    let Some(missing) = exchange_checks(settings, uri, &exchanges, out).await else {
        return;
    };
    let Some(api) = settings.sink.management_api() else {
        return out.push(f(
            Level::Warn,
            "rabbitmq.management_url is not usable: bindings not checked",
        ));
    };
    super::permissions::check(settings, &api, &exchanges, out).await;
    let cluster = super::cluster::size(&api).await;
    out.extend(super::cluster::one_of_many(
        settings.sink.nodes.len(),
        cluster,
    ));
    let vhost = segment(&uri.vhost);
    let mut bindings: Vec<(String, Vec<Value>)> = Vec::new();
    for x in &exchanges {
        let found = if missing.contains(x) {
            Vec::new()
        } else {
            match api
                .get(&format!(
                    "/api/exchanges/{vhost}/{}/bindings/source",
                    segment(x)
                ))
                .await
            {
                Ok(Value::Array(list)) => list,
                Ok(_) => Vec::new(),
                Err(e) => {
                    return out.push(f(
                        Level::Warn,
                        format!("management API at {} not usable ({e}): bindings and queues not checked (enable rabbitmq_management or set rabbitmq.management_url)", api.describe()),
                    ));
                }
            }
        };
        bindings.push((x.clone(), found));
    }
    let queues = binding_checks(settings, tables, &bindings, out);
    backfill_checks(settings, tables, &bindings, out);
    queue_checks(&api, &vhost, queues, cluster.unwrap_or(1), out).await;
}

/// Connects with the configured credentials and probes each exchange passively (nothing is
/// declared). Returns the exchanges walrelay will declare at start, or `None` when the broker
/// cannot be used at all.
async fn exchange_checks(
    settings: &Settings,
    uri: &AmqpUrl,
    exchanges: &[String],
    out: &mut Vec<Finding>,
) -> Option<Vec<String>> {
    let timeout = settings.sink.confirm_timeout.min(Duration::from_secs(10));
    let link = match Link::open(uri, "walrelay doctor", timeout).await {
        Ok((link, _signals)) => link,
        Err(e) => {
            out.push(f(Level::Fail, e.to_string()));
            return None;
        }
    };
    out.push(f(
        Level::Ok,
        format!("connected to {}:{} as {}", uri.host, uri.port, uri.user),
    ));
    let mut missing = Vec::new();
    for x in exchanges {
        // A passive declare only checks existence; a failed one closes the channel, so each
        // probe has a channel of its own.
        let ch = match link.channel().await {
            Ok(ch) => ch,
            Err(e) => {
                out.push(f(Level::Fail, format!("cannot open a channel: {e}")));
                return None;
            }
        };
        let passive = ExchangeDeclareArguments::new(x, "topic")
            .passive(true)
            .finish();
        match ch.exchange_declare(passive).await {
            Ok(()) => {
                let _ = ch.close().await;
                if settings.sink.declare_exchange {
                    // walrelay declares it at every start: the same declaration of an existing
                    // exchange changes nothing, and proves the configure permission (and that
                    // the existing exchange is a durable topic exchange, or the start fails).
                    redeclare(&link, x, out).await;
                } else {
                    out.push(f(Level::Ok, format!("exchange {x:?} exists")));
                }
            }
            Err(e) => {
                // 404 is "no such exchange"; anything else (403: not allowed) is its own finding.
                let why = link.explain("probing", e).detail;
                if !why.contains(" 404 ") {
                    out.push(f(Level::Fail, format!("exchange {x:?}: {why}")));
                } else if settings.sink.declare_exchange {
                    missing.push(x.clone());
                    out.push(f(Level::Ok, format!("exchange {x:?} does not exist yet; walrelay declares it (durable topic) at start")));
                } else {
                    out.push(f(
                        Level::Fail,
                        format!(
                            "exchange {x:?} does not exist and rabbitmq.declare_exchange = false"
                        ),
                    ));
                }
            }
        }
    }
    link.close().await;
    Some(missing)
}

/// Declares an existing exchange exactly as walrelay's start does (durable topic, no
/// arguments): a no-op when it matches, else the broker's refusal, which `run` would meet too.
async fn redeclare(link: &Link, x: &str, out: &mut Vec<Finding>) {
    let ch = match link.channel().await {
        Ok(ch) => ch,
        Err(e) => return out.push(f(Level::Fail, format!("cannot open a channel: {e}"))),
    };
    let same = ExchangeDeclareArguments::new(x, "topic")
        .durable(true)
        .finish();
    match ch.exchange_declare(same).await {
        Ok(()) => {
            out.push(f(
                Level::Ok,
                format!("exchange {x:?} exists; walrelay may declare it (configure permission)"),
            ));
            let _ = ch.close().await;
        }
        Err(e) => {
            let why = link.explain("declaring", e).detail;
            let hint = if why.contains(" 403 ") {
                format!(
                    ": give {}'s user the configure permission on it (rabbitmqctl set_permissions), or set rabbitmq.declare_exchange = false",
                    link.url.describe()
                )
            } else if why.contains(" 406 ") {
                " : it exists with another type, durability or arguments than walrelay's durable topic exchange; set rabbitmq.declare_exchange = false to use it as it is".to_owned()
            } else {
                String::new()
            };
            out.push(f(Level::Fail, format!("exchange {x:?}: {why}{hint}")));
        }
    }
}

/// Every routing key a streamed table produces must match a binding on its exchange (or the
/// message would be returned unroutable and walrelay would stop). Returns the queues bound.
fn binding_checks(
    settings: &Settings,
    tables: &[Streamed],
    bindings: &[(String, Vec<Value>)],
    out: &mut Vec<Finding>,
) -> Vec<String> {
    let mut queues: Vec<String> = Vec::new();
    for t in tables {
        let (exchange, keys) = produced(settings, t);
        let list = bindings
            .iter()
            .find(|(x, _)| *x == exchange)
            .map(|(_, l)| l.as_slice())
            .unwrap_or(&[]);
        let mut unroutable = Vec::new();
        for key in &keys {
            let hits: Vec<&Value> = list
                .iter()
                .filter(|b| {
                    b["routing_key"]
                        .as_str()
                        .is_some_and(|bk| topic::matches(bk, key))
                })
                .collect();
            if hits.is_empty() {
                unroutable.push(key.clone());
            }
            for b in hits {
                if b["destination_type"] == "queue"
                    && let Some(q) = b["destination"].as_str()
                    && !queues.iter().any(|x| x == q)
                {
                    queues.push(q.to_owned());
                }
            }
        }
        if unroutable.is_empty() {
            out.push(f(
                Level::Ok,
                format!(
                    "{}.{}: every routing key is bound on exchange {exchange:?}",
                    t.schema, t.name
                ),
            ));
        } else {
            out.push(f(
                Level::Fail,
                format!(
                    "messages for {} would be unroutable: exchange {exchange:?} has no binding that matches (walrelay would stop and hold the slot)",
                    unroutable.join(", ")
                ),
            ));
        }
    }
    queues
}

/// Whether a binding exists for what a backfill publishes (`read` events, control events) and
/// for `schema_changed` / `slot_created` when they are on: without one, the first such
/// message is returned unroutable and walrelay holds the stream until a binding exists.
fn backfill_checks(
    settings: &Settings,
    tables: &[Streamed],
    bindings: &[(String, Vec<Value>)],
    out: &mut Vec<Finding>,
) {
    let bound = |exchange: &str, key: &str| {
        bindings
            .iter()
            .filter(|(x, _)| x == exchange)
            .flat_map(|(_, l)| l.iter())
            .any(|b| {
                b["routing_key"]
                    .as_str()
                    .is_some_and(|bk| topic::matches(bk, key))
            })
    };
    let mut unbound_reads = Vec::new();
    for t in tables {
        let reads = Streamed {
            ops: vec!["read"],
            ..t.clone()
        };
        let (exchange, keys) = produced(settings, &reads);
        unbound_reads.extend(keys.into_iter().filter(|k| !bound(&exchange, k)));
    }
    if !unbound_reads.is_empty() {
        out.push(f(
            Level::Warn,
            format!(
                "a backfill would hold the stream: `walrelay backfill` (a table's existing rows as `read` events, docs/backfill.md) \
                 publishes on {}, which no binding matches; bind them before you ask for one",
                unbound_reads.join(", ")
            ),
        ));
    }
    let b = &settings.backfill;
    let exchange = settings.sink.exchange.as_str();
    let unbound = |kinds: &[&str]| -> Vec<String> {
        kinds
            .iter()
            .map(|k| format!("{}.{k}", b.control_prefix))
            .filter(|k| !bound(exchange, k))
            .collect()
    };
    let backfill = unbound(&[
        "backfill_started",
        "backfill_finished",
        "backfill_cancelled",
        "stream_gap",
    ]);
    if b.control_events && !backfill.is_empty() {
        out.push(f(
            Level::Warn,
            format!(
                "a backfill or a resync would hold the stream: they announce themselves as control events on {}, which exchange {exchange:?} \
                 does not route; bind {}.# to the queue that should see them, or set control.events = false if no consumer needs them",
                backfill.join(", "),
                b.control_prefix
            ),
        ));
    }
    let schema = unbound(&["schema_changed", "slot_created"]);
    if b.schema_events && !schema.is_empty() {
        out.push(f(
            Level::Fail,
            format!(
                "control.schema_events is on but exchange {exchange:?} has no binding for {}: the first DDL would hold the stream",
                schema.join(", ")
            ),
        ));
    }
}

/// Durability of each queue behind a binding.
async fn queue_checks(
    api: &Api,
    vhost: &str,
    queues: Vec<String>,
    cluster: usize,
    out: &mut Vec<Finding>,
) {
    for q in queues {
        match api
            .get(&format!("/api/queues/{vhost}/{}", segment(&q)))
            .await
        {
            Ok(v) => {
                let kind = v["type"].as_str().unwrap_or("classic").to_owned();
                if v["durable"] != Value::Bool(true) {
                    out.push(f(Level::Warn, format!("queue {q:?} is not durable: its messages are lost when the broker restarts")));
                } else if kind == "classic" && cluster > 1 {
                    out.push(f(Level::Warn, format!("queue {q:?} is a classic queue on a {cluster}-node cluster: it lives on one node, so while that node is down its messages are unreachable (and gone with its disk); use a quorum queue")));
                } else if kind == "quorum" {
                    out.push(f(Level::Ok, format!("queue {q:?}: durable quorum queue (replicated, fsynced before confirming)")));
                } else {
                    out.push(f(Level::Ok, format!("queue {q:?}: durable {kind} queue (confirms do not wait for fsync; use a quorum queue for power-loss safety)")));
                }
            }
            Err(e) => out.push(f(Level::Warn, format!("queue {q:?}: cannot read it ({e})"))),
        }
    }
}
