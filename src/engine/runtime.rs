//! The shard threads: start-up, the inbox drain loop, keepalive, shutdown.
//!
//! [`Engine::start`] spawns one OS thread per shard, pins it to a core,
//! builds a single-threaded tokio runtime with a `LocalSet` on it, loads the
//! shard's slice of the user directory, calls the caller's [`ShardStart`]
//! hook (the transport starts its accept loop there), and then drains the
//! inbox until shutdown. Tasks on a shard thread share its state through an
//! `Rc<`[`ShardContext`]`>`; it never leaves the thread.
//!
//! Shutdown: [`super::EngineHandle::begin_shutdown`] sends every shard a
//! `Shutdown` message. The shard wakes its accept loop (which stops), asks
//! every session to close with 1001, and keeps running until its sessions
//! are gone or the grace period given to [`Engine::join`] ends.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::LocalSet;

use super::inbox::ShardMsg;
use super::shard::Shard;
use super::stats::ShardStats;
use super::{EngineConfig, EngineHandle};
use crate::cluster::ClusterLink;
use crate::ids::UserId;

/// Called on each shard thread once it runs, before it drains its inbox.
pub type ShardStart = Arc<dyn Fn(&Rc<ShardContext>) + Send + Sync>;

/// What a shard thread shares with the tasks it runs (see the module doc).
pub struct ShardContext {
    /// This shard's index.
    pub index: usize,
    /// The shard's state. Borrowed briefly by one task at a time; never held across an `.await`.
    pub shard: RefCell<Shard>,
    /// The engine, for messages to other shards.
    pub engine: EngineHandle,
    /// This shard's counters.
    pub stats: Arc<ShardStats>,
    /// Set when shutdown reaches this shard.
    stopping: Cell<bool>,
    /// Wakes tasks waiting for shutdown (the accept loop).
    stop_signal: Notify,
}

impl ShardContext {
    /// Runs one inbox message.
    pub fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Run(run) => run(self),
            ShardMsg::Shutdown => {
                self.stopping.set(true);
                self.stop_signal.notify_waiters();
                self.shard.borrow_mut().handle(ShardMsg::Shutdown);
            }
            msg => self.shard.borrow_mut().handle(msg),
        }
    }

    /// True once shutdown reached this shard.
    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Resolves when shutdown reaches this shard.
    pub async fn stopped(&self) {
        let wait = self.stop_signal.notified();
        if self.stopping.get() {
            return;
        }
        wait.await
    }
}

/// The running shard threads.
pub struct Engine {
    handle: EngineHandle,
    threads: Vec<JoinHandle<()>>,
}

impl Engine {
    /// Starts the shards. `directory` lists the users known at start-up, with
    /// their usernames; each shard records its own slice before it serves.
    pub fn start(
        config: EngineConfig,
        directory: Arc<Vec<(UserId, Option<Arc<str>>)>>,
        cluster: Option<ClusterLink>,
        on_start: ShardStart,
    ) -> std::io::Result<Engine> {
        let handle = EngineHandle::new(config, cluster);
        let shards = handle.router().shards();
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut threads = Vec::with_capacity(shards);
        for index in 0..shards {
            let handle = handle.clone();
            let directory = directory.clone();
            let on_start = on_start.clone();
            let core = if handle.config().pin_threads && !cores.is_empty() {
                Some(cores[index % cores.len()])
            } else {
                None
            };
            let thread = std::thread::Builder::new()
                .name(format!("herald-shard-{index}"))
                .spawn(move || {
                    if let Some(core) = core {
                        core_affinity::set_for_current(core);
                    }
                    run_shard(index, handle, &directory, on_start);
                })?;
            threads.push(thread);
        }
        Ok(Engine { handle, threads })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// Waits for every shard thread to finish (after [`EngineHandle::begin_shutdown`]).
    pub fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("a shard thread panicked during shutdown");
            }
        }
    }
}

fn run_shard(
    index: usize,
    engine: EngineHandle,
    directory: &[(UserId, Option<Arc<str>>)],
    on_start: ShardStart,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(shard = index, %error, "cannot build the shard runtime");
            return;
        }
    };
    let stats = engine.shard_stats(index);
    let mut shard = Shard::new(index, engine.clone(), stats.clone());
    let router = engine.router().clone();
    for (user, username) in directory {
        if router.shard_of_user(*user) == index {
            shard.register_id(*user);
        }
        if let Some(name) = username {
            if router.shard_of_name(name) == index {
                shard.register_name(name.clone(), *user);
            }
        }
    }
    let ctx = Rc::new(ShardContext {
        index,
        shard: RefCell::new(shard),
        engine,
        stats,
        stopping: Cell::new(false),
        stop_signal: Notify::new(),
    });
    let local = LocalSet::new();
    local.block_on(&runtime, async move {
        on_start(&ctx);
        tokio::task::spawn_local(keepalive(ctx.clone()));
        drain_inbox(ctx).await;
    });
}

/// Applies inbox messages until shutdown completes. Yields to the
/// connection tasks every few hundred messages so writers keep draining
/// while a burst of events is being fanned out.
async fn drain_inbox(ctx: Rc<ShardContext>) {
    let Some(inbox) = ctx.engine.inbox(ctx.index) else {
        return;
    };
    let mut stop_deadline: Option<Instant> = None;
    loop {
        let mut handled = 0u32;
        while let Some(msg) = inbox.try_recv() {
            isolate("an inbox message", || ctx.handle(msg));
            handled += 1;
            if handled.is_multiple_of(256) {
                tokio::task::yield_now().await;
            }
        }
        if ctx.stopping() {
            let grace = ctx.engine.config().shutdown_grace;
            let deadline = *stop_deadline.get_or_insert_with(|| Instant::now() + grace);
            if ctx.shard.borrow().session_count() == 0 || Instant::now() >= deadline {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), inbox.wait()).await;
        } else {
            inbox.wait().await;
        }
    }
}

/// Sessions visited per keepalive chunk. The sweep yields to the shard's
/// other tasks between chunks, so a shard with half a million sessions does
/// not hold back deliveries for the whole sweep.
const KEEPALIVE_CHUNK: usize = 4096;

/// A keepalive sweep visits every session once a second, a slice of the
/// slots every [`KEEPALIVE_TICK`]: pings due in the same second go out in
/// ten small batches instead of one.
const KEEPALIVE_SWEEP: Duration = Duration::from_secs(1);
const KEEPALIVE_TICK: Duration = Duration::from_millis(100);
const KEEPALIVE_TICKS_PER_SWEEP: usize =
    (KEEPALIVE_SWEEP.as_millis() / KEEPALIVE_TICK.as_millis()) as usize;

/// Websocket pings and pong deadlines (see [`Shard::keepalive`]), swept in
/// slices of the slots every [`KEEPALIVE_TICK`], in chunks.
async fn keepalive(ctx: Rc<ShardContext>) {
    let mut tick = tokio::time::interval(KEEPALIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for slice in (0..KEEPALIVE_TICKS_PER_SWEEP).cycle() {
        tick.tick().await;
        let now = ctx.engine.now();
        let slots = ctx.shard.borrow().slot_count();
        let share = |k: usize| slots * k / KEEPALIVE_TICKS_PER_SWEEP;
        let (mut from, end) = (share(slice), share(slice + 1));
        while from < end {
            let to = end.min(from + KEEPALIVE_CHUNK);
            isolate("keepalive", || {
                ctx.shard.borrow_mut().keepalive(now, from..to);
            });
            from = to;
            if from < end {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Runs `work`, containing a panic to it: the shard thread and every other
/// session go on. A panic is a bug (no input should cause one); it is logged
/// as an error. (Connection tasks need no wrapper: tokio contains a panic to
/// the task that raised it, and the session's drop guard unregisters it.)
fn isolate(what: &str, work: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
        tracing::error!("a panic while handling {what} was contained; the shard goes on");
    }
}
