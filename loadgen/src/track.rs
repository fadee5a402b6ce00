//! Per-connection integrity check: every echo is matched against what was sent.
//!
//! Sent messages wait in send order. An echo that matches the oldest one is in order; one
//! that matches a later one means the older ones were overtaken: they move aside and, if
//! they still arrive, count as *reordered*, else (after the echo timeout, or at the end
//! of the run) as *missing*. An echo of nothing outstanding is a *duplicate*; one whose
//! bytes, length, connection id or timestamp differ from what was sent is *corrupted*.
//!
//! With reconnects, a connection the server closes (close frame, EOF, reset) hands its
//! unanswered messages to [`Tracker::lose_at_close`]: they are *lost at close*, counted
//! apart from the errors, and sequence numbers carry on over the next connection.

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::wire::{self, Echo, Stamp};

/// Integrity errors by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityErrors {
    /// Sent, never echoed (overtaken and not seen again, timed out, or unanswered at the
    /// end of the drain).
    pub missing: u64,
    /// Echoed more than once.
    pub duplicate: u64,
    /// Echoed after a message sent later.
    pub reordered: u64,
    /// Echoed with different bytes, length, connection id or timestamp.
    pub corrupted: u64,
    /// A message that is neither an echo nor a recognised backend push (e.g. unknown text).
    pub unexpected: u64,
}

impl IntegrityErrors {
    /// All errors together.
    pub fn total(&self) -> u64 {
        self.missing + self.duplicate + self.reordered + self.corrupted + self.unexpected
    }

    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &IntegrityErrors) {
        self.missing += other.missing;
        self.duplicate += other.duplicate;
        self.reordered += other.reordered;
        self.corrupted += other.corrupted;
        self.unexpected += other.unexpected;
    }
}

/// A message sent and not yet accounted for.
#[derive(Debug, Clone, Copy)]
struct Pending {
    seq: u64,
    /// Send (or intended send) time, ns since the run's start.
    t_ns: u64,
}

/// Expired messages remembered per connection, so that their late echoes are not taken
/// for duplicates.
const EXPIRED_KEPT: usize = 1 << 16;

/// The integrity state of one connection.
#[derive(Debug)]
pub struct Tracker {
    conn: u32,
    size: usize,
    next_seq: u64,
    /// Sent, not echoed yet, in send order.
    outstanding: VecDeque<Pending>,
    /// Overtaken by a later echo; still accepted (as reordered) until they time out.
    skipped: VecDeque<Pending>,
    /// Messages given up on (counted missing) whose echo may still come, late: it is not
    /// then an echo of something answered already. The newest [`EXPIRED_KEPT`] are kept.
    expired: BTreeSet<u64>,
    /// Errors found so far.
    pub errors: IntegrityErrors,
    /// Messages outstanding on connections the server closed (see [`Tracker::lose_at_close`]).
    pub lost_at_close: u64,
    /// Corrupted echoes that named nothing outstanding (their connection id or sequence
    /// number was hit): each most likely is the echo of a message that will never come
    /// back intact, which is then not counted a second time, as missing.
    unplaced: u64,
}

impl Tracker {
    /// A tracker for connection `conn` sending `size`-byte messages.
    pub fn new(conn: u32, size: usize) -> Self {
        Self {
            conn,
            size,
            next_seq: 0,
            outstanding: VecDeque::new(),
            skipped: VecDeque::new(),
            expired: BTreeSet::new(),
            errors: IntegrityErrors::default(),
            lost_at_close: 0,
            unplaced: 0,
        }
    }

    /// Messages sent and awaiting their echo (not counting overtaken ones).
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    /// Messages whose echo may still come: those sent and not accounted for yet, overtaken
    /// ones included (as reordered), less as many as corrupted echoes that named nothing
    /// stand for. What the final drain waits for.
    pub fn awaited(&self) -> usize {
        (self.outstanding.len() + self.skipped.len())
            .saturating_sub(usize::try_from(self.unplaced).unwrap_or(usize::MAX))
    }

    /// Messages sent so far.
    pub fn sent(&self) -> u64 {
        self.next_seq
    }

    /// Registers a message sent at `t_ns` and returns the stamp it must carry.
    pub fn next_stamp(&mut self, t_ns: u64) -> Stamp {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding.push_back(Pending { seq, t_ns });
        Stamp {
            conn: self.conn,
            seq,
            ts_ns: t_ns,
        }
    }

    /// Checks an echoed binary message received at `now_ns`; returns its round-trip time
    /// in ns when it is a valid echo of something sent.
    pub fn on_echo(&mut self, payload: &[u8], now_ns: u64) -> Option<u64> {
        let (stamp, intact) = match wire::read_payload(payload, self.size) {
            Echo::Intact(s) => (s, true),
            Echo::Damaged(s) => (s, false),
            Echo::Unreadable => return self.unplaced_corrupt(),
        };
        if stamp.conn != self.conn || stamp.seq >= self.next_seq {
            return self.unplaced_corrupt();
        }
        // An echo names a message waiting for it only if its send time agrees and, when the
        // echo is damaged, only as the next one expected: its sequence number may be what
        // was hit, and taken for another message's it would make this message overtaken
        // (missing) and the other's own echo a duplicate or a reordering, three errors for
        // one corrupt echo.
        let names = |p: &Pending, next: bool| p.t_ns == stamp.ts_ns && (intact || next);
        let pending = if let Ok(i) = self.outstanding.binary_search_by_key(&stamp.seq, |p| p.seq) {
            if !names(&self.outstanding[i], i == 0) {
                return self.unplaced_corrupt();
            }
            // Everything sent before it was overtaken.
            self.skipped.extend(self.outstanding.drain(..i));
            self.outstanding.pop_front()
        } else if let Ok(i) = self.skipped.binary_search_by_key(&stamp.seq, |p| p.seq) {
            if !names(&self.skipped[i], false) {
                return self.unplaced_corrupt();
            }
            self.errors.reordered += 1;
            self.skipped.remove(i)
        } else if intact && self.expired.remove(&stamp.seq) {
            // Back after `--echo-timeout`: counted once, as missing, when it expired.
            return None;
        } else if intact {
            self.errors.duplicate += 1;
            return None;
        } else {
            return self.unplaced_corrupt();
        };
        let pending = pending?;
        if !intact {
            self.errors.corrupted += 1;
            return None;
        }
        Some(now_ns.saturating_sub(pending.t_ns))
    }

    /// A corrupted echo that names no message waiting: it most likely stands for one that
    /// will never come back intact (see [`Tracker::count_missing`]).
    fn unplaced_corrupt(&mut self) -> Option<u64> {
        self.errors.corrupted += 1;
        self.unplaced += 1;
        None
    }

    /// Counts as missing every message sent before `cutoff_ns` and still unanswered.
    pub fn expire(&mut self, cutoff_ns: u64) {
        let mut gone = 0;
        for queue in [&mut self.outstanding, &mut self.skipped] {
            while let Some(p) = queue.front().filter(|p| p.t_ns < cutoff_ns) {
                self.expired.insert(p.seq);
                queue.pop_front();
                gone += 1;
            }
        }
        while self.expired.len() > EXPIRED_KEPT {
            self.expired.pop_first();
        }
        self.count_missing(gone);
    }

    /// Counts `n` messages that never came back as missing, less those whose echo came
    /// back corrupted past recognition (already counted, as corrupted).
    fn count_missing(&mut self, n: u64) {
        let placed = n.min(self.unplaced);
        self.unplaced -= placed;
        self.errors.missing += n - placed;
    }

    /// Send time of the oldest unanswered message, if any.
    pub fn oldest_ns(&self) -> Option<u64> {
        let a = self.outstanding.front().map(|p| p.t_ns);
        let b = self.skipped.front().map(|p| p.t_ns);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The server closed the connection: messages still awaiting their echo (sent, or
    /// queued to send) are lost at close, not errors; ones already overtaken by a later
    /// echo were lost on the live connection and are missing. Returns the number lost at
    /// close.
    pub fn lose_at_close(&mut self) -> u64 {
        let lost = self.outstanding.len() as u64;
        self.count_missing(self.skipped.len() as u64);
        self.outstanding.clear();
        self.skipped.clear();
        self.lost_at_close += lost;
        lost
    }

    /// Ends the run: every message still unanswered is missing.
    pub fn finish(&mut self) {
        self.count_missing((self.outstanding.len() + self.skipped.len()) as u64);
        self.outstanding.clear();
        self.skipped.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 32;

    fn msg(stamp: Stamp) -> Vec<u8> {
        let mut p = vec![0u8; SIZE];
        wire::fill_payload(&mut p, stamp);
        p
    }

    fn send(t: &mut Tracker, n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| msg(t.next_stamp(i as u64 * 10))).collect()
    }

    #[test]
    fn in_order_echoes_give_round_trip_times() {
        let mut t = Tracker::new(3, SIZE);
        let sent = send(&mut t, 3);
        assert_eq!(t.on_echo(&sent[0], 100), Some(100));
        assert_eq!(t.on_echo(&sent[1], 100), Some(90));
        assert_eq!(t.in_flight(), 1);
        assert_eq!(t.on_echo(&sent[2], 100), Some(80));
        t.finish();
        assert_eq!(t.errors, IntegrityErrors::default());
    }

    #[test]
    fn a_dropped_message_is_missing() {
        let mut t = Tracker::new(0, SIZE);
        let sent = send(&mut t, 4);
        for i in [0, 1, 3] {
            assert!(t.on_echo(&sent[i], 100).is_some());
        }
        assert_eq!(
            t.in_flight(),
            0,
            "the overtaken message no longer counts as in flight"
        );
        t.finish();
        assert_eq!(
            t.errors,
            IntegrityErrors {
                missing: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_late_message_is_reordered_not_missing() {
        let mut t = Tracker::new(0, SIZE);
        let sent = send(&mut t, 3);
        for i in [0, 2, 1] {
            assert!(t.on_echo(&sent[i], 100).is_some());
        }
        t.finish();
        assert_eq!(
            t.errors,
            IntegrityErrors {
                reordered: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn duplicates_and_corruption_are_counted() {
        let mut t = Tracker::new(5, SIZE);
        let mut sent = send(&mut t, 3);
        assert!(t.on_echo(&sent[0], 100).is_some());
        assert_eq!(t.on_echo(&sent[0], 100), None);
        sent[1][SIZE - 1] ^= 0xFF;
        assert_eq!(t.on_echo(&sent[1], 100), None);
        assert_eq!(
            t.on_echo(
                &msg(Stamp {
                    conn: 6,
                    seq: 2,
                    ts_ns: 20
                }),
                100
            ),
            None
        );
        assert_eq!(
            t.on_echo(
                &msg(Stamp {
                    conn: 5,
                    seq: 2,
                    ts_ns: 21
                }),
                100
            ),
            None
        );
        assert_eq!(
            t.on_echo(
                &msg(Stamp {
                    conn: 5,
                    seq: 9,
                    ts_ns: 20
                }),
                100
            ),
            None
        );
        assert_eq!(t.on_echo(b"short", 100), None);
        t.finish();
        assert_eq!(
            t.errors,
            IntegrityErrors {
                duplicate: 1,
                corrupted: 5,
                ..Default::default()
            }
        );
    }

    #[test]
    fn an_echo_corrupted_past_recognition_is_one_error_not_two() {
        let mut t = Tracker::new(4, SIZE);
        let sent = send(&mut t, 3);
        assert!(t.on_echo(&sent[0], 100).is_some());
        // The echo of message 1 with its sequence number hit, then 2 intact.
        let hit = msg(Stamp {
            conn: 4,
            seq: 77,
            ts_ns: 10,
        });
        assert_eq!(t.on_echo(&hit, 100), None);
        assert!(t.on_echo(&sent[2], 100).is_some());
        t.finish();
        assert_eq!(
            t.errors,
            IntegrityErrors {
                corrupted: 1,
                ..Default::default()
            }
        );
        // A message that never came back at all is still missing.
        let mut t = Tracker::new(4, SIZE);
        let sent = send(&mut t, 2);
        assert!(t.on_echo(&sent[1], 100).is_some());
        t.finish();
        assert_eq!(t.errors.missing, 1);
    }

    #[test]
    fn a_bit_flip_in_a_sequence_number_is_one_corrupt_echo() {
        // The echo of message 2 comes back with one bit of its sequence number flipped
        // (it names 3, 0, 6 or 10): taken for that message, it made 2 overtaken (missing)
        // and the real echo of the other a duplicate or a reordering, 3 errors or more.
        for bit in 0..4 {
            let mut t = Tracker::new(1, SIZE);
            let mut sent = send(&mut t, 16);
            sent[2][4] ^= 1 << bit;
            for (i, m) in sent.iter().enumerate() {
                let rtt = t.on_echo(m, 1_000);
                assert_eq!(rtt.is_some(), i != 2, "bit {bit}, message {i}");
            }
            assert_eq!(t.awaited(), 0, "bit {bit}: nothing left to wait for");
            t.finish();
            assert_eq!(
                t.errors,
                IntegrityErrors {
                    corrupted: 1,
                    ..Default::default()
                },
                "bit {bit}"
            );
        }
        // Flipped in a high byte, the padding still agrees: the send time does not.
        let mut t = Tracker::new(1, SIZE);
        let mut sent: Vec<Vec<u8>> = (0..300).map(|i| msg(t.next_stamp(i * 10))).collect();
        sent[2][5] ^= 1;
        for m in &sent {
            let _ = t.on_echo(m, 10_000);
        }
        t.finish();
        assert_eq!(
            t.errors,
            IntegrityErrors {
                corrupted: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn a_close_loses_the_outstanding_and_sequence_numbers_carry_on() {
        let mut t = Tracker::new(0, SIZE);
        let sent = send(&mut t, 5);
        assert!(t.on_echo(&sent[0], 100).is_some());
        assert!(t.on_echo(&sent[2], 100).is_some(), "1 is overtaken");
        assert_eq!(t.lose_at_close(), 2, "3 and 4 were outstanding");
        assert_eq!(t.errors.missing, 1, "the overtaken one is missing");
        let next = msg(t.next_stamp(60));
        assert_eq!(t.on_echo(&next, 100), Some(40));
        t.finish();
        assert_eq!((t.sent(), t.lost_at_close), (6, 2));
    }

    #[test]
    fn old_unanswered_messages_expire_as_missing() {
        let mut t = Tracker::new(0, SIZE);
        let sent = send(&mut t, 3);
        assert_eq!(t.oldest_ns(), Some(0));
        t.expire(15);
        assert_eq!(t.errors.missing, 2);
        assert_eq!(t.oldest_ns(), Some(20));
        assert!(t.on_echo(&sent[2], 30).is_some());
        // Coming back late, it was counted once, as missing; a second copy is a
        // duplicate.
        assert_eq!(t.on_echo(&sent[0], 30), None);
        assert_eq!((t.errors.missing, t.errors.duplicate), (2, 0));
        assert_eq!(t.on_echo(&sent[0], 30), None);
        assert_eq!(t.errors.duplicate, 1);
    }
}
