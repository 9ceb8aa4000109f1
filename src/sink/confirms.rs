//! `ConfirmWindow`: the messages published and not yet settled, keyed by delivery tag, and how
//! the broker's answers settle them — in publish order, whatever order they arrive in.
//!
//! On a confirm-mode channel the n-th publish has delivery tag n. RabbitMQ answers with
//! `basic.ack` or `basic.nack`, for one tag or (`multiple`) for every tag up to it, usually but
//! not necessarily in order. A `mandatory` message no queue takes comes back first as
//! `basic.return` (which carries no delivery tag: it is matched by the message's id) and is
//! then acked like any other — so an ack settles a message as delivered only if no return
//! preceded it. Settled messages leave the window from the front only, so the ack tracker
//! sees them in publish order and the LSN never passes an unsettled message.

use std::collections::VecDeque;

/// How a message ended.
#[derive(Debug, PartialEq)]
pub enum Settled<T> {
    /// Acked and not returned: the broker has it.
    Delivered(T),
    /// Returned unroutable (then acked): no queue has it.
    Returned(T, String),
    /// Nacked: the broker refused it.
    Nacked(T),
    /// Returned unroutable, and its copy to the dead-letter exchange was delivered.
    DeadLettered(T),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Pending,
    Acked,
    Nacked,
}

struct Slot<T> {
    item: T,
    state: State,
    returned: Option<String>,
    /// A returned message whose copy goes to the dead-letter exchange: it settles with that
    /// copy, not with its own ack.
    diverted: Option<Diversion>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Diversion {
    /// The copy is not published yet.
    Waiting,
    /// The copy's delivery tag.
    To(u64),
}

/// An answer that does not fit what was published.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("the broker answered for delivery tag {tag}, but only tags up to {last} were published")]
pub struct UnknownTag {
    pub tag: u64,
    pub last: u64,
}

/// The unsettled messages, oldest first.
pub struct ConfirmWindow<T> {
    slots: VecDeque<Slot<T>>,
    /// The delivery tag of `slots[0]` (tags start at 1 on a fresh channel).
    first_tag: u64,
}

impl<T> ConfirmWindow<T> {
    pub fn new(capacity: usize) -> ConfirmWindow<T> {
        ConfirmWindow {
            slots: VecDeque::with_capacity(capacity),
            first_tag: 1,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The oldest unsettled message.
    pub fn front(&self) -> Option<&T> {
        self.slots.front().map(|s| &s.item)
    }

    /// The tag the next publish gets.
    pub fn next_tag(&self) -> u64 {
        self.first_tag + self.slots.len() as u64
    }

    /// Records the message just published (its tag is `next_tag()`).
    pub fn push(&mut self, item: T) {
        self.slots.push_back(Slot {
            item,
            state: State::Pending,
            returned: None,
            diverted: None,
        });
    }

    pub fn ack(&mut self, tag: u64, multiple: bool) -> Result<(), UnknownTag> {
        self.answer(tag, multiple, State::Acked)
    }

    pub fn nack(&mut self, tag: u64, multiple: bool) -> Result<(), UnknownTag> {
        self.answer(tag, multiple, State::Nacked)
    }

    fn answer(&mut self, tag: u64, multiple: bool, state: State) -> Result<(), UnknownTag> {
        let last = self.next_tag() - 1;
        if tag > last {
            return Err(UnknownTag { tag, last });
        }
        // Tags below the window were settled already (a repeated answer changes nothing).
        if tag < self.first_tag {
            return Ok(());
        }
        let upto = (tag - self.first_tag) as usize;
        let from = if multiple { 0 } else { upto };
        for slot in self.slots.range_mut(from..=upto) {
            if slot.state == State::Pending {
                slot.state = state;
            }
        }
        Ok(())
    }

    /// Marks the oldest unanswered, not yet returned message that `is_it` picks as returned;
    /// false when none matches (the caller reports the return as it is).
    pub fn returned(&mut self, is_it: impl Fn(&T) -> bool, reply: String) -> bool {
        self.mark_returned(is_it, reply, None)
    }

    /// Like [`returned`](Self::returned), for a message whose copy will go to the dead-letter
    /// exchange: it stays unsettled until [`diverted_to`](Self::diverted_to) names the copy's
    /// tag and the copy settles.
    pub fn returned_for_dead_letter(&mut self, is_it: impl Fn(&T) -> bool, reply: String) -> bool {
        self.mark_returned(is_it, reply, Some(Diversion::Waiting))
    }

    fn mark_returned(
        &mut self,
        is_it: impl Fn(&T) -> bool,
        reply: String,
        diverted: Option<Diversion>,
    ) -> bool {
        match self
            .slots
            .iter_mut()
            .find(|s| s.state == State::Pending && s.returned.is_none() && is_it(&s.item))
        {
            Some(slot) => {
                slot.returned = Some(reply);
                slot.diverted = diverted;
                true
            }
            None => false,
        }
    }

    /// The copy of the oldest message waiting for one that `is_it` picks was published with
    /// delivery `tag` (pushed as an item of its own: callers tell copies from originals).
    pub fn diverted_to(&mut self, is_it: impl Fn(&T) -> bool, tag: u64) {
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.diverted == Some(Diversion::Waiting) && is_it(&s.item))
        {
            slot.diverted = Some(Diversion::To(tag));
        }
    }

    /// The oldest message, once it is settled.
    pub fn pop_settled(&mut self) -> Option<Settled<T>> {
        match self.slots.front()?.diverted {
            Some(Diversion::Waiting) => return None,
            Some(Diversion::To(tag)) => {
                let copy = self.slots.get(tag.checked_sub(self.first_tag)? as usize)?;
                let outcome = match (copy.state, &copy.returned) {
                    (State::Pending, _) => return None,
                    (State::Nacked, _) => Err(None),
                    (_, Some(reply)) => Err(Some(reply.clone())),
                    (State::Acked, None) => Ok(()),
                };
                let slot = self.slots.pop_front()?;
                self.first_tag += 1;
                return Some(match outcome {
                    Ok(()) => Settled::DeadLettered(slot.item),
                    Err(None) => Settled::Nacked(slot.item),
                    Err(Some(reply)) => Settled::Returned(slot.item, reply),
                });
            }
            None => {}
        }
        if self.slots.front()?.state == State::Pending {
            return None;
        }
        let slot = self.slots.pop_front()?;
        self.first_tag += 1;
        Some(match (slot.state, slot.returned) {
            (State::Nacked, _) => Settled::Nacked(slot.item),
            (_, Some(reply)) => Settled::Returned(slot.item, reply),
            _ => Settled::Delivered(slot.item),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(n: u32) -> ConfirmWindow<u32> {
        let mut w = ConfirmWindow::new(8);
        for i in 1..=n {
            assert_eq!(w.next_tag(), i as u64);
            w.push(i);
        }
        w
    }

    fn drain(w: &mut ConfirmWindow<u32>) -> Vec<Settled<u32>> {
        std::iter::from_fn(|| w.pop_settled()).collect()
    }

    #[test]
    fn acks_settle_in_publish_order_whatever_order_they_arrive_in() {
        let mut w = window(4);
        w.ack(3, false).unwrap();
        w.ack(2, false).unwrap();
        assert!(drain(&mut w).is_empty(), "1 is unanswered: nothing settles");
        w.ack(1, false).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                Settled::Delivered(1),
                Settled::Delivered(2),
                Settled::Delivered(3)
            ]
        );
        assert_eq!((w.len(), w.front()), (1, Some(&4)));
        w.ack(4, true).unwrap();
        assert_eq!(drain(&mut w), vec![Settled::Delivered(4)]);
        assert_eq!(w.next_tag(), 5);
    }

    #[test]
    fn multiple_settles_everything_up_to_the_tag() {
        let mut w = window(5);
        w.ack(3, true).unwrap();
        assert_eq!(drain(&mut w).len(), 3);
        // A repeated or stale answer is harmless.
        w.ack(2, true).unwrap();
        w.ack(3, false).unwrap();
        assert_eq!(w.len(), 2);
    }

    /// A returned message with a dead-letter copy settles with the copy, in its own place:
    /// what follows it waits, and the copy's own answer decides (delivered, refused, returned).
    #[test]
    fn a_dead_lettered_message_settles_with_its_copy_in_its_place() {
        let mut w = window(3);
        assert!(w.returned_for_dead_letter(|&i| i == 2, "312 NO_ROUTE".into()));
        w.ack(3, true).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![Settled::Delivered(1)],
            "2 waits for its copy"
        );
        assert_eq!(w.next_tag(), 4);
        w.push(20);
        w.diverted_to(|&i| i == 2, 4);
        assert!(drain(&mut w).is_empty(), "the copy is unanswered");
        w.ack(4, false).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                Settled::DeadLettered(2),
                Settled::Delivered(3),
                Settled::Delivered(20)
            ]
        );
        let mut w = window(1);
        assert!(w.returned_for_dead_letter(|&i| i == 1, "312 NO_ROUTE".into()));
        w.push(10);
        w.diverted_to(|&i| i == 1, 2);
        assert!(w.returned(|&i| i == 10, "312 NO_ROUTE".into()));
        w.ack(2, true).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                Settled::Returned(1, "312 NO_ROUTE".into()),
                Settled::Returned(10, "312 NO_ROUTE".into())
            ],
            "a dead-letter exchange that routes nothing returns the message"
        );
    }

    #[test]
    fn a_return_before_the_ack_makes_the_message_returned() {
        let mut w = window(3);
        assert!(w.returned(|&i| i == 2, "312 NO_ROUTE".into()));
        w.ack(3, true).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                Settled::Delivered(1),
                Settled::Returned(2, "312 NO_ROUTE".into()),
                Settled::Delivered(3),
            ]
        );
    }

    #[test]
    fn a_return_matches_the_oldest_unreturned_message_with_that_id() {
        // Two messages with one id (a backfill read and its replay): returns pair up in order.
        let mut w = ConfirmWindow::new(4);
        for item in ["a", "x", "x"] {
            w.push(item);
        }
        assert!(w.returned(|&i| i == "x", "r1".into()));
        assert!(w.returned(|&i| i == "x", "r2".into()));
        assert!(!w.returned(|&i| i == "x", "r3".into()), "no third x");
        w.ack(3, true).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| w.pop_settled()).collect();
        assert_eq!(
            got,
            vec![
                Settled::Delivered("a"),
                Settled::Returned("x", "r1".into()),
                Settled::Returned("x", "r2".into()),
            ]
        );
    }

    #[test]
    fn a_nack_wins_and_an_unknown_tag_is_an_error() {
        let mut w = window(3);
        w.nack(2, false).unwrap();
        w.ack(3, true).unwrap();
        assert_eq!(
            drain(&mut w),
            vec![
                Settled::Delivered(1),
                Settled::Nacked(2),
                Settled::Delivered(3)
            ]
        );
        assert_eq!(w.ack(9, false), Err(UnknownTag { tag: 9, last: 3 }));
        let mut empty: ConfirmWindow<u32> = ConfirmWindow::new(1);
        assert_eq!(empty.ack(1, true), Err(UnknownTag { tag: 1, last: 0 }));
    }
}
