//! The real `herald` binary started with a config file, flags and
//! environment variables that conflict: flag > env > file > default. Also:
//! a bad key stops start-up with the key named, and SIGTERM exits with 0.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

fn write_config(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("herald.toml");
    std::fs::write(&path, body).expect("write config");
    path
}

#[tokio::test]
async fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
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
    let mut command = herald_command();
    command
        .arg("--config")
        .arg(&config)
        .args(["--max-follows", "7"])
        .env("HERALD_MAX_FOLLOWS", "6")
        .env("HERALD_MAX_MESSAGE_BYTES", "9000")
        .env("HERALD_HTTP_KEY", "key-from-the-env");
    let mut herald = HeraldProcess::spawn(command);

    let summary = herald.log_fields("configuration (keys redacted)");
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

    let admin = herald.admin;
    assert_eq!(get(admin, "/readyz").await.status, 200);
    assert_eq!(
        get(admin, "/v2/status?user_ids=&http_key=key-from-the-env")
            .await
            .status,
        200
    );
    assert_eq!(
        get(admin, "/v2/status?user_ids=&http_key=key-from-the-file")
            .await
            .status,
        401
    );
    assert!(data.exists(), "the account store is where the file says");

    herald.signal(libc::SIGTERM);
    let status = herald.wait_for_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "SIGTERM ends herald with 0");
    herald.log_fields("shutdown complete");
}

fn refused_start(config_body: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), config_body);
    let mut child = herald_command()
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    let status = child_exit(&mut child, WAIT * 2).expect("herald exits");
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
