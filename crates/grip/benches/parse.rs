//! Criterion benches for the hot parsers: publish bodies, instruction headers, filters, events.

#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn publish(c: &mut Criterion) {
    // What django-eventstream's send_event posts.
    let one = br#"{"items": [{"id": "1", "prev-id": "0", "http-stream": {"content-filters": ["build-id"], "content": "event: message\nid: %I\ndata: {\"text\": \"hi 100%%\"}\n\n"}, "channel": "events-room"}]}"#;
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_publish_body/eventstream_item", |b| {
        b.iter(|| grip::parse_publish_body(black_box(one)).unwrap())
    });
    let items: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"channel": "c{i}", "http-stream": {{"content": "data: {i}\n\n"}}}}"#))
        .collect();
    let batch = format!(r#"{{"items": [{}]}}"#, items.join(","));
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse_publish_body/100_items", |b| {
        b.iter(|| grip::parse_publish_body(black_box(batch.as_bytes())).unwrap())
    });
    g.finish();
}

fn instruct(c: &mut Criterion) {
    let mut h = http::HeaderMap::new();
    let pairs = [
        ("content-type", "text/event-stream"),
        ("grip-hold", "stream"),
        ("grip-channel", "events-room; prev-id=41; filter=build-id; filter=skip-users, user-anonymous; filter=require-sub"),
        ("grip-keep-alive", "event: keep-alive\\ndata:\\n\\n; format=cstring; timeout=20"),
        ("grip-set-meta", "id_format=\"room:%(events-room)s\", user=\"anonymous\""),
        ("grip-link", "</events/room/?link=next&recover=true&es-meta=eyJhbGciOiJIUzI1NiJ9.e30.x>; rel=next"),
    ];
    for (k, v) in pairs {
        h.insert(k, v.parse().unwrap());
    }
    c.bench_function("instruct/from_headers/eventstream", |b| {
        b.iter(|| grip::Instruct::from_headers(black_box(&h)).unwrap())
    });
}

fn filters(c: &mut Criterion) {
    let sub_meta: BTreeMap<String, String> = [
        ("id_format".to_string(), "room:%(events-room)s".to_string()),
        ("user".to_string(), "anonymous".to_string()),
    ]
    .into_iter()
    .collect();
    let pub_meta = BTreeMap::new();
    let prev_ids: BTreeMap<String, String> = [("events-room".to_string(), "42".to_string())]
        .into_iter()
        .collect();
    let subscribed = |_: &str| true;
    let ctx = grip::FilterContext {
        sub_meta: &sub_meta,
        pub_meta: &pub_meta,
        prev_ids: &prev_ids,
        subscribed: &subscribed,
    };
    let filters = vec![
        "build-id".to_string(),
        "skip-users".to_string(),
        "require-sub".to_string(),
    ];
    let content =
        bytes::Bytes::from_static(b"event: message\nid: %I\ndata: {\"text\": \"hi 100%%\"}\n\n");
    c.bench_function("filter/build_id", |b| {
        b.iter(|| grip::apply_content_filters(&filters, &ctx, black_box(content.clone())).unwrap())
    });
}

fn events(c: &mut Criterion) {
    let body = grip::encode_events(&[
        grip::WsEvent::Text(bytes::Bytes::from_static(
            b"c:{\"channel\": \"ws-room\", \"type\": \"subscribe\"}",
        )),
        grip::WsEvent::Text(bytes::Bytes::from_static(b"m:welcome")),
    ]);
    c.bench_function("wsevent/parse_events", |b| {
        b.iter(|| grip::parse_events(black_box(&body)).unwrap())
    });
    let item =
        serde_json::json!({"channel": "room", "http-stream": {"content": "data: hello\n\n"}});
    let tn = grip::tnetstring::encode(&grip::Tn::from_json(&item));
    c.bench_function("tnetstring/parse", |b| {
        b.iter(|| grip::tnetstring::parse(black_box(&tn)).unwrap())
    });
}

criterion_group!(benches, publish, instruct, filters, events);
criterion_main!(benches);
