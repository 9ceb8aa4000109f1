//! `walrelay ready`: exit 0 when a walrelay's `/readyz` says ready, for container
//! `HEALTHCHECK`s, which must not need curl in the image. Needs no configuration.

use std::process::ExitCode;

/// `walrelay ready`'s options.
#[derive(clap::Args)]
pub struct Args {
    /// Defaults to `/readyz` on `http.listen`'s default address.
    #[arg(long)]
    url: Option<String>,
}

pub fn run(args: Args) -> ExitCode {
    let default = format!("http://{}/readyz", crate::config::DEFAULT_HTTP_LISTEN);
    let url = args.url.as_deref().unwrap_or(&default);
    match crate::http::http_get(url) {
        Ok((200, _)) => ExitCode::SUCCESS,
        Ok((code, body)) => {
            eprintln!("walrelay ready: {code} {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("walrelay ready: {e}");
            ExitCode::FAILURE
        }
    }
}
