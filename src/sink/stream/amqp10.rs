//! The AMQP 1.0 message of an event, written straight into a publish frame: a `properties`
//! section (message id, content type, creation time), an `application-properties` map (the
//! AMQP sink's headers) and one `data` section holding the envelope.
//!
//! Why walrelay writes these bytes itself: the client library's message model keeps every
//! application property in a `HashMap` of owned strings (a SipHash per key), walks the whole
//! message once to size it and once more to write it, and copies the body twice. That was
//! about a third of walrelay's CPU per event on the stream sink. Here a message is the bytes
//! of its sections, appended once; the sizes are known from the strings' lengths.
//!
//! Encodings (AMQP 1.0 part 1, "types"): a section is a described type (`0x00`, then the
//! descriptor as a `smallulong` `0x53 <code>`); lists and maps use their 32-bit forms
//! (`0xd0`/`0xd1`: size, count), strings `str8`/`str32`, the content type a `sym8`, the
//! creation time a `timestamp` (ms since the Unix epoch), the body `vbin8`/`vbin32`.

/// The value of an application property.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Str(&'a str),
    Uint(u32),
}

/// What a message carries besides its body.
pub struct Fields<'a> {
    pub message_id: &'a str,
    pub content_type: &'a str,
    /// Milliseconds since the Unix epoch.
    pub creation_time_ms: Option<i64>,
    pub application_properties: &'a [(&'a str, Value<'a>)],
}

const DESCRIBED: u8 = 0x00;
const SMALL_ULONG: u8 = 0x53;
const PROPERTIES: u8 = 0x73;
const APPLICATION_PROPERTIES: u8 = 0x74;
const DATA: u8 = 0x75;
const NULL: u8 = 0x40;
const LIST32: u8 = 0xd0;
const MAP32: u8 = 0xd1;
const STR8: u8 = 0xa1;
const STR32: u8 = 0xb1;
const SYM8: u8 = 0xa3;
const SYM32: u8 = 0xb3;
const VBIN8: u8 = 0xa0;
const VBIN32: u8 = 0xb0;
const TIMESTAMP: u8 = 0x83;
const UINT: u8 = 0x70;

/// The bytes `write` appends for `fields` and a body of `body_len` bytes.
pub fn encoded_len(fields: &Fields<'_>, body_len: usize) -> usize {
    let properties = 3
        + 9
        + text_len(fields.message_id)
        + 5
        + text_len(fields.content_type)
        + if fields.creation_time_ms.is_some() {
            2 + 9
        } else {
            0
        };
    let map: usize = fields
        .application_properties
        .iter()
        .map(|(k, v)| text_len(k) + value_len(v))
        .sum();
    properties + 3 + 9 + map + 3 + binary_len(body_len)
}

/// Appends the message (`properties`, `application-properties`, `data`) to `out`.
pub fn write(out: &mut Vec<u8>, fields: &Fields<'_>, body: &[u8]) {
    out.reserve(encoded_len(fields, body.len()));
    // properties: message-id, user-id, to, subject, reply-to, correlation-id, content-type,
    // content-encoding, absolute-expiry-time, creation-time; the fields after the last
    // present one are left out of the list.
    section(out, PROPERTIES);
    let list = start_compound(out, LIST32);
    let mut count = 0u32;
    text(out, STR8, STR32, fields.message_id);
    out.extend_from_slice(&[NULL; 5]);
    text(out, SYM8, SYM32, fields.content_type);
    count += 7;
    if let Some(ms) = fields.creation_time_ms {
        out.extend_from_slice(&[NULL, NULL, TIMESTAMP]);
        out.extend_from_slice(&ms.to_be_bytes());
        count += 3;
    }
    end_compound(out, list, count);

    section(out, APPLICATION_PROPERTIES);
    let map = start_compound(out, MAP32);
    for (key, value) in fields.application_properties {
        text(out, STR8, STR32, key);
        match value {
            Value::Str(s) => text(out, STR8, STR32, s),
            Value::Uint(n) => {
                out.push(UINT);
                out.extend_from_slice(&n.to_be_bytes());
            }
        }
    }
    let entries = u32::try_from(fields.application_properties.len() * 2).unwrap_or(u32::MAX);
    end_compound(out, map, entries);

    section(out, DATA);
    match u8::try_from(body.len()) {
        Ok(n) => out.extend_from_slice(&[VBIN8, n]),
        Err(_) => {
            out.push(VBIN32);
            out.extend_from_slice(&len32(body.len()).to_be_bytes());
        }
    }
    out.extend_from_slice(body);
}

fn section(out: &mut Vec<u8>, code: u8) {
    out.extend_from_slice(&[DESCRIBED, SMALL_ULONG, code]);
}

/// Writes a list's or map's constructor and room for its size and count; returns where the
/// size goes.
fn start_compound(out: &mut Vec<u8>, constructor: u8) -> usize {
    out.push(constructor);
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    at
}

/// Fills in the size (the bytes after the size field, the count's included) and the count.
fn end_compound(out: &mut [u8], at: usize, count: u32) {
    let size = len32(out.len() - at - 4);
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
    out[at + 4..at + 8].copy_from_slice(&count.to_be_bytes());
}

fn text(out: &mut Vec<u8>, short: u8, long: u8, s: &str) {
    match u8::try_from(s.len()) {
        Ok(n) => out.extend_from_slice(&[short, n]),
        Err(_) => {
            out.push(long);
            out.extend_from_slice(&len32(s.len()).to_be_bytes());
        }
    }
    out.extend_from_slice(s.as_bytes());
}

fn text_len(s: &str) -> usize {
    if s.len() <= 255 {
        2 + s.len()
    } else {
        5 + s.len()
    }
}

fn value_len(v: &Value<'_>) -> usize {
    match v {
        Value::Str(s) => text_len(s),
        Value::Uint(_) => 5,
    }
}

fn binary_len(n: usize) -> usize {
    if n <= 255 { 2 + n } else { 5 + n }
}

/// A length in a 32-bit field: messages are bounded far below 4 GiB by `max_message_bytes`
/// and the broker's frame size, so saturating never happens in practice.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rabbitmq_stream_protocol::codec::Decoder;
    use rabbitmq_stream_protocol::message::{Message, SimpleValue};

    fn decode(bytes: &[u8]) -> Message {
        let (rest, message) = Message::decode(bytes).expect("the client library decodes it");
        assert!(rest.is_empty(), "{} bytes left over", rest.len());
        message
    }

    #[test]
    fn the_client_library_reads_what_walrelay_writes() {
        let props = [
            ("op", Value::Str("insert")),
            ("table", Value::Str("orders")),
            ("batch", Value::Uint(70_000)),
        ];
        let fields = Fields {
            message_id: "0/16B374D48:7",
            content_type: "application/json",
            creation_time_ms: Some(1_764_000_000_123),
            application_properties: &props,
        };
        let body = br#"{"op":"insert"}"#;
        let mut out = Vec::new();
        write(&mut out, &fields, body);
        assert_eq!(out.len(), encoded_len(&fields, body.len()));
        let m = decode(&out);
        assert_eq!(m.data(), Some(&body[..]));
        let p = m.properties().expect("properties");
        // The library's id and timestamp types have no public accessors: their Debug text.
        assert_eq!(
            format!("{:?}", p.message_id),
            r#"Some(String("0/16B374D48:7"))"#
        );
        assert_eq!(
            p.content_type.as_deref().map(|s| s.as_str()),
            Some("application/json")
        );
        let at = chrono::DateTime::from_timestamp_millis(1_764_000_000_123).unwrap();
        assert_eq!(
            format!("{:?}", p.creation_time),
            format!("Some(Timestamp({at:?}))")
        );
        let app = m.application_properties().expect("application properties");
        assert_eq!(app.get("op"), Some(&SimpleValue::String("insert".into())));
        assert_eq!(
            app.get("table"),
            Some(&SimpleValue::String("orders".into()))
        );
        assert_eq!(app.get("batch"), Some(&SimpleValue::Uint(70_000)));
        assert_eq!(app.len(), 3);
    }

    #[test]
    fn no_creation_time_and_no_properties() {
        let fields = Fields {
            message_id: "m",
            content_type: "application/json",
            creation_time_ms: None,
            application_properties: &[],
        };
        let mut out = Vec::new();
        write(&mut out, &fields, b"");
        assert_eq!(out.len(), encoded_len(&fields, 0));
        let m = decode(&out);
        assert_eq!(m.data(), Some(&b""[..]));
        assert!(m.properties().unwrap().creation_time.is_none());
    }

    proptest! {
        /// Short and long strings and bodies (the 8- and 32-bit forms), any text.
        #[test]
        fn any_strings_and_body_round_trip(
            id in ".{0,300}",
            value in ".{0,300}",
            body in proptest::collection::vec(any::<u8>(), 0..700),
            time in proptest::option::of(-1_000_000_000_000i64..4_102_444_800_000),
        ) {
            let props = [("routing_key", Value::Str(&value))];
            let fields = Fields {
                message_id: &id,
                content_type: "application/json",
                creation_time_ms: time,
                application_properties: &props,
            };
            let mut out = vec![0xEE];
            write(&mut out, &fields, &body);
            prop_assert_eq!(out.len() - 1, encoded_len(&fields, body.len()));
            let m = decode(&out[1..]);
            prop_assert_eq!(m.data(), Some(&body[..]));
            let app = m.application_properties().unwrap();
            prop_assert_eq!(app.get("routing_key"), Some(&SimpleValue::String(value.clone())));
            let p = m.properties().unwrap();
            prop_assert_eq!(format!("{:?}", p.message_id), format!("Some(String({id:?}))"));
            prop_assert_eq!(p.creation_time.is_some(), time.is_some());
        }
    }
}
