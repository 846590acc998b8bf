//! Clocks and /proc readers: wall time in ns shared by all processes, CPU
//! time of threads and processes, server RSS.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds (CLOCK_REALTIME through the vDSO). All loadgen
/// processes on the machine share it, so a timestamp written into a status
/// by one process can be compared with the receive time in another.
#[inline]
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn read_schedstat(path: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// CPU time of every live thread of process `pid` in ns (sum of the tasks' schedstat).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for entry in dir.flatten().take(100_000) {
        let p = entry.path().join("schedstat");
        if let Some(v) = p.to_str().and_then(read_schedstat) {
            total += v;
        }
    }
    Some(total)
}

/// utime + stime of process `pid` in µs, from `/proc/PID/stat` (clock ticks
/// of 10 ms; USER_HZ is 100 on Linux).
pub fn process_utime_stime_us(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields resume after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 10_000)
}

/// Steal time of the whole machine in µs: CPU time the hypervisor gave to
/// someone else while this VM wanted it (`/proc/stat`, clock ticks of 10 ms).
pub fn machine_steal_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal ...
    let steal: u64 = line.split_whitespace().nth(8)?.parse().ok()?;
    Some(steal * 10_000)
}

/// CPUs this process may run on (at least 1).
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Resident set size of `pid` in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmRSS:")
}

/// Peak resident set size of `pid` in KiB (`VmHWM`).
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// `MemAvailable` of `/proc/meminfo`, KiB.
pub fn mem_available_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line["MemAvailable:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on SIGINT only sets a flag ([`interrupted`]).
pub fn catch_sigint() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
    }
}

/// Whether SIGINT arrived since [`catch_sigint`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// A worker process ends when the coordinator that started it does (killed,
/// or stopped by a signal before it could send "exit"): it gets SIGKILL.
/// Otherwise orphaned workers would hold their sockets and go on
/// reconnecting to nodes that are gone.
pub fn die_with_parent() {
    let parent = std::os::unix::process::parent_id();
    // SAFETY: prctl(PR_SET_PDEATHSIG) only sets this process's parent-death
    // signal; its arguments are plain integers.
    let set = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The parent may have died before the call: then no signal would come.
    if set != 0 || std::os::unix::process::parent_id() != parent {
        std::process::exit(1);
    }
}

/// Ignores SIGINT (worker processes: the coordinator decides).
pub fn ignore_sigint() {
    // SAFETY: setting a signal's disposition to SIG_IGN.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}
