//! The soak's per-follower check: one [`View`] per (follower session,
//! followed user), rebuilt from the follow snapshot and the events after
//! it, and the rules every event must satisfy against it. Pure logic (no
//! network), so that the rules are unit-tested here and the shard only
//! routes frames to views.
//!
//! Statuses are stamps `"<session ordinal>:<counter>:<send ns>"`
//! ([`crate::scan::Stamp`]): the ordinal names the device slot (kept across
//! reconnects), the counter increases by one per update that slot sends,
//! and the send time gives the latency. A view maps each server session id
//! of the followed user to the status it holds. For each event:
//!
//! * a join whose counter equals the held one is a **duplicate** (except a
//!   single repeat of what the follow snapshot showed, which the protocol
//!   allows: `snapshot_repeats`), lower is **out of order**;
//! * the leave must name exactly the status the view holds for that
//!   session (a join without a leave must be of a session the view does not
//!   hold). A leave naming a later status of the same slot than the view
//!   holds is **missing** (the follower never got that change); any other
//!   disagreement is a **wrong leave**;
//! * a leave and join of one slot whose counters differ by more than one is
//!   **coalesced** (a lagging node skipped statuses; the leave still holds
//!   together);
//! * events that arrive between the follow request and its snapshot are
//!   not applied, but the snapshot must not be older than any of them
//!   (**snapshot behind**: an older status of a session than an early
//!   join, or a session an early event joined missing from it).
//!
//! The follower's own user is viewed from the session's open without a
//! snapshot, so a leave of a session it has not seen is tolerated there.

use crate::scan::{parse_stamp, Stamp};

/// A status as a view holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum St {
    /// `""`: a `status=true` connect before its first update.
    Empty,
    Stamp {
        slot: u32,
        counter: u32,
    },
    /// Anything else (FNV-1a of the text): not written by the soak.
    Other(u64),
}

impl St {
    pub fn parse(s: &str) -> St {
        if s.is_empty() {
            return St::Empty;
        }
        match parse_stamp(s.as_bytes()) {
            Some(Stamp { user, seq, .. }) => St::Stamp {
                slot: user,
                counter: seq,
            },
            None => {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in s.bytes() {
                    h ^= b as u64;
                    h = h.wrapping_mul(0x0100_0000_01b3);
                }
                St::Other(h)
            }
        }
    }
}

/// One followed user as one follower sees it: `(session id, status, came
/// from the snapshot and not yet changed by an event)`.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub sessions: Vec<(u128, St, bool)>,
}

/// One presence of an event or snapshot, decoded.
#[derive(Debug, Clone, Copy)]
pub struct P {
    pub session: u128,
    pub status: St,
}

/// Counts of the rules above, summed over views.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub applied: u64,
    pub missing: u64,
    pub duplicate: u64,
    pub out_of_order: u64,
    pub wrong_leave: u64,
    pub coalesced: u64,
    pub snapshot_behind: u64,
    pub snapshot_repeats: u64,
    pub own_unknown: u64,
    pub malformed: u64,
}

impl Counts {
    /// Anomalies that fail a soak (coalescing is counted apart).
    pub fn failures(&self) -> u64 {
        self.missing
            + self.duplicate
            + self.out_of_order
            + self.wrong_leave
            + self.snapshot_behind
            + self.malformed
    }
}

/// What an event did to its view.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Applied; the join's stamp (for the latency), if any.
    Applied,
    /// Not applied (a duplicate, out of order, or an allowed repeat).
    Skipped,
    /// Applied, but it broke a rule (counted).
    Broken,
}

impl View {
    fn find(&self, session: u128) -> Option<usize> {
        self.sessions.iter().position(|s| s.0 == session)
    }

    /// Replaces the view with a snapshot (the presences of this user);
    /// `early` are the events that arrived before it, `(session, join)`
    /// (`None` for a leave), in arrival order. The snapshot is behind when
    /// it holds an older status of a session than an early join, or lacks
    /// a session an early event joined and none left.
    pub fn snapshot(&mut self, presences: &[P], early: &[(u128, Option<St>)], c: &mut Counts) {
        self.sessions.clear();
        for p in presences {
            if matches!(p.status, St::Other(_)) {
                c.malformed += 1;
            }
            self.sessions.push((p.session, p.status, true));
        }
        for (k, &(sid, join)) in early.iter().enumerate() {
            let Some(join) = join else { continue };
            let left_later = early[k + 1..].iter().any(|e| e.0 == sid && e.1.is_none());
            let listed = presences.iter().find(|p| p.session == sid);
            let behind = match (listed, join) {
                (None, _) => !left_later,
                (
                    Some(P {
                        status: St::Stamp { slot, counter: k },
                        ..
                    }),
                    St::Stamp {
                        slot: js,
                        counter: jk,
                    },
                ) => *slot == js && *k < jk,
                (
                    Some(P {
                        status: St::Empty, ..
                    }),
                    St::Stamp { .. },
                ) => true,
                _ => false,
            };
            if behind {
                c.snapshot_behind += 1;
            }
        }
    }

    /// Applies one event (`join` and/or `leave` of one session), checking
    /// the rules of the module doc; `own` for the follower's own user.
    pub fn apply(
        &mut self,
        join: Option<P>,
        leave: Option<P>,
        own: bool,
        c: &mut Counts,
    ) -> Outcome {
        let Some(session) = join.or(leave).map(|p| p.session) else {
            return Outcome::Skipped;
        };
        if [join, leave]
            .iter()
            .flatten()
            .any(|p| matches!(p.status, St::Other(_)) || p.session != session)
        {
            c.malformed += 1;
        }
        let at = self.find(session);
        let held = at.map(|i| self.sessions[i]);
        // Repeats and reorders of one session's statuses.
        if let (
            Some(P {
                status: St::Stamp { slot, counter },
                ..
            }),
            Some((
                _,
                St::Stamp {
                    slot: hs,
                    counter: hk,
                },
                from_snap,
            )),
        ) = (join, held)
        {
            if slot == hs && counter <= hk {
                if counter == hk && from_snap {
                    c.snapshot_repeats += 1;
                    if let Some(i) = at {
                        self.sessions[i].2 = false;
                    }
                } else if counter == hk {
                    c.duplicate += 1;
                } else {
                    c.out_of_order += 1;
                }
                return Outcome::Skipped;
            }
        }
        let mut broken = false;
        match (leave.map(|p| p.status), held.map(|h| h.1)) {
            (None, None) => {}
            (Some(l), Some(h)) if l == h => {}
            (Some(_), None) if own => c.own_unknown += 1,
            (
                Some(St::Stamp { slot, counter }),
                Some(St::Stamp {
                    slot: hs,
                    counter: hk,
                }),
            ) if slot == hs && counter > hk => {
                c.missing += 1;
                broken = true;
            }
            (Some(St::Stamp { .. }), Some(St::Empty)) => {
                c.missing += 1;
                broken = true;
            }
            _ => {
                c.wrong_leave += 1;
                broken = true;
            }
        }
        if let (
            Some(P {
                status: St::Stamp { slot, counter: b },
                ..
            }),
            Some(P {
                status:
                    St::Stamp {
                        slot: ls,
                        counter: a,
                    },
                ..
            }),
        ) = (join, leave)
        {
            if slot == ls && b > a + 1 {
                c.coalesced += (b - a - 1) as u64;
            }
        }
        match (join, at) {
            (Some(j), Some(i)) => self.sessions[i] = (session, j.status, false),
            (Some(j), None) => self.sessions.push((session, j.status, false)),
            (None, Some(i)) => {
                self.sessions.swap_remove(i);
            }
            (None, None) => {}
        }
        c.applied += 1;
        if broken {
            Outcome::Broken
        } else {
            Outcome::Applied
        }
    }

    /// The view as `(session, status)`, sorted (to compare with the log).
    pub fn sorted(&self) -> Vec<(u128, St)> {
        let mut v: Vec<(u128, St)> = self.sessions.iter().map(|s| (s.0, s.1)).collect();
        v.sort_by_key(|s| s.0);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(session: u128, status: St) -> P {
        P { session, status }
    }
    fn s(slot: u32, counter: u32) -> St {
        St::Stamp { slot, counter }
    }

    #[test]
    fn stamps_parse() {
        assert_eq!(St::parse("7:42:1700"), s(7, 42));
        assert_eq!(St::parse(""), St::Empty);
        assert!(matches!(St::parse("away"), St::Other(_)));
    }

    #[test]
    fn a_chain_of_updates_holds_and_a_skipped_one_is_missing() {
        let mut v = View::default();
        let mut c = Counts::default();
        v.snapshot(&[p(1, St::Empty)], &[], &mut c);
        assert_eq!(
            v.apply(Some(p(1, s(3, 1))), Some(p(1, St::Empty)), false, &mut c),
            Outcome::Applied
        );
        assert_eq!(
            v.apply(Some(p(1, s(3, 2))), Some(p(1, s(3, 1))), false, &mut c),
            Outcome::Applied
        );
        // 3 never arrives: 4's leave names 3 while the view holds 2.
        assert_eq!(
            v.apply(Some(p(1, s(3, 4))), Some(p(1, s(3, 3))), false, &mut c),
            Outcome::Broken
        );
        assert_eq!(c.missing, 1);
        assert_eq!(c.failures(), 1);
        // A leave-only (disconnect) naming the held status empties the view.
        assert_eq!(
            v.apply(None, Some(p(1, s(3, 4))), false, &mut c),
            Outcome::Applied
        );
        assert!(v.sorted().is_empty());
    }

    #[test]
    fn repeats_reorders_and_coalescing_are_told_apart() {
        let mut v = View::default();
        let mut c = Counts::default();
        v.snapshot(&[p(1, s(3, 5))], &[], &mut c);
        // One repeat of what the snapshot showed is allowed, a second is not.
        v.apply(Some(p(1, s(3, 5))), Some(p(1, s(3, 4))), false, &mut c);
        assert_eq!(c.snapshot_repeats, 1);
        v.apply(Some(p(1, s(3, 5))), Some(p(1, s(3, 4))), false, &mut c);
        assert_eq!(c.duplicate, 1);
        v.apply(Some(p(1, s(3, 3))), Some(p(1, s(3, 2))), false, &mut c);
        assert_eq!(c.out_of_order, 1);
        // 5 → 8: the leave holds together, two statuses skipped.
        assert_eq!(
            v.apply(Some(p(1, s(3, 8))), Some(p(1, s(3, 5))), false, &mut c),
            Outcome::Applied
        );
        assert_eq!(c.coalesced, 2);
        assert_eq!(c.missing + c.wrong_leave, 0);
    }

    #[test]
    fn a_snapshot_older_than_an_early_event_is_behind() {
        let mut v = View::default();
        let mut c = Counts::default();
        v.snapshot(&[p(1, s(3, 5))], &[(1, Some(s(3, 6)))], &mut c);
        assert_eq!(c.snapshot_behind, 1);
        v.snapshot(&[p(1, s(3, 6))], &[(1, Some(s(3, 6)))], &mut c);
        assert_eq!(c.snapshot_behind, 1);
        // A session joined before the snapshot must be listed, unless it left.
        v.snapshot(&[], &[(2, Some(St::Empty))], &mut c);
        assert_eq!(c.snapshot_behind, 2);
        v.snapshot(&[], &[(2, Some(St::Empty)), (2, None)], &mut c);
        assert_eq!(c.snapshot_behind, 2);
    }

    #[test]
    fn leaves_of_unknown_sessions_are_wrong_except_for_the_own_user() {
        let mut v = View::default();
        let mut c = Counts::default();
        v.apply(None, Some(p(9, s(1, 1))), true, &mut c);
        assert_eq!((c.own_unknown, c.wrong_leave), (1, 0));
        v.apply(None, Some(p(9, s(1, 1))), false, &mut c);
        assert_eq!(c.wrong_leave, 1);
        // A join without a leave for a session the view holds hides its old status.
        v.apply(Some(p(2, St::Empty)), None, false, &mut c);
        v.apply(Some(p(2, s(4, 1))), None, false, &mut c);
        assert_eq!(c.wrong_leave, 2);
    }
}
