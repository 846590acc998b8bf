//! A real PostgreSQL server for tests, from the machine's PostgreSQL
//! binaries (`pg_config --bindir`, else `/usr/lib/postgresql/<newest>/bin`;
//! `tests/install-deps.sh` installs them).
//!
//! Each [`Postgres`] is a cluster of its own: `initdb` into a temporary
//! directory, the server on 127.0.0.1 with a free port and its unix socket
//! in that directory, a role [`ROLE`] with the password [`PASSWORD`]
//! (which needs percent-encoding in a URL, so [`Postgres::url`] exercises
//! that path) allowed to create databases. Postgres refuses to run as root,
//! so as root the directory is given to the `postgres` user and every
//! Postgres program runs under `runuser -u postgres --`; as anyone else they
//! run as that user.
//!
//! Processes: the server's PID is read from its `postmaster.pid` and every
//! signal goes to that PID, never to a name. Dropping a [`Postgres`] stops
//! it (immediate shutdown, then SIGKILL if it lingers) and removes the
//! directory, also when a test panics. [`shared`] is one server per test
//! binary for tests that need only a database of their own
//! ([`Postgres::create_database`]); it is stopped when the binary exits.
//!
//! Every wait is bounded.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The role Herald logs in as.
pub const ROLE: &str = "herald";
/// [`ROLE`]'s password: `:` and `@` must be percent-encoded in a URL.
pub const PASSWORD: &str = "pg:p@ss-w0rd";
/// [`PASSWORD`] as it stands in a URL.
pub const PASSWORD_IN_URL: &str = "pg%3Ap%40ss-w0rd";
/// How long the server gets to start or stop.
const START_WAIT: Duration = Duration::from_secs(30);

/// A TLS certificate and key (PEM) for the server (`ssl=on`).
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A running (or stopped) PostgreSQL cluster (see the module doc).
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    tls: bool,
    /// The server while it runs: `runuser` (or the server itself) as our
    /// child, and the server's own PID.
    server: Mutex<Option<Running>>,
}

struct Running {
    child: Child,
    pid: i32,
}

/// One server for the whole test binary (see the module doc).
pub fn shared() -> &'static Postgres {
    static SHARED: OnceLock<Postgres> = OnceLock::new();
    extern "C" fn stop_shared() {
        if let Some(postgres) = SHARED.get() {
            postgres.stop_for_good();
            let _ = std::fs::remove_dir_all(postgres.dir.path());
        }
    }
    SHARED.get_or_init(|| {
        let postgres = Postgres::start();
        // SAFETY: registers a plain function to run at exit; it only
        // signals our own server and removes its directory.
        unsafe { libc::atexit(stop_shared) };
        postgres
    })
}

impl Postgres {
    /// A new cluster, started, without TLS.
    pub fn start() -> Postgres {
        Postgres::start_with(None)
    }

    /// A new cluster, started; with `tls`, `ssl=on` with that certificate.
    pub fn start_with(tls: Option<ServerTls>) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("herald-pg-")
            .tempdir()
            .expect("a temporary directory");
        let postgres = Postgres {
            bin: bin_dir(),
            port: 0,
            tls: tls.is_some(),
            server: Mutex::new(None),
            dir,
        };
        std::fs::create_dir(postgres.socket_dir()).expect("the socket directory");
        if let Some(tls) = &tls {
            std::fs::write(postgres.dir.path().join("server.crt"), &tls.cert_pem).expect("cert");
            let key = postgres.dir.path().join("server.key");
            std::fs::write(&key, &tls.key_pem).expect("key");
            set_mode(&key, 0o600);
        }
        give_to_postgres(postgres.dir.path());
        postgres.run_tool(
            "initdb",
            &[
                "-D",
                &postgres.data_dir().display().to_string(),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ],
        );
        let mut postgres = postgres;
        // A free port may be taken between our probe and the server's bind: try again.
        for attempt in 0.. {
            postgres.port = free_port();
            match postgres.try_start_server() {
                Ok(()) => break,
                Err(log) if attempt < 3 => eprintln!("postgres did not start, retrying: {log}"),
                Err(log) => panic!("postgres did not start:\n{log}"),
            }
        }
        postgres.sql(
            "postgres",
            &format!("CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'"),
        );
        postgres
    }

    /// The port on 127.0.0.1 (the same across [`Postgres::stop`] and [`Postgres::start_again`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's PID while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.lock().as_ref().map(|running| running.pid)
    }

    /// The URL of `database` for [`ROLE`], with its password, plain TCP (`sslmode=disable`).
    pub fn url(&self, database: &str) -> String {
        self.url_with(database, "sslmode=disable")
    }

    /// The URL of `database` for [`ROLE`] with `query` as its parameters.
    pub fn url_with(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://{ROLE}:{PASSWORD_IN_URL}@127.0.0.1:{}/{database}?{query}",
            self.port
        )
    }

    /// Creates a database of its own, owned by [`ROLE`], and returns its name.
    pub fn create_database(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("t{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.sql("postgres", &format!("CREATE DATABASE {name} OWNER {ROLE}"));
        name
    }

    /// Runs `sql` in `database` as the superuser (over the unix socket) and
    /// returns what it printed: unaligned, tuples only (`a|b` per row).
    pub fn sql(&self, database: &str, sql: &str) -> String {
        let socket = self.socket_dir().display().to_string();
        let port = self.port.to_string();
        let output = self
            .tool_command("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-U",
                "postgres",
            ])
            .args(["-h", &socket, "-p", &port, "-d", database, "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown: sessions are ended) and waits for it.
    /// The data stays for [`Postgres::start_again`].
    pub fn stop(&self) {
        self.signal_and_wait(libc::SIGINT);
    }

    /// Kills the server with SIGKILL (a crash) and waits for it.
    pub fn kill(&self) {
        self.signal_and_wait(libc::SIGKILL);
    }

    /// Starts the stopped (or killed) server again, on the same port and data.
    pub fn start_again(&self) {
        let deadline = Instant::now() + START_WAIT;
        loop {
            // After a kill, the old server's sessions may still hold its
            // shared memory for a moment; the new one then refuses to start.
            match self.try_start_server() {
                Ok(()) => return,
                Err(log) if Instant::now() < deadline => {
                    eprintln!("postgres did not start again, retrying: {log}");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(log) => panic!("postgres did not start again:\n{log}"),
            }
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Running>> {
        self.server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts the server and waits until it accepts connections; the log on failure.
    fn try_start_server(&self) -> Result<(), String> {
        let mut server = self.lock();
        assert!(server.is_none(), "postgres is already running");
        let pid_file = self.data_dir().join("postmaster.pid");
        let log = std::fs::File::create(self.log_file()).expect("the log file");
        let mut command = self.tool_command("postgres");
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A test database need not survive a power cut.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=300"]);
        if self.tls {
            command.args(["-c", "ssl=on"]);
            command.arg("-c").arg(format!(
                "ssl_cert_file={}",
                self.dir.path().join("server.crt").display()
            ));
            command.arg("-c").arg(format!(
                "ssl_key_file={}",
                self.dir.path().join("server.key").display()
            ));
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("log fd")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("postgres starts");
        let deadline = Instant::now() + START_WAIT;
        loop {
            // Line 1 of postmaster.pid is the server's PID, line 8 its state.
            let text = std::fs::read_to_string(&pid_file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if lines.len() >= 8 && lines[7].trim() == "ready" {
                let pid = lines[0].trim().parse().expect("a PID in postmaster.pid");
                *server = Some(Running { child, pid });
                return Ok(());
            }
            let ended = child.try_wait().expect("try_wait").is_some();
            if ended || Instant::now() >= deadline {
                if !ended {
                    let _ = child.kill();
                }
                let _ = child.wait();
                return Err(std::fs::read_to_string(self.log_file()).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the server's PID and waits until it is gone
    /// (SIGKILL after [`START_WAIT`]).
    fn signal_and_wait(&self, signal: libc::c_int) {
        let Some(mut running) = self.lock().take() else {
            return;
        };
        // SAFETY: kill(2) on the PID of our own server, read from its pid file.
        unsafe { libc::kill(running.pid, signal) };
        let deadline = Instant::now() + START_WAIT;
        while running.child.try_wait().ok().flatten().is_none() {
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe { libc::kill(running.pid, libc::SIGKILL) };
                let _ = running.child.kill();
                let _ = running.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Immediate shutdown (no checkpoint; its sessions end at once).
    fn stop_for_good(&self) {
        self.signal_and_wait(libc::SIGQUIT);
    }

    /// A command for the Postgres program `tool`, as the `postgres` user when we are root.
    fn tool_command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn run_tool(&self, tool: &str, args: &[&str]) {
        let output = self
            .tool_command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} runs: {e}"));
        assert!(
            output.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop_for_good();
    }
}

/// Where the PostgreSQL server programs are.
fn bin_dir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()));
    let newest_debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .map(|version| PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")));
    from_pg_config
        .into_iter()
        .chain(newest_debian)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .expect("PostgreSQL server binaries (run tests/install-deps.sh)")
}

fn running_as_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// As root, hands `dir` (and what is in it) to the `postgres` user.
fn give_to_postgres(dir: &Path) {
    set_mode(dir, 0o700);
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .expect("chown runs");
        assert!(status.success(), "chown {}", dir.display());
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}
