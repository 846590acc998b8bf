//! TLS on the main listener: a certificate generated at test time (rcgen),
//! REST over HTTPS, the realtime socket over `wss://` with sessions handed
//! between shards, start-up errors that name the file, and the handshake
//! timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

use herald::config::Config;
use herald::server::Server;

use crate::common::{connect_over, http_bytes, http_exchange_over, user_of, Client, WAIT};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM.
struct TestCert {
    dir: tempfile::TempDir,
    der: CertificateDer<'static>,
}

impl TestCert {
    fn new() -> TestCert {
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("generate a certificate");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).expect("write cert");
        std::fs::write(
            dir.path().join("key.pem"),
            generated.signing_key.serialize_pem(),
        )
        .expect("write key");
        TestCert {
            der: generated.cert.der().clone(),
            dir,
        }
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// A client trusting only this certificate.
    fn connector(&self) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust the certificate");
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        TlsConnector::from(Arc::new(config))
    }
}

fn config(cert: &Path, key: &Path, data: &Path, shards: usize) -> Config {
    let mut config = Config::for_tests("127.0.0.1:0".parse().expect("addr"), data.to_owned());
    config.tls_cert = Some(cert.to_owned());
    config.tls_key = Some(key.to_owned());
    config.shards = shards;
    config
}

async fn tls_connect(cert: &TestCert, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(WAIT, cert.connector().connect(name, tcp))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

/// `POST /v2/account/authenticate/custom` over HTTPS; returns (user id, token).
async fn authenticate(cert: &TestCert, addr: SocketAddr, id: &str) -> (String, String) {
    let tls = tls_connect(cert, addr).await;
    let body = json!({ "id": id }).to_string();
    let request = http_bytes(
        "POST",
        &format!("/v2/account/authenticate/custom?create=true&username={id}"),
        &[
            ("Authorization", crate::common::DEFAULT_KEY_AUTH),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    );
    let user = user_of(&http_exchange_over(tls, &request).await, id);
    (user.id, user.token)
}

async fn open_socket(
    cert: &TestCert,
    addr: SocketAddr,
    token: &str,
) -> Client<TlsStream<TcpStream>> {
    let tls = tls_connect(cert, addr).await;
    let url = format!(
        "wss://localhost:{}/ws?lang=en&status=true&token={token}",
        addr.port()
    );
    connect_over(tls, &url).await
}

fn presence_event_of<'a>(event: &'a Value, list: &str, user: &str) -> Option<&'a Value> {
    event["status_presence_event"][list]
        .as_array()?
        .iter()
        .find(|p| p["user_id"] == user)
}

/// Four users, four shards: each socket is accepted on whichever shard the
/// kernel picks and runs on its user's home shard, so TLS sessions are
/// handed between shards (all four staying home has odds of 1 in 256).
/// Every user follows the next one, sets a status, and sees its friend's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_follow_update_and_leave_across_shards() {
    let cert = TestCert::new();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(config(&cert.cert_path(), &cert.key_path(), data.path(), 4))
        .expect("start with TLS");
    let addr = server.local_addr();

    let mut users = Vec::new();
    for i in 0..4 {
        let name = format!("tls{i}x{}", std::process::id());
        users.push(authenticate(&cert, addr, &name).await);
    }
    let mut sockets = Vec::new();
    for (_, token) in &users {
        sockets.push(open_socket(&cert, addr, token).await);
    }
    // Each follows the next (by user id) and gets a snapshot.
    for i in 0..4 {
        let friend = &users[(i + 1) % 4].0;
        sockets[i]
            .send_json(json!({"cid": "1", "status_follow": {"user_ids": [friend]}}))
            .await;
        let snapshot = sockets[i]
            .next_matching("the follow snapshot", |v| v["cid"] == "1")
            .await;
        assert!(snapshot.get("status").is_some(), "{snapshot}");
        assert!(snapshot.get("error").is_none(), "{snapshot}");
    }
    // Each sets a status; its follower sees it.
    for (i, socket) in sockets.iter_mut().enumerate() {
        let status = format!("status of {i} over TLS");
        socket
            .send_json(json!({"cid": "2", "status_update": {"status": status}}))
            .await;
        socket
            .next_matching("the update ack", |v| v["cid"] == "2")
            .await;
    }
    for i in 0..4 {
        let friend = users[(i + 1) % 4].0.clone();
        let want = format!("status of {} over TLS", (i + 1) % 4);
        sockets[i]
            .next_matching("the friend's status", |v| {
                presence_event_of(v, "joins", &friend).is_some_and(|p| p["status"] == want.as_str())
            })
            .await;
    }
    // User 1 disconnects: user 0 (its follower) sees the leave.
    sockets.remove(1).close(1000).await;
    let friend = users[1].0.clone();
    let leave = sockets[0]
        .next_matching("the friend's leave", |v| {
            presence_event_of(v, "leaves", &friend).is_some()
        })
        .await;
    assert_eq!(
        presence_event_of(&leave, "leaves", &friend).expect("leave")["status"],
        "status of 1 over TLS"
    );
    // A burst of large events to a TLS follower arrives whole. Left are
    // users 0, 2 and 3 (sockets 0, 1, 2); user 3 follows user 0.
    let big = "x".repeat(2000);
    for n in 0..50 {
        let status = format!("{n}:{big}");
        sockets[0]
            .send_json(json!({"cid": format!("b{n}"), "status_update": {"status": status}}))
            .await;
    }
    let zero = users[0].0.clone();
    sockets[2]
        .next_matching("the last of a burst", |v| {
            presence_event_of(v, "joins", &zero)
                .is_some_and(|p| p["status"].as_str().is_some_and(|s| s.starts_with("49:")))
        })
        .await;
    for mut socket in sockets {
        socket.close(1000).await;
    }
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .expect("shutdown");
}

#[test]
fn start_up_errors_name_the_file() {
    let cert = TestCert::new();
    let data = tempfile::tempdir().expect("tempdir");
    let missing = cert.dir.path().join("missing.pem");

    let error = Server::start(config(&missing, &cert.key_path(), data.path(), 1))
        .err()
        .expect("a missing certificate stops start-up");
    assert!(format!("{error:#}").contains("missing.pem"), "{error:#}");

    let garbage = cert.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").expect("write");
    let error = Server::start(config(&garbage, &cert.key_path(), data.path(), 1))
        .err()
        .expect("a file without certificates stops start-up");
    assert!(format!("{error:#}").contains("garbage.pem"), "{error:#}");

    let error = Server::start(config(&cert.cert_path(), &garbage, data.path(), 1))
        .err()
        .expect("a file without a key stops start-up");
    assert!(format!("{error:#}").contains("garbage.pem"), "{error:#}");

    let other = TestCert::new();
    let error = Server::start(config(&cert.cert_path(), &other.key_path(), data.path(), 1))
        .err()
        .expect("a key of another certificate stops start-up");
    let text = format!("{error:#}");
    assert!(
        text.contains("key.pem") && text.contains("does not fit"),
        "{text}"
    );
}

/// A client that connects and never starts the TLS handshake is dropped
/// after the 10 s handshake timeout; meanwhile others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_dropped_after_the_handshake_timeout() {
    let cert = TestCert::new();
    let data = tempfile::tempdir().expect("tempdir");
    let server = Server::start(config(&cert.cert_path(), &cert.key_path(), data.path(), 1))
        .expect("start with TLS");
    let addr = server.local_addr();
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // Served meanwhile, on the same shard.
    authenticate(&cert, addr, &format!("patient{}", std::process::id())).await;
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(15), silent.read(&mut buf))
        .await
        .expect("closed within 15 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9),
        "closed after only {waited:?}"
    );
    tokio::task::spawn_blocking(move || server.shutdown())
        .await
        .expect("shutdown");
}
