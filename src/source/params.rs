//! Connection parameters for PostgreSQL, parsed from a libpq-style URL
//! (`postgres://user:password@host:port/dbname?sslmode=verify-full&sslrootcert=/ca.pem`).

use std::path::PathBuf;
use std::time::Duration;

use crate::secret::Secret;

/// TLS policy, with libpq's names and meanings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without verification; plaintext otherwise.
    Prefer,
    /// TLS required, certificate not verified.
    Require,
    /// TLS required, certificate chain verified against the roots, host name not checked.
    VerifyCa,
    /// TLS required, chain and host name verified. What we recommend (and what RDS supports).
    VerifyFull,
}

impl SslMode {
    /// How much of the certificate TLS checks (`disable` never gets this far).
    pub fn verify(self) -> crate::tls::Verify {
        match self {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => crate::tls::Verify::None,
            SslMode::VerifyCa => crate::tls::Verify::Chain,
            SslMode::VerifyFull => crate::tls::Verify::Full,
        }
    }

    /// The name as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Everything needed to open a connection. `Debug` never shows the password.
#[derive(Clone, Debug)]
pub struct ConnParams {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// CA bundle (PEM) for verify-ca / verify-full; without it, the system store and the
    /// Mozilla roots are used. RDS needs its own bundle here.
    pub sslrootcert: Option<PathBuf>,
    pub application_name: String,
    pub connect_timeout: Duration,
}

/// Why a PostgreSQL URL was refused. Never includes the password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    #[error("not a URL of the form postgres://user@host:port/dbname")]
    NotAUrl,
    #[error("scheme must be postgres:// or postgresql://, got {0}://")]
    Scheme(String),
    #[error("the URL names no host")]
    NoHost,
    #[error("the URL names no user")]
    NoUser,
    #[error("unknown sslmode {0:?} (use disable, prefer, require, verify-ca or verify-full)")]
    SslMode(String),
    #[error("invalid connect_timeout {0:?} (seconds)")]
    ConnectTimeout(String),
    #[error("unsupported URL parameter {0:?}")]
    UnknownParameter(String),
}

/// Default connect timeout: long enough for a cross-region RDS handshake, short enough that a
/// dead host is reported quickly.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ConnParams {
    pub fn from_url(s: &str) -> Result<Self, ParamsError> {
        let url = url::Url::parse(s).map_err(|_| ParamsError::NotAUrl)?;
        if url.scheme() != "postgres" && url.scheme() != "postgresql" {
            return Err(ParamsError::Scheme(url.scheme().to_owned()));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or(ParamsError::NoHost)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |v: &str| percent_decode(v);
        let user = decode(url.username());
        if user.is_empty() {
            return Err(ParamsError::NoUser);
        }
        let password = url.password().map(|p| Secret::new(decode(p)));
        let dbname = decode(url.path().trim_start_matches('/'));
        let mut p = ConnParams {
            host,
            port: url.port().unwrap_or(5432),
            dbname: if dbname.is_empty() {
                user.clone()
            } else {
                dbname
            },
            user,
            password,
            sslmode: SslMode::VerifyFull,
            sslrootcert: None,
            application_name: "walrelay".to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        };
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    p.sslmode =
                        SslMode::parse(&v).ok_or_else(|| ParamsError::SslMode(v.to_string()))?
                }
                "sslrootcert" => p.sslrootcert = Some(PathBuf::from(v.as_ref())),
                "application_name" => p.application_name = v.to_string(),
                "connect_timeout" => {
                    let secs: u64 = v
                        .parse()
                        .map_err(|_| ParamsError::ConnectTimeout(v.to_string()))?;
                    p.connect_timeout = Duration::from_secs(secs.max(1));
                }
                other => return Err(ParamsError::UnknownParameter(other.to_owned())),
            }
        }
        Ok(p)
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_url() {
        let p = ConnParams::from_url(
            "postgres://relay:p%40ss@db.example:6543/app?sslmode=verify-ca&sslrootcert=/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.user.as_str(), p.dbname.as_str()),
            ("db.example", 6543, "relay", "app")
        );
        assert_eq!(p.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(p.sslmode, SslMode::VerifyCa);
        assert_eq!(p.connect_timeout, Duration::from_secs(3));
        assert!(
            !format!("{p:?}").contains("p@ss"),
            "Debug must not show the password"
        );
    }

    #[test]
    fn defaults_to_verify_full_and_user_database() {
        let p = ConnParams::from_url("postgresql://relay@localhost").unwrap();
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.dbname, "relay");
        assert_eq!(p.port, 5432);
    }

    #[test]
    fn rejects_bad_urls() {
        assert_eq!(
            ConnParams::from_url("mysql://a@b/c").unwrap_err(),
            ParamsError::Scheme("mysql".into())
        );
        assert_eq!(
            ConnParams::from_url("postgres://b/c").unwrap_err(),
            ParamsError::NoUser
        );
        assert!(matches!(
            ConnParams::from_url("postgres://a@b/c?sslmode=maybe"),
            Err(ParamsError::SslMode(_))
        ));
        assert!(matches!(
            ConnParams::from_url("postgres://a@b/c?foo=1"),
            Err(ParamsError::UnknownParameter(_))
        ));
    }
}
