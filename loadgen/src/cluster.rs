//! Coordinator ↔ worker plumbing. The coordinator spawns `--procs` copies of
//! this binary (`loadgen __worker`), each running `--threads` shards (one
//! event loop each). Commands go down as JSON lines on the workers' stdin
//! and every shard answers each command with exactly one JSON line on
//! stdout; shards may also send `progress` lines in between.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::sys;

/// A command from the coordinator to every shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cmd {
    pub cmd: String,
    #[serde(default)]
    pub data: Value,
}

impl Cmd {
    pub fn new(cmd: &str, data: Value) -> Cmd {
        Cmd {
            cmd: cmd.into(),
            data,
        }
    }
}

/// A line from a shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub shard: usize,
    pub kind: String,
    #[serde(default)]
    pub data: Value,
}

/// What a worker process is told on its first stdin line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerCfg {
    pub scenario: Value,
    pub proc_index: usize,
    pub procs: usize,
    pub threads: usize,
    pub users_file: Option<String>,
}

pub struct Cluster {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    rx: Receiver<Result<Reply, String>>,
    pub shards: usize,
    progress: BTreeMap<usize, Value>,
    last_progress_print: Instant,
    /// Ctrl-C (caught by scenarios that call [`crate::sys::catch_sigint`])
    /// while waiting for any phase sent the workers "stop": ramps end
    /// early and the run ends.
    stop_sent: bool,
}

impl Cluster {
    pub fn spawn(
        scenario: &Value,
        procs: usize,
        threads: usize,
        users_file: Option<String>,
    ) -> Result<Cluster> {
        let exe = std::env::current_exe().context("current_exe")?;
        let (tx, rx) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for p in 0..procs {
            let mut child = Command::new(&exe)
                .arg("__worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawn worker")?;
            let mut stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
            let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
            let cfg = WorkerCfg {
                scenario: scenario.clone(),
                proc_index: p,
                procs,
                threads,
                users_file: users_file.clone(),
            };
            writeln!(stdin, "{}", serde_json::to_string(&cfg)?)?;
            stdin.flush()?;
            let tx: Sender<Result<Reply, String>> = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let msg = match line {
                        Ok(l) => serde_json::from_str::<Reply>(&l)
                            .map_err(|e| format!("bad worker line {l:?}: {e}")),
                        Err(e) => Err(format!("worker {p} stdout: {e}")),
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                }
                let _ = tx.send(Err(format!("worker {p} exited")));
            });
            children.push(child);
            stdins.push(stdin);
        }
        Ok(Cluster {
            children,
            stdins,
            rx,
            shards: procs * threads,
            progress: BTreeMap::new(),
            last_progress_print: Instant::now(),
            stop_sent: false,
        })
    }

    pub fn send(&mut self, cmd: &str, data: Value) -> Result<()> {
        let line = serde_json::to_string(&Cmd::new(cmd, data))?;
        for s in &mut self.stdins {
            writeln!(s, "{line}")?;
            s.flush()?;
        }
        Ok(())
    }

    /// Waits for one `kind` reply from every shard, printing progress lines.
    pub fn collect(&mut self, kind: &str, timeout: Duration) -> Result<Vec<Reply>> {
        let deadline = Instant::now() + timeout;
        let mut got: BTreeMap<usize, Reply> = BTreeMap::new();
        self.progress.clear();
        while got.len() < self.shards {
            if !self.stop_sent && crate::sys::interrupted() {
                self.stop_sent = true;
                eprintln!("\ninterrupted: stopping the workers; the summary follows");
                self.send("stop", Value::Null)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "timed out waiting for '{kind}' ({} of {} shards answered)",
                    got.len(),
                    self.shards
                );
            }
            let msg = match self.rx.recv_timeout(left.min(Duration::from_millis(500))) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => bail!("all workers gone"),
            };
            let r = msg.map_err(|e| anyhow!(e))?;
            if r.kind == "progress" {
                self.progress.insert(r.shard, r.data);
                self.print_progress();
                continue;
            }
            if r.kind == "error" {
                bail!("shard {}: {}", r.shard, r.data);
            }
            if r.kind != kind {
                bail!(
                    "shard {} answered '{}' while '{kind}' was expected",
                    r.shard,
                    r.kind
                );
            }
            got.insert(r.shard, r);
        }
        if !self.progress.is_empty() {
            eprintln!();
        }
        Ok(got.into_values().collect())
    }

    /// Waits for the next non-progress line of any shard (for periodic reports).
    pub fn next(&mut self, timeout: Duration) -> Result<Option<Reply>> {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                let r = m.map_err(|e| anyhow!(e))?;
                if r.kind == "error" {
                    bail!("shard {}: {}", r.shard, r.data);
                }
                Ok(Some(r))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => bail!("all workers gone"),
        }
    }

    fn print_progress(&mut self) {
        if self.last_progress_print.elapsed() < Duration::from_millis(500) {
            return;
        }
        self.last_progress_print = Instant::now();
        let mut phase = String::new();
        let (mut done, mut total) = (0u64, 0u64);
        for v in self.progress.values() {
            phase = v
                .get("phase")
                .and_then(|p| p.as_str())
                .unwrap_or("")
                .to_owned();
            done += v.get("done").and_then(|x| x.as_u64()).unwrap_or(0);
            total += v.get("total").and_then(|x| x.as_u64()).unwrap_or(0);
        }
        eprint!(
            "\r{phase}: {done}/{total} ({} shards reporting)      ",
            self.progress.len()
        );
    }

    /// CPU of every worker process plus this one, ns.
    pub fn cpu_ns(&self) -> u64 {
        let mut total = sys::process_cpu_ns(std::process::id()).unwrap_or(0);
        for c in &self.children {
            total += sys::process_cpu_ns(c.id()).unwrap_or(0);
        }
        total
    }

    /// Peak RSS of the workers, KiB.
    pub fn worker_hwm_kib(&self) -> u64 {
        self.children
            .iter()
            .filter_map(|c| sys::hwm_kib(c.id()))
            .sum()
    }

    /// Tells the workers to exit and waits for them (bounded).
    pub fn finish(mut self) -> Result<()> {
        let _ = self.send("exit", Value::Null);
        self.stdins.clear();
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in &mut self.children {
            loop {
                match c.try_wait()? {
                    Some(_) => break,
                    None if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        Ok(())
    }
}

/// Shared stdout of a worker; every shard writes whole lines under the lock.
#[derive(Clone)]
pub struct Out {
    shard: usize,
    inner: Arc<Mutex<std::io::Stdout>>,
}

impl Out {
    pub fn new(shard: usize, inner: Arc<Mutex<std::io::Stdout>>) -> Out {
        Out { shard, inner }
    }

    pub fn send(&self, kind: &str, data: Value) {
        let r = Reply {
            shard: self.shard,
            kind: kind.into(),
            data,
        };
        if let (Ok(line), Ok(mut o)) = (serde_json::to_string(&r), self.inner.lock()) {
            let _ = writeln!(o, "{line}");
            let _ = o.flush();
        }
    }
}
