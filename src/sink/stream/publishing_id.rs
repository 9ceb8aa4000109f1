//! Publishing ids for RabbitMQ Streams deduplication: a change gets the same (producer, id) on
//! every replay, and ids grow strictly over the slot's life, so the broker itself drops the
//! messages it already has.
//!
//! The broker keeps, per stream and producer *name*, the highest publishing id stored, and
//! drops (but confirms) any message whose id is not higher. The id is a `u64`, derived from
//! what identifies a change in the slot's order: its transaction's commit LSN and its index in
//! the transaction. Two facts make a packing possible:
//! - WAL records start 8-byte aligned, and every transaction has its own commit record, so
//!   `commit_lsn >> 3` is unique per transaction and grows in commit (= stream) order;
//! - a `u64` cannot hold a whole LSN and a large index, but LSNs only grow, so the high bits
//!   can go into the producer's *name* instead: each 2^40 bytes (1 TiB) of WAL is an **epoch**
//!   with a producer of its own.
//!
//! Within an epoch: `id = ((commit_lsn mod 2^40) >> 3) << 27 | index` — 37 bits of LSN and 27
//! of index (134,217,728 changes per transaction). Ids of later transactions are always higher
//! (a later commit record is at least 8 bytes further), whatever their sizes.
//!
//! A transaction with more changes than that puts the changes from index 2^27 on under a
//! producer of their own, named after the epoch *and* the commit LSN, with `id = index`; so
//! even they are deduplicated on replay. That costs one more producer per such transaction
//! (a few per year at most on any real system).
//!
//! The producer name also carries the slot, the server's system identifier and its timeline:
//! a restored or different server reuses LSNs, and must never have its messages dropped as
//! duplicates of another's.

use crate::lsn::Lsn;

/// Bits of the LSN within an epoch; an epoch is 2^40 bytes (1 TiB) of WAL.
pub const EPOCH_BITS: u32 = 40;
/// Bits of the change's index in the main id space of an epoch.
pub const INDEX_BITS: u32 = 27;
/// WAL records are 8-byte aligned: the low 3 bits of a record's LSN are always 0.
const ALIGN_BITS: u32 = 3;

const _: () = assert!(EPOCH_BITS - ALIGN_BITS + INDEX_BITS == 64);

/// Which producer (and so which deduplication sequence) a message belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sequence {
    /// The main sequence of an epoch (`commit_lsn >> 40`).
    Epoch(u64),
    /// The tail (index ≥ 2^27) of one huge transaction, by its commit LSN.
    Overflow(Lsn),
}

/// Where a message goes for deduplication: its producer's sequence and its id there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishingId {
    pub sequence: Sequence,
    pub id: u64,
}

/// The publishing id of the change at `index` in the transaction that committed at
/// `commit_lsn`.
pub fn publishing_id(commit_lsn: Lsn, index: u64) -> PublishingId {
    let lsn = commit_lsn.0;
    if index >= 1 << INDEX_BITS {
        return PublishingId {
            sequence: Sequence::Overflow(commit_lsn),
            id: index,
        };
    }
    let within = (lsn & ((1 << EPOCH_BITS) - 1)) >> ALIGN_BITS;
    PublishingId {
        sequence: Sequence::Epoch(lsn >> EPOCH_BITS),
        id: (within << INDEX_BITS) | index,
    }
}

/// Who publishes: the slot on one server's history. Part of every producer name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub slot: String,
    /// `IDENTIFY_SYSTEM`'s `systemid`: differs between servers, kept by a physical replica.
    pub system_id: String,
    /// `IDENTIFY_SYSTEM`'s `timeline`: a promotion or a point-in-time restore starts a new one.
    pub timeline: u32,
    /// [`rules_fingerprint`] of the filter and flood settings. Indexes count every change of
    /// a transaction, published or not, so a filter widened while a transaction was partly
    /// sent would re-include a change at an index below one the broker stored — and the broker
    /// would drop it as a replay. With the fingerprint in the name, other rules mean other
    /// producers: such a change is published (possibly beside duplicates), never dropped.
    pub rules: String,
}

/// 8 hex digits of FNV-1a over the settings' debug form: equal settings, equal fingerprint
/// (the form holds no addresses or hash-ordered maps).
pub fn rules_fingerprint(settings: &impl std::fmt::Debug) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{settings:?}").bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:08x}", (h >> 32) as u32 ^ h as u32)
}

/// The producer name of a sequence, e.g. `walrelay:orders_slot:7412…:1:r5f3a9c01:e0` or
/// `…:x0/1A2B3C8`.
/// RabbitMQ allows up to 255 bytes; a slot name has at most 63.
pub fn producer_name(origin: &Origin, sequence: &Sequence) -> String {
    let base = format!(
        "walrelay:{}:{}:{}:r{}",
        origin.slot, origin.system_id, origin.timeline, origin.rules
    );
    match sequence {
        Sequence::Epoch(e) => format!("{base}:e{e}"),
        Sequence::Overflow(lsn) => format!("{base}:x{lsn}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rules_fingerprints_follow_the_settings() {
        let a = rules_fingerprint(&["public.a"]);
        assert_eq!(a.len(), 8);
        assert_eq!(a, rules_fingerprint(&["public.a"]));
        assert_ne!(a, rules_fingerprint(&["public.a", "public.b"]));
    }

    /// A plausible commit LSN: 8-byte aligned, anywhere in the 64-bit space.
    fn lsn() -> impl Strategy<Value = u64> {
        any::<u64>().prop_map(|l| l & !7)
    }

    proptest! {
        /// Later transaction (higher commit LSN) or later change: never a lower id in the
        /// same sequence.
        #[test]
        fn ids_grow_strictly_in_stream_order(
            a in lsn(), gap in 1u64..1 << 20, i in 0u64..1 << 30, j in 0u64..1 << 30,
        ) {
            let b = a.saturating_add(gap * 8);
            prop_assume!(b > a);
            let (x, y) = (publishing_id(Lsn(a), i), publishing_id(Lsn(b), j));
            if x.sequence == y.sequence {
                prop_assert!(y.id > x.id, "{x:?} then {y:?}");
            }
            // Within one transaction, the next change.
            let next = publishing_id(Lsn(a), i + 1);
            if next.sequence == x.sequence {
                prop_assert!(next.id > x.id);
            }
        }

        /// Sequences themselves never go back: an epoch follows the earlier ones.
        #[test]
        fn epochs_only_move_forward(a in lsn(), gap in 0u64..u64::MAX / 2) {
            let b = a.saturating_add(gap & !7);
            let (x, y) = (publishing_id(Lsn(a), 0), publishing_id(Lsn(b), 0));
            prop_assert!(y.sequence >= x.sequence);
        }

        /// The same change, replayed, gets the same id; two changes never share one.
        #[test]
        fn ids_are_stable_and_distinct(a in lsn(), b in lsn(), i in 0u64..1 << 28, j in 0u64..1 << 28) {
            prop_assert_eq!(publishing_id(Lsn(a), i), publishing_id(Lsn(a), i));
            if (a, i) != (b, j) {
                prop_assert_ne!(publishing_id(Lsn(a), i), publishing_id(Lsn(b), j));
            }
        }
    }

    #[test]
    fn the_edges_of_the_packing() {
        // The first change of the first possible transaction, and the last index that fits.
        assert_eq!(publishing_id(Lsn(0), 0).id, 0);
        let last = (1 << INDEX_BITS) - 1;
        assert_eq!(publishing_id(Lsn(8), last).id, (1 << INDEX_BITS) | last);
        // The last record of an epoch holds the highest id of its sequence.
        let end = (1u64 << EPOCH_BITS) - 8;
        let top = publishing_id(Lsn(end), last);
        assert_eq!((top.sequence, top.id), (Sequence::Epoch(0), u64::MAX));
        // The next epoch starts again at 0, under another producer.
        let next = publishing_id(Lsn(1 << EPOCH_BITS), 0);
        assert_eq!((next.sequence, next.id), (Sequence::Epoch(1), 0));
        // A huge transaction's tail has a sequence of its own, keyed by its commit LSN.
        let tail = publishing_id(Lsn(4096), 1 << INDEX_BITS);
        assert_eq!(tail.sequence, Sequence::Overflow(Lsn(4096)));
        assert_eq!(tail.id, 1 << INDEX_BITS);
        // The highest LSN PostgreSQL can write.
        let max = publishing_id(Lsn(!7), 0);
        assert_eq!(max.sequence, Sequence::Epoch(u64::MAX >> EPOCH_BITS));
    }

    #[test]
    fn producer_names_tell_servers_and_timelines_apart() {
        let o = Origin {
            slot: "walrelay".into(),
            system_id: "7412345678901234567".into(),
            timeline: 1,
            rules: "0badf00d".into(),
        };
        let n = producer_name(&o, &Sequence::Epoch(0));
        assert_eq!(n, "walrelay:walrelay:7412345678901234567:1:r0badf00d:e0");
        let promoted = Origin {
            timeline: 2,
            ..o.clone()
        };
        assert_ne!(producer_name(&promoted, &Sequence::Epoch(0)), n);
        let tail = producer_name(&o, &Sequence::Overflow(Lsn(0x1_0000_0028)));
        assert_eq!(
            tail,
            "walrelay:walrelay:7412345678901234567:1:r0badf00d:x1/28"
        );
        let other_rules = Origin {
            rules: "00000001".into(),
            ..o.clone()
        };
        assert_ne!(producer_name(&other_rules, &Sequence::Epoch(0)), n);
        let longest = Origin {
            slot: "s".repeat(63),
            system_id: u64::MAX.to_string(),
            timeline: u32::MAX,
            rules: "ffffffff".into(),
        };
        assert!(producer_name(&longest, &Sequence::Overflow(Lsn(u64::MAX))).len() <= 255);
    }
}
