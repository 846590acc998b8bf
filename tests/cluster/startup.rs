//! Start-up in cluster mode: what stops it (unreachable NATS, a server
//! older than 2.11, no `--database-url`), each with a clear reason, and
//! `/readyz`, which says 503 until the node is connected, caught up and
//! registered.

use std::io::Read as _;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{child_exit, get, HeraldLaunch, HeraldProcess};
use crate::rig::nats::{fake_server, free_ports, NatsServer};
use crate::rig::{run, SharedAccounts, NODE_START};

/// Runs herald with cluster `args` until it exits (at most 20 s): its exit
/// code and everything it printed.
fn run_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("a data directory");
    let mut child = HeraldLaunch::new(args)
        .command(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald starts");
    let status = child_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut output = String::new();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read>),
    ]
    .into_iter()
    .flatten()
    {
        let mut pipe = pipe;
        let _ = pipe.read_to_string(&mut output);
    }
    let status = status.unwrap_or_else(|| panic!("herald did not exit within 20 s:\n{output}"));
    (status.code(), output)
}

#[test]
fn unreachable_nats_stops_start_up_naming_the_url_without_its_password() {
    run(async {
        let [port] = free_ports();
        let url = format!("nats://herald:s3cret@127.0.0.1:{port}");
        let database = SharedAccounts::new().url;
        let (code, output) = run_to_exit(&["--nats-url", &url, "--database-url", &database]);
        assert_ne!(code, Some(0), "{output}");
        assert!(
            output.contains(&format!(
                "cannot connect to NATS at nats://herald:***@127.0.0.1:{port}"
            )),
            "{output}"
        );
        assert!(
            !output.contains("s3cret"),
            "the password is never printed: {output}"
        );
    });
}

#[test]
fn a_nats_server_older_than_2_11_stops_start_up() {
    run(async {
        let fake = fake_server("2.9.10").await;
        let url = format!("nats://{fake}");
        let database = SharedAccounts::new().url;
        let (code, output) = tokio::task::spawn_blocking(move || {
            run_to_exit(&["--nats-url", &url, "--database-url", &database])
        })
        .await
        .expect("herald ran");
        assert_ne!(code, Some(0), "{output}");
        assert!(
            output.contains(&format!(
                "nats-server 2.9.10 at nats://{fake} is too old: Herald needs 2.11 or newer"
            )),
            "{output}"
        );
    });
}

#[test]
fn nats_url_without_database_url_is_refused() {
    let (code, output) = run_to_exit(&["--nats-url", "nats://127.0.0.1:4222"]);
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains("--nats-url needs --database-url"),
        "{output}"
    );
}

#[test]
fn readyz_says_503_until_the_node_has_reached_nats_and_registered() {
    run(async {
        let nats = NatsServer::start_single().await;
        // A paused server accepts the connection (the kernel does) and says
        // nothing, so start-up waits there.
        nats.signal(libc::SIGSTOP);
        let database = SharedAccounts::new().url;
        let launch = HeraldLaunch::new(&[
            "--shards",
            "2",
            "--node-id",
            "early",
            "--nats-url",
            &nats.url(),
            "--database-url",
            &database,
        ]);
        let dir = tempfile::tempdir().expect("a data directory");
        let mut herald = HeraldProcess::begin_in(dir, launch);
        let (_, admin) = tokio::task::block_in_place(|| {
            herald.log_line(
                "admin listener started: /metrics, /healthz, /readyz, backend API",
                NODE_START,
            )
        });
        let admin: std::net::SocketAddr = admin["admin_listen"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("the admin address");
        for _ in 0..5 {
            assert_eq!(get(admin, "/healthz").await.status, 200);
            assert_eq!(
                get(admin, "/readyz").await.status,
                503,
                "not ready before NATS answers"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        nats.signal(libc::SIGCONT);
        tokio::task::block_in_place(|| herald.wait_serving(NODE_START));
        assert_eq!(get(admin, "/readyz").await.status, 200);
    });
}
