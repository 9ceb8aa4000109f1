//! The doctor's check of the RabbitMQ user's permissions and the management API user's tags,
//! read through the management API (`rabbitmq.management_url`).

use serde_json::Value;

use super::{Finding, Level};
use crate::config::Settings;
use crate::sink::management::{Api, segment};

const SIDE: &str = "rabbitmq";

fn f(level: Level, m: impl Into<String>) -> Finding {
    Finding::new(level, SIDE, m)
}

/// What walrelay's user may do, read through the management API: configure (declare the
/// exchanges) and write (publish) on each exchange. Reading another user's permissions needs
/// an administrator's credentials in `rabbitmq.management_url`; without them the tags of the
/// API's user are still checked (the publisher's alarm check reads `/api/nodes`, which needs
/// the `monitoring` tag).
pub(super) async fn check(
    settings: &Settings,
    api: &Api,
    exchanges: &[String],
    out: &mut Vec<Finding>,
) {
    let uri = &settings.sink.url;
    match api.get("/api/whoami").await {
        Ok(me) => {
            let tags = tags(&me["tags"]);
            if tags
                .iter()
                .any(|t| t == "administrator" || t == "monitoring")
            {
                out.push(f(
                    Level::Ok,
                    format!(
                        "management API user {} has the {} tag (bindings, queues, alarms)",
                        me["name"].as_str().unwrap_or("?"),
                        tags.join(", ")
                    ),
                ));
            } else {
                out.push(f(
                    Level::Warn,
                    format!(
                        "management API user {} has the tags [{}]: walrelay's alarm check reads /api/nodes, which needs the monitoring tag \
                         (rabbitmqctl set_user_tags {} monitoring)",
                        me["name"].as_str().unwrap_or("?"),
                        tags.join(", "),
                        me["name"].as_str().unwrap_or("?")
                    ),
                ));
            }
        }
        Err(e) => {
            return out.push(f(
                Level::Warn,
                format!(
                    "management API at {} refused /api/whoami ({e}): permissions not checked",
                    api.describe()
                ),
            ));
        }
    }
    let path = format!(
        "/api/permissions/{}/{}",
        segment(&uri.vhost),
        segment(&uri.user)
    );
    let p = match api.get(&path).await {
        Ok(p) => p,
        Err(e) => {
            return out.push(f(
                Level::Ok,
                format!(
                    "permissions of {} not read ({e}: it takes an administrator's credentials in rabbitmq.management_url); \
                     walrelay needs configure and write on {}",
                    uri.user,
                    exchanges.join(", ")
                ),
            ));
        }
    };
    let may = |kind: &str, name: &str| {
        p[kind]
            .as_str()
            .is_some_and(|re| full_match(re, name).unwrap_or(true))
    };
    for x in exchanges {
        let mut lacking = Vec::new();
        if settings.sink.declare_exchange && !may("configure", x) {
            lacking.push("configure");
        }
        if !may("write", x) {
            lacking.push("write");
        }
        if lacking.is_empty() {
            out.push(f(
                Level::Ok,
                format!(
                    "user {} may {} exchange {x:?}",
                    uri.user,
                    if settings.sink.declare_exchange {
                        "declare and publish to"
                    } else {
                        "publish to"
                    }
                ),
            ));
        } else {
            out.push(f(
                Level::Fail,
                format!(
                    "user {} lacks the {} permission on exchange {x:?} in vhost {:?} (configure {:?}, write {:?}, read {:?})",
                    uri.user,
                    lacking.join(" and "),
                    uri.vhost,
                    p["configure"].as_str().unwrap_or(""),
                    p["write"].as_str().unwrap_or(""),
                    p["read"].as_str().unwrap_or("")
                ),
            ));
        }
    }
}

/// A user's tags: a list on RabbitMQ 3.10+, a comma-separated string before.
fn tags(v: &Value) -> Vec<String> {
    match v {
        Value::Array(list) => list
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether RabbitMQ's permission pattern `re` matches all of `name` (RabbitMQ matches with
/// Erlang's `re:run` anchored by the pattern itself: `^walrelay$`, `.*`, `^(a|b)$`). `None`
/// when the pattern is beyond the small subset understood here; the caller then assumes yes
/// (the doctor never fails on a guess).
fn full_match(re: &str, name: &str) -> Option<bool> {
    if re.is_empty() {
        return Some(false);
    }
    if re == ".*" || re == "^.*$" || re == "^.*" {
        return Some(true);
    }
    let inner = re.strip_prefix('^')?.strip_suffix('$')?;
    let inner = inner
        .strip_prefix('(')
        .and_then(|i| i.strip_suffix(')'))
        .unwrap_or(inner);
    let literal = |s: &str| !s.chars().any(|c| "\\.*+?()[]{}^$|".contains(c));
    let options: Vec<&str> = inner.split('|').collect();
    if !options.iter().all(|o| literal(o)) {
        return None;
    }
    Some(options.contains(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_patterns() {
        assert_eq!(full_match(".*", "walrelay"), Some(true));
        assert_eq!(full_match("", "walrelay"), Some(false));
        assert_eq!(full_match("^walrelay$", "walrelay"), Some(true));
        assert_eq!(full_match("^walrelay$", "walrelay2"), Some(false));
        assert_eq!(full_match("^(walrelay|audit)$", "audit"), Some(true));
        assert_eq!(full_match("^(walrelay|audit)$", "other"), Some(false));
        assert_eq!(full_match("^walrelay.*$", "walrelay"), None);
        assert_eq!(full_match("walrelay", "walrelay"), None);
    }

    #[test]
    fn tags_in_both_shapes() {
        assert_eq!(
            tags(&serde_json::json!(["administrator"])),
            ["administrator"]
        );
        assert_eq!(
            tags(&serde_json::json!("monitoring, management")),
            ["monitoring", "management"]
        );
        assert!(tags(&serde_json::json!(null)).is_empty());
    }
}
