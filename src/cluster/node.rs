//! `ClusterNode`: the one task on the cluster thread. It owns the NATS
//! client and every piece of cluster state, and reacts to five sources in
//! one loop: connection events, commands from the shards and the admin
//! thread, the watch of the log, finished publishes, and a 100 ms tick for
//! timers. Each source is handled by a small method; the decisions live in
//! [`Replicator`], [`Membership`] and [`Writer`], which do no I/O.
//!
//! Start-up: connect and check the server, create the stream, then wait for
//! the engine; read the log from the start (last record of every key);
//! register the lease once the load is done; ready once the registration
//! record has been read back. The node serves no session before that.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage as Publish;
use async_nats::jetstream::{self, Context};
use async_nats::{Client, Event};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::control;
use super::fetch::{self, FetchError, FetchQueue, Fetched, Waiting};
use super::membership::{Membership, Step};
use super::nats;
use super::record::{LeaseState, LeaseValue, Subjects};
use super::replicator::{Notice, Operation, Replicator};
use super::writer::{Prepared, Writer, RETRY};
use super::{
    ClusterConfig, ClusterError, ClusterShared, Command, SUPERSEDED_GRACE, WATCH_SILENT,
    WATCH_STALL,
};
use crate::engine::inbox::ShardMsg;
use crate::engine::status_query::UserStatus;
use crate::engine::EngineHandle;
use crate::ids::{SessionId, UserId};

/// How often timers are checked.
const TICK: Duration = Duration::from_millis(50);
/// Delay before a failed watch creation is tried again.
const WATCH_RETRY: Duration = Duration::from_millis(250);
/// Deletes of superseded versions in flight at once.
const DELETES_IN_FLIGHT: usize = 8;
/// Bound of the clean-stop steps (lease `left`, key purge).
const STOP_STEP: Duration = Duration::from_secs(2);

/// The cluster thread's body: connect, report, wait for the engine, run.
pub(super) async fn run(
    config: ClusterConfig,
    shared: Arc<ClusterShared>,
    commands: mpsc::UnboundedReceiver<Command>,
    connected: std::sync::mpsc::Sender<Result<(), ClusterError>>,
    engine: oneshot::Receiver<EngineHandle>,
) {
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = match nats::connect(&config, events_tx).await {
        Ok(client) => client,
        Err(error) => {
            let _ = connected.send(Err(error));
            return;
        }
    };
    let fetch_client = match nats::connect_for_fetches(&config).await {
        Ok(client) => client,
        Err(error) => {
            let _ = connected.send(Err(error));
            return;
        }
    };
    let js = nats::jetstream(client.clone());
    if let Err(error) = nats::ensure_stream_patiently(&js, &config).await {
        let _ = connected.send(Err(error));
        return;
    }
    let kicks = match client
        .subscribe(control::kick_subject(&config.bucket))
        .await
    {
        Ok(kicks) => kicks,
        Err(error) => {
            let _ = connected.send(Err(ClusterError::Connect {
                urls: config.redacted_urls(),
                reason: error.to_string(),
            }));
            return;
        }
    };
    let _ = connected.send(Ok(()));
    // The server drops the sender if its start-up fails after this point.
    let Ok(engine) = engine.await else {
        return;
    };
    tracing::info!(
        node_id = %config.node_id,
        nats = %config.redacted_urls(),
        "cluster mode: reading the presence log"
    );
    let (fetched_tx, fetched) = mpsc::unbounded_channel();
    let node = ClusterNode::new(config, shared, engine, client, fetch_client, js, fetched_tx);
    node.run(commands, events, kicks, fetched).await;
}

/// A watch being created: the consumer's messages and what it has pending.
type Creating = BoxFuture<'static, Result<(Box<Ordered>, u64), String>>;

/// The watch of the log: an ordered push consumer, or its creation.
struct Watch {
    messages: Option<Box<Ordered>>,
    creating: Option<Creating>,
    /// When the last record arrived (or the watch was created).
    last_message: Instant,
    /// No creation before this instant (after a failed one).
    retry_at: Instant,
}

enum WatchEvent {
    Created(Result<(Box<Ordered>, u64), String>),
    Message(Box<jetstream::Message>),
    Failed(String),
    Ended,
}

impl Watch {
    /// The next thing the watch has to say; pending forever while idle.
    async fn next(&mut self) -> WatchEvent {
        poll_fn(|cx| {
            if let Some(creating) = self.creating.as_mut() {
                return match creating.poll_unpin(cx) {
                    Poll::Ready(result) => {
                        self.creating = None;
                        Poll::Ready(WatchEvent::Created(result))
                    }
                    Poll::Pending => Poll::Pending,
                };
            }
            let Some(messages) = self.messages.as_mut() else {
                return Poll::Pending;
            };
            match messages.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    Poll::Ready(WatchEvent::Message(Box::new(message)))
                }
                Poll::Ready(Some(Err(error))) => Poll::Ready(WatchEvent::Failed(error.to_string())),
                Poll::Ready(None) => Poll::Ready(WatchEvent::Ended),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// A finished fetch of some users' presences.
enum FetchDone {
    /// For a shard that starts keeping `users`.
    Snapshot {
        shard: u16,
        users: Vec<UserId>,
        fetched: Fetched,
    },
    /// For the backend API.
    Status {
        users: Vec<UserId>,
        fetched: Fetched,
        reply: oneshot::Sender<Vec<UserStatus>>,
    },
}

/// A finished publish of a session's write.
struct Published {
    session: SessionId,
    started: Instant,
    /// Where it was stored; `None` when it failed.
    stored: Option<u64>,
}

/// The cluster task's state (see the module doc).
struct ClusterNode {
    config: ClusterConfig,
    shared: Arc<ClusterShared>,
    engine: EngineHandle,
    client: Client,
    /// A second connection, for fetches only (see `nats::connect_for_fetches`).
    fetch_client: Client,
    js: Context,
    subjects: Subjects,
    replicator: Replicator,
    membership: Membership,
    writer: Writer,
    watch: Watch,
    publishes: FuturesUnordered<BoxFuture<'static, Published>>,
    /// The lease write in flight (registration or heartbeat), with the
    /// incarnation a registration replaces.
    lease_write: Option<BoxFuture<'static, Result<u64, bool>>>,
    /// Verdicts, purges and kicks, run beside the loop.
    background: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Older versions of live keys, each deletable from its instant on
    /// ([`SUPERSEDED_GRACE`]), oldest first.
    aging: VecDeque<(Instant, u64)>,
    /// Older versions waiting to be deleted (ended sessions' keys, and
    /// live keys' once aged), and the deletes in flight.
    superseded: VecDeque<u64>,
    deleting: FuturesUnordered<BoxFuture<'static, ()>>,
    /// Failed publishes waiting for their retry.
    retries: Vec<(Instant, SessionId)>,
    /// Fetches come back here.
    fetched_tx: mpsc::UnboundedSender<FetchDone>,
    /// Snapshot fetches, sent a few at a time.
    fetches: FetchQueue,
    /// Snapshots waiting for the watch to reach their position, so that
    /// the lease table they are judged with is at least as recent.
    deferred: Vec<FetchDone>,
    /// The incarnation the registration in flight replaces, if any.
    predecessor: Option<u64>,
    /// The oldest acknowledged lease write the watch has not delivered
    /// yet: its log position and when it was acknowledged (stall detection).
    unread_ack: Option<(u64, Instant)>,
    connected: bool,
    /// A clean stop began: no registration, no writes.
    leaving: bool,
}

impl ClusterNode {
    fn new(
        config: ClusterConfig,
        shared: Arc<ClusterShared>,
        engine: EngineHandle,
        client: Client,
        fetch_client: Client,
        js: Context,
        fetched_tx: mpsc::UnboundedSender<FetchDone>,
    ) -> ClusterNode {
        let now = Instant::now();
        ClusterNode {
            subjects: Subjects::new(&config.bucket),
            replicator: Replicator::new(
                engine.clone(),
                shared.clone(),
                &config.bucket,
                &config.node_id,
            ),
            membership: Membership::new(now),
            writer: Writer::new(&config.bucket, &config.node_id),
            watch: Watch {
                messages: None,
                creating: None,
                last_message: now,
                retry_at: now,
            },
            publishes: FuturesUnordered::new(),
            lease_write: None,
            background: FuturesUnordered::new(),
            aging: VecDeque::new(),
            superseded: VecDeque::new(),
            deleting: FuturesUnordered::new(),
            retries: Vec::new(),
            fetched_tx,
            fetches: FetchQueue::default(),
            deferred: Vec::new(),
            predecessor: None,
            unread_ack: None,
            connected: true,
            leaving: false,
            config,
            shared,
            engine,
            client,
            fetch_client,
            js,
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut kicks: async_nats::Subscriber,
        mut fetched: mpsc::UnboundedReceiver<FetchDone>,
    ) {
        self.start_watch(None);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(event) = events.recv() => self.on_connection_event(event),
                command = commands.recv() => match command {
                    Some(command) => {
                        if self.on_command(command).await {
                            return;
                        }
                    }
                    // Every link is gone: the server is gone.
                    None => return,
                },
                event = self.watch.next() => self.on_watch(event),
                Some(done) = self.publishes.next(), if !self.publishes.is_empty() => {
                    self.on_published(done);
                }
                outcome = async {
                    match self.lease_write.as_mut() {
                        Some(write) => write.await,
                        None => std::future::pending().await,
                    }
                }, if self.lease_write.is_some() => {
                    self.lease_write = None;
                    self.on_lease_written(outcome);
                }
                Some(()) = self.background.next(), if !self.background.is_empty() => {}
                Some(()) = self.deleting.next(), if !self.deleting.is_empty() => {
                    self.send_deletes();
                }
                Some(done) = fetched.recv() => {
                    if matches!(done, FetchDone::Snapshot { .. }) {
                        self.fetches.done();
                        self.send_fetches();
                    }
                    self.deferred.push(done);
                    self.deliver_fetched();
                }
                Some(message) = kicks.next() => {
                    let (client, engine) = (self.client.clone(), self.engine.clone());
                    self.background.push(control::answer_kick(client, engine, message).boxed());
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    // ---- connection ---------------------------------------------------------

    fn on_connection_event(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Disconnected => {
                if self.connected {
                    tracing::warn!("NATS connection lost; reconnecting");
                }
                self.connected = false;
                self.membership.connection(false, now);
            }
            Event::Connected => {
                if !self.connected {
                    tracing::info!("NATS connection restored");
                }
                self.connected = true;
                self.membership.connection(true, now);
            }
            Event::SlowConsumer(sid) => {
                // The watch recovers by itself (a gap recreates its consumer
                // from the last position read); nothing is applied twice or lost.
                tracing::warn!(sid, "NATS dropped messages for a slow subscription");
            }
            other => tracing::debug!(event = %other, "NATS event"),
        }
    }

    // ---- commands -----------------------------------------------------------

    /// Returns true when the task must end.
    async fn on_command(&mut self, command: Command) -> bool {
        match command {
            Command::Write(write) => {
                if self.leaving || Some(write.incarnation) != self.membership.incarnation() {
                    // A fenced or stopping incarnation: its sessions are
                    // closing, and readers would ignore the record anyway.
                    return false;
                }
                if let Some(prepared) = self.writer.push(write) {
                    self.publish(prepared);
                }
            }
            Command::Kick {
                session,
                reason,
                reply,
            } => {
                let (engine, client) = (self.engine.clone(), self.client.clone());
                let (bucket, nodes) = (self.config.bucket.clone(), self.replicator.live_nodes());
                self.background.push(
                    async move {
                        let cause = crate::engine::CloseCause::Kicked(reason.clone());
                        let found = engine.kick(session, cause).await
                            || control::kick_everywhere(client, bucket, session, reason, nodes)
                                .await;
                        let _ = reply.send(found);
                    }
                    .boxed(),
                );
            }
            Command::Fetch {
                shard,
                users,
                since,
            } => {
                self.fetches.push(shard, users, since);
                self.send_fetches();
            }
            Command::QueryStatus { users, reply } => {
                self.spawn_fetch(users, 0, |users, fetched| FetchDone::Status {
                    users,
                    fetched,
                    reply,
                });
            }
            Command::Leave(done) => {
                self.leave().await;
                let _ = done.send(());
            }
            Command::Stop(done) => {
                self.stop().await;
                let _ = done.send(());
                return true;
            }
        }
        false
    }

    /// Marks the lease left (every peer drops this node's sessions at once)
    /// and stops writing.
    async fn leave(&mut self) {
        self.leaving = true;
        self.set_ready(false);
        let lease = self.membership.lease_rev();
        self.membership.leave();
        self.lease_write = None;
        if let Some((incarnation, rev, beat)) = lease {
            let value = LeaseValue {
                state: LeaseState::Left,
                incarnation,
                beat,
            };
            let write = write_lease(
                &self.js,
                self.subjects.lease(&self.config.node_id),
                value,
                rev,
            );
            match tokio::time::timeout(STOP_STEP, write).await {
                Ok(Ok(_)) => {
                    tracing::info!("cluster lease marked left: peers send this node's leaves")
                }
                _ => tracing::warn!(
                    "could not mark the cluster lease left; peers will declare this node dead"
                ),
            }
            self.retire(incarnation);
        }
    }

    /// Removes this node's keys from the log and closes NATS.
    async fn stop(&mut self) {
        if !self.leaving {
            self.leave().await;
        }
        // The purges `leave` queued, and anything else still running.
        let pending = std::mem::take(&mut self.background);
        let _ = tokio::time::timeout(STOP_STEP, pending.collect::<Vec<()>>()).await;
        let _ = tokio::time::timeout(STOP_STEP, self.client.flush()).await;
    }

    // ---- the watch ----------------------------------------------------------

    /// (Re)creates the watch: from `from` on, or from the start (the last
    /// record of every key) for the first load.
    fn start_watch(&mut self, from: Option<u64>) {
        self.watch.messages = None;
        let js = self.js.clone();
        let stream = format!("KV_{}", self.config.bucket);
        let filter = self.subjects.all();
        self.watch.creating = Some(
            async move {
                let stream = js
                    .get_stream_no_info(&stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let deliver_policy = match from {
                    None => DeliverPolicy::LastPerSubject,
                    Some(start_sequence) => DeliverPolicy::ByStartSequence { start_sequence },
                };
                let consumer = stream
                    .create_consumer(OrderedConfig {
                        deliver_subject: js.client().new_inbox(),
                        filter_subject: filter,
                        deliver_policy,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                let pending = consumer.cached_info().num_pending;
                let messages = consumer.messages().await.map_err(|e| e.to_string())?;
                Ok((Box::new(messages), pending))
            }
            .boxed(),
        );
    }

    fn on_watch(&mut self, event: WatchEvent) {
        let now = Instant::now();
        match event {
            WatchEvent::Created(Ok((messages, pending))) => {
                self.watch.messages = Some(messages);
                self.watch.last_message = now;
                if pending == 0 {
                    self.replicator.finish_load();
                }
            }
            WatchEvent::Created(Err(error)) => {
                tracing::warn!(%error, "cannot create the presence log watch; retrying");
                self.watch.retry_at = now + WATCH_RETRY;
            }
            WatchEvent::Message(message) => {
                self.watch.last_message = now;
                self.on_record(&message);
            }
            WatchEvent::Failed(error) => {
                // The ordered consumer recreates itself from its last position.
                tracing::debug!(%error, "presence log watch interrupted");
            }
            WatchEvent::Ended => {
                self.watch.messages = None;
                self.watch.retry_at = now;
            }
        }
    }

    fn on_record(&mut self, message: &jetstream::Message) {
        let Ok(info) = message.info() else {
            return;
        };
        let (seq, pending) = (info.stream_sequence, info.pending);
        let mut notices = Vec::new();
        self.replicator.on_record(
            seq,
            message.subject.as_str(),
            operation(message),
            &message.payload,
            pending,
            &mut notices,
        );
        self.membership.read_up_to(self.replicator.last_seq());
        for notice in notices {
            self.on_notice(notice);
        }
        if !self.deferred.is_empty() {
            self.deliver_fetched();
        }
        self.set_ready(self.membership.is_ready() && !self.leaving);
    }

    fn on_notice(&mut self, notice: Notice) {
        let now = Instant::now();
        match notice {
            Notice::OwnLease { rev, value } => {
                if let Some(step) = self.membership.own_lease(rev, value, now) {
                    self.take(step);
                }
            }
            Notice::Verdict {
                node,
                incarnation,
                rev,
            } => self.declare_dead(node, incarnation, rev),
            Notice::Ended { node, incarnation } => {
                if node == self.config.node_id {
                    self.retire(incarnation);
                }
            }
        }
    }

    /// Writes the verdict on `node` (compare-and-set on its last lease
    /// record, so a late heartbeat wins), then purges its keys.
    fn declare_dead(&mut self, node: String, incarnation: u64, rev: u64) {
        let js = self.js.clone();
        let subject = self.subjects.lease(&node);
        let purge = self.subjects.incarnation_presences(&node, incarnation);
        let stream = format!("KV_{}", self.config.bucket);
        self.background.push(
            async move {
                let value = LeaseValue {
                    state: LeaseState::Dead,
                    incarnation,
                    beat: 0,
                };
                match write_lease(&js, subject, value, rev).await {
                    Ok(seq) => {
                        tracing::warn!(
                            node,
                            incarnation = format_args!("{incarnation:016x}"),
                            seq,
                            "declared a cluster node dead: no heartbeat in {} of ours",
                            super::VERDICT_BEATS
                        );
                        purge_keys(&js, &stream, purge).await;
                    }
                    // Another node wrote it first, or the node heartbeated.
                    Err(_) => tracing::debug!(node, "verdict not written"),
                }
            }
            .boxed(),
        );
    }

    /// Purges the keys of one of this node's own past incarnations.
    fn retire(&mut self, incarnation: u64) {
        let js = self.js.clone();
        let stream = format!("KV_{}", self.config.bucket);
        let purge = self
            .subjects
            .incarnation_presences(&self.config.node_id, incarnation);
        self.background
            .push(async move { purge_keys(&js, &stream, purge).await }.boxed());
    }

    // ---- fetches --------------------------------------------------------------

    /// Sends the waiting snapshot fetches the queue has slots for.
    fn send_fetches(&mut self) {
        while let Some(Waiting {
            shard,
            users,
            since,
        }) = self.fetches.next_to_send()
        {
            self.spawn_fetch(users, since, move |users, fetched| FetchDone::Snapshot {
                shard,
                users,
                fetched,
            });
        }
    }

    /// Runs a fetch of `users` beside the loop; `done` makes what comes
    /// back on the fetched channel.
    fn spawn_fetch(
        &mut self,
        users: Vec<UserId>,
        since: u64,
        done: impl FnOnce(Vec<UserId>, Fetched) -> FetchDone + Send + 'static,
    ) {
        let tx = self.fetched_tx.clone();
        let request = self.fetch_request(users.clone(), since);
        self.background.push(
            async move {
                let fetched = request.await;
                let _ = tx.send(done(users, fetched));
            }
            .boxed(),
        );
    }

    /// Reads the presences of `users` from the stream, as of a position no
    /// older than `since`: retried until it succeeds (a replica that answers
    /// from behind `since` is asked again). A user with more sessions than
    /// one reply can hold is logged and read as having none.
    fn fetch_request(&self, users: Vec<UserId>, since: u64) -> BoxFuture<'static, Fetched> {
        let client = self.fetch_client.clone();
        let stream = format!("KV_{}", self.config.bucket);
        let subjects = self.subjects.clone();
        let anchor = self.subjects.lease(&self.config.node_id);
        async move {
            let mut pending = vec![users];
            let mut all = Fetched::default();
            let mut delay = Duration::from_millis(10);
            while let Some(users) = pending.pop() {
                let filters: Vec<String> =
                    users.iter().map(|u| subjects.user_presences(*u)).collect();
                match fetch::last_records(&client, &stream, &filters, &anchor).await {
                    Ok(fetched) if fetched.as_of == 0 || fetched.as_of >= since => {
                        all.as_of = all.as_of.max(fetched.as_of.max(since));
                        all.records.extend(fetched.records);
                        delay = Duration::from_millis(10);
                    }
                    Ok(_) => {
                        // A replica behind this shard's position: stale.
                        pending.push(users);
                        tokio::time::sleep(delay).await;
                    }
                    Err(FetchError::TooMany) if users.len() > 1 => {
                        let half = users.len() / 2;
                        pending.push(users[half..].to_vec());
                        pending.push(users[..half].to_vec());
                    }
                    Err(FetchError::TooMany) => {
                        tracing::error!(
                            user = %users[0],
                            "a user has more than {} sessions with a status; this node cannot load them",
                            fetch::MAX_RESULTS - 1
                        );
                    }
                    Err(error) => {
                        tracing::debug!(%error, "fetching presences failed; retrying");
                        pending.push(users);
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(1));
                    }
                }
            }
            all.as_of = all.as_of.max(since);
            all
        }
        .boxed()
    }

    /// Hands finished fetches on: snapshots once the watch has read up to
    /// their position (so that the lease table judges them as of then or
    /// later), status answers at once.
    fn deliver_fetched(&mut self) {
        let read = self.replicator.last_seq();
        let (ready, waiting): (Vec<FetchDone>, Vec<FetchDone>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|done| match done {
                FetchDone::Snapshot { fetched, .. } => fetched.as_of <= read,
                FetchDone::Status { .. } => true,
            });
        self.deferred = waiting;
        for done in ready {
            match done {
                FetchDone::Snapshot {
                    shard,
                    users,
                    fetched,
                } => {
                    let records = self.visible(fetched.records);
                    self.engine.send(
                        usize::from(shard),
                        ShardMsg::Snapshot {
                            as_of: fetched.as_of,
                            users,
                            records,
                        },
                    );
                }
                FetchDone::Status {
                    users,
                    fetched,
                    reply,
                } => {
                    let records = self.visible(fetched.records);
                    let statuses = users
                        .iter()
                        .map(|&user| UserStatus {
                            user_id: user,
                            sessions: records
                                .iter()
                                .filter(|r| r.user == user)
                                .filter_map(|r| Some((r.session, r.value.as_ref()?.status.clone())))
                                .collect(),
                        })
                        .collect();
                    let _ = reply.send(statuses);
                }
            }
        }
    }

    /// The fetched records whose writers hold a live lease now.
    fn visible(
        &mut self,
        records: Vec<fetch::FetchedRecord>,
    ) -> Vec<crate::cluster::PresenceRecord> {
        records
            .into_iter()
            .filter_map(|r| {
                self.replicator
                    .presence(r.seq, &r.subject, r.operation, &r.payload)
            })
            .filter(|r| r.value.is_some())
            .collect()
    }

    // ---- the lease ----------------------------------------------------------

    fn on_tick(&mut self) {
        let now = Instant::now();
        if !self.leaving {
            let loaded = self.replicator.loaded();
            if let Some(step) = self.membership.tick(now, loaded, new_incarnation) {
                self.take(step);
            }
        }
        // Failed publishes whose retry is due.
        let due: Vec<SessionId> = {
            let (due, later): (Vec<_>, Vec<_>) =
                self.retries.drain(..).partition(|(at, _)| *at <= now);
            self.retries = later;
            due.into_iter().map(|(_, s)| s).collect()
        };
        for session in due {
            if let Some(prepared) = self.writer.retry(session, self.membership.incarnation()) {
                self.publish(prepared);
            }
        }
        // Live keys' older versions whose grace is over.
        while let Some(&(deletable, seq)) = self.aging.front() {
            if deletable > now {
                break;
            }
            self.aging.pop_front();
            self.superseded.push_back(seq);
        }
        self.send_deletes();
        // A watch that does not deliver what the log acknowledged has
        // stalled (see `WATCH_STALL`).
        if self
            .unread_ack
            .is_some_and(|(seq, _)| self.replicator.last_seq() >= seq)
        {
            self.unread_ack = None;
        }
        // A watch that lags behind the log but still delivers is busy, not
        // stalled: recreating it would only add to the load.
        let quiet = now.duration_since(self.watch.last_message);
        let behind = quiet >= WATCH_STALL
            && self
                .unread_ack
                .is_some_and(|(_, at)| now.duration_since(at) >= WATCH_STALL);
        let silent = quiet >= WATCH_SILENT;
        let stalled = self.watch.messages.is_some()
            && self.connected
            && self.membership.incarnation().is_some()
            && (behind || silent);
        if stalled {
            self.unread_ack = None;
            self.shared.watch_restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                last_seq = self.replicator.last_seq(),
                "the presence log watch stalled; recreating it from its last position"
            );
            self.start_watch(Some(self.replicator.last_seq() + 1));
        } else if self.watch.messages.is_none()
            && self.watch.creating.is_none()
            && now >= self.watch.retry_at
        {
            let from = self
                .replicator
                .loaded()
                .then(|| self.replicator.last_seq() + 1);
            self.start_watch(from);
        }
        if !self.deferred.is_empty() {
            self.deliver_fetched();
        }
        self.set_ready(self.membership.is_ready() && !self.leaving);
    }

    /// Carries out a membership step.
    fn take(&mut self, step: Step) {
        match step {
            Step::Write { value, expected } => {
                if value.beat == 0 {
                    // A registration: it replaces whatever incarnation the key held.
                    self.predecessor = self
                        .membership
                        .seen_incarnation()
                        .filter(|old| *old != value.incarnation);
                }
                let subject = self.subjects.lease(&self.config.node_id);
                self.lease_write = Some(write_lease(&self.js, subject, value, expected).boxed());
                if value.beat == 0 {
                    self.replicator.set_own_incarnation(value.incarnation);
                }
            }
            Step::Fence {
                reason,
                incarnation,
            } => {
                self.shared.fences[reason as usize].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    reason = reason.label(),
                    incarnation = format_args!("{incarnation:016x}"),
                    sessions = self.engine.stats().sessions,
                    "cluster node fenced: closing every session (1012); it registers again"
                );
                self.lease_write = None;
                self.set_ready(false);
                self.shared.incarnation.store(0, Ordering::Release);
                self.replicator.set_own_incarnation(0);
                self.writer.drop_incarnation(incarnation);
                for shard in 0..self.engine.router().shards() {
                    self.engine.send(shard, ShardMsg::Fence);
                }
                if incarnation != 0 {
                    self.retire(incarnation);
                }
            }
        }
    }

    fn on_lease_written(&mut self, outcome: Result<u64, bool>) {
        let now = Instant::now();
        let step = self.membership.written(outcome, now);
        if let Ok(seq) = outcome {
            if self.unread_ack.is_none() && self.replicator.last_seq() < seq {
                self.unread_ack = Some((seq, now));
            }
        }
        if outcome.is_ok() {
            if let Some(old) = self.predecessor.take() {
                self.retire(old);
            }
        }
        match self.membership.incarnation() {
            Some(incarnation) => {
                self.shared
                    .incarnation
                    .store(incarnation, Ordering::Release);
            }
            None => self.replicator.set_own_incarnation(0),
        }
        if let Some(step) = step {
            self.take(step);
        }
        self.set_ready(self.membership.is_ready() && !self.leaving);
    }

    fn set_ready(&self, ready: bool) {
        let was = self.shared.ready.swap(ready, Ordering::AcqRel);
        if ready && !was {
            tracing::info!(
                node_id = %self.config.node_id,
                seq = self.replicator.last_seq(),
                live_nodes = self.replicator.live_nodes(),
                "cluster node ready: caught up with the presence log and holding its lease"
            );
        }
    }

    // ---- the shards' writes -------------------------------------------------

    fn publish(&mut self, prepared: Prepared) {
        let js = self.js.clone();
        let Prepared {
            session,
            subject,
            message,
        } = prepared;
        self.publishes.push(
            async move {
                let started = Instant::now();
                let stored = match js.send_publish(subject, message).await {
                    Ok(ack) => ack.await.ok().map(|ack| ack.sequence),
                    Err(_) => None,
                };
                Published {
                    session,
                    started,
                    stored,
                }
            }
            .boxed(),
        );
    }

    fn on_published(&mut self, done: Published) {
        let Some(seq) = done.stored else {
            self.retries.push((Instant::now() + RETRY, done.session));
            return;
        };
        self.shared.publish.record(done.started.elapsed());
        // The session's request is answered when its record is read back,
        // not here: stored is not applied (a record of an incarnation that
        // was declared dead meanwhile is stored and ignored by everyone).
        let stored = self.writer.stored(done.session, seq);
        if let Some(next) = stored.next {
            self.publish(next);
        }
        self.superseded.extend(stored.superseded);
        let deletable = Instant::now() + SUPERSEDED_GRACE;
        self.aging
            .extend(stored.aged.into_iter().map(|seq| (deletable, seq)));
        self.send_deletes();
    }

    /// Sends deletes of superseded versions, at most [`DELETES_IN_FLIGHT`]
    /// at once: when thousands of sessions end together, their deletes
    /// must not crowd out the log's other requests.
    fn send_deletes(&mut self) {
        while self.deleting.len() < DELETES_IN_FLIGHT {
            let Some(seq) = self.superseded.pop_front() else {
                return;
            };
            let (js, stream) = (self.js.clone(), format!("KV_{}", self.config.bucket));
            self.deleting.push(delete_version(js, stream, seq).boxed());
        }
    }
}

/// What a watched message does to its key.
fn operation(message: &jetstream::Message) -> Operation {
    let Some(headers) = message.headers.as_ref() else {
        return Operation::Put;
    };
    let kv_gone = headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() != "PUT");
    if kv_gone || headers.get("Nats-Marker-Reason").is_some() {
        Operation::Gone
    } else {
        Operation::Put
    }
}

/// Writes a lease record with compare-and-set on `expected`: its log
/// position, or `Err(true)` when the compare-and-set was refused.
fn write_lease(
    js: &Context,
    subject: String,
    value: LeaseValue,
    expected: u64,
) -> BoxFuture<'static, Result<u64, bool>> {
    let js = js.clone();
    async move {
        let message = Publish::build()
            .payload(Bytes::from(value.encode()))
            .expected_last_subject_sequence(expected);
        let ack = js.send_publish(subject, message).await.map_err(|_| false)?;
        match ack.await {
            Ok(ack) => Ok(ack.sequence),
            Err(error) => Err(error.kind() == PublishErrorKind::WrongLastSequence),
        }
    }
    .boxed()
}

/// Deletes one superseded version of a key (see [`super::writer`]). One
/// that cannot be deleted stays until the stream's per-key cap, the key's
/// purge or the node's incarnation purge removes it.
async fn delete_version(js: Context, stream: String, seq: u64) {
    // `no_erase`: a plain removal (the value is not overwritten first).
    let request = serde_json::json!({ "seq": seq, "no_erase": true });
    let answer: Result<jetstream::response::Response<serde_json::Value>, _> = js
        .request(format!("STREAM.MSG.DELETE.{stream}"), &request)
        .await;
    let failure = match answer {
        Ok(jetstream::response::Response::Ok(_)) => return,
        Ok(jetstream::response::Response::Err { error }) => error.to_string(),
        Err(error) => error.to_string(),
    };
    tracing::debug!(seq, error = %failure, "cannot delete a superseded version");
}

/// Removes every key under `filter` from the stream (an ended incarnation's
/// presences). Watchers see nothing: every replica dropped them already.
async fn purge_keys(js: &Context, stream: &str, filter: String) {
    let Ok(stream) = js.get_stream_no_info(stream).await else {
        return;
    };
    match stream.purge().filter(filter.clone()).await {
        Ok(response) if response.purged > 0 => {
            tracing::info!(%filter, purged = response.purged, "purged the keys of an ended incarnation");
        }
        Ok(_) => {}
        Err(error) => tracing::debug!(%filter, %error, "cannot purge an ended incarnation's keys"),
    }
}

/// A fresh, nonzero incarnation number.
fn new_incarnation() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0 | 1
}
