//! Property tests of the framing: any stream of frames cut into any chunks comes out whole and
//! in order; garbage is an error, never a panic or a huge allocation; and `read_frame` over a
//! real socket, cancelled at random points inside `select!`, loses no byte. Set
//! `PROPTEST_CASES` (e.g. 5000) for a long run.

use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::{Frame, Framed, Stream, WireError};

fn encode(frames: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (tag, body) in frames {
        out.put_u8(*tag);
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(body);
    }
    out.to_vec()
}

fn frames() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
    proptest::collection::vec(
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)),
        1..30,
    )
}

/// Splits `bytes` at the given cut points (taken modulo the length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| bytes[w[0]..w[1]].to_vec())
        .collect()
}

fn expected(frames: &[(u8, Vec<u8>)]) -> Vec<Frame> {
    frames
        .iter()
        .map(|(t, b)| Frame {
            tag: *t,
            body: b.clone().into(),
        })
        .collect()
}

proptest! {
    #[test]
    fn any_chunking_yields_the_same_frames(
        input in frames(),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let bytes = encode(&input);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&bytes, &cuts) {
            buf.extend_from_slice(&chunk);
            while let Some(f) = Framed::try_frame(&mut buf).unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, expected(&input));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error_or_incomplete_never_a_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut buf = BytesMut::from(&bytes[..]);
        loop {
            match Framed::try_frame(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(WireError::BadLength { len, .. }) => {
                    prop_assert!(!(4..=super::MAX_FRAME_BYTES as i64).contains(&len));
                    break;
                }
                Err(e) => prop_assert!(false, "unexpected error {e}"),
            }
        }
        // A claimed length alone never allocates much beyond what arrived.
        prop_assert!(buf.capacity() <= 2 * bytes.len() + super::RESERVE_AHEAD + 64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24)
    ))]

    /// A writer sends the frames in random chunks with pauses; the reader races `read_frame`
    /// against a short timer in `select!`, so reads are cancelled mid-frame again and again.
    #[test]
    fn read_frame_cancelled_at_random_points_loses_nothing(
        input in frames(),
        cuts in proptest::collection::vec(any::<usize>(), 5..40),
        timer_us in 1u64..400,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (got, cancelled) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let parts = chunks(&encode(&input), &cuts);
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                for p in parts {
                    s.write_all(&p).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_micros(300)).await;
                }
            });
            let (sock, _) = listener.accept().await.unwrap();
            let mut framed = Framed::new(Stream::Plain(sock));
            let (mut got, mut cancelled) = (Vec::new(), 0usize);
            while got.len() < input.len() {
                let timer = tokio::time::sleep(std::time::Duration::from_micros(timer_us));
                tokio::select! {
                    f = framed.read_frame() => got.push(f.unwrap()),
                    _ = timer => cancelled += 1,
                }
            }
            writer.await.unwrap();
            (got, cancelled)
        });
        prop_assert_eq!(got, expected(&input));
        prop_assert!(cancelled > 0, "no read was cancelled: the test proved nothing");
    }
}
