//! A minimal client for RabbitMQ's management HTTP API (`GET` with basic auth, JSON back),
//! enough for the doctor's binding, queue and permission checks and the publisher's alarm
//! check. HTTP/1.0 keeps the response unchunked. `https://` verifies the server's certificate
//! (chain and host name) against `?cacertfile=` when given, else webpki's and the system's
//! roots, as `amqps://` does.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the API is and how to authenticate.
pub struct Api {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// `Some` for `https://`: the TLS client configuration, built (and its CA file read) once.
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// Never the password.
impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Api({} as {})", self.describe(), self.user)
    }
}

impl Api {
    /// From `http://user:pass@host:port` or `https://user:pass@host:port[?cacertfile=/ca.pem]`;
    /// the error says what is wrong without repeating the URL (it holds a password).
    pub fn from_url(url: &str) -> Result<Api, String> {
        let u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        let https = match u.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("scheme {other:?} is not http or https")),
        };
        let mut ca_file = None;
        for (k, v) in u.query_pairs() {
            match k.as_ref() {
                "cacertfile" if https => ca_file = Some(std::path::PathBuf::from(v.as_ref())),
                "cacertfile" => return Err("cacertfile needs an https:// URL".to_owned()),
                other => return Err(format!("unknown URL parameter {other:?}")),
            }
        }
        let tls = if https {
            let config = crate::tls::client_config(crate::tls::Verify::Full, ca_file.as_deref())
                .map_err(|e| e.to_string())?;
            Some(config)
        } else {
            None
        };
        Ok(Api {
            host: u.host_str().ok_or("the URL names no host")?.to_owned(),
            port: u.port().unwrap_or(if https { 15671 } else { 15672 }),
            user: percent(u.username()),
            password: percent(u.password().unwrap_or("")),
            tls,
        })
    }

    /// `http(s)://host:port`, for messages (never the credentials).
    pub fn describe(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }

    /// `GET path` → parsed JSON, or why not (status line or I/O error; never the password).
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let auth = base64(format!("{}:{}", self.user, self.password).as_bytes());
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nAccept: application/json\r\n\r\n",
            self.host
        );
        let io = async {
            let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
            match &self.tls {
                None => exchange(tcp, req.as_bytes()).await,
                Some(config) => {
                    let name =
                        crate::tls::server_name(&self.host).map_err(std::io::Error::other)?;
                    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, tcp)
                        .await?;
                    exchange(tls, req.as_bytes()).await
                }
            }
        };
        let buf = tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or("malformed HTTP response")?;
        let head = String::from_utf8_lossy(&buf[..split]);
        let status = head.lines().next().unwrap_or_default().to_owned();
        if !status.contains(" 200") {
            return Err(status);
        }
        serde_json::from_slice(&buf[split + 4..]).map_err(|e| format!("invalid JSON: {e}"))
    }
}

/// Writes the request and reads the whole response (HTTP/1.0: the server closes after it).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    req: &[u8],
) -> std::io::Result<Vec<u8>> {
    s.write_all(req).await?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf).await {
        Ok(_) => Ok(buf),
        // Many servers close TLS without a close_notify once the response is sent: what was
        // read is the whole response.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !buf.is_empty() => Ok(buf),
        Err(e) => Err(e),
    }
}

/// Names the resource alarms RabbitMQ's nodes report, if any (a held publisher's likely cause).
/// Silent when the API is unreachable or reports none: the hold warning stands on its own.
pub async fn report_alarms(api: std::sync::Arc<Api>) {
    let Ok(serde_json::Value::Array(nodes)) = api.get("/api/nodes").await else {
        return;
    };
    for n in nodes {
        let name = n["name"].as_str().unwrap_or("?");
        for (field, alarm) in [("mem_alarm", "memory"), ("disk_free_alarm", "disk")] {
            if n[field] == serde_json::Value::Bool(true) {
                tracing::warn!(
                    node = name,
                    "RabbitMQ has a {alarm} alarm in effect: it blocks every publisher until it clears"
                );
            }
        }
    }
}

/// Percent-encodes one path segment (vhost `/` becomes `%2F`).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn base64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(base64(b"guest:guest"), "Z3Vlc3Q6Z3Vlc3Q=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
        assert_eq!(segment("/"), "%2F");
        let api = Api::from_url("http://us%40r:p%3Ass@h:15673").unwrap();
        assert_eq!(
            (api.user.as_str(), api.password.as_str(), api.port),
            ("us@r", "p:ss", 15673)
        );
        let tls = Api::from_url("https://u:p@h").unwrap();
        assert_eq!(
            (tls.port, tls.describe().as_str()),
            (15671, "https://h:15671")
        );
        assert!(
            Api::from_url("ftp://h")
                .unwrap_err()
                .contains("not http or https")
        );
        assert!(Api::from_url("http://h?cacertfile=/x").is_err());
        assert!(Api::from_url("https://h?cacertfile=/no/such/file.pem").is_err());
    }
}
