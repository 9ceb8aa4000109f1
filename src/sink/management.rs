//! A minimal client for RabbitMQ's management HTTP API (`GET` with basic auth, JSON back),
//! enough for the doctor's binding and queue checks and the publisher's alarm check.
//! HTTP/1.0 keeps the response unchunked.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the API is and how to authenticate.
pub struct Api {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl Api {
    /// From `http://user:pass@host:port`.
    pub fn from_url(url: &str) -> Option<Api> {
        let u = url::Url::parse(url).ok()?;
        if u.scheme() != "http" {
            return None;
        }
        Some(Api {
            host: u.host_str()?.to_owned(),
            port: u.port().unwrap_or(15672),
            user: percent(u.username()),
            password: percent(u.password().unwrap_or("")),
        })
    }

    /// `GET path` → parsed JSON, or why not (status line or I/O error; never the password).
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, String> {
        let io = async {
            let mut s = TcpStream::connect((self.host.as_str(), self.port)).await?;
            let auth = base64(format!("{}:{}", self.user, self.password).as_bytes());
            let req = format!(
                "GET {path} HTTP/1.0\r\nHost: {}\r\nAuthorization: Basic {auth}\r\nAccept: application/json\r\n\r\n",
                self.host
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
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
        assert!(Api::from_url("https://h").is_none());
    }
}
