//! Reading users' presences straight from a real nats-server's stream
//! ([`herald::cluster::fetch::last_records`]): an answer longer than one
//! page is read whole, each key's last record only, as of one position.

use std::collections::HashMap;

use async_nats::jetstream::{self, stream};
use herald::cluster::fetch::{last_records, PAGE_BYTES};
use herald::cluster::record::Subjects;
use herald::ids::{SessionId, UserId};

use crate::rig::nats::NatsServer;
use crate::rig::run;

fn new_id() -> uuid::Uuid {
    uuid::Uuid::new_v4()
}

#[test]
fn an_answer_longer_than_a_page_is_read_whole() {
    run(async {
        let server = NatsServer::start_single().await;
        let client = async_nats::connect(server.url()).await.expect("connects");
        let js = jetstream::new(client.clone());
        let subjects = Subjects::new("paging");
        js.create_stream(stream::Config {
            name: subjects.stream("paging"),
            subjects: vec![subjects.all()],
            storage: stream::StorageType::Memory,
            allow_direct: true,
            max_messages_per_subject: 8,
            ..Default::default()
        })
        .await
        .expect("the stream is created");

        // 100 users with 3 sessions each; every key has an older version,
        // and its last one is 10 kB: the answer is 3 MB, about 3 pages.
        let big = vec![b'x'; 10_000];
        let users: Vec<UserId> = (0..100).map(|_| UserId(new_id())).collect();
        let mut last: HashMap<String, u64> = HashMap::new();
        for round in 0..2 {
            for user in &users {
                for s in 0..3u128 {
                    let session = SessionId(uuid::Uuid::from_u128(user.0.as_u128() ^ (s + 1)));
                    let subject = subjects.presence("n1", 1, *user, session);
                    let payload = if round == 0 {
                        b"old".to_vec()
                    } else {
                        big.clone()
                    };
                    let ack = js
                        .publish(subject.clone(), payload.into())
                        .await
                        .expect("published")
                        .await
                        .expect("stored");
                    last.insert(subject, ack.sequence);
                }
            }
        }
        let anchor = subjects.lease("n1");
        let head = js
            .publish(anchor.clone(), "live".into())
            .await
            .expect("published")
            .await
            .expect("stored")
            .sequence;
        assert!(
            last.len() * big.len() > 2 * PAGE_BYTES,
            "more than two pages"
        );

        let filters: Vec<String> = users.iter().map(|u| subjects.user_presences(*u)).collect();
        let fetched = last_records(&client, &subjects.stream("paging"), &filters, &anchor)
            .await
            .expect("the fetch succeeds");
        assert_eq!(fetched.as_of, head, "the state as of the last record");
        let got: HashMap<String, u64> = fetched
            .records
            .iter()
            .map(|r| (r.subject.clone(), r.seq))
            .collect();
        assert_eq!(fetched.records.len(), last.len(), "each key once");
        assert_eq!(got, last, "each key's last record");
        assert!(fetched.records.iter().all(|r| r.payload.len() == big.len()));

        // Only the anchor matches: no records, and still a position.
        let nobody = [subjects.user_presences(UserId(new_id()))];
        let fetched = last_records(&client, &subjects.stream("paging"), &nobody, &anchor)
            .await
            .expect("the fetch succeeds");
        assert!(fetched.records.is_empty());
        assert_eq!(fetched.as_of, head);
    });
}
