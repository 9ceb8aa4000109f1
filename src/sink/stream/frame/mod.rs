//! The stream protocol's frames, as walrelay's publishing connection writes and reads them
//! (RabbitMQ's `deps/rabbitmq_stream/docs/PROTOCOL.adoc`): a 32-bit size, a 16-bit key (the
//! top bit set on a response), a 16-bit version, then the command's fields, big endian;
//! strings carry a 16-bit length, byte strings and arrays a 32-bit one.
//!
//! Only what publishing needs is here: the connection handshake, declaring a publisher,
//! reading a name's last publishing id, publishing, and what the broker sends back (confirms,
//! errors, metadata updates, heartbeats, close). Parsing never panics on a malformed frame:
//! it is an error naming what was short.

use bytes::{Buf, Bytes, BytesMut};

use super::amqp10;

pub const DECLARE_PUBLISHER: u16 = 0x0001;
pub const PUBLISH: u16 = 0x0002;
pub const PUBLISH_CONFIRM: u16 = 0x0003;
pub const PUBLISH_ERROR: u16 = 0x0004;
pub const QUERY_PUBLISHER_SEQUENCE: u16 = 0x0005;
pub const METADATA_UPDATE: u16 = 0x0010;
pub const PEER_PROPERTIES: u16 = 0x0011;
pub const SASL_HANDSHAKE: u16 = 0x0012;
pub const SASL_AUTHENTICATE: u16 = 0x0013;
pub const TUNE: u16 = 0x0014;
pub const OPEN: u16 = 0x0015;
pub const CLOSE: u16 = 0x0016;
pub const HEARTBEAT: u16 = 0x0017;
pub const RESPONSE: u16 = 0x8000;

/// The response code of success.
pub const OK: u16 = 0x01;

/// The name of a response code, for errors.
pub fn code_name(code: u16) -> &'static str {
    match code {
        0x01 => "ok",
        0x02 => "stream does not exist",
        0x05 => "stream already exists",
        0x06 => "stream not available",
        0x07 => "SASL mechanism not supported",
        0x08 => "authentication failure",
        0x09 => "SASL error",
        0x0a => "SASL challenge",
        0x0b => "SASL authentication failure loopback",
        0x0c => "virtual host access failure",
        0x0d => "unknown frame",
        0x0e => "frame too large",
        0x0f => "internal error",
        0x10 => "access refused",
        0x11 => "precondition failed",
        0x12 => "publisher does not exist",
        _ => "unknown code",
    }
}

/// A frame the broker sent that walrelay cannot read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a frame of key {key:#06x} ends before its {field}")]
    Short { key: u16, field: &'static str },
    #[error("a frame of {size} bytes, over the {max} agreed")]
    TooLarge { size: usize, max: usize },
    #[error("a frame too short for its key and version ({0} bytes)")]
    NoHeader(usize),
    #[error("a string that is not UTF-8 in a frame of key {0:#06x}")]
    NotUtf8(u16),
}

/// Takes the next whole frame (its size field removed) off `buf`, or `None` when `buf` holds
/// only part of one. `max` bounds a frame's size (the agreed `frame_max`).
pub fn take(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if size > max {
        return Err(FrameError::TooLarge { size, max });
    }
    if size < 4 {
        return Err(FrameError::NoHeader(size));
    }
    if buf.len() < 4 + size {
        buf.reserve(4 + size - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(size).freeze()))
}

/// A frame's fields, read in order.
pub struct Fields {
    pub key: u16,
    pub version: u16,
    body: Bytes,
}

impl Fields {
    pub fn new(mut frame: Bytes) -> Result<Fields, FrameError> {
        if frame.len() < 4 {
            return Err(FrameError::NoHeader(frame.len()));
        }
        let key = frame.get_u16();
        let version = frame.get_u16();
        Ok(Fields {
            key,
            version,
            body: frame,
        })
    }

    /// The fields of a response after its code (`rest` of [`Incoming::Response`]).
    pub fn after_code(key: u16, rest: Bytes) -> Fields {
        Fields {
            key: key | RESPONSE,
            version: 1,
            body: rest,
        }
    }

    fn need(&self, n: usize, field: &'static str) -> Result<(), FrameError> {
        if self.body.remaining() < n {
            return Err(FrameError::Short {
                key: self.key,
                field,
            });
        }
        Ok(())
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        self.need(1, field)?;
        Ok(self.body.get_u8())
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        self.need(2, field)?;
        Ok(self.body.get_u16())
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        self.need(4, field)?;
        Ok(self.body.get_u32())
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        self.need(8, field)?;
        Ok(self.body.get_u64())
    }

    /// A string (16-bit length; -1 is null, read as empty).
    pub fn string(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = self.u16(field)?;
        if len == u16::MAX {
            return Ok(String::new());
        }
        let len = usize::from(len);
        self.need(len, field)?;
        let bytes = self.body.split_to(len);
        String::from_utf8(bytes.to_vec()).map_err(|_| FrameError::NotUtf8(self.key))
    }

    /// The length of an array that follows: each element is at least `min` bytes, so a count
    /// larger than the frame can hold is an error before anything is allocated for it.
    pub fn array(&mut self, field: &'static str, min: usize) -> Result<usize, FrameError> {
        let n = self.u32(field)? as usize;
        self.need(n.saturating_mul(min), field)?;
        Ok(n)
    }

    /// `[key value]` string pairs.
    pub fn properties(&mut self, field: &'static str) -> Result<Vec<(String, String)>, FrameError> {
        let n = self.array(field, 4)?;
        (0..n)
            .map(|_| Ok((self.string(field)?, self.string(field)?)))
            .collect()
    }
}

/// Writes frames into a buffer: `begin`, the fields, `end` (which fills in the size).
pub struct Writer<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
}

impl<'a> Writer<'a> {
    pub fn begin(out: &'a mut Vec<u8>, key: u16, version: u16) -> Writer<'a> {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&key.to_be_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        Writer { out, start }
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.out.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A string; walrelay's strings (names, a vhost, properties) are far below 64 KiB, and a
    /// longer one is cut at that bound rather than written with a wrong length.
    pub fn string(&mut self, s: &str) -> &mut Self {
        let mut end = s.len().min(usize::from(u16::MAX - 1));
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        self.u16(end as u16);
        self.out.extend_from_slice(&s.as_bytes()[..end]);
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.out.extend_from_slice(b);
        self
    }

    pub fn properties(&mut self, pairs: &[(&str, &str)]) -> &mut Self {
        self.u32(pairs.len() as u32);
        for (k, v) in pairs {
            self.string(k).string(v);
        }
        self
    }

    pub fn end(self) {
        let size = (self.out.len() - self.start - 4) as u32;
        self.out[self.start..self.start + 4].copy_from_slice(&size.to_be_bytes());
    }
}

/// A publish frame being filled with one publisher's messages.
#[derive(Default)]
pub struct PublishFrame {
    buf: Vec<u8>,
    count: u32,
    publisher: u8,
}

/// Where the message count sits in a publish frame: size, key, version, publisher id.
const COUNT_AT: usize = 4 + 2 + 2 + 1;

impl PublishFrame {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// The bytes the frame holds so far (0 when empty).
    pub fn bytes(&self) -> usize {
        if self.count == 0 { 0 } else { self.buf.len() }
    }

    /// What [`Self::add`] appends for a message: its publishing id, its length, the message.
    pub fn entry_len(fields: &amqp10::Fields<'_>, body_len: usize) -> usize {
        8 + 4 + amqp10::encoded_len(fields, body_len)
    }

    pub fn publisher(&self) -> u8 {
        self.publisher
    }

    /// Adds a message of `publisher` with publishing id `id`; the frame must be empty or
    /// already `publisher`'s.
    pub fn add(&mut self, publisher: u8, id: u64, fields: &amqp10::Fields<'_>, body: &[u8]) {
        if self.count == 0 {
            self.buf.clear();
            self.publisher = publisher;
            Writer::begin(&mut self.buf, PUBLISH, 1)
                .u8(publisher)
                .u32(0);
        }
        debug_assert_eq!(self.publisher, publisher);
        self.buf.extend_from_slice(&id.to_be_bytes());
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        amqp10::write(&mut self.buf, fields, body);
        let len = (self.buf.len() - len_at - 4) as u32;
        self.buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        self.count += 1;
    }

    /// The frame's bytes, size and count filled in; the frame is empty again after.
    pub fn finish(&mut self) -> &[u8] {
        let size = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&size.to_be_bytes());
        self.buf[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        self.count = 0;
        &self.buf
    }
}

/// What the broker sends on a publishing connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The answer to request `correlation`: its code and the fields after it.
    Response {
        key: u16,
        correlation: u32,
        code: u16,
        rest: Bytes,
    },
    Confirm {
        publisher: u8,
        ids: Vec<u64>,
    },
    Errors {
        publisher: u8,
        errors: Vec<(u64, u16)>,
    },
    MetadataUpdate {
        code: u16,
        stream: String,
    },
    Tune {
        frame_max: u32,
        heartbeat: u32,
    },
    Heartbeat,
    Close {
        correlation: u32,
        code: u16,
        reason: String,
    },
    /// A command publishing does not use (logged, ignored).
    Other {
        key: u16,
    },
}

impl Incoming {
    pub fn parse(frame: Bytes) -> Result<Incoming, FrameError> {
        let mut f = Fields::new(frame)?;
        Ok(match f.key {
            k if k & RESPONSE != 0 => {
                let correlation = f.u32("correlation id")?;
                let code = f.u16("response code")?;
                Incoming::Response {
                    key: k & !RESPONSE,
                    correlation,
                    code,
                    rest: f.body,
                }
            }
            PUBLISH_CONFIRM => {
                let publisher = f.u8("publisher id")?;
                let n = f.array("publishing ids", 8)?;
                let ids = (0..n)
                    .map(|_| f.u64("publishing id"))
                    .collect::<Result<_, _>>()?;
                Incoming::Confirm { publisher, ids }
            }
            PUBLISH_ERROR => {
                let publisher = f.u8("publisher id")?;
                let n = f.array("publishing errors", 10)?;
                let errors = (0..n)
                    .map(|_| Ok((f.u64("publishing id")?, f.u16("error code")?)))
                    .collect::<Result<_, _>>()?;
                Incoming::Errors { publisher, errors }
            }
            METADATA_UPDATE => Incoming::MetadataUpdate {
                code: f.u16("metadata code")?,
                stream: f.string("stream")?,
            },
            TUNE => Incoming::Tune {
                frame_max: f.u32("frame max")?,
                heartbeat: f.u32("heartbeat")?,
            },
            HEARTBEAT => Incoming::Heartbeat,
            CLOSE => Incoming::Close {
                correlation: f.u32("correlation id")?,
                code: f.u16("closing code")?,
                reason: f.string("closing reason")?,
            },
            key => Incoming::Other { key },
        })
    }
}

#[cfg(test)]
mod tests;
