//! `loadgen`: Herald's load generator. See `loadgen/README.md`.
//!
//! Layout: `net` (mio event loop, hand-parsed websocket frames), `ws`
//! (framing), `scan` (field scanning without a JSON parse), `hist`
//! (latency histograms), `users` (ids and tokens), `cluster` (coordinator
//! and worker processes), `shard` (the worker's event-loop threads),
//! `scen/*` (the scenarios, each with a coordinator and a shard half).

mod cluster;
mod hist;
mod net;
mod scan;
mod scen;
mod shard;
mod sys;
mod users;
mod ws;

use clap::{Args, Parser, Subcommand};
use serde::{Deserialize, Serialize};

#[derive(Debug, Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load generator for Herald (Nakama realtime status protocol, JSON)"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Options every scenario takes.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct Common {
    /// Server address, `ws://IP:PORT`; for a cluster, the nodes'
    /// addresses, comma-separated. Each user's sessions go to node
    /// `fnv1a64(user id) % nodes` (see `users::node_of`) unless the scenario
    /// places users itself.
    #[arg(long, default_value = "ws://127.0.0.1:7350")]
    pub url: String,
    /// Server key for `POST /v2/account/authenticate/custom` (Basic auth user).
    #[arg(long, default_value = "defaultkey")]
    pub server_key: String,
    /// Mint session tokens offline with this HS256 key (the server's
    /// `--encryption-key`) instead of authenticating over HTTP.
    #[arg(long)]
    pub token_key: Option<String>,
    /// Worker processes; connections are split between them.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Event-loop threads per worker process.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Source addresses per worker process (`--source-base`, the next, ...).
    #[arg(long, default_value_t = 1)]
    pub source_addrs: usize,
    /// First source address: worker `p` binds to `base + p * N .. + N` for
    /// `--source-addrs N`. Keep it clear of the nodes' addresses.
    #[arg(long, default_value = "127.0.0.2")]
    pub source_base: std::net::Ipv4Addr,
    /// Server pid: report its RSS and CPU (utime+stime) around each phase.
    /// For a cluster, every node's pid, comma-separated: each is reported
    /// (`nodes`) and the sums take the single server's place.
    #[arg(long, value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// NATS server pid (cluster mode): its RSS and CPU are reported beside
    /// the server's, and its CPU per status change.
    #[arg(long)]
    pub nats_pid: Option<u32>,
    /// Fully parse every frame with Herald's decoder and check its shape.
    #[arg(long)]
    pub strict: bool,
    /// Measurement duration in seconds (scenario default when absent).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seed of user ids, follow graphs and random choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Connects in flight per shard.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Connects started per second, all shards together (0 = as fast as
    /// `--concurrency` allows). A cluster writes every `status=true`
    /// connect to its log: a fill at the full rate can outrun NATS.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Upper bound of every waiting phase, seconds.
    #[arg(long, default_value_t = 120.0)]
    pub phase_timeout: f64,
    /// After a poll that found fewer than 64 sockets ready, sleep this many µs
    /// before the next one, so wake-ups carry batches of events. Latencies
    /// are then measured up to this much late. 0 = wake on every event.
    /// Default: 300 for fanout (one event per socket per round), else 0.
    #[arg(long)]
    pub batch_us: Option<u64>,
    /// HTTP authenticate threads (without --token-key).
    #[arg(long, default_value_t = 16)]
    pub auth_threads: usize,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open (one user each).
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// Connect with `status=true` (each connection gets its own join).
    #[arg(long)]
    pub status: bool,
    /// Seconds to wait after the last connect before measuring RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
    /// Seconds to hold the connections open after measuring.
    #[arg(long, default_value_t = 0.0)]
    pub hold: f64,
    /// After connecting, each connection follows this many users: those of
    /// `--follow-seed`, connection `c` the users `c*F .. c*F+F` (modulo
    /// `--follow-users`). Then server RSS per follow is measured, and the
    /// presences the snapshots list are counted.
    #[arg(long, default_value_t = 0)]
    pub follows: usize,
    /// Seed of the followed users' ids (their tokens minted with
    /// `--token-key`, e.g. by another run); default `--seed`.
    #[arg(long)]
    pub follow_seed: Option<u64>,
    /// Users to follow among (ids `0..N` of `--follow-seed`); default `--conns`.
    #[arg(long)]
    pub follow_users: Option<usize>,
    /// Follow requests (of at most 100 ids) sent per second, all shards
    /// together (0 = all at once).
    #[arg(long, default_value_t = 0.0)]
    pub follow_rate: f64,
    /// Sessions per user: connection `c` is a session of user `c / K` (all
    /// of a user's sessions on its node).
    #[arg(long, default_value_t = 1)]
    pub sessions_per_user: usize,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub common: Common,
    /// Followers of the one leader.
    #[arg(long, default_value_t = 1000)]
    pub followers: usize,
    /// Update rounds.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Pause between rounds, ms.
    #[arg(long, default_value_t = 200)]
    pub pause_ms: u64,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub round_timeout: f64,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct MeshArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users, one connection each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Users each one follows (random, seeded); `--lobby` means users-1.
    #[arg(long, default_value_t = 20)]
    pub follows: usize,
    /// Everyone follows everyone else.
    #[arg(long)]
    pub lobby: bool,
    /// Total status updates per second, spread over all users.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds to wait for late events after the update window.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Connections closed and reopened (then following again) per second (soak).
    #[arg(long, default_value_t = 0.0)]
    pub reconnect_rate: f64,
    /// Seconds between report lines on stderr (soak; 0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub report_every: f64,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct XnodeArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users that update (users `0..U`), all on `--updater-node`.
    #[arg(long, default_value_t = 100)]
    pub updaters: usize,
    /// Users that follow (users `U..U+N`), all on `--follower-node`.
    #[arg(long, default_value_t = 1000)]
    pub followers: usize,
    /// Updaters each follower follows (seeded random, distinct).
    #[arg(long, default_value_t = 10)]
    pub follows: usize,
    /// Node (index into `--url`) of the updaters.
    #[arg(long, default_value_t = 0)]
    pub updater_node: usize,
    /// Node (index into `--url`) of the followers; the updaters' node gives
    /// the same-node figure.
    #[arg(long, default_value_t = 1)]
    pub follower_node: usize,
    /// Total status updates per second, spread over the updaters.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to wait for late events after the update window.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct ChurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// Users in the pool.
    #[arg(long, default_value_t = 40)]
    pub users: usize,
    /// Most sessions open at once.
    #[arg(long, default_value_t = 120)]
    pub max_sessions: usize,
    /// Operations per second.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Seconds of slack at follow/unfollow/close boundaries, where an
    /// in-flight event may or may not be delivered.
    #[arg(long, default_value_t = 2.0)]
    pub grace: f64,
    /// Seconds to wait for the last events before checking.
    #[arg(long, default_value_t = 3.0)]
    pub drain: f64,
    /// Each new session goes to a seeded random node of `--url` instead of
    /// its user's node, so that one user has sessions on several nodes.
    #[arg(long)]
    pub spread_sessions: bool,
    /// A node's admin listener, `http://IP:PORT`: after the drain, every
    /// follower's view of each user it follows is compared with
    /// `GET /v2/status` there (in cluster mode the log itself), and that
    /// answer with what the sessions did.
    #[arg(long)]
    pub status_url: Option<String>,
    /// The backend API's key (the server's `--http-key`).
    #[arg(long, default_value = "defaulthttpkey")]
    pub http_key: String,
    /// Seconds the views get to agree with the status API after the drain.
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
}

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct SoakArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections (sessions) in all; `--two-devices` of the users hold two.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Friends each user follows (seeded; most of them on other nodes).
    #[arg(long, default_value_t = 20)]
    pub follows: usize,
    /// Mean seconds between two status changes of one online session.
    #[arg(long, default_value_t = 120.0)]
    pub status_every_sec: f64,
    /// Fraction of users that appear offline (connect with `status=false`,
    /// never set a status).
    #[arg(long, default_value_t = 0.1)]
    pub offline: f64,
    /// Fraction of users with two devices (two sessions on their node).
    #[arg(long, default_value_t = 0.1)]
    pub two_devices: f64,
    /// Percent of sessions closed and reopened per minute (each then
    /// follows again and gets a fresh snapshot).
    #[arg(long, default_value_t = 2.0)]
    pub reconnect_pct_per_min: f64,
    /// Percent of sessions per minute that unfollow one friend and follow
    /// another user.
    #[arg(long, default_value_t = 2.0)]
    pub refollow_pct_per_min: f64,
    /// Connects (and then follow requests) started per second, all
    /// processes together.
    #[arg(long, default_value_t = 5000.0)]
    pub ramp_per_sec: f64,
    /// Seconds of quiet (no traffic) after the run, before the final check.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Seconds the final views get to agree with `GET /v2/status`.
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
    /// A node's admin listener, `http://IP:PORT`: the final views are
    /// compared with `GET /v2/status` there (the log in cluster mode).
    #[arg(long)]
    pub status_url: String,
    /// The backend API's key (the server's `--http-key`).
    #[arg(long, default_value = "defaulthttpkey")]
    pub http_key: String,
    /// Seconds between report lines on stderr.
    #[arg(long, default_value_t = 10.0)]
    pub report_every: f64,
}

#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
pub enum Scenario {
    /// Open N idle connections; connect rate and server RSS per connection.
    Connect(ConnectArgs),
    /// N followers of one user, K update rounds; time to last delivery.
    Fanout(FanoutArgs),
    /// N users each following F others, updates at a total rate R for T seconds.
    Mesh(MeshArgs),
    /// Updaters on one node, their followers on another (cluster mode):
    /// cross-node latency of a change at a fixed rate, every event verified.
    Xnode(XnodeArgs),
    /// Random connect/disconnect/follow/unfollow/update checked against a model.
    Churn(ChurnArgs),
    /// Hours of game-like traffic over a cluster's nodes, every event
    /// verified, a report line every 10 s, a final check against the log.
    Soak(SoakArgs),
    /// Internal: a worker process.
    #[command(name = "__worker", hide = true)]
    Worker,
}

impl Scenario {
    pub fn common(&self) -> &Common {
        match self {
            Scenario::Connect(a) => &a.common,
            Scenario::Fanout(a) => &a.common,
            Scenario::Mesh(a) => &a.common,
            Scenario::Soak(a) => &a.common,
            Scenario::Xnode(a) => &a.common,
            Scenario::Churn(a) => &a.common,
            Scenario::Worker => unreachable_common(),
        }
    }
}

fn unreachable_common() -> &'static Common {
    static C: std::sync::OnceLock<Common> = std::sync::OnceLock::new();
    C.get_or_init(|| Common {
        url: String::new(),
        server_key: String::new(),
        token_key: None,
        procs: 1,
        threads: 1,
        source_addrs: 1,
        source_base: std::net::Ipv4Addr::new(127, 0, 0, 2),
        server_pid: Vec::new(),
        nats_pid: None,
        strict: false,
        duration: None,
        seed: 1,
        concurrency: 1,
        connect_rate: 0.0,
        phase_timeout: 1.0,
        auth_threads: 1,
        batch_us: None,
    })
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.scenario {
        Scenario::Worker => shard::worker_main(),
        s => scen::coordinate(s),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e:#}");
        std::process::exit(1);
    }
}
