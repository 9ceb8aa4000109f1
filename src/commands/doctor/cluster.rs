//! The doctor on a RabbitMQ cluster: every node `rabbitmq.url` lists is reached and named
//! (cluster name, version); nodes of different clusters are a failure; a list that names one
//! node of a multi-node cluster, and a classic queue behind walrelay's bindings on a cluster
//! (it lives on one node), are warnings.

use std::time::Duration;

use super::{Finding, Level};
use crate::config::Settings;
use crate::sink::Link;
use crate::sink::management::Api;

const SIDE: &str = "rabbitmq";

fn f(level: Level, m: impl Into<String>) -> Finding {
    Finding::new(level, SIDE, m)
}

/// What one listed node said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Node {
    pub name: String,
    /// `(cluster_name, version)`, or why the node could not be reached.
    pub answer: Result<(String, String), String>,
}

/// Connects to every listed node (when there are several) and judges the answers.
pub(super) async fn nodes(settings: &Settings, out: &mut Vec<Finding>) {
    let listed = &settings.sink.nodes;
    if listed.len() < 2 {
        return;
    }
    let mut seen = Vec::new();
    for n in listed {
        let answer = match Link::open(n, "walrelay doctor", Duration::from_secs(5)).await {
            Ok((link, _signals)) => {
                let p = link.connection.server_properties();
                let a = (p.cluster_name().to_owned(), p.version().to_owned());
                link.close().await;
                Ok(a)
            }
            Err(e) => Err(e.to_string()),
        };
        seen.push(Node {
            name: format!("{}:{}", n.host, n.port),
            answer,
        });
    }
    out.extend(judge(&seen));
}

/// The findings for what the listed nodes said (pure, so it is unit-tested).
pub(super) fn judge(seen: &[Node]) -> Vec<Finding> {
    let mut out = Vec::new();
    let reachable: Vec<(&str, &str, &str)> = seen
        .iter()
        .filter_map(|n| {
            n.answer
                .as_ref()
                .ok()
                .map(|(c, v)| (n.name.as_str(), c.as_str(), v.as_str()))
        })
        .collect();
    for n in seen {
        match &n.answer {
            Ok((cluster, version)) => out.push(f(
                Level::Ok,
                format!("node {}: cluster {cluster:?}, RabbitMQ {version}", n.name),
            )),
            Err(e) => out.push(f(
                if reachable.is_empty() { Level::Fail } else { Level::Warn },
                format!(
                    "node {} of rabbitmq.url is unreachable ({e}): walrelay uses the others meanwhile",
                    n.name
                ),
            )),
        }
    }
    let mut clusters: Vec<&str> = reachable.iter().map(|r| r.1).collect();
    clusters.dedup();
    if clusters.len() > 1 {
        out.push(f(
            Level::Fail,
            format!(
                "rabbitmq.url lists nodes of different clusters ({}): a list must be the nodes of one broker",
                reachable
                    .iter()
                    .map(|(n, c, _)| format!("{n} in {c:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut versions: Vec<&str> = reachable.iter().map(|r| r.2).collect();
    versions.sort_unstable();
    versions.dedup();
    if versions.len() > 1 {
        out.push(f(
            Level::Warn,
            format!(
                "the nodes run different RabbitMQ versions ({}): fine during a rolling upgrade, not for long",
                versions.join(", ")
            ),
        ));
    }
    out
}

/// How many nodes the broker's cluster has, from the management API (`None`: unknown).
pub(super) async fn size(api: &Api) -> Option<usize> {
    match api.get("/api/nodes").await {
        Ok(serde_json::Value::Array(nodes)) => Some(nodes.len()),
        _ => None,
    }
}

/// A list of one node, when the cluster has more.
pub(super) fn one_of_many(listed: usize, cluster: Option<usize>) -> Option<Finding> {
    match cluster {
        Some(n) if n > 1 && listed == 1 => Some(f(
            Level::Warn,
            format!(
                "rabbitmq.url names one node of a {n}-node cluster: when that node restarts (every rolling upgrade) the stream stops until it is back; list every node (docs/operations.md, Running against a cluster)"
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, answer: Result<(&str, &str), &str>) -> Node {
        Node {
            name: name.into(),
            answer: answer
                .map(|(c, v)| (c.to_owned(), v.to_owned()))
                .map_err(str::to_owned),
        }
    }

    #[test]
    fn nodes_are_judged() {
        let levels = |v: Vec<Finding>| v.into_iter().map(|f| f.level).collect::<Vec<_>>();
        let same = judge(&[node("a", Ok(("c", "4.0.5"))), node("b", Ok(("c", "4.0.5")))]);
        assert_eq!(levels(same), [Level::Ok, Level::Ok]);
        let one_down = judge(&[node("a", Err("refused")), node("b", Ok(("c", "4.0.5")))]);
        assert!(
            one_down[0]
                .message
                .contains("node a of rabbitmq.url is unreachable")
        );
        assert_eq!(levels(one_down), [Level::Warn, Level::Ok]);
        let all_down = judge(&[node("a", Err("refused")), node("b", Err("refused"))]);
        assert_eq!(levels(all_down), [Level::Fail, Level::Fail]);
        let two = judge(&[
            node("a", Ok(("c1", "4.0.5"))),
            node("b", Ok(("c2", "4.0.5"))),
        ]);
        assert!(
            two.iter()
                .any(|f| f.level == Level::Fail && f.message.contains("different clusters"))
        );
        let mixed = judge(&[
            node("a", Ok(("c", "3.13.7"))),
            node("b", Ok(("c", "4.0.5"))),
        ]);
        assert!(
            mixed.iter().any(
                |f| f.level == Level::Warn && f.message.contains("different RabbitMQ versions")
            )
        );
        assert!(
            one_of_many(1, Some(3))
                .unwrap()
                .message
                .contains("one node of a 3-node cluster")
        );
        assert!(one_of_many(3, Some(3)).is_none());
        assert!(one_of_many(1, Some(1)).is_none());
        assert!(one_of_many(1, None).is_none());
    }
}
