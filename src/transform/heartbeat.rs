//! walrelay's heartbeat message: a transactional logical message the probe writes with
//! `pg_logical_emit_message` (prefix [`PREFIX`], content the emit time in µs since the Unix
//! epoch as decimal text), and the transform recognises to measure the round trip.

/// The prefix of heartbeat messages.
pub(crate) const PREFIX: &str = "walrelay.heartbeat";

/// The heartbeat's emit time (µs since the Unix epoch) from its content.
pub(crate) fn emitted_us(content: &[u8]) -> Option<i64> {
    std::str::from_utf8(content).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn emit_time_round_trips_and_junk_is_none() {
        assert_eq!(
            super::emitted_us(b"1733580000000000"),
            Some(1_733_580_000_000_000)
        );
        assert_eq!(super::emitted_us(b"\xff"), None);
        assert_eq!(super::emitted_us(b"soon"), None);
    }
}
