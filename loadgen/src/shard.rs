//! The worker side: `loadgen __worker` reads its [`WorkerCfg`], starts one
//! event-loop thread per shard and forwards every command line to all of
//! them. A shard is a sequential script over [`Ctx`], which pumps the
//! network while it waits for commands or conditions.

use std::collections::VecDeque;
use std::io::BufRead;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use mio::Waker;
use serde_json::{json, Value};

use crate::cluster::{Cmd, Out, WorkerCfg};
use crate::net::{Handler, Net};
use crate::sys::now_ns;
use crate::Common;

pub struct Ctx {
    pub net: Net,
    cmds: Receiver<Cmd>,
    pending: VecDeque<Cmd>,
    pub out: Out,
    /// Global shard index and count.
    pub shard: usize,
    pub shards: usize,
    /// This shard's source addresses.
    pub sources: Vec<Ipv4Addr>,
    last_progress: u64,
    pub exit: bool,
    /// The coordinator said "stop" (Ctrl-C): ramps end early, the run ends.
    pub stop: bool,
}

impl Ctx {
    /// One poll (at most `wait`), then collect any commands.
    pub fn pump<H: Handler>(&mut self, h: &mut H, wait: Duration) -> Result<()> {
        self.net.poll_once(h, wait)?;
        if self.net.woken {
            self.net.woken = false;
        }
        loop {
            match self.cmds.try_recv() {
                Ok(c) => {
                    match c.cmd.as_str() {
                        "exit" => self.exit = true,
                        "stop" => self.stop = true,
                        _ => {}
                    }
                    self.pending.push_back(c);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.exit = true;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Pumps until a command arrives (bounded by `timeout`).
    pub fn next_cmd<H: Handler>(&mut self, h: &mut H, timeout: Duration) -> Result<Cmd> {
        let deadline = now_ns() + timeout.as_nanos() as u64;
        loop {
            if let Some(c) = self.pending.pop_front() {
                return Ok(c);
            }
            if self.exit {
                return Ok(Cmd::new("exit", Value::Null));
            }
            if now_ns() > deadline {
                bail!("no command within {timeout:?}");
            }
            self.pump(h, Duration::from_millis(100))?;
        }
    }

    /// Takes the next command already received, if any (for loops that
    /// must notice `stop` while they run).
    pub fn try_cmd(&mut self) -> Option<Cmd> {
        self.pending.pop_front()
    }

    /// Pumps until `done` holds or `deadline` (ns) passes; returns whether done.
    pub fn run_until<H: Handler>(
        &mut self,
        h: &mut H,
        deadline: u64,
        mut done: impl FnMut(&mut Net, &mut H) -> bool,
    ) -> Result<bool> {
        for _ in 0..100_000_000u64 {
            if done(&mut self.net, h) {
                return Ok(true);
            }
            let now = now_ns();
            if now >= deadline || self.exit {
                return Ok(false);
            }
            let wait = Duration::from_nanos((deadline - now).min(50_000_000));
            self.pump(h, wait)?;
        }
        Ok(false)
    }

    /// A progress line, at most once a second.
    pub fn progress(&mut self, phase: &str, done: u64, total: u64) {
        let now = now_ns();
        if now - self.last_progress > 1_000_000_000 {
            self.last_progress = now;
            self.out.send(
                "progress",
                json!({"phase": phase, "done": done, "total": total}),
            );
        }
    }

    pub fn source_for(&self, local: usize) -> Ipv4Addr {
        self.sources[local % self.sources.len()]
    }

    /// Opens every `(conn, node, path)` with at most `--concurrency` in
    /// flight and, with `--connect-rate`, this shard's share of that rate,
    /// within `--phase-timeout`.
    pub fn connect_all<H: Handler>(
        &mut self,
        h: &mut H,
        list: &[(usize, usize, String)],
        c: &Common,
    ) -> Result<ConnectResult> {
        let (concurrency, timeout) = (c.concurrency, crate::scen::phase_timeout(c));
        let rate = c.connect_rate.max(0.0) / self.shards.max(1) as f64;
        let start = now_ns();
        let deadline = start + timeout.as_nanos() as u64;
        let failed0 = self.net.stats.connect_failed;
        let opened0 = self.net.stats.opened;
        let mut next = 0;
        let mut open_errors = 0u64;
        let mut first_error: Option<String> = None;
        for _ in 0..100_000_000u64 {
            let due = if rate > 0.0 {
                ((now_ns() - start) as f64 / 1e9 * rate) as usize + 1
            } else {
                usize::MAX
            };
            while next < list.len() && self.net.in_flight < concurrency && next < due {
                let (conn, node, path) = &list[next];
                let src = self.source_for(*conn);
                if let Err(e) = self.net.open(*conn, src, *node, path) {
                    open_errors += 1;
                    first_error.get_or_insert_with(|| format!("open from {src}: {e}"));
                }
                next += 1;
            }
            let done = self.net.stats.opened - opened0 + self.net.stats.connect_failed - failed0
                + open_errors;
            self.progress("connect", done, list.len() as u64);
            if next >= list.len() && self.net.in_flight == 0 {
                break;
            }
            if now_ns() > deadline || self.stop || self.exit {
                break;
            }
            self.pump(h, Duration::from_millis(5))?;
        }
        let ok = self.net.stats.opened - opened0;
        let failed = self.net.stats.connect_failed - failed0 + open_errors;
        if first_error.is_none() {
            first_error = self.net.last_connect_error.clone();
        }
        Ok(ConnectResult {
            ok,
            failed,
            timed_out: (list.len() as u64).saturating_sub(ok + failed),
            secs: (now_ns() - start) as f64 / 1e9,
            first_error,
        })
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct ConnectResult {
    pub ok: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub secs: f64,
    pub first_error: Option<String>,
}

/// Entry of `loadgen __worker`.
pub fn worker_main() -> Result<()> {
    // Ctrl-C reaches the whole process group: the coordinator stops the
    // run and collects the summary, so the workers must outlive it.
    crate::sys::ignore_sigint();
    crate::sys::die_with_parent();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let first = lines.next().ok_or_else(|| anyhow!("no config line"))??;
    let cfg: WorkerCfg = serde_json::from_str(&first)?;
    let scenario: crate::Scenario = serde_json::from_value(cfg.scenario.clone())?;
    let common = scenario.common().clone();
    let servers = common.server_addrs()?;
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let mut senders: Vec<(mpsc::Sender<Cmd>, Arc<Waker>)> = Vec::new();
    let mut handles = Vec::new();
    let shards = cfg.procs * cfg.threads;
    let sources = proc_sources(common.source_base, cfg.proc_index, common.source_addrs);
    // A different starting port each run, so a new run does not meet the
    // server's TIME_WAIT entries of the last one on the same 4-tuples.
    let port_offset = (crate::users::mix(now_ns() ^ std::process::id() as u64) % 51_000) as u32;
    for t in 0..cfg.threads {
        let shard = cfg.proc_index * cfg.threads + t;
        let (tx, rx) = mpsc::channel();
        let mut net = Net::new(0, &servers, common.seed ^ (shard as u64) << 32)?;
        let default_batch = if matches!(scenario, crate::Scenario::Fanout(_)) {
            300
        } else {
            0
        };
        net.batch = Duration::from_micros(common.batch_us.unwrap_or(default_batch).min(100_000));
        net.set_port_lane(t as u32, cfg.threads as u32, port_offset);
        let waker = Arc::new(net.waker()?);
        senders.push((tx, waker));
        let ctx = Ctx {
            net,
            cmds: rx,
            pending: VecDeque::new(),
            out: Out::new(shard, out.clone()),
            shard,
            shards,
            sources: sources.clone(),
            last_progress: 0,
            exit: false,
            stop: false,
        };
        let scenario = scenario.clone();
        let users_file = cfg.users_file.clone();
        handles.push(std::thread::spawn(move || {
            let out = ctx.out.clone();
            if let Err(e) = crate::scen::run_shard(scenario, ctx, users_file) {
                out.send("error", json!(format!("{e:#}")));
            }
        }));
    }
    for line in lines.take(1_000_000) {
        let line = line?;
        let cmd: Cmd = serde_json::from_str(&line)?;
        let exit = cmd.cmd == "exit";
        for (tx, w) in &senders {
            let _ = tx.send(cmd.clone());
            let _ = w.wake();
        }
        if exit {
            break;
        }
    }
    for (tx, w) in &senders {
        let _ = tx.send(Cmd::new("exit", Value::Null));
        let _ = w.wake();
    }
    drop(senders);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Source addresses of worker process `p`: `base + p*n .. + n`
/// (`--source-base`, 127.0.0.2 by default).
pub fn proc_sources(base: Ipv4Addr, p: usize, n: usize) -> Vec<Ipv4Addr> {
    let n = n.max(1);
    let base = u32::from(base);
    (0..n)
        .map(|j| Ipv4Addr::from(base + (p * n + j) as u32))
        .collect()
}

impl Common {
    /// The first server of `--url` (HTTP authentication goes there).
    pub fn server_addr(&self) -> Result<SocketAddr> {
        Ok(self.server_addrs()?[0])
    }

    /// Every server of `--url`, in the order given (node `i` is the `i`th).
    pub fn server_addrs(&self) -> Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for url in self.url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let s = url
                .trim_start_matches("ws://")
                .trim_start_matches("http://");
            let host = s.split('/').next().unwrap_or(s);
            let host = host.replace("localhost", "127.0.0.1");
            out.push(
                host.parse()
                    .map_err(|e| anyhow!("--url {url}: {e} (use ws://IP:PORT)"))?,
            );
        }
        if out.is_empty() {
            bail!("--url names no server");
        }
        Ok(out)
    }
}
