//! Every follower's *view*: what it knows of each user it follows, rebuilt
//! from the follow snapshot and the events after it, in arrival order; and
//! the log's ground truth to hold the final views against.
//!
//! A view maps each session of the followed user to its status. Each event
//! is applied in turn, and its leave must name the status the view holds
//! for that session (none for a join-only event): otherwise the follower
//! missed a change, a **gap**. An event may instead come after changes of
//! its session the follower never got, its leave naming an older status
//! than the one the session really had just before: the follower's node
//! skipped intermediate statuses (a lagging or recovering replica reads
//! only the latest, the documented coalescing). The view still holds
//! together; the event is counted as **coalesced**, and the changes it
//! skipped are not counted as missing (see `check`). From the follower's
//! side coalescing cannot be told from the loss of whole join-leave pairs,
//! so a run should also compare the count with the servers' own
//! (`herald_cluster_coalesced_total`).
//!
//! Events that repeat what the view already holds (an event in flight
//! around the snapshot, §6.4) are passed over. The follower's own user is
//! viewed from the session's connect, without a snapshot: a session of it
//! first seen with a leave is then unknown, not a gap.
//!
//! After the drain, the views of the users every open session still
//! follows must equal `GET /v2/status` (in cluster mode a read of the log
//! itself), and that answer must equal what the sessions did (the model).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufReader;
use std::net::{SocketAddr, TcpStream};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::{Interval, Model, Sess};
use crate::users::{http_exchange, UserDir};

/// A session's status as a view or the log has it: `(session id, status)`.
pub(crate) type Presences = Vec<(String, String)>;

/// What the views found (see the module doc).
#[derive(Default)]
pub(super) struct Views {
    pub gaps: u64,
    pub snapshot_behind: u64,
    /// Events that arrived having skipped statuses of their session.
    pub coalesced_events: u64,
    /// `(receiver, session, event)`: events skipped that way.
    pub skipped: HashSet<(usize, usize, usize)>,
    /// `(receiver, session, event)`: events that arrived after a skip (their
    /// leave names an older status than the model's).
    pub arrived_coalesced: HashSet<(usize, usize, usize)>,
    /// `(receiver, followed user) → presences`, for the follows still live
    /// at the end, of sessions still open.
    pub finals: BTreeMap<(usize, usize), Presences>,
    pub examples: Vec<String>,
}

/// One session of the viewed user, as the view has it.
struct Seen {
    /// `(session, event)` in the model, when the status resolves.
    at: Option<(usize, usize)>,
    status: Option<String>,
}

impl Views {
    fn note(&mut self, s: String) {
        if self.examples.len() < 10 {
            self.examples.push(s);
        }
    }
}

/// Rebuilds every view (see the module doc).
pub(super) fn build(m: &Model) -> Views {
    let mut v = Views::default();
    for (ri, r) in m.sessions.iter().enumerate() {
        let Some(open_at) = r.open_at else { continue };
        for (&x, intervals) in &r.follows {
            for (n, iv) in intervals.iter().enumerate() {
                let Some(fr) = iv.fr else { continue };
                let Some(snap) = r
                    .snaps
                    .iter()
                    .find(|s| s.fs == iv.fs && s.fr == fr && s.users.contains(&x))
                else {
                    continue;
                };
                let mut view: HashMap<String, Seen> = HashMap::new();
                for (u, sid, st) in &snap.presences {
                    if *u == Some(x) {
                        let at = m.resolve_listed(sid, st);
                        view.insert(
                            sid.clone(),
                            Seen {
                                at,
                                status: Some(st.clone()),
                            },
                        );
                    }
                }
                let live = n + 1 == intervals.len() && iv.us.is_none();
                let sc = Scope {
                    m,
                    ri,
                    r,
                    x,
                    iv,
                    after: snap.ord,
                };
                replay(&mut v, &sc, view, false, live);
            }
        }
        let own = Interval {
            fs: r.conn_sent,
            fr: Some(open_at),
            us: None,
            ua: None,
        };
        let sc = Scope {
            m,
            ri,
            r,
            x: r.user,
            iv: &own,
            after: 0,
        };
        replay(&mut v, &sc, HashMap::new(), true, false);
    }
    v
}

/// One view being replayed: receiver `r` (session `ri`) of user `x` over
/// interval `iv`, from the frame after `after` (its snapshot).
struct Scope<'a> {
    m: &'a Model,
    ri: usize,
    r: &'a Sess,
    x: usize,
    iv: &'a Interval,
    after: u64,
}

impl Scope<'_> {
    /// Milliseconds from the snapshot's arrival to `t`.
    fn ms(&self, t: u64) -> f64 {
        (t as i64 - self.iv.fr.unwrap_or(0) as i64) as f64 / 1e6
    }
}

/// Applies the scope's events to `view` (see the module doc); `own` for the
/// receiver's own user, `live` when the interval lasts to the end.
fn replay(v: &mut Views, sc: &Scope, mut view: HashMap<String, Seen>, own: bool, live: bool) {
    let Scope {
        m,
        ri,
        r,
        x,
        iv,
        after,
    } = *sc;
    let fr = iv.fr.unwrap_or(0);
    let end = iv
        .us
        .unwrap_or(u64::MAX)
        .min(r.closed_at.unwrap_or(u64::MAX));
    for rc in &r.receipts {
        if rc.user != Some(x) || rc.ord <= after || rc.at > end {
            continue;
        }
        let at = m.resolve(rc);
        let seen = view.get(&rc.session_id);
        if let (
            Some((_, k)),
            Some(Seen {
                at: Some((_, kv)), ..
            }),
        ) = (at, seen)
        {
            if k <= *kv {
                continue; // repeats what the view holds
            }
        }
        let held = seen.and_then(|s| s.status.clone());
        if held != rc.leave {
            if !(own && seen.is_none()) {
                broken(v, sc, rc, at, seen.and_then(|s| s.at), &held);
            }
        } else if let Some((p, k)) = at {
            // Continuity holds: were statuses skipped on the way?
            let from = match seen {
                Some(Seen {
                    at: Some((_, kv)), ..
                }) => kv + 1,
                _ => m.sessions[p]
                    .events
                    .iter()
                    .position(|e| e.sent >= fr)
                    .unwrap_or(k),
            };
            if from < k {
                v.coalesced_events += 1;
                v.arrived_coalesced.insert((ri, p, k));
                for j in from..k {
                    v.skipped.insert((ri, p, j));
                }
                let ms = |t: u64| sc.ms(t);
                let skipped: Vec<String> = m.sessions[p].events[from..k]
                    .iter()
                    .map(|e| format!("{:?}/{:?} sent {:+.1} ms", e.join, e.leave, ms(e.sent)))
                    .collect();
                v.note(format!(
                    "session {ri}: coalesced event {k} of session {p} (user {x}, {:?}/{:?}, arrived {:+.1} ms after the follow's snapshot{}), skipping [{}]",
                    rc.join,
                    rc.leave,
                    ms(rc.at),
                    if own { ", own user" } else { "" },
                    skipped.join(", ")
                ));
            }
        }
        view.insert(
            rc.session_id.clone(),
            Seen {
                at,
                status: rc.join.clone(),
            },
        );
    }
    if live && r.closed_at.is_none() {
        let mut presences: Presences = view
            .into_iter()
            .filter_map(|(sid, s)| Some((sid, s.status?)))
            .collect();
        presences.sort();
        v.finals.insert((ri, x), presences);
    }
}

/// A received event whose leave is not what the view held: a **gap** when
/// the change(s) in between never reached the follower, **snapshot behind**
/// when they reached it before its follow snapshot, which then showed an
/// older status than they had (the snapshot replaced the newer view).
#[allow(clippy::too_many_arguments)]
fn broken(
    v: &mut Views,
    sc: &Scope,
    rc: &super::Receipt,
    at: Option<(usize, usize)>,
    held_at: Option<(usize, usize)>,
    held: &Option<String>,
) {
    let Scope {
        m, ri, r, x, after, ..
    } = *sc;
    let ms = |t: u64| sc.ms(t);
    let between: Vec<(usize, Option<&super::Receipt>)> = match (at, held_at) {
        (Some((p, k)), Some((_, kv))) if kv < k => (kv + 1..k)
            .map(|j| {
                let got = r.receipts.iter().find(|g| m.resolve(g) == Some((p, j)));
                (j, got)
            })
            .collect(),
        _ => Vec::new(),
    };
    let behind = between
        .iter()
        .any(|(_, g)| g.is_some_and(|g| g.ord < after));
    let what = if behind {
        v.snapshot_behind += 1;
        "snapshot behind an event received before it"
    } else {
        v.gaps += 1;
        "gap"
    };
    let detail: Vec<String> = between
        .iter()
        .filter_map(|&(j, got)| {
            let p = at?.0;
            let e = m.sessions[p].events.get(j)?;
            let got = got
                .map(|g| {
                    format!(
                        ", received {:+.1} ms (frame {} vs snapshot {after})",
                        ms(g.at),
                        g.ord
                    )
                })
                .unwrap_or_else(|| ", never received".into());
            Some(format!("{:?} sent {:+.1} ms{got}", e.join, ms(e.sent)))
        })
        .collect();
    v.note(format!(
        "session {ri}: {what} in user {x}'s session {} (event {at:?}, arrived {:+.1} ms after the snapshot, follow sent {:+.1} ms): leave {:?} while the view held {held:?} (event {held_at:?}); in between: [{}]",
        rc.session_id,
        ms(rc.at),
        ms(sc.iv.fs),
        rc.leave,
        detail.join(", ")
    ));
}

/// `GET /v2/status` for users `0..n`: each user's presences, sorted.
pub(super) fn fetch_truth(
    server: SocketAddr,
    http_key: &str,
    users: &UserDir,
    n: usize,
) -> Result<Vec<Presences>> {
    let ids: Vec<String> = (0..n).map(|i| users.id(i).into_owned()).collect();
    fetch_status(server, http_key, &ids)
}

/// Users per `GET /v2/status` request.
const STATUS_CHUNK: usize = 250;
/// Tries of one request that a busy server answers 503 (its shards or the
/// cluster log did not answer in time), 0.5 s apart.
const STATUS_TRIES: usize = 10;

/// `GET /v2/status` for `ids`, [`STATUS_CHUNK`] per request over one
/// keep-alive connection: each user's presences `(session id, status)`,
/// sorted, in the order of `ids`. A 503 is asked again, up to
/// [`STATUS_TRIES`] times.
pub(crate) fn fetch_status(
    server: SocketAddr,
    http_key: &str,
    ids: &[String],
) -> Result<Vec<Presences>> {
    let mut conn: Option<BufReader<TcpStream>> = None;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(STATUS_CHUNK) {
        let target = format!(
            "/v2/status?user_ids={}&http_key={http_key}",
            chunk.join(",")
        );
        let mut tries = 0;
        let (status, body) = loop {
            tries += 1;
            let (status, body) = http_exchange(&mut conn, server, "GET", &target, "", b"")?;
            if !status.starts_with("HTTP/1.1 503") || tries >= STATUS_TRIES {
                break (status, body);
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        };
        if !status.starts_with("HTTP/1.1 200") {
            bail!(
                "GET /v2/status: {}: {}",
                status.trim_end(),
                String::from_utf8_lossy(&body)
            );
        }
        let v: Value = serde_json::from_slice(&body).context("status answer")?;
        let list = v
            .get("users")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("status answer without users"))?;
        if list.len() != chunk.len() {
            bail!("{} users asked, {} answered", chunk.len(), list.len());
        }
        for (u, id) in list.iter().zip(chunk) {
            if u.get("user_id").and_then(Value::as_str) != Some(id.as_str()) {
                bail!("status answer out of order at {id}");
            }
            let mut presences: Presences = u
                .get("sessions")
                .and_then(Value::as_array)
                .map(|s| s.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|s| {
                    Some((
                        s.get("session_id")?.as_str()?.to_owned(),
                        s.get("status")?.as_str()?.to_owned(),
                    ))
                })
                .collect();
            presences.sort();
            out.push(presences);
        }
    }
    Ok(out)
}

/// How the final views, the log and the model compare.
#[derive(Default)]
pub(super) struct Compared {
    /// Live follows whose view differs from the log.
    pub view_mismatch: u64,
    /// Users whose statuses in the log differ from the model's.
    pub truth_mismatch: u64,
    pub views_checked: u64,
    pub examples: Vec<String>,
}

/// Compares the final views with the log (`truth`, per user), and the log
/// with the model: the statuses of each user's open sessions.
pub(super) fn compare(m: &Model, v: &Views, truth: &[Presences]) -> Compared {
    let mut c = Compared::default();
    let note = |c: &mut Compared, s: String| {
        if c.examples.len() < 10 {
            c.examples.push(s);
        }
    };
    for (&(ri, x), view) in &v.finals {
        c.views_checked += 1;
        let t = truth.get(x).map(Vec::as_slice).unwrap_or_default();
        if view.as_slice() != t {
            c.view_mismatch += 1;
            note(
                &mut c,
                format!("session {ri}: view of user {x} is {view:?}, the log has {t:?}"),
            );
        }
    }
    for (x, t) in truth.iter().enumerate() {
        let mut model: Vec<&str> = m
            .sessions
            .iter()
            .filter(|s| s.user == x && s.open_at.is_some() && s.closed_at.is_none())
            .filter_map(|s| s.cur.as_deref())
            .collect();
        model.sort_unstable();
        let mut log: Vec<&str> = t.iter().map(|(_, st)| st.as_str()).collect();
        log.sort_unstable();
        if model != log {
            c.truth_mismatch += 1;
            note(
                &mut c,
                format!("user {x}: the log has statuses {log:?}, its open sessions {model:?}"),
            );
        }
    }
    c
}
