//! The real `herald` binary started with a config file, flags and
//! environment variables that conflict: flag > env > file > default. Also:
//! a bad key stops start-up with the key named, and SIGTERM exits with 0.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use support::get;

/// The binary with an empty environment, so only what a test sets applies.
fn herald() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
    command.env_clear();
    command
}

/// Kills the process if a test fails before it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "herald did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every stdout line, parsed as JSON (the file sets `log_format = "json"`).
fn json_lines(child: &mut Child) -> Receiver<Value> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("log line is not JSON ({error}): {line}"));
            if lines.send(value).is_err() {
                return;
            }
        }
    });
    receiver
}

/// The `fields` of the next log line whose message is `message`.
fn log_fields(lines: &Receiver<Value>, message: &str) -> Value {
    let deadline = Instant::now() + support::TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no log line {message:?}"));
        if line["fields"]["message"] == message {
            return line["fields"].clone();
        }
    }
}

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("herald.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(
        dir.path(),
        &format!(
            r#"
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
data_dir = "{}"
log_format = "json"
shards = 1
max_follows = 5             # env 6, flag 7
max_message_bytes = 8192    # env 9000
outgoing_queue_bytes = 65536
http_key = "key-from-the-file"   # env wins
"#,
            data.display()
        ),
    );
    let mut child = herald()
        .arg("--config")
        .arg(&config)
        .args(["--max-follows", "7"])
        .env("HERALD_MAX_FOLLOWS", "6")
        .env("HERALD_MAX_MESSAGE_BYTES", "9000")
        .env("HERALD_HTTP_KEY", "key-from-the-env")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("herald starts");
    let lines = json_lines(&mut child);
    let mut herald = Running(child);

    let summary = log_fields(&lines, "configuration (keys redacted)");
    assert_eq!(summary["config"], config.display().to_string());
    assert_eq!(summary["max_follows"], 7, "flag > env > file: {summary}");
    assert_eq!(summary["max_message_bytes"], 9000, "env > file: {summary}");
    assert_eq!(
        summary["outgoing_queue_bytes"], 65536,
        "file > default: {summary}"
    );
    assert_eq!(summary["status_update_rate"], 0, "default: {summary}");
    assert_eq!(summary["data_dir"], data.display().to_string());
    assert!(
        !summary.to_string().contains("key-from-the"),
        "a key leaked: {summary}"
    );

    let serving = log_fields(&lines, "herald is serving");
    let admin: SocketAddr = serving["admin"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("admin address");
    assert_eq!(get(admin, "/readyz").status, 200);
    assert_eq!(
        get(admin, "/v2/status?user_ids=&http_key=key-from-the-env").status,
        200
    );
    assert_eq!(
        get(admin, "/v2/status?user_ids=&http_key=key-from-the-file").status,
        401
    );
    assert!(data.exists(), "the account store is where the file says");

    let pid = herald.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = wait_for_exit(&mut herald.0, Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "SIGTERM ends herald with 0");
    log_fields(&lines, "shutdown complete");
}

fn refused_start(config_body: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), config_body);
    let mut child = herald()
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    let status = wait_for_exit(&mut child, support::TIMEOUT);
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status.code(), stderr, config.display().to_string())
}

#[test]
fn an_unknown_key_stops_start_up_and_names_the_key() {
    let (code, stderr, path) = refused_start("max_mesage_bytes = 4096\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: config file {path}: unknown key \"max_mesage_bytes\" (did you mean \"max_message_bytes\"?)"
        )
    );
}

#[test]
fn an_invalid_value_stops_start_up_and_names_the_key() {
    let (code, stderr, path) = refused_start("max_message_bytes = 5\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!("error: config file {path}: invalid value for \"max_message_bytes\": 5 is not in 16..=67108864")
    );
}
