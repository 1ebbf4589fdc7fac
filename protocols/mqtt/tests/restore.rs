//! Persistent sessions brought back at startup from the state store of a
//! journaled broker (`ProtocolAdapter::recovered`): a valid record, an
//! expired one, and corrupt ones, which must fall back to the queue's
//! bindings without a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::Path;
use std::sync::Arc;
use switchyard_core::journal::{Journal, JournalConfig};
use switchyard_core::spi::ProtocolAdapter;
use switchyard_core::{Broker, CoreConfig, DeclareQueue, QueueOptions};
use switchyard_model::{Headers, Str, now_millis};
use switchyard_mqtt::codec::{QoS, SubOptions};
use switchyard_mqtt::persist::{
    self, Dir, QOS2_SCOPE, Qos2Entry, SESSION_SCOPE, SessionRecord, StoredSub,
};
use switchyard_mqtt::session::SessionState;
use switchyard_mqtt::{MqttAdapter, SCOPE, SESSION_QUEUE_PREFIX};

fn open(dir: &Path) -> Broker {
    let b = Broker::with_journal(
        CoreConfig::new(),
        Journal::open(JournalConfig::new(dir)).unwrap(),
    );
    b.recover().unwrap();
    b
}

/// A first run: the session queue of `client` bound to `bindings`, and
/// the given state entries.
async fn first_run(dir: &Path, client: &str, bindings: &[&str], state: &[(&str, String, Vec<u8>)]) {
    let b = open(dir);
    let queue = format!("{SESSION_QUEUE_PREFIX}{client}");
    b.declare_queue(
        DeclareQueue {
            name: Some(Str::from(queue.as_str())),
            options: QueueOptions {
                durable: true,
                ..QueueOptions::default()
            },
            passive: false,
        },
        None,
    )
    .unwrap();
    for k in bindings {
        b.bind_queue(&queue, "amq.topic", k, &Headers::new(), None)
            .unwrap();
    }
    for (scope, key, value) in state {
        b.save_state(scope, key, value);
    }
    b.close_journal().await.unwrap();
}

/// Restarts on `dir` and runs the MQTT adapter's startup restore.
fn restart(dir: &Path) -> Broker {
    let b = open(dir);
    MqttAdapter::default().recovered(&b);
    b
}

fn parked(b: &Broker, client: &str) -> Option<Arc<SessionState>> {
    let claim = b.clients().claim(SCOPE, client);
    claim
        .take_parked()
        .and_then(|p| p.downcast::<SessionState>().ok())
}

#[tokio::test]
async fn a_saved_session_comes_back_with_its_options_and_qos2_ids() {
    let dir = tempfile::tempdir().unwrap();
    let rec = SessionRecord {
        expiry: 3600,
        left_at: now_millis(),
        subs: vec![StoredSub {
            filter: "a/+".into(),
            options: SubOptions {
                qos: QoS::AtLeastOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: 2,
            },
            id: Some(42),
        }],
        reuse: vec![],
        will: None,
    };
    first_run(
        dir.path(),
        "c1",
        // A binding the record does not name (its SUBSCRIBE's record was
        // lost): kept with default options.
        &["a.*", "x.y"],
        &[
            (
                SESSION_SCOPE,
                "c1".into(),
                persist::encode_session(&rec).to_vec(),
            ),
            (
                QOS2_SCOPE,
                persist::qos2_key("c1", Dir::In, 7),
                persist::encode_qos2(Qos2Entry::Incoming),
            ),
            (
                QOS2_SCOPE,
                persist::qos2_key("c1", Dir::Out, 9),
                persist::encode_qos2(Qos2Entry::AwaitPubComp),
            ),
        ],
    )
    .await;
    let b = restart(dir.path());
    let state = parked(&b, "c1").expect("parked");
    let p = state.inner.lock();
    assert_eq!(p.expiry, 3600);
    let a = p.subs.iter().find(|(f, _)| &**f == "a/+").expect("a/+");
    assert_eq!(a.1.options, rec.subs[0].options);
    assert_eq!(a.1.id, Some(42));
    let x = p.subs.iter().find(|(f, _)| &**f == "x/y").expect("x/y");
    assert_eq!(x.1.options.qos, QoS::ExactlyOnce);
    assert_eq!(p.qos2, vec![7]);
    assert_eq!(p.pubrel, vec![9]);
}

#[tokio::test]
async fn a_corrupt_record_falls_back_to_the_bindings() {
    let dir = tempfile::tempdir().unwrap();
    let mut truncated = persist::encode_session(&SessionRecord {
        expiry: 10,
        left_at: 1,
        subs: vec![StoredSub {
            filter: "t".into(),
            options: SubOptions::default(),
            id: Some(1),
        }],
        reuse: vec![],
        will: None,
    })
    .to_vec();
    truncated.pop();
    first_run(
        dir.path(),
        "c2",
        &["t"],
        &[
            (SESSION_SCOPE, "c2".into(), truncated),
            (QOS2_SCOPE, "c2\u{0}i7".into(), vec![1, 99]),
            (QOS2_SCOPE, "not a key".into(), vec![1, 1]),
        ],
    )
    .await;
    let b = restart(dir.path());
    let state = parked(&b, "c2").expect("parked despite the corrupt record");
    let p = state.inner.lock();
    assert_eq!(p.subs.len(), 1);
    assert_eq!(&*p.subs[0].0, "t");
    assert_eq!(p.subs[0].1.options.qos, QoS::ExactlyOnce, "default options");
    assert!(p.qos2.is_empty());
    assert!(
        b.state_keys(QOS2_SCOPE).is_empty(),
        "unreadable QoS 2 entries removed"
    );
}

#[tokio::test]
async fn an_unknown_version_falls_back_too() {
    let dir = tempfile::tempdir().unwrap();
    first_run(
        dir.path(),
        "c3",
        &["u"],
        &[(SESSION_SCOPE, "c3".into(), vec![200, 1, 2, 3])],
    )
    .await;
    let b = restart(dir.path());
    let state = parked(&b, "c3").expect("parked");
    assert_eq!(state.inner.lock().subs.len(), 1);
}

#[tokio::test]
async fn a_session_that_expired_while_down_is_deleted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let rec = SessionRecord {
        expiry: 2,
        left_at: now_millis() - 10_000,
        subs: vec![],
        reuse: vec![],
        will: None,
    };
    first_run(
        dir.path(),
        "c4",
        &["e"],
        &[
            (
                SESSION_SCOPE,
                "c4".into(),
                persist::encode_session(&rec).to_vec(),
            ),
            (
                QOS2_SCOPE,
                persist::qos2_key("c4", Dir::In, 1),
                persist::encode_qos2(Qos2Entry::Incoming),
            ),
        ],
    )
    .await;
    let b = restart(dir.path());
    assert!(parked(&b, "c4").is_none());
    assert!(!b.queue_exists(&format!("{SESSION_QUEUE_PREFIX}c4")));
    assert!(b.state_keys(SESSION_SCOPE).is_empty());
    assert!(b.state_keys(QOS2_SCOPE).is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_expiry_timer_is_rearmed_for_the_time_left() {
    let dir = tempfile::tempdir().unwrap();
    let rec = SessionRecord {
        expiry: 60,
        left_at: now_millis() - 30_000,
        subs: vec![],
        reuse: vec![],
        will: None,
    };
    first_run(
        dir.path(),
        "c5",
        &["e"],
        &[(
            SESSION_SCOPE,
            "c5".into(),
            persist::encode_session(&rec).to_vec(),
        )],
    )
    .await;
    let b = restart(dir.path());
    let queue = format!("{SESSION_QUEUE_PREFIX}c5");
    assert!(b.queue_exists(&queue));
    tokio::time::sleep(std::time::Duration::from_secs(25)).await;
    assert!(b.queue_exists(&queue), "30 s of 60 were left");
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    assert!(!b.queue_exists(&queue), "expired on time");
    assert!(b.state_keys(SESSION_SCOPE).is_empty());
}
