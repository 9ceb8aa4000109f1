//! The stream protocol's frames: parsing what the broker sends (never a panic, never an
//! allocation a malformed count asks for) and the publish frame's layout.

use super::*;
use proptest::prelude::*;

fn frame(key: u16, fill: impl FnOnce(&mut Writer<'_>)) -> Bytes {
    let mut out = Vec::new();
    let mut w = Writer::begin(&mut out, key, 1);
    fill(&mut w);
    w.end();
    let mut buf = BytesMut::from(&out[..]);
    take(&mut buf, 1 << 20).unwrap().expect("a whole frame")
}

#[test]
fn confirms_errors_and_responses_parse() {
    let f = frame(PUBLISH_CONFIRM, |w| {
        w.u8(3).u32(2);
        w.out.extend_from_slice(&7u64.to_be_bytes());
        w.out.extend_from_slice(&9u64.to_be_bytes());
    });
    assert_eq!(
        Incoming::parse(f).unwrap(),
        Incoming::Confirm {
            publisher: 3,
            ids: vec![7, 9]
        }
    );
    let f = frame(PUBLISH_ERROR, |w| {
        w.u8(1).u32(1);
        w.out.extend_from_slice(&5u64.to_be_bytes());
        w.u16(0x12);
    });
    assert_eq!(
        Incoming::parse(f).unwrap(),
        Incoming::Errors {
            publisher: 1,
            errors: vec![(5, 0x12)]
        }
    );
    let f = frame(QUERY_PUBLISHER_SEQUENCE | RESPONSE, |w| {
        w.u32(42).u16(OK);
        w.out.extend_from_slice(&77u64.to_be_bytes());
    });
    match Incoming::parse(f).unwrap() {
        Incoming::Response {
            key,
            correlation,
            code,
            rest,
        } => {
            assert_eq!((key, correlation, code), (QUERY_PUBLISHER_SEQUENCE, 42, OK));
            assert_eq!(&rest[..], &77u64.to_be_bytes());
        }
        other => panic!("{other:?}"),
    }
    let f = frame(CLOSE, |w| {
        w.u32(1).u16(2).string("bye");
    });
    assert_eq!(
        Incoming::parse(f).unwrap(),
        Incoming::Close {
            correlation: 1,
            code: 2,
            reason: "bye".into()
        }
    );
}

#[test]
fn a_count_larger_than_the_frame_is_an_error_not_an_allocation() {
    let f = frame(PUBLISH_CONFIRM, |w| {
        w.u8(0).u32(u32::MAX);
    });
    assert_eq!(
        Incoming::parse(f).unwrap_err(),
        FrameError::Short {
            key: PUBLISH_CONFIRM,
            field: "publishing ids"
        }
    );
}

#[test]
fn partial_frames_wait_and_oversized_ones_fail() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 8, 0, 0x17][..]);
    assert_eq!(take(&mut buf, 100), Ok(None));
    buf.extend_from_slice(&[0, 1, 0, 0, 0, 0]);
    assert!(take(&mut buf, 100).unwrap().is_some());
    assert!(buf.is_empty());
    let mut buf = BytesMut::from(&[0u8, 1, 0, 0][..]);
    assert_eq!(
        take(&mut buf, 100),
        Err(FrameError::TooLarge {
            size: 65536,
            max: 100
        })
    );
}

#[test]
fn a_publish_frame_has_its_size_and_count() {
    let fields = amqp10::Fields {
        message_id: "a",
        content_type: "application/json",
        creation_time_ms: None,
        application_properties: &[],
    };
    let mut p = PublishFrame::default();
    p.add(4, 10, &fields, b"{}");
    p.add(4, 11, &fields, b"[]");
    assert_eq!(p.len(), 2);
    assert_eq!(p.bytes(), 13 + 2 * PublishFrame::entry_len(&fields, 2));
    let bytes = p.finish().to_vec();
    assert!(p.is_empty());
    assert_eq!(p.bytes(), 0);
    let mut buf = BytesMut::from(&bytes[..]);
    let mut f = Fields::new(take(&mut buf, 1 << 20).unwrap().unwrap()).unwrap();
    assert_eq!((f.key, f.version), (PUBLISH, 1));
    assert_eq!(f.u8("publisher").unwrap(), 4);
    assert_eq!(f.u32("count").unwrap(), 2);
    assert_eq!(f.u64("id").unwrap(), 10);
    let len = f.u32("len").unwrap() as usize;
    assert_eq!(len, amqp10::encoded_len(&fields, 2));
}

proptest! {
    /// Whatever the broker (or a corrupted connection) sends: an answer or an error.
    #[test]
    fn any_bytes_parse_or_fail_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..64),
        key in prop_oneof![Just(PUBLISH_CONFIRM), Just(PUBLISH_ERROR), Just(CLOSE),
            Just(TUNE), Just(METADATA_UPDATE), Just(OPEN | RESPONSE), any::<u16>()],
    ) {
        let mut frame = key.to_be_bytes().to_vec();
        frame.extend_from_slice(&[0, 1]);
        frame.extend_from_slice(&bytes);
        let _ = Incoming::parse(Bytes::from(frame));
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(f)) = take(&mut buf, 1 << 16) {
            let _ = Incoming::parse(f);
        }
    }
}
