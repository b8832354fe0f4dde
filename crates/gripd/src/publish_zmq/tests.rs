use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use grip::tnetstring::{self, Tn};

use super::*;
use crate::hub::{Delivery, Hub, HubConfig, Mode};
use crate::metrics::Metrics;

fn hub() -> (Arc<Hub>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let hub = Hub::new(
        HubConfig {
            message_wait: Duration::from_secs(5),
            id_cache_ttl: Duration::from_secs(60),
            update_on_first_subscription: false,
            first_subscription_update: Duration::from_secs(1),
        },
        metrics.clone(),
    );
    (hub, metrics)
}

fn tn(v: serde_json::Value) -> Vec<u8> {
    tnetstring::encode(&Tn::from_json(&v))
}

fn stream_content(item: &PublishItem) -> String {
    String::from_utf8_lossy(&item.http_stream.as_ref().unwrap().content).into_owned()
}

#[test]
fn pull_accepts_three_encodings() {
    let v = serde_json::json!({"channel": "c", "http-stream": {"content": "hi"}});
    let mut j = b"J".to_vec();
    j.extend_from_slice(v.to_string().as_bytes());
    let mut t = b"T".to_vec();
    t.extend_from_slice(&tn(v.clone()));
    for frame in [j, t, tn(v)] {
        let item = decode_pull(&[frame]).unwrap();
        assert_eq!(item.channel, "c");
        assert_eq!(stream_content(&item), "hi");
    }
}

#[test]
fn pull_rejects_malformed() {
    let no_channel = tn(serde_json::json!({"http-stream": {"content": "x"}}));
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![b"T3:abc".to_vec()],
        vec![b"5:abc,".to_vec()],
        vec![b"J{not json".to_vec()],
        vec![b"J[1,2]".to_vec()],
        vec![b"3:abc,".to_vec()],
        vec![b"".to_vec()],
        vec![no_channel],
        vec![b"J{}".to_vec(), b"J{}".to_vec()],
        vec![],
    ];
    for frames in cases {
        assert!(decode_pull(&frames).is_err(), "{frames:?}");
    }
}

#[test]
fn sub_takes_channel_from_topic() {
    let payload = br#"J{"channel": "other", "http-stream": {"content": "x"}}"#.to_vec();
    let item = decode_sub(&[b"topic".to_vec(), payload.clone()]).unwrap();
    assert_eq!(item.channel, "topic");
    let bare = tn(serde_json::json!({"http-stream": {"content": "y"}}));
    assert_eq!(
        decode_sub(&[b"t".to_vec(), bare]).unwrap().channel,
        "t".to_string()
    );
    assert!(decode_sub(std::slice::from_ref(&payload)).is_err());
    assert!(decode_sub(&[b"".to_vec(), payload]).is_err());
    assert!(decode_sub(&[b"t".to_vec(), b"T3:abc".to_vec()]).is_err());
}

fn call(hub: &Hub, metrics: &Metrics, req: serde_json::Value) -> serde_json::Value {
    let endpoints = ZmqEndpoints {
        pull: Some("tcp://127.0.0.1:1".into()),
        sub: vec!["tcp://127.0.0.1:2".into()],
        sub_connect: false,
        command: Some("tcp://127.0.0.1:3".into()),
    };
    let reply = handle_command(&tn(req), hub, metrics, &endpoints).unwrap();
    tnetstring::parse_exact(&reply).unwrap().to_json()
}

#[tokio::test]
async fn command_methods() {
    let (hub, metrics) = hub();
    let (tx, mut rx) = Hub::queue(10);
    let _s = hub.subscribe("c", Mode::Stream, tx);

    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"id": "1", "method": "publish", "args": {"items": [
            {"channel": "c", "http-stream": {"content": "via-cmd"}}]}}),
    );
    assert_eq!(
        r,
        serde_json::json!({"id": "1", "success": true, "value": null})
    );
    match rx.try_recv().unwrap() {
        Delivery::Item(i) => assert_eq!(stream_content(&i), "via-cmd"),
        Delivery::Update => panic!("expected an item"),
    }
    assert_eq!(metrics.publish_zmq.get(), 1);

    // One bad item rejects the batch.
    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"id": "2", "method": "publish", "args": {"items": [
            {"channel": "c", "http-stream": {"content": "leak"}}, {"channel": "c"}]}}),
    );
    assert_eq!(r["success"], false);
    assert_eq!(r["condition"], "bad-request");
    assert!(rx.try_recv().is_err());

    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"method": "get-zmq-uris"}),
    );
    assert_eq!(
        r,
        serde_json::json!({"success": true, "value": {
            "command": "tcp://127.0.0.1:3",
            "publish-pull": "tcp://127.0.0.1:1",
            "publish-sub": "tcp://127.0.0.1:2"}})
    );

    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"id": "x", "method": "nope"}),
    );
    assert_eq!(r["condition"], "method-not-found");
    assert_eq!(r["id"], "x");

    let r = call(&hub, &metrics, serde_json::json!({"method": "recover"}));
    assert_eq!(r["success"], true);
    assert!(matches!(rx.try_recv().unwrap(), Delivery::Update));

    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"method": "refresh", "args": {"channel": "c"}}),
    );
    assert_eq!(r["success"], true);
    assert!(matches!(rx.try_recv().unwrap(), Delivery::Update));
    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"method": "refresh", "args": {"cid": "abc"}}),
    );
    assert_eq!(r["success"], true);
    let r = call(&hub, &metrics, serde_json::json!({"method": "refresh"}));
    assert_eq!(r["condition"], "bad-request");

    let r = call(
        &hub,
        &metrics,
        serde_json::json!({"method": "conncheck", "args": {"ids": ["a", "b"]}}),
    );
    assert_eq!(r, serde_json::json!({"success": true, "value": []}));

    for bad in [
        serde_json::json!([1, 2]),
        serde_json::json!({"args": {}}),
        serde_json::json!({"method": 5}),
        serde_json::json!({"method": "publish", "args": 3}),
        serde_json::json!({"method": "publish", "args": {"items": "x"}}),
    ] {
        let r = call(&hub, &metrics, bad.clone());
        assert_eq!(r["condition"], "bad-request", "{bad}");
    }
}

#[test]
fn command_not_a_tnetstring_is_not_answered() {
    let (hub, metrics) = hub();
    let e = ZmqEndpoints::default();
    assert!(handle_command(b"5:abc,", &hub, &metrics, &e).is_err());
    assert!(handle_command(b"", &hub, &metrics, &e).is_err());
    let ok = handle_command(
        &tnetstring::encode(&Tn::Dict(vec![(
            Bytes::from_static(b"method"),
            Tn::Bytes(Bytes::from_static(b"get-zmq-uris")),
        )])),
        &hub,
        &metrics,
        &e,
    );
    assert!(ok.is_ok());
}
