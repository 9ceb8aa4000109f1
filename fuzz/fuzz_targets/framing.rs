//! Fuzzes the PostgreSQL wire framing: any bytes, fed in two pieces, cut into frames or
//! rejected — never a panic, never a frame that was not in the input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walrelay::source::wire::Framed;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = Framed::try_frame(&mut buf) {
            total += 5 + frame.body.len();
        }
    }
    assert!(total <= data.len());
});
