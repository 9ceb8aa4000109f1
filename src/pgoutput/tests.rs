//! Decoder tests: hand-built messages of every kind, and property tests that feed random and
//! truncated bytes to prove the decoder returns errors instead of panicking.

use super::*;
use proptest::prelude::*;

/// Builds pgoutput messages the way the server writes them.
#[derive(Default)]
struct W(Vec<u8>);

impl W {
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    fn text(self, v: &str) -> Self {
        let w = self.u8(b't').u32(v.len() as u32);
        let mut w = w;
        w.0.extend_from_slice(v.as_bytes());
        w
    }
}

fn relation_msg() -> Vec<u8> {
    W::default()
        .u8(b'R')
        .u32(16384)
        .s("public")
        .s("orders")
        .u8(b'd')
        .i16(2)
        .u8(1)
        .s("id")
        .u32(23)
        .u32(u32::MAX)
        .u8(0)
        .s("note")
        .u32(25)
        .u32(u32::MAX)
        .0
}

fn sample_messages() -> Vec<Vec<u8>> {
    vec![
        W::default().u8(b'B').u64(0x100).u64(5).u32(7).0,
        W::default().u8(b'C').u8(0).u64(0x100).u64(0x130).u64(5).0,
        W::default().u8(b'O').u64(0x99).s("origin1").0,
        relation_msg(),
        W::default().u8(b'Y').u32(90000).s("public").s("mood").0,
        W::default()
            .u8(b'I')
            .u32(16384)
            .u8(b'N')
            .i16(2)
            .text("1")
            .text("hi")
            .0,
        W::default()
            .u8(b'U')
            .u32(16384)
            .u8(b'K')
            .i16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .text("2")
            .u8(b'u')
            .0,
        W::default()
            .u8(b'U')
            .u32(16384)
            .u8(b'N')
            .i16(2)
            .text("2")
            .u8(b'n')
            .0,
        W::default()
            .u8(b'D')
            .u32(16384)
            .u8(b'O')
            .i16(2)
            .text("2")
            .text("x")
            .0,
        W::default().u8(b'T').u32(2).u8(3).u32(1).u32(2).0,
        W::default()
            .u8(b'M')
            .u8(1)
            .u64(0x200)
            .s("walrelay")
            .u32(4)
            .u8(b'b')
            .u8(b'u')
            .u8(b'l')
            .u8(b'k')
            .0,
    ]
}

#[test]
fn decodes_every_message_kind() {
    let msgs = sample_messages();
    let parsed: Vec<Message<'_>> = msgs.iter().map(|m| Message::parse(m).unwrap()).collect();
    assert_eq!(
        parsed[0],
        Message::Begin(Begin {
            final_lsn: Lsn(0x100),
            commit_time_us: 5,
            xid: 7
        })
    );
    assert_eq!(
        parsed[1],
        Message::Commit(Commit {
            commit_lsn: Lsn(0x100),
            end_lsn: Lsn(0x130),
            commit_time_us: 5
        })
    );
    assert_eq!(
        parsed[2],
        Message::Origin {
            origin_lsn: Lsn(0x99),
            name: "origin1"
        }
    );
    match &parsed[3] {
        Message::Relation(r) => {
            assert_eq!(
                (r.oid, r.schema.as_str(), r.name.as_str()),
                (16384, "public", "orders")
            );
            assert_eq!(r.replica_identity, ReplicaIdentity::Default);
            assert_eq!(r.columns.len(), 2);
            assert!(r.columns[0].is_key && !r.columns[1].is_key);
            assert_eq!(
                (r.columns[1].name.as_str(), r.columns[1].type_oid),
                ("note", 25)
            );
            assert_eq!(r.columns[1].type_modifier, -1);
        }
        other => panic!("expected relation, got {other:?}"),
    }
    assert_eq!(
        parsed[4],
        Message::Type {
            oid: 90000,
            schema: "public",
            name: "mood"
        }
    );
    assert_eq!(
        parsed[5],
        Message::Insert {
            relation_oid: 16384,
            new: TupleData {
                columns: vec![Datum::Text(b"1"), Datum::Text(b"hi")]
            }
        }
    );
    assert_eq!(
        parsed[6],
        Message::Update {
            relation_oid: 16384,
            old: Some(OldTuple::Key(TupleData {
                columns: vec![Datum::Text(b"1"), Datum::Null]
            })),
            new: TupleData {
                columns: vec![Datum::Text(b"2"), Datum::UnchangedToast]
            },
        }
    );
    assert!(matches!(parsed[7], Message::Update { old: None, .. }));
    assert!(matches!(
        parsed[8],
        Message::Delete {
            old: OldTuple::Full(_),
            ..
        }
    ));
    assert_eq!(
        parsed[9],
        Message::Truncate(Truncate {
            cascade: true,
            restart_identity: true,
            relation_oids: vec![1, 2]
        })
    );
    assert_eq!(
        parsed[10],
        Message::Message(LogicalMessage {
            transactional: true,
            lsn: Lsn(0x200),
            prefix: "walrelay",
            content: b"bulk"
        })
    );
}

#[test]
fn pg_catalog_namespace_is_restored() {
    let msg = W::default().u8(b'R').u32(1).s("").s("t").u8(b'n').i16(0).0;
    match Message::parse(&msg).unwrap() {
        Message::Relation(r) => assert_eq!(r.schema, "pg_catalog"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn rejects_bad_input_with_specific_errors() {
    assert_eq!(Message::parse(b""), Err(DecodeError::Empty));
    assert_eq!(Message::parse(b"Z"), Err(DecodeError::UnknownTag('Z')));
    let huge_len = W::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .u32(0x7fff_ffff)
        .0;
    assert!(matches!(
        Message::parse(&huge_len),
        Err(DecodeError::Truncated { .. })
    ));
    let neg_len = W::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .u32(u32::MAX)
        .0;
    assert!(matches!(
        Message::parse(&neg_len),
        Err(DecodeError::Negative { .. })
    ));
    let huge_truncate = W::default().u8(b'T').u32(0x7fff_ffff).u8(0).0;
    assert!(matches!(
        Message::parse(&huge_truncate),
        Err(DecodeError::Truncated { .. })
    ));
    let bad_kind = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0;
    assert!(matches!(
        Message::parse(&bad_kind),
        Err(DecodeError::InvalidByte { .. })
    ));
    let trailing = W::default().u8(b'B').u64(1).u64(2).u32(3).u8(0).0;
    assert_eq!(
        Message::parse(&trailing),
        Err(DecodeError::TrailingBytes { extra: 1 })
    );
}

#[test]
fn every_truncation_of_a_valid_message_is_an_error() {
    for msg in sample_messages() {
        for cut in 0..msg.len() {
            assert!(
                Message::parse(&msg[..cut]).is_err(),
                "prefix of {cut} bytes of {msg:?} decoded"
            );
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = Message::parse(&bytes);
    }

    #[test]
    fn random_bodies_after_a_valid_tag_never_panic(
        tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let mut msg = vec![tag];
        msg.extend(body);
        let _ = Message::parse(&msg);
    }

    #[test]
    fn corrupted_valid_messages_never_panic(
        which in 0usize..11, pos in any::<prop::sample::Index>(), byte in any::<u8>()
    ) {
        let mut msg = sample_messages().swap_remove(which);
        let i = pos.index(msg.len());
        msg[i] = byte;
        let _ = Message::parse(&msg);
    }
}
