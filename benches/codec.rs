//! Codec benches: decoding client envelopes and encoding status events, in
//! JSON and protobuf. The event benches report bytes per frame (printed once
//! and as criterion throughput), so time and size can be compared.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::ids::{SessionId, UserId};
use herald::protocol::{Format, Frame, Presence, Request, RequestBody, StatusPresenceEvent};

fn presence(status: &str) -> Presence {
    Presence {
        user_id: UserId(uuid::Uuid::from_u128(
            0x4c2a_e592_b2a7_4b5f_9d1b_0a1b_2c3d_4e5f,
        )),
        session_id: SessionId(uuid::Uuid::from_u128(
            0xa3d1_b2c0_1111_4222_8333_0a1b_2c3d_4e5f,
        )),
        username: Arc::from("player12345"),
        status: Arc::from(status),
    }
}

/// A typical update event: a JSON status blob with a match id, old and new.
fn update_event() -> StatusPresenceEvent {
    StatusPresenceEvent {
        joins: Some(presence(
            r#"{"state":"in_match","match_id":"6f1d2c3b-4a59-4e7f-8a9b-0c1d2e3f4a5b.nakama1"}"#,
        )),
        leaves: Some(presence(r#"{"state":"in_lobby"}"#)),
    }
}

fn requests() -> Vec<(&'static str, Request)> {
    let ids: Vec<String> = (0..100u128)
        .map(|i| uuid::Uuid::from_u128(i * 7919 + 1).to_string())
        .collect();
    vec![
        (
            "status_update",
            Request {
                cid: "42".into(),
                body: RequestBody::StatusUpdate {
                    status: Some("in lobby".into()),
                },
            },
        ),
        (
            "status_follow_100",
            Request {
                cid: "43".into(),
                body: RequestBody::StatusFollow {
                    user_ids: ids,
                    usernames: Vec::new(),
                },
            },
        ),
        (
            "ping",
            Request {
                cid: "44".into(),
                body: RequestBody::Ping,
            },
        ),
    ]
}

fn encode_request(format: Format, request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    match format {
        Format::Json => herald::protocol::json::encode_request(request, &mut out),
        Format::Protobuf => herald::protocol::protobuf::encode_request(request, &mut out),
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, request) in requests() {
        for format in Format::ALL {
            let wire = encode_request(format, &request);
            let mut scratch = wire.clone();
            group.throughput(Throughput::Bytes(wire.len() as u64));
            group.bench_function(
                BenchmarkId::new(format!("{format:?}").to_lowercase(), name),
                |b| {
                    b.iter(|| {
                        scratch.copy_from_slice(&wire);
                        format.decode(&mut scratch)
                    })
                },
            );
        }
    }
    group.finish();
}

fn encode_event(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode/event");
    let event = update_event();
    for format in Format::ALL {
        let bytes = Frame::event(format, &event).len();
        eprintln!("encode/event/{format:?}: {bytes} bytes per frame (header included)");
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(format!("{format:?}").to_lowercase(), |b| {
            b.iter(|| Frame::event(format, &event))
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode_event);
criterion_main!(benches);
