//! Vectors from real publishers (django-eventstream, gripcontrol, pushpin-publish) and the
//! reference checklist (§3.10).

use super::*;
use proptest::prelude::*;
use serde_json::json;

fn item(v: Value) -> Result<PublishItem, PublishError> {
    PublishItem::from_json(&v, true)
}

fn stream(content: &str, filters: Option<&[&str]>) -> Option<HttpStreamFormat> {
    Some(HttpStreamFormat {
        action: Action::Send,
        content: Bytes::copy_from_slice(content.as_bytes()),
        content_filters: filters.map(|f| f.iter().map(|s| (*s).to_owned()).collect()),
    })
}

fn stream_action(action: Action) -> Option<HttpStreamFormat> {
    Some(HttpStreamFormat {
        action,
        content: Bytes::new(),
        content_filters: None,
    })
}

fn response(code: u16, headers: &[(&str, &str)], body: &str) -> Option<HttpResponseFormat> {
    Some(HttpResponseFormat {
        action: Action::Send,
        code,
        reason: None,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: ResponseBody::Body(Bytes::copy_from_slice(body.as_bytes())),
        content_filters: None,
    })
}

fn ws(kind: WsMessageType, content: &[u8]) -> Option<WsMessageFormat> {
    Some(WsMessageFormat {
        action: Action::Send,
        kind,
        content: Bytes::copy_from_slice(content),
        content_filters: None,
        close_code: None,
        close_reason: None,
    })
}

fn ws_action(action: Action) -> Option<WsMessageFormat> {
    Some(WsMessageFormat {
        action,
        ..ws(WsMessageType::Text, b"").unwrap()
    })
}

fn base(channel: &str) -> PublishItem {
    PublishItem {
        channel: channel.to_owned(),
        ..PublishItem::default()
    }
}

fn check(input: Value, expected: PublishItem) {
    assert_eq!(item(input.clone()).unwrap(), expected, "input {input}");
    // The tnetstring form of the same item parses the same (no *-bin fields in these vectors).
    assert_eq!(
        PublishItem::from_tnetstring(&Tn::from_json(&input), true).unwrap(),
        expected,
        "tnetstring of {input}"
    );
}

fn check_err(input: Value, detail: &str) {
    assert_eq!(
        item(input.clone()),
        Err(PublishError::Invalid(detail.to_owned())),
        "input {input}"
    );
}

#[test]
fn django_eventstream_send_event() {
    check(
        json!({"id": "1", "prev-id": "0",
               "http-stream": {"content-filters": ["build-id"],
                               "content": "event: message\nid: %I\ndata: {\"text\": \"hi 100%%\"}\n\n"},
               "channel": "events-wire-eef5ba"}),
        PublishItem {
            id: Some("1".into()),
            prev_id: Some("0".into()),
            http_stream: stream(
                "event: message\nid: %I\ndata: {\"text\": \"hi 100%%\"}\n\n",
                Some(&["build-id"]),
            ),
            ..base("events-wire-eef5ba")
        },
    );
}

#[test]
fn django_eventstream_kick() {
    let body = json!({"items": [
        {"id": "kick-1", "meta": {"require_sub": "events-x"}, "channel": "user-anonymous",
         "http-stream": {"content": "event: stream-error\nid: error\ndata: {}\n\n"}},
        {"id": "kick-2", "prev-id": "kick-1", "meta": {"require_sub": "events-x"}, "channel": "user-anonymous",
         "http-stream": {"action": "close"}}]});
    let items = parse_publish_body(body.to_string().as_bytes()).unwrap();
    let meta: BTreeMap<_, _> = [("require_sub".to_owned(), "events-x".to_owned())].into();
    assert_eq!(
        items,
        vec![
            PublishItem {
                id: Some("kick-1".into()),
                meta: meta.clone(),
                http_stream: stream("event: stream-error\nid: error\ndata: {}\n\n", None),
                ..base("user-anonymous")
            },
            PublishItem {
                id: Some("kick-2".into()),
                prev_id: Some("kick-1".into()),
                meta,
                http_stream: stream_action(Action::Close),
                ..base("user-anonymous")
            },
        ]
    );
}

#[test]
fn gripcontrol_formats() {
    check(
        json!({"http-response": {"code": 200, "headers": {"X-Pub": "1"}, "body": "done\n"}, "channel": "lp"}),
        PublishItem {
            http_response: response(200, &[("X-Pub", "1")], "done\n"),
            ..base("lp")
        },
    );
    check(
        json!({"http-stream": {"content": "chunk-1\n"}, "channel": "st"}),
        PublishItem {
            http_stream: stream("chunk-1\n", None),
            ..base("st")
        },
    );
    check(
        json!({"http-stream": {"action": "close"}, "channel": "st"}),
        PublishItem {
            http_stream: stream_action(Action::Close),
            ..base("st")
        },
    );
    check(
        json!({"ws-message": {"content": "pushed"}, "channel": "ws"}),
        PublishItem {
            ws_message: ws(WsMessageType::Text, b"pushed"),
            ..base("ws")
        },
    );
}

#[test]
fn pushpin_publish_variants() {
    let all = |resp: Option<HttpResponseFormat>, eol: &str, plain: &str| PublishItem {
        http_response: resp,
        http_stream: stream(eol, None),
        ws_message: ws(WsMessageType::Text, plain.as_bytes()),
        ..base("cli-ch")
    };
    check(
        json!({"channel": "cli-ch", "formats": {
            "http-response": {"body": "hello\n", "code": 200},
            "http-stream": {"content": "hello\n"},
            "ws-message": {"content": "hello"}}}),
        all(response(200, &[], "hello\n"), "hello\n", "hello"),
    );
    check(
        json!({"channel": "cli-ch", "formats": {
            "http-response": {"body": "hello\n", "code": 202, "headers": [["X-A", "b"]]},
            "http-stream": {"content": "hello\n"},
            "ws-message": {"content": "hello"}}, "id": "7", "prev-id": "6"}),
        PublishItem {
            id: Some("7".into()),
            prev_id: Some("6".into()),
            ..all(
                response(202, &[("X-A", "b")], "hello\n"),
                "hello\n",
                "hello",
            )
        },
    );
    check(
        json!({"channel": "cli-ch", "formats": {"http-stream": {"action": "close"}, "ws-message": {"action": "close"}}}),
        PublishItem {
            http_stream: stream_action(Action::Close),
            ws_message: ws_action(Action::Close),
            ..base("cli-ch")
        },
    );
    let hint = HttpResponseFormat {
        action: Action::Hint,
        code: 200,
        reason: None,
        headers: vec![],
        body: ResponseBody::Body(Bytes::new()),
        content_filters: None,
    };
    check(
        json!({"channel": "cli-ch", "formats": {"http-response": {"action": "hint"},
               "http-stream": {"action": "hint"}, "ws-message": {"action": "hint"}}}),
        PublishItem {
            http_response: Some(hint),
            http_stream: stream_action(Action::Hint),
            ws_message: ws_action(Action::Hint),
            ..base("cli-ch")
        },
    );
    check(
        json!({"channel": "cli-ch", "formats": {"http-stream": {"content": "hello"}},
               "meta": {"k": "v", "sender": "me"}, "no-seq": true, "size": 5}),
        PublishItem {
            http_stream: stream("hello", None),
            meta: [
                ("k".to_owned(), "v".to_owned()),
                ("sender".to_owned(), "me".to_owned()),
            ]
            .into(),
            no_seq: true,
            ..base("cli-ch")
        },
    );
}

#[test]
fn binary_and_special_fields() {
    let i = item(
        json!({"channel": "c", "http-response": {"body-bin": "AAE=", "code": 404, "reason": "Nope"},
                        "http-stream": {"content-bin": "AGhp"},
                        "ws-message": {"content-bin": "AAE="}}),
    )
    .unwrap();
    let r = i.http_response.unwrap();
    assert_eq!((r.code, r.reason.as_deref()), (404, Some("Nope")));
    assert_eq!(r.body, ResponseBody::Body(Bytes::from_static(&[0, 1])));
    assert_eq!(i.http_stream.unwrap().content, Bytes::from_static(b"\0hi"));
    assert_eq!(i.ws_message, ws(WsMessageType::Binary, &[0, 1]));

    let i = item(json!({"channel": "c", "http-response": {"body-patch": [{"op": "replace", "path": "/a", "value": 2}]}})).unwrap();
    assert_eq!(
        i.http_response.unwrap().body,
        ResponseBody::Patch(json!([{"op": "replace", "path": "/a", "value": 2}]))
    );

    let i = item(json!({"channel": "c", "ws-message": {"type": "ping"}})).unwrap();
    assert_eq!(i.ws_message, ws(WsMessageType::Ping, b""));
    let i =
        item(json!({"channel": "c", "ws-message": {"type": "binary", "content": "x"}})).unwrap();
    assert_eq!(i.ws_message, ws(WsMessageType::Binary, b"x"));
    let i = item(
        json!({"channel": "c", "ws-message": {"action": "close", "code": 4001, "reason": "bye"}}),
    )
    .unwrap();
    let w = i.ws_message.unwrap();
    assert_eq!(
        (w.action, w.close_code, w.close_reason.as_deref()),
        (Action::Close, Some(4001), Some("bye"))
    );
    let i = item(json!({"channel": "c", "ws-message": {"action": "refresh"}})).unwrap();
    assert_eq!(i.ws_message.unwrap().action, Action::Refresh);

    // `formats` wins over top-level keys; channel optional for SUB.
    let i = PublishItem::from_json(
        &json!({"formats": {"http-stream": {"content": "a"}}, "ws-message": {"content": "b"}}),
        false,
    )
    .unwrap();
    assert_eq!((i.channel.as_str(), i.ws_message.is_none()), ("", true));

    // tnetstring: *-bin is raw bytes, not base64.
    let tn = Tn::Dict(vec![
        (
            Bytes::from_static(b"channel"),
            Tn::Bytes(Bytes::from_static(b"c")),
        ),
        (
            Bytes::from_static(b"ws-message"),
            Tn::Dict(vec![(
                Bytes::from_static(b"content-bin"),
                Tn::Bytes(Bytes::from_static(b"\xff\x00")),
            )]),
        ),
    ]);
    let i = PublishItem::from_tnetstring(&tn, true).unwrap();
    assert_eq!(i.ws_message, ws(WsMessageType::Binary, b"\xff\x00"));
}

#[test]
fn validation_errors() {
    let cases: &[(Value, &str)] = &[
        (json!(1), "publish item object is not an object"),
        (
            json!({"http-stream": {"content": "x"}}),
            "publish item object does not contain 'channel'",
        ),
        (
            json!({"channel": 1, "http-stream": {"content": "x"}}),
            "publish item object contains 'channel' with wrong type",
        ),
        (json!({"channel": "c"}), "no formats specified"),
        (
            json!({"channel": "c", "formats": {}}),
            "no formats specified",
        ),
        (
            json!({"channel": "c", "formats": 1}),
            "publish item object contains 'formats' with wrong type",
        ),
        (
            json!({"channel": "c", "id": 1, "http-stream": {"content": "x"}}),
            "publish item object contains 'id' with wrong type",
        ),
        (
            json!({"channel": "c", "meta": {"a": 1}, "http-stream": {"content": "x"}}),
            "'meta' contains 'a' with wrong type",
        ),
        (
            json!({"channel": "c", "meta": [], "http-stream": {"content": "x"}}),
            "publish item object contains 'meta' with wrong type",
        ),
        (
            json!({"channel": "c", "no-seq": "yes", "http-stream": {"content": "x"}}),
            "publish item object contains 'no-seq' with wrong type",
        ),
        (
            json!({"channel": "c", "size": -1, "http-stream": {"content": "x"}}),
            "publish item object contains 'size' with invalid value",
        ),
        (
            json!({"channel": "c", "http-stream": {"action": "explode"}}),
            "'http-stream' contains unknown action 'explode'",
        ),
        (
            json!({"channel": "c", "http-stream": {}}),
            "'http-stream' does not contain 'content' or 'content-bin'",
        ),
        (
            json!({"channel": "c", "http-stream": 1}),
            "'http-stream' is not an object",
        ),
        (
            json!({"channel": "c", "http-stream": {"content": 1}}),
            "'http-stream' contains 'content' with wrong type",
        ),
        (
            json!({"channel": "c", "http-stream": {"content": "x", "content-filters": "build-id"}}),
            "'http-stream' contains 'content-filters' with wrong type",
        ),
        (
            json!({"channel": "c", "http-stream": {"content": "x", "content-filters": [1]}}),
            "content-filters contains element with wrong type",
        ),
        (
            json!({"channel": "c", "http-response": {}}),
            "'http-response' does not contain 'body', 'body-bin', or 'body-patch'",
        ),
        (
            json!({"channel": "c", "http-response": {"body": "x", "code": 1000}}),
            "'http-response' contains 'code' with invalid value",
        ),
        (
            json!({"channel": "c", "http-response": {"body": "x", "code": "200"}}),
            "'http-response' contains 'code' with wrong type",
        ),
        (
            json!({"channel": "c", "http-response": {"body": "x", "headers": [["a", 1]]}}),
            "header contains value element with wrong type",
        ),
        (
            json!({"channel": "c", "http-response": {"body": "x", "headers": ["a"]}}),
            "headers contains element with wrong type",
        ),
        (
            json!({"channel": "c", "http-response": {"body": "x", "headers": {"a": 1}}}),
            "headers contains 'a' with wrong type",
        ),
        (
            json!({"channel": "c", "http-response": {"body-patch": {}}}),
            "'http-response' contains 'body-patch' with wrong type",
        ),
        (
            json!({"channel": "c", "ws-message": {}}),
            "'ws-message' does not contain 'content' or 'content-bin'",
        ),
        (
            json!({"channel": "c", "ws-message": {"type": "blob", "content": "x"}}),
            "'ws-message' contains 'type' with unknown value",
        ),
        (
            json!({"channel": "c", "ws-message": {"content-bin": 1}}),
            "'ws-message' contains 'content-bin' with wrong type",
        ),
        (
            json!({"channel": "c", "ws-message": {"action": "close", "code": -1}}),
            "'ws-message' contains 'code' with invalid value",
        ),
    ];
    for (input, detail) in cases {
        check_err(input.clone(), detail);
    }
}

#[test]
fn http_body_errors() {
    let cases: &[(&str, &str)] = &[
        ("nope", "Body is not valid JSON."),
        ("[1, 2]", "Invalid format."),
        ("{\"foo\":1}", "Invalid format: object does not contain 'items'"),
        ("{\"items\":\"nope\"}", "Invalid format: object contains 'items' with wrong type"),
        ("{\"items\":[{\"channel\":\"c\"}]}", "Invalid format: no formats specified"),
        (
            "{\"items\":[{\"channel\":\"c\",\"http-stream\":{\"content\":\"x\"}},{\"channel\":\"d\"}]}",
            "Invalid format: no formats specified",
        ),
        ("{\"items\":[{\"channel\":\"c\",\"http-stream\":{\"action\":\"x\"}}]}", "Invalid format: 'http-stream' contains unknown action 'x'"),
    ];
    for (body, text) in cases {
        assert_eq!(
            parse_publish_body(body.as_bytes()).unwrap_err().to_string(),
            *text,
            "body {body}"
        );
    }
    assert_eq!(parse_publish_body(b"{\"items\":[]}").unwrap(), vec![]);
}

#[test]
fn json_patches() {
    let cases: &[(Value, Value, Result<Value, PatchError>)] = &[
        (
            json!({"a": 1}),
            json!([{"op": "replace", "path": "/a", "value": 2}]),
            Ok(json!({"a": 2})),
        ),
        (
            json!({"a": 1}),
            json!([{"op": "add", "path": "/b", "value": [1]}]),
            Ok(json!({"a": 1, "b": [1]})),
        ),
        (
            json!([1, 3]),
            json!([{"op": "add", "path": "/1", "value": 2}]),
            Ok(json!([1, 2, 3])),
        ),
        (
            json!([1]),
            json!([{"op": "add", "path": "/-", "value": 2}]),
            Ok(json!([1, 2])),
        ),
        (
            json!({"a": 1, "b": 2}),
            json!([{"op": "remove", "path": "/a"}]),
            Ok(json!({"b": 2})),
        ),
        (
            json!({"a": {"x": 1}}),
            json!([{"op": "move", "from": "/a/x", "path": "/y"}]),
            Ok(json!({"a": {}, "y": 1})),
        ),
        (
            json!({"a": [1]}),
            json!([{"op": "copy", "from": "/a", "path": "/b"}]),
            Ok(json!({"a": [1], "b": [1]})),
        ),
        (
            json!({"a/b": 1, "m~n": 2}),
            json!([{"op": "test", "path": "/a~1b", "value": 1}, {"op": "test", "path": "/m~0n", "value": 2}]),
            Ok(json!({"a/b": 1, "m~n": 2})),
        ),
        (
            json!({"a": 1}),
            json!([{"op": "add", "path": "", "value": 5}]),
            Ok(json!(5)),
        ),
        (
            json!({"a": 1}),
            json!([{"op": "test", "path": "/a", "value": 2}]),
            Err(PatchError::TestFailed(0)),
        ),
        (
            json!({"a": 1}),
            json!([{"op": "replace", "path": "/b", "value": 2}]),
            Err(PatchError::PathNotFound(0)),
        ),
        (
            json!({"a": 1}),
            json!([{"op": "remove", "path": "/a"}, {"op": "remove", "path": "/a"}]),
            Err(PatchError::PathNotFound(1)),
        ),
        (
            json!([1]),
            json!([{"op": "add", "path": "/5", "value": 2}]),
            Err(PatchError::PathNotFound(0)),
        ),
        (
            json!([1]),
            json!([{"op": "remove", "path": "/01"}]),
            Err(PatchError::PathNotFound(0)),
        ),
        (
            json!({"a": {}}),
            json!([{"op": "move", "from": "/a", "path": "/a/b"}]),
            Err(PatchError::InvalidOperation(0)),
        ),
        (
            json!({}),
            json!([{"op": "frob", "path": "/a"}]),
            Err(PatchError::InvalidOperation(0)),
        ),
        (
            json!({}),
            json!([{"op": "add", "path": "a", "value": 1}]),
            Err(PatchError::InvalidOperation(0)),
        ),
        (
            json!({}),
            json!([{"op": "add", "path": "/a"}]),
            Err(PatchError::InvalidOperation(0)),
        ),
        (json!({}), json!({"op": "add"}), Err(PatchError::NotAList)),
    ];
    for (doc, patch, expected) in cases {
        assert_eq!(&json_patch(doc, patch), expected, "doc {doc} patch {patch}");
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        "[a-z-]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("channel".to_owned()),
                    Just("formats".to_owned()),
                    Just("http-stream".to_owned()),
                    Just("http-response".to_owned()),
                    Just("ws-message".to_owned()),
                    Just("content".to_owned()),
                    Just("action".to_owned()),
                    Just("meta".to_owned()),
                    Just("op".to_owned()),
                    Just("path".to_owned()),
                    Just("value".to_owned()),
                    Just("body-patch".to_owned()),
                    "[a-z]{1,4}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn never_panics_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        let _ = parse_publish_body(&bytes);
    }

    #[test]
    fn never_panics_structured(v in arb_json(), patch in arb_json()) {
        let _ = PublishItem::from_json(&v, true);
        let _ = PublishItem::from_tnetstring(&Tn::from_json(&v), false);
        let _ = json_patch(&v, &patch);
        let _ = json_patch(&v, &Value::Array(vec![patch]));
    }
}
