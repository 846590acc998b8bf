//! Cluster mode on the shards, without threads, sockets or NATS: the test
//! plays the presence log. It stores the shards' writes in order, and
//! decides when each record comes back (`ApplyPresence`) and what a
//! snapshot fetch answers, so the
//! shard-side rules of [`super::replica`] run deterministically: the ack
//! before the echo, a follow snapshot joined with the records after it,
//! records that arrive while a user loads, an ended incarnation, users
//! released when nobody here follows them any more.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::inbox::ShardMsg;
use super::shard::{SessionKey, SessionSpec, Shard};
use super::{EngineConfig, EngineHandle, Outbox, Outcome};
use crate::cluster::{
    ClusterLink, Command, LogWrite, Origin, PresenceRecord, PresenceValue, WriteOp,
};
use crate::ids::{SessionId, UserId};
use crate::protocol::{json, Format, Request, RequestBody, ServerBody, ServerMessage};

/// This node's incarnation (its records are "own").
const ME: u64 = 7;
/// The origin number of this node's incarnation, and of another node's.
const HERE: Origin = Origin(0);
const THERE: Origin = Origin(1);

/// One record of the fake log.
#[derive(Debug, Clone)]
struct Entry {
    seq: u64,
    user: UserId,
    session: SessionId,
    origin: Origin,
    value: Option<PresenceValue>,
    change: u64,
}

/// Two shards of one node and the log they write to.
struct Node {
    handle: EngineHandle,
    shards: Vec<Shard>,
    commands: UnboundedReceiver<Command>,
    /// Every record, in log order.
    log: Vec<Entry>,
    /// Records not read back yet.
    unread: Vec<Entry>,
    /// Fetches asked for and not answered: (shard, users, since).
    fetches: Vec<(u16, Vec<UserId>, u64)>,
}

struct Session {
    shard: usize,
    key: SessionKey,
    outbox: Arc<Outbox>,
    id: SessionId,
}

impl Node {
    fn new() -> Node {
        let (link, commands) = ClusterLink::detached(ME);
        let config = EngineConfig {
            shards: 2,
            pin_threads: false,
            follow_unknown_ids: true,
            ..EngineConfig::default()
        };
        let handle = EngineHandle::standalone_cluster(config, link);
        let shards = (0..2)
            .map(|i| Shard::new(i, handle.clone(), handle.shard_stats(i)))
            .collect();
        Node {
            handle,
            shards,
            commands,
            log: Vec::new(),
            unread: Vec::new(),
            fetches: Vec::new(),
        }
    }

    fn user_on(&self, shard: usize, nth: usize) -> UserId {
        (1u128..)
            .map(|i| UserId(uuid::Uuid::from_u128(i * 0x9e37_79b9)))
            .filter(|u| self.handle.router().shard_of_user(*u) == shard)
            .nth(nth)
            .unwrap_or_default()
    }

    fn connect(&mut self, user: UserId, online: bool) -> Session {
        let owner = self.handle.router().shard_of_user(user);
        let outbox = Arc::new(Outbox::new(Format::Json, 1 << 20, 0));
        let id = SessionId::random();
        let spec = SessionSpec {
            id,
            user,
            username: Arc::from("player"),
            appear_online: online,
            outbox: outbox.clone(),
        };
        let (key, _) = self.shards[owner].connect(spec);
        self.pump();
        Session {
            shard: owner,
            key,
            outbox,
            id,
        }
    }

    fn request(&mut self, session: &Session, body: RequestBody) -> Outcome {
        let outcome = self.shards[session.shard].dispatch(
            session.key,
            Request {
                cid: "1".into(),
                body,
            },
        );
        self.pump();
        outcome
    }

    /// Moves inbox messages between the shards and takes the shards'
    /// commands (writes are stored in the log, fetches remembered), until
    /// nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for (i, shard) in self.shards.iter_mut().enumerate() {
                while let Some(msg) = self.handle.inbox(i).and_then(|inbox| inbox.try_recv()) {
                    shard.handle(msg);
                    moved = true;
                }
            }
            while let Ok(command) = self.commands.try_recv() {
                moved = true;
                match command {
                    Command::Write(write) => self.store(write),
                    Command::Fetch {
                        shard,
                        users,
                        since,
                    } => self.fetches.push((shard, users, since)),
                    _ => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn store(&mut self, write: LogWrite) {
        let (value, change) = match write.op {
            WriteOp::Put(value) => {
                let change = value.change;
                (Some(value), change)
            }
            WriteOp::Purge(change) => (None, change),
            WriteOp::NewestSession => return,
        };
        let entry = Entry {
            seq: self.log.len() as u64 + 1,
            user: write.user,
            session: write.session,
            origin: HERE,
            value,
            change,
        };
        self.log.push(entry.clone());
        self.unread.push(entry);
    }

    /// A record written by another node.
    fn remote(&mut self, user: UserId, session: SessionId, change: u64, status: Option<&str>) {
        let entry = Entry {
            seq: self.log.len() as u64 + 1,
            user,
            session,
            origin: THERE,
            value: status.map(|s| PresenceValue {
                change,
                username: Arc::from("remote"),
                status: Arc::from(s),
            }),
            change,
        };
        self.log.push(entry.clone());
        self.unread.push(entry);
    }

    /// The replicator reads every unread record (before any ack, as when
    /// the watch is faster than the publish acknowledgement).
    fn read_log(&mut self) {
        for entry in std::mem::take(&mut self.unread) {
            self.route(&entry);
        }
        self.pump();
    }

    fn route(&self, entry: &Entry) {
        let shard = self.handle.router().shard_of_user(entry.user);
        let record = PresenceRecord {
            user: entry.user,
            session: entry.session,
            origin: entry.origin,
            own: entry.origin == HERE,
            seq: entry.seq,
            value: entry.value.clone(),
            purge_change: entry.change,
        };
        self.handle
            .send(shard, ShardMsg::ApplyPresence(Box::new(record)));
    }

    /// Answers every pending fetch with the log's state at its current end.
    fn answer_fetches(&mut self) {
        let as_of = self.log.len() as u64;
        for (shard, users, _) in std::mem::take(&mut self.fetches) {
            self.answer(shard, users, as_of);
        }
        self.pump();
    }

    /// The state of `users`' keys at log position `as_of`, as a snapshot.
    fn answer(&self, shard: u16, users: Vec<UserId>, as_of: u64) {
        let mut last: BTreeMap<SessionId, &Entry> = BTreeMap::new();
        for entry in self.log.iter().take(as_of as usize) {
            if users.contains(&entry.user) {
                last.insert(entry.session, entry);
            }
        }
        let records = last
            .values()
            .filter(|e| e.value.is_some())
            .map(|e| PresenceRecord {
                user: e.user,
                session: e.session,
                origin: e.origin,
                own: e.origin == HERE,
                seq: e.seq,
                value: e.value.clone(),
                purge_change: 0,
            })
            .collect();
        self.handle.send(
            usize::from(shard),
            ShardMsg::Snapshot {
                as_of,
                users,
                records,
            },
        );
    }
}

impl Session {
    fn received(&self) -> Vec<ServerMessage> {
        std::iter::from_fn(|| self.outbox.pop())
            .inspect(|frame| self.outbox.written(frame.len()))
            .filter(|frame| frame.as_bytes()[0] & 0x0f == 0x1)
            .map(|frame| {
                let mut payload = frame.payload().to_vec();
                json::decode_server_message(&mut payload).expect("server frames decode")
            })
            .collect()
    }
}

/// A message as a short text: `ack`, `status:[s,…]`, `event:+join/-leave`.
fn describe(message: &ServerMessage) -> String {
    match &message.body {
        ServerBody::Ack => "ack".into(),
        ServerBody::Status(presences) => {
            let mut statuses: Vec<&str> = presences.iter().map(|p| p.status.as_ref()).collect();
            statuses.sort_unstable();
            format!("status:{statuses:?}")
        }
        ServerBody::Event { joins, leaves } => {
            let mut text = String::from("event:");
            for p in joins {
                text.push_str(&format!("+{}", p.status));
            }
            for p in leaves {
                text.push_str(&format!("-{}", p.status));
            }
            text
        }
        other => format!("{other:?}"),
    }
}

fn texts(session: &Session) -> Vec<String> {
    session.received().iter().map(describe).collect()
}

fn update(status: Option<&str>) -> RequestBody {
    RequestBody::StatusUpdate {
        status: status.map(str::to_owned),
    }
}

fn follow(ids: &[UserId]) -> RequestBody {
    RequestBody::StatusFollow {
        user_ids: ids.iter().map(UserId::to_string).collect(),
        usernames: Vec::new(),
    }
}

#[test]
fn an_update_is_answered_when_its_record_is_read_back_and_before_its_echo() {
    let mut node = Node::new();
    let alice = node.user_on(0, 0);
    let a = node.connect(alice, false);
    node.answer_fetches(); // alice's own user loads (nothing in the log)
    assert_eq!(node.request(&a, update(Some("one"))), Outcome::Pending);
    assert_eq!(node.log.len(), 1, "written to the log");
    assert_eq!(
        texts(&a),
        Vec::<String>::new(),
        "nothing before it is read back"
    );
    node.read_log();
    assert_eq!(texts(&a), ["ack", "event:+one"]);
    assert_eq!(node.request(&a, update(None)), Outcome::Pending);
    node.read_log();
    assert_eq!(texts(&a), ["ack", "event:-one"]);
    // Clearing a session without a status writes nothing and is answered at once.
    assert_eq!(node.request(&a, update(None)), Outcome::Done);
    assert_eq!(texts(&a), ["ack"]);
    assert_eq!(node.log.len(), 2);
}

#[test]
fn a_follow_loads_the_user_and_joins_its_snapshot_with_the_records_after_it() {
    let mut node = Node::new();
    let (bob, remote) = (node.user_on(1, 0), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    let s1 = SessionId::random();
    node.remote(remote, s1, 1, Some("lobby"));
    node.read_log(); // not kept here yet: dropped
    node.request(&b, follow(&[remote]));
    assert_eq!(node.fetches.len(), 1, "the remote user is fetched");
    assert_eq!(
        texts(&b),
        Vec::<String>::new(),
        "the follow waits for the snapshot"
    );
    // Two records arrive while the fetch is in flight: one before the
    // snapshot's position (already in it), one after (applied on top).
    node.remote(remote, s1, 2, Some("match"));
    let as_of = node.log.len() as u64;
    node.remote(remote, s1, 3, Some("won"));
    node.read_log();
    let (shard, users, _) = node.fetches.pop().expect("a fetch");
    node.answer(shard, users, as_of);
    node.pump();
    // The grant runs at the shard's position, after the record it buffered.
    assert_eq!(texts(&b), ["status:[\"won\"]"]);
    node.remote(remote, s1, 4, Some("again"));
    node.read_log();
    assert_eq!(texts(&b), ["event:+again-won"]);
    node.remote(remote, s1, 5, None);
    node.read_log();
    assert_eq!(texts(&b), ["event:-again"]);
}

#[test]
fn a_stale_snapshot_is_asked_again() {
    let mut node = Node::new();
    let (bob, remote) = (node.user_on(1, 0), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    node.remote(remote, SessionId::random(), 1, Some("x"));
    node.read_log(); // shard 0 has read up to here
    node.request(&b, follow(&[remote]));
    let (shard, users, since) = node.fetches.pop().expect("a fetch");
    node.answer(shard, users, since - 1);
    node.pump();
    assert_eq!(
        texts(&b),
        Vec::<String>::new(),
        "a snapshot older than the shard is refused"
    );
    assert_eq!(node.fetches.len(), 1, "and asked again");
    node.answer_fetches();
    assert_eq!(texts(&b), ["status:[\"x\"]"]);
}

#[test]
fn an_incarnation_that_ends_while_a_user_loads_is_left_out_of_its_snapshot() {
    let mut node = Node::new();
    let (bob, remote) = (node.user_on(1, 0), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    node.remote(remote, SessionId::random(), 1, Some("gone soon"));
    node.read_log();
    node.request(&b, follow(&[remote]));
    // The verdict on the other node is read before the snapshot arrives.
    for shard in 0..2 {
        node.handle.send(shard, ShardMsg::DropOrigin(THERE));
    }
    node.pump();
    node.answer_fetches();
    assert_eq!(texts(&b), ["status:[]"]);
}

#[test]
fn an_ended_incarnation_leaves_with_its_last_statuses() {
    let mut node = Node::new();
    let (bob, remote) = (node.user_on(1, 0), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    node.request(&b, follow(&[remote]));
    node.answer_fetches();
    let _ = texts(&b);
    node.remote(remote, SessionId::random(), 1, Some("a"));
    node.remote(remote, SessionId::random(), 1, Some("b"));
    node.read_log();
    assert_eq!(texts(&b), ["event:+a", "event:+b"]);
    for shard in 0..2 {
        node.handle.send(shard, ShardMsg::DropOrigin(THERE));
    }
    node.pump();
    let mut leaves = texts(&b);
    leaves.sort();
    assert_eq!(leaves, ["event:-a", "event:-b"]);
}

#[test]
fn a_user_nobody_here_follows_is_released_and_loaded_again_when_followed() {
    let mut node = Node::new();
    let (bob, remote) = (node.user_on(1, 0), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    node.request(&b, follow(&[remote]));
    node.answer_fetches();
    node.request(
        &b,
        RequestBody::StatusUnfollow {
            user_ids: vec![remote.to_string()],
        },
    );
    let _ = texts(&b);
    node.remote(remote, SessionId::random(), 1, Some("unseen"));
    node.read_log();
    assert_eq!(texts(&b), Vec::<String>::new());
    node.request(&b, follow(&[remote]));
    assert_eq!(node.fetches.len(), 1, "released, so fetched again");
    node.answer_fetches();
    assert_eq!(texts(&b), ["status:[\"unseen\"]"]);
}

#[test]
fn a_follow_of_several_users_that_load_together_is_granted() {
    let mut node = Node::new();
    let bob = node.user_on(1, 0);
    let (first, second) = (node.user_on(0, 1), node.user_on(0, 2));
    let b = node.connect(bob, false);
    node.answer_fetches();
    node.remote(second, SessionId::random(), 1, Some("here"));
    node.read_log();
    node.request(&b, follow(&[first, second]));
    assert_eq!(node.fetches.len(), 1, "both users in one fetch");
    node.answer_fetches();
    assert!(
        node.fetches.is_empty(),
        "neither is released and fetched again"
    );
    assert_eq!(texts(&b), ["status:[\"here\"]"]);
    node.remote(first, SessionId::random(), 1, Some("later"));
    node.read_log();
    assert_eq!(texts(&b), ["event:+later"], "both are kept and followed");
}

#[test]
fn a_gap_in_a_session_s_changes_is_counted_as_coalesced() {
    let mut node = Node::new();
    let (bob, remote) = (node.user_on(1, 0), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    node.request(&b, follow(&[remote]));
    node.answer_fetches();
    assert_eq!(texts(&b), ["status:[]"]);
    let s = SessionId::random();
    node.remote(remote, s, 1, Some("one"));
    node.remote(remote, s, 4, Some("four"));
    node.read_log();
    assert_eq!(texts(&b), ["event:+one", "event:+four-one"]);
    assert_eq!(node.handle.stats().coalesced, 2);
}

#[test]
fn a_session_s_own_user_loads_when_it_connects_and_it_sees_the_other_devices() {
    let mut node = Node::new();
    let alice = node.user_on(0, 0);
    let phone = SessionId::random();
    node.remote(alice, phone, 1, Some("on the phone"));
    node.read_log();
    let a = node.connect(alice, true);
    assert_eq!(node.fetches.len(), 1);
    // The snapshot is taken after its own join ("" from status=true) is in
    // the log, and that record is read while alice loads: the session still
    // gets its own join, and nothing of the phone's earlier status.
    node.read_log();
    node.answer_fetches();
    assert_eq!(texts(&a), ["event:+"]);
    node.remote(alice, phone, 2, Some("home"));
    node.read_log();
    assert_eq!(texts(&a), ["event:+home-on the phone"]);
    let _ = a.id;
}

#[test]
fn events_granted_early_wait_for_the_answer_of_a_follow_that_loads_another_user() {
    let mut node = Node::new();
    let (bob, carol) = (node.user_on(1, 0), node.user_on(1, 1));
    let (kept, loading) = (node.user_on(0, 1), node.user_on(1, 2));
    let b = node.connect(bob, false);
    let c = node.connect(carol, false);
    node.answer_fetches();
    let s1 = SessionId::random();
    node.remote(kept, s1, 1, Some("one"));
    node.read_log();
    // Carol's follow keeps `kept` loaded on shard 0.
    node.request(&c, follow(&[kept]));
    node.answer_fetches();
    assert_eq!(texts(&c), ["status:[\"one\"]"]);
    // Shard 0 grants `kept` at once (its snapshot taken); `loading` waits
    // for its fetch, and a change of `kept` arrives meanwhile.
    node.request(&b, follow(&[kept, loading]));
    node.remote(kept, s1, 2, Some("two"));
    node.read_log();
    assert_eq!(texts(&c), ["event:+two-one"]);
    assert_eq!(texts(&b), Vec::<String>::new(), "held for the answer");
    node.answer_fetches();
    assert_eq!(
        texts(&b),
        ["status:[\"one\"]", "event:+two-one"],
        "the snapshot first, then the change after it"
    );
}

#[test]
fn a_follow_again_that_waits_holds_the_events_of_users_already_followed() {
    let mut node = Node::new();
    let bob = node.user_on(1, 0);
    let (near, far) = (node.user_on(1, 1), node.user_on(0, 1));
    let b = node.connect(bob, false);
    node.answer_fetches();
    let s1 = SessionId::random();
    node.remote(near, s1, 1, Some("one"));
    node.request(&b, follow(&[near]));
    node.answer_fetches();
    assert_eq!(texts(&b), ["status:[\"one\"]"]);
    node.request(&b, follow(&[near, far]));
    node.remote(near, s1, 2, Some("two"));
    node.read_log();
    assert_eq!(texts(&b), Vec::<String>::new(), "held for the answer");
    node.answer_fetches();
    assert_eq!(texts(&b), ["status:[\"one\"]", "event:+two-one"]);
}
