//! Opening a PostgreSQL connection (TCP, optional TLS, startup, authentication) and running
//! simple queries on it. Used both for the replication connection (`replication=database`)
//! and for the plain SQL the setup needs.

use bytes::{Buf, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::error::{ServerError, SourceError};
use super::params::{ConnParams, SslMode};
use super::wire::{Frame, Framed, Stream};

/// Session settings the value renderer depends on: with them, a value's text output turns into
/// exactly what `to_jsonb()` gives in a session with the same settings.
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("standard_conforming_strings", "on"),
];

/// An authenticated connection, ready for queries.
pub struct Connection {
    pub(crate) framed: Framed,
}

/// A row of a simple query result: text values, `None` for NULL.
pub type Row = Vec<Option<String>>;

fn io_err(e: std::io::Error) -> SourceError {
    SourceError::Protocol(format!("encoding a message: {e}"))
}

impl Connection {
    /// Connects, negotiates TLS as `sslmode` says, and authenticates.
    pub async fn connect(
        params: &ConnParams,
        replication: bool,
    ) -> Result<Connection, SourceError> {
        let addr = format!("{}:{}", params.host, params.port);
        let tcp = tokio::time::timeout(params.connect_timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| SourceError::ConnectTimeout(addr.clone()))?
            .map_err(|source| SourceError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio::time::timeout(params.connect_timeout, negotiate_tls(tcp, params))
            .await
            .map_err(|_| SourceError::ConnectTimeout(addr.clone()))??;
        let mut conn = Connection {
            framed: Framed::new(stream),
        };
        tokio::time::timeout(params.connect_timeout, conn.startup(params, replication))
            .await
            .map_err(|_| SourceError::ConnectTimeout(addr))??;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnParams, replication: bool) -> Result<(), SourceError> {
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", params.user.as_str()),
            ("database", params.dbname.as_str()),
            ("application_name", params.application_name.as_str()),
        ];
        if replication {
            startup.push(("replication", "database"));
        }
        startup.extend_from_slice(SESSION_SETTINGS);
        frontend::startup_message(startup.iter().copied(), &mut self.framed.write_buf)
            .map_err(io_err)?;
        self.framed.flush().await?;
        self.authenticate(params).await?;
        // After AuthenticationOk: ParameterStatus and BackendKeyData until ReadyForQuery.
        loop {
            let f = self.framed.read_frame().await?;
            match f.tag {
                b'Z' => return Ok(()),
                b'S' | b'K' | b'N' => {}
                b'E' => return Err(SourceError::Server(ServerError::parse(&f.body))),
                t => {
                    return Err(SourceError::Protocol(format!(
                        "message {:?} during startup",
                        t as char
                    )));
                }
            }
        }
    }

    async fn authenticate(&mut self, params: &ConnParams) -> Result<(), SourceError> {
        let password = || {
            params
                .password
                .as_ref()
                .map(|p| p.expose().as_bytes().to_vec())
                .ok_or_else(|| {
                    SourceError::Auth("the server asks for a password and the URL has none".into())
                })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.framed.read_frame().await?;
            match f.tag {
                b'E' => return Err(SourceError::Server(ServerError::parse(&f.body))),
                b'N' => continue,
                b'R' => {}
                t => {
                    return Err(SourceError::Protocol(format!(
                        "message {:?} during authentication",
                        t as char
                    )));
                }
            }
            let mut body = f.body.clone();
            if body.len() < 4 {
                return Err(SourceError::Protocol("short authentication message".into()));
            }
            let code = body.get_i32();
            match code {
                0 => return Ok(()),
                3 => {
                    frontend::password_message(&password()?, &mut self.framed.write_buf)
                        .map_err(io_err)?;
                }
                5 => {
                    if body.len() < 4 {
                        return Err(SourceError::Protocol("short MD5 salt".into()));
                    }
                    let salt = [body[0], body[1], body[2], body[3]];
                    let hash = md5_hash(params.user.as_bytes(), &password()?, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.framed.write_buf)
                        .map_err(io_err)?;
                }
                10 => {
                    let mechanisms: Vec<&[u8]> =
                        body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    if !mechanisms.iter().any(|m| *m == b"SCRAM-SHA-256") {
                        return Err(SourceError::Auth(
                            "the server offers no SASL mechanism walrelay supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    // Channel binding is not implemented: say so ("n,,"), never "y,,".
                    let s = ScramSha256::new(&password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        "SCRAM-SHA-256",
                        s.message(),
                        &mut self.framed.write_buf,
                    )
                    .map_err(io_err)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| {
                        SourceError::Protocol("SASL continue before start".into())
                    })?;
                    s.update(&body)
                        .map_err(|e| SourceError::Auth(format!("SCRAM: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.framed.write_buf)
                        .map_err(io_err)?;
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or_else(|| SourceError::Protocol("SASL final before start".into()))?;
                    s.finish(&body)
                        .map_err(|e| SourceError::Auth(format!("SCRAM server proof: {e}")))?;
                    continue;
                }
                other => {
                    return Err(SourceError::Auth(format!(
                        "the server asks for authentication method {other}, which walrelay does not support"
                    )));
                }
            }
            self.framed.flush().await?;
        }
    }

    /// Runs one statement with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, SourceError> {
        frontend::query(sql, &mut self.framed.write_buf).map_err(io_err)?;
        self.framed.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.framed.read_frame().await?;
            match f.tag {
                b'D' => rows.push(parse_data_row(&f)?),
                b'E' => error = Some(ServerError::parse(&f.body)),
                b'Z' => break,
                b'T' | b'C' | b'I' | b'N' | b'S' => {}
                t => {
                    return Err(SourceError::Protocol(format!(
                        "message {:?} in a query result",
                        t as char
                    )));
                }
            }
        }
        match error {
            Some(e) => Err(SourceError::Server(e)),
            None => Ok(rows),
        }
    }

    /// Says goodbye politely (a Terminate message) and closes the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.framed.write_buf);
        let _ = self.framed.flush().await;
        self.framed.shutdown().await;
    }
}

async fn negotiate_tls(mut tcp: TcpStream, params: &ConnParams) -> Result<Stream, SourceError> {
    if params.sslmode == SslMode::Disable {
        return Ok(Stream::Plain(tcp));
    }
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req)
        .await
        .map_err(SourceError::TlsHandshake)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(SourceError::TlsHandshake)?;
    match answer[0] {
        b'S' => {
            let config =
                crate::tls::client_config(params.sslmode.verify(), params.sslrootcert.as_deref())?;
            let name = crate::tls::server_name(&params.host)?;
            let tls = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(SourceError::TlsHandshake)?;
            Ok(Stream::Tls(Box::new(tls)))
        }
        b'N' if params.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
        b'N' => Err(SourceError::TlsRefused(params.sslmode)),
        other => Err(SourceError::Protocol(format!(
            "answer {:?} to the TLS request",
            other as char
        ))),
    }
}

fn parse_data_row(f: &Frame) -> Result<Row, SourceError> {
    let short = || SourceError::Protocol("truncated DataRow".into());
    let mut body = f.body.clone();
    if body.len() < 2 {
        return Err(short());
    }
    let n = body.get_i16().max(0) as usize;
    let mut row = Vec::with_capacity(n.min(body.len()));
    for _ in 0..n {
        if body.len() < 4 {
            return Err(short());
        }
        let len = body.get_i32();
        if len < 0 {
            row.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return Err(short());
        }
        let v = body.split_to(len);
        row.push(Some(String::from_utf8(v.to_vec()).map_err(|_| {
            SourceError::Protocol("non-UTF-8 query result".into())
        })?));
    }
    Ok(row)
}
