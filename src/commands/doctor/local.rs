//! The doctor's checks of this machine: what `walrelay run` settles before it creates anything
//! (`preflight`): the HTTP port, the position file and the CA bundles.

use super::{Finding, Level};
use crate::config::Settings;

const SIDE: &str = "walrelay";

/// Runs the local checks.
pub(super) async fn check(settings: &Settings, out: &mut Vec<Finding>) {
    if let Some(addr) = settings.service.http_listen {
        match crate::preflight::port_taken(addr).await {
            None => out.push(Finding::new(
                Level::Ok,
                SIDE,
                format!("http.listen {addr} is free"),
            )),
            Some(e) => {
                // A walrelay already serving there answers /healthz: that is a running
                // instance (a second one needs its own address), not a foreign program.
                let url = format!("http://{addr}/healthz");
                let ours = tokio::task::spawn_blocking(move || crate::http::http_get(&url))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .is_some_and(|(code, body)| code == 200 && body.contains("\"alive\""));
                let why = if ours {
                    "a walrelay already serves there; a second instance on this machine needs its own http.listen"
                } else {
                    "another program holds it; choose another address with http.listen or WALRELAY_HTTP_LISTEN"
                };
                out.push(Finding::new(
                    Level::Fail,
                    SIDE,
                    format!("http.listen {addr} cannot be bound ({e}): {why}"),
                ));
            }
        }
    }
    match crate::preflight::check_files(settings) {
        Ok(()) => {
            if let Some(path) = &settings.service.state_file {
                out.push(Finding::new(
                    Level::Ok,
                    SIDE,
                    format!("service.state_file {} is usable", path.display()),
                ));
            }
        }
        Err(e) => out.push(Finding::new(Level::Fail, SIDE, e.to_string())),
    }
}
