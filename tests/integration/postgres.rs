//! Accounts in Postgres (`--database-url`) against a real PostgreSQL server
//! (see `common::postgres`), over real HTTP and websockets: authenticate on
//! Postgres, uniqueness under races between two `herald` processes, follows
//! of users created on another node, Postgres going down and coming back,
//! start-up errors, TLS, and the schema upgrade.
//!
//! Tests that only need a database share one server per test binary
//! (`common::postgres::shared`), each with a database of its own; the outage
//! and TLS tests run a server of their own.

use std::collections::HashSet;
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use herald::auth::store_postgres::schema;
use herald::config::DatabaseUrl;
use serde_json::{json, Value};

use crate::common::postgres::{self, Postgres, ServerTls, PASSWORD, PASSWORD_IN_URL};
use crate::common::*;

/// A `--database-url` value.
fn database_url(url: &str) -> DatabaseUrl {
    match DatabaseUrl::from_str(url) {
        Ok(url) => url,
        Err(never) => match never {},
    }
}

/// An in-process Herald on `url`.
fn server_on(url: &str) -> TestServer {
    TestServer::start_with(|config| config.database_url = Some(database_url(url)))
}

/// An in-process Herald on a fresh database of the shared Postgres (which
/// has no TLS), with the URL's defaults (`sslmode=prefer`: plain here).
fn server_on_fresh_database() -> TestServer {
    let pg = postgres::shared();
    server_on(&pg.url_with(&pg.create_database(), "application_name=herald-test"))
}

/// Two `herald` processes on one fresh database of the shared Postgres,
/// started at the same moment (so both run the schema upgrade at once),
/// and the database's name.
fn two_nodes() -> (HeraldProcess, HeraldProcess, String) {
    let pg = postgres::shared();
    let database = pg.create_database();
    let url = pg.url(&database);
    let start = || HeraldProcess::start(&["--database-url", &url]);
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(start);
        let b = scope.spawn(start);
        (
            a.join().expect("node A starts"),
            b.join().expect("node B starts"),
        )
    });
    (a, b, database)
}

/// `POST /v2/account/authenticate/{kind}{query}` with `{"id": id}`.
async fn authenticate_as(
    addr: std::net::SocketAddr,
    kind: &str,
    query: &str,
    id: &str,
) -> HttpReply {
    let body = json!({ "id": id }).to_string();
    let target = format!("/v2/account/authenticate/{kind}{query}");
    http_post(addr, &target, Some(DEFAULT_KEY_AUTH), &body).await
}

/// The user id in an authenticate reply's token, and whether it was created.
fn account_of(reply: &HttpReply) -> (String, bool) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    let claims = jwt_claims(json["token"].as_str().expect("token"));
    let id = claims["uid"].as_str().expect("uid").to_owned();
    (id, json["created"] == true)
}

#[tokio::test]
async fn authenticate_creates_finds_and_refuses_as_with_sqlite() {
    let server = server_on_fresh_database();
    let addr = server.addr;

    let created = authenticate_as(
        addr,
        "custom",
        "?create=true&username=alice&",
        "custom-alice",
    )
    .await;
    let (alice, was_created) = account_of(&created);
    assert!(was_created);
    assert_eq!(
        jwt_claims(created.json()["token"].as_str().expect("token"))["usn"],
        "alice"
    );
    let again = authenticate_as(addr, "custom", "?username=other", "custom-alice").await;
    assert_eq!(account_of(&again), (alice.clone(), false));
    assert!(again.json().get("created").is_none(), "{}", again.body);
    assert_eq!(
        jwt_claims(again.json()["token"].as_str().expect("token"))["usn"],
        "alice"
    );

    // Unknown without create, a taken username, and a refused create that
    // leaves nothing behind.
    for (kind, query, id, status, code, message) in [
        (
            "custom",
            "?create=false",
            "custom-nobody",
            404,
            5,
            "User account not found.",
        ),
        (
            "device",
            "?create=false",
            "device-nobody-1",
            404,
            5,
            "User account not found.",
        ),
        (
            "custom",
            "?username=alice",
            "custom-other",
            409,
            6,
            "Username is already in use.",
        ),
        (
            "device",
            "?username=alice",
            "device-other-1",
            409,
            6,
            "Username is already in use.",
        ),
        (
            "device",
            "?create=false",
            "device-other-1",
            404,
            5,
            "User account not found.",
        ),
    ] {
        authenticate_as(addr, kind, query, id)
            .await
            .assert_error(status, code, message);
    }

    // Device accounts get ten generated letters; device and custom ids are separate.
    let device = authenticate_as(addr, "device", "", "custom-alice").await;
    let (device_user, was_created) = account_of(&device);
    assert!(was_created);
    assert_ne!(device_user, alice);
    let name = jwt_claims(device.json()["token"].as_str().expect("token"))["usn"].clone();
    let name = name.as_str().expect("usn");
    assert!(
        name.len() == 10 && name.bytes().all(|b| b.is_ascii_alphabetic()),
        "{name}"
    );
    let device_again = authenticate_as(addr, "device", "?create=false", "custom-alice").await;
    assert_eq!(account_of(&device_again), (device_user, false));

    // SQL metacharacters are data.
    let nasty = "x');DROP_TABLE_users;--";
    let reply = authenticate_as(addr, "custom", "?username=Robert%27%29%3B", nasty).await;
    assert!(account_of(&reply).1);
    let reply = authenticate_as(addr, "custom", "", nasty).await;
    assert!(!account_of(&reply).1);

    // Refresh reads the account from Postgres.
    let refresh_token = created.json()["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let body = json!({ "token": refresh_token }).to_string();
    let refreshed = http_post(
        addr,
        "/v2/account/session/refresh",
        Some(DEFAULT_KEY_AUTH),
        &body,
    )
    .await;
    assert_eq!(refreshed.status, 200, "{}", refreshed.body);
    assert_eq!(
        jwt_claims(refreshed.json()["token"].as_str().expect("token"))["uid"],
        alice.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_authenticates_of_one_id_on_two_nodes_make_one_account() {
    let (a, b, _) = two_nodes();
    let addrs = [a.addr, b.addr];
    for (kind, id, calls) in [
        ("custom", "contended-custom", 500),
        ("device", "contended-device", 200),
    ] {
        let tasks: Vec<_> = (0..calls)
            .map(|i| {
                let addr = addrs[i % 2];
                tokio::spawn(async move { authenticate_as(addr, kind, "?create=true", id).await })
            })
            .collect();
        let mut users = HashSet::new();
        let mut created = 0;
        for task in tasks {
            let (user, was_created) = account_of(&task.await.expect("the call finished"));
            users.insert(user);
            created += usize::from(was_created);
        }
        assert_eq!(users.len(), 1, "{kind}: every call got the same account");
        assert_eq!(created, 1, "{kind}: exactly one call created it");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_username_on_two_nodes_give_it_to_one() {
    let (a, b, _) = two_nodes();
    let addrs = [a.addr, b.addr];
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let addr = addrs[i % 2];
            tokio::spawn(async move {
                let id = format!("claimant-{i}");
                authenticate_as(addr, "custom", "?create=true&username=popular", &id).await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        let reply = task.await.expect("the call finished");
        if reply.status == 200 {
            assert!(account_of(&reply).1, "{}", reply.body);
            winners += 1;
        } else {
            reply.assert_error(409, 6, "Username is already in use.");
        }
    }
    assert_eq!(winners, 1, "exactly one account got the username");
}

/// A follow request's reply, which must be the snapshot (no error).
async fn follow(client: &mut Client, cid: &str, ids: &[&str], names: &[&str]) -> Vec<Value> {
    let reply = client
        .request(json!({"status_follow": {"user_ids": ids, "usernames": names}, "cid": cid}))
        .await;
    snapshot_presences(&reply, cid)
}

#[tokio::test]
async fn users_created_on_one_node_are_followed_on_another_at_once() {
    let (a, b, database) = two_nodes();
    let follower = b.user("follower").await;
    let mut on_b = b.connect(&follower, false).await;

    // Created on A a moment ago: followed on B by username, and by id.
    let by_name = a.user("by-name").await;
    let by_id = a.user("by-id").await;
    assert!(follow(&mut on_b, "1", &[], &["by-name"]).await.is_empty());
    assert!(follow(&mut on_b, "2", &[&by_id.id], &[]).await.is_empty());
    // Nobody: dropped without error, as Nakama does.
    let nobody = uuid::Uuid::new_v4().to_string();
    assert!(follow(&mut on_b, "3", &[&nobody], &["nobody-at-all"])
        .await
        .is_empty());

    // The follows were kept: when those users come online on B, the follower hears it.
    let mut sessions = Vec::new();
    for user in [&by_name, &by_id] {
        let mut session = b.connect(user, true).await;
        assert_join(&session.recv_event().await, user, "");
        assert_join(&on_b.recv_event().await, user, "");
        sessions.push(session);
    }

    // A user first seen in a token on B (minted elsewhere) is recorded in
    // Postgres and can be followed by name on A.
    let external = mint_user(&default_tokens(), uuid::Uuid::new_v4(), "minted-elsewhere");
    let _on_b_external = b.connect(&external, false).await;
    let pg = postgres::shared();
    wait_until("the external user is recorded", || {
        pg.sql(
            &database,
            &format!("SELECT username FROM users WHERE id = '{}'", external.id),
        ) == "minted-elsewhere"
    })
    .await;
    let watcher = a.user("watcher").await;
    let mut on_a = a.connect(&watcher, false).await;
    assert!(follow(&mut on_a, "4", &[], &["minted-elsewhere"])
        .await
        .is_empty());
    let mut external_on_a = a.connect(&external, true).await;
    assert_join(&external_on_a.recv_event().await, &external, "");
    assert_join(&on_a.recv_event().await, &external, "");
}

#[tokio::test]
async fn while_postgres_is_down_sessions_go_on_and_it_recovers_without_a_restart() {
    let pg = Postgres::start();
    let url = pg.url(&pg.create_database());
    let server = server_on(&url);
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let mut alice_session = server.connect(&alice, true).await;
    alice_session.recv_event().await;
    let mut bob_session = server.connect(&bob, false).await;
    assert_eq!(
        follow(&mut bob_session, "1", &[&alice.id], &[]).await.len(),
        1
    );

    pg.stop();

    // REST answers 500 with Nakama's texts.
    authenticate_as(server.addr, "custom", "?username=dave", "custom-dave")
        .await
        .assert_error(500, 13, "Error finding or creating user account.");
    authenticate_as(server.addr, "custom", "", "custom-alice")
        .await
        .assert_error(500, 13, "Error finding or creating user account.");
    let body = json!({ "token": alice.refresh_token }).to_string();
    http_post(
        server.addr,
        "/v2/account/session/refresh",
        Some(DEFAULT_KEY_AUTH),
        &body,
    )
    .await
    .assert_error(500, 13, "Error finding user account.");

    // Open sessions carry on: statuses flow, known users are followed by
    // id and by name, and a known user can connect.
    let alice_session_id =
        alice_session.set_status("2", "still here").await["joins"][0]["session_id"].clone();
    let event = bob_session.recv_event().await;
    assert_eq!(event["joins"][0]["session_id"], alice_session_id, "{event}");
    let mut carol_session = server.connect(&carol, false).await;
    let snapshot = follow(&mut carol_session, "3", &[&alice.id], &["bob"]).await;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_presence(&snapshot[0], &alice, "still here");

    // A follow that needs the store fails with Nakama's text and follows nothing.
    let stranger = uuid::Uuid::new_v4().to_string();
    for (cid, ids, names) in [
        ("4", vec![stranger.as_str()], vec![]),
        ("5", vec![], vec!["stranger"]),
    ] {
        let reply = carol_session
            .request(json!({"status_follow": {"user_ids": ids, "usernames": names}, "cid": cid}))
            .await;
        assert_eq!(
            reply,
            json!({"cid": cid, "error": {"message": "Could not check users"}})
        );
    }
    carol_session.assert_open("6").await;

    pg.start_again();

    // Back without restarting Herald: the pool reconnects.
    let deadline = tokio::time::Instant::now() + WAIT;
    let dave = loop {
        let reply = authenticate_as(server.addr, "custom", "?username=dave", "custom-dave").await;
        if reply.status == 200 {
            break reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still failing: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(account_of(&dave).1);
    assert!(
        follow(&mut carol_session, "7", &[&stranger], &["stranger", "dave"])
            .await
            .is_empty()
    );
    let again = authenticate_as(server.addr, "custom", "", "custom-alice").await;
    assert_eq!(account_of(&again), (alice.id.clone(), false));
}

/// Runs the binary with `url`, which must fail to start; returns everything
/// it printed.
fn failed_start(url: &str) -> String {
    let mut child = herald_command()
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--log-format", "json", "--database-url", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    let status = child_exit(&mut child, Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("herald did not stop in time with {url}")
    });
    let output = child.wait_with_output().expect("its output");
    assert!(!status.success(), "herald started with {url}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn start_up_stops_with_a_clear_error_that_shows_no_password() {
    let pg = postgres::shared();
    let database = pg.create_database();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    // A server that accepts and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
    let silent_port = silent.local_addr().expect("addr").port();
    let url_at = |port: u16, password: &str| {
        format!("postgres://herald:{password}@127.0.0.1:{port}/{database}?sslmode=disable")
    };
    let wrong_password = "Wr0ng-Pa55";
    for (url, expected) in [
        (url_at(closed_port, PASSWORD_IN_URL), "Connection refused"),
        (url_at(silent_port, PASSWORD_IN_URL), "no answer within 5 s"),
        (
            url_at(pg.port(), wrong_password),
            "password authentication failed",
        ),
        (
            format!(
                "postgres://herald:{PASSWORD_IN_URL}@127.0.0.1:{}/{database}?sslmode=sometimes",
                pg.port()
            ),
            "sslmode must be",
        ),
    ] {
        let output = failed_start(&url);
        assert!(output.contains("cannot open the account store"), "{output}");
        assert!(output.contains(expected), "{expected}: {output}");
        assert!(output.contains("herald:***@127.0.0.1:"), "{output}");
        for secret in [PASSWORD, PASSWORD_IN_URL, wrong_password] {
            assert!(!output.contains(secret), "{secret} shown: {output}");
        }
    }
    drop(silent);
}

/// A CA named `ca_name`, and a server certificate it signed for `db.herald.test` only.
fn certificates(ca_name: &str) -> (String, ServerTls) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("CA");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["db.herald.test".to_owned()])
        .expect("params")
        .signed_by(&key, &*ca)
        .expect("a server certificate");
    let server = ServerTls {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    };
    (ca.pem(), server)
}

#[tokio::test]
async fn tls_require_encrypts_and_verify_modes_check_the_certificate() {
    let (ca_pem, server_tls) = certificates("herald test CA");
    let (other_ca_pem, _) = certificates("another CA");
    let pg = Postgres::start_with(Some(server_tls));
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, ca_pem).expect("write");
    std::fs::write(&other_ca, other_ca_pem).expect("write");
    let (ca, other_ca) = (ca.display().to_string(), other_ca.display().to_string());
    let by_name = |database: &str| {
        format!(
            "postgres://herald:{PASSWORD_IN_URL}@db.herald.test:{}/{database}?hostaddr=127.0.0.1",
            pg.port()
        )
    };

    // Encrypted, or not, as asked: Postgres's own view of the connections.
    for (query, encrypted) in [
        ("sslmode=require", "t"),
        ("sslmode=prefer", "t"),
        ("sslmode=disable", "f"),
    ] {
        let database = pg.create_database();
        let server = server_on(&pg.url_with(&database, query));
        server.user(&format!("user-{}", &query[8..])).await;
        let ssl = pg.sql(
            "postgres",
            &format!(
                "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid \
                 WHERE a.datname = '{database}' AND a.usename = 'herald'"
            ),
        );
        assert_eq!(ssl, encrypted, "{query}");
    }

    // The certificate is checked as libpq does.
    let database = pg.create_database();
    let by_name = by_name(&database);
    for url in [
        format!("{by_name}&sslmode=verify-full&sslrootcert={ca}"),
        pg.url_with(&database, &format!("sslmode=verify-ca&sslrootcert={ca}")),
    ] {
        let server = server_on(&url);
        server.user("verified").await;
    }
    for (url, expected) in [
        (
            pg.url_with(&database, &format!("sslmode=verify-full&sslrootcert={ca}")),
            "not valid for name",
        ),
        (
            format!("{by_name}&sslmode=verify-full&sslrootcert={other_ca}"),
            "UnknownIssuer",
        ),
        (
            pg.url_with(
                &database,
                &format!("sslmode=verify-ca&sslrootcert={other_ca}"),
            ),
            "UnknownIssuer",
        ),
    ] {
        let error = TestServer::try_start_with(|config| {
            config.database_url = Some(database_url(&url));
        })
        .err()
        .unwrap_or_else(|| panic!("started with {url}"));
        assert!(error.contains("error performing TLS handshake"), "{error}");
        assert!(error.contains(expected), "{expected}: {error}");
        assert!(!error.contains(PASSWORD), "{error}");
    }
}

/// The tables, columns and indexes of `database`, one line each.
fn schema_of(pg: &Postgres, database: &str) -> String {
    pg.sql(
        database,
        "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' \
             || COALESCE(column_default, '') \
         FROM information_schema.columns WHERE table_schema = 'public' \
         UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
         ORDER BY 1",
    )
}

#[tokio::test]
async fn an_older_schema_is_upgraded_in_place_with_its_data() {
    let pg = postgres::shared();
    let old = pg.create_database();
    // The database as the build with migration 1 only left it, with accounts.
    let (mut client, connection) = tokio_postgres::connect(&pg.url(&old), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let connection = tokio::spawn(connection);
    assert_eq!(
        schema::upgrade_to(&mut client, 1)
            .await
            .expect("migration 1"),
        schema::Upgrade::Applied { from: 0, to: 1 }
    );
    drop(client);
    let _ = connection.await;
    let (custom, device) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    pg.sql(
        &old,
        &format!(
            "INSERT INTO users (id, username, custom_id) VALUES ('{custom}', 'olduser', 'old-custom'); \
             INSERT INTO users (id, username) VALUES ('{device}', 'olddevice'); \
             INSERT INTO user_device (id, user_id) VALUES ('old-device-id', '{device}')"
        ),
    );

    let server = server_on(&pg.url(&old));
    assert_eq!(
        pg.sql(
            &old,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM herald_schema_migrations"
        ),
        "1,2"
    );
    let found = authenticate_as(server.addr, "custom", "?create=false", "old-custom").await;
    assert_eq!(account_of(&found), (custom.to_string(), false));
    let found = authenticate_as(server.addr, "device", "?create=false", "old-device-id").await;
    assert_eq!(account_of(&found), (device.to_string(), false));
    drop(server);

    // Upgraded, it is exactly what a new database gets.
    let fresh = pg.create_database();
    drop(server_on(&pg.url(&fresh)));
    assert_eq!(schema_of(pg, &old), schema_of(pg, &fresh));
    assert!(schema_of(pg, &old).contains("user_device_user_id_idx"));

    // A database from a newer Herald is refused, and left alone.
    pg.sql(
        &old,
        "INSERT INTO herald_schema_migrations (version, description) VALUES (99, 'from the future')",
    );
    let error = TestServer::try_start_with(|config| {
        config.database_url = Some(database_url(&pg.url(&old)));
    })
    .err()
    .expect("a newer schema is refused");
    assert!(
        error.contains(&format!(
            "schema version 99 is newer than this build ({})",
            schema::latest_version()
        )),
        "{error}"
    );
    assert!(!error.contains(PASSWORD_IN_URL), "{error}");
}
