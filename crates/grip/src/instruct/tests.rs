//! Vectors from Pushpin's instructtest, the reference checklist (§1.8) and real origin captures.

use super::*;
use http::{HeaderName, HeaderValue};
use proptest::prelude::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn parse(pairs: &[(&str, &str)]) -> Result<Instruct, InstructError> {
    Instruct::from_headers(&headers(pairs))
}

fn ch(name: &str, prev_id: Option<&str>, filters: &[&str]) -> ChannelSpec {
    ChannelSpec {
        name: name.to_owned(),
        prev_id: prev_id.map(str::to_owned),
        filters: filters.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// Checks one header set against an expected error, or a predicate on the result.
fn check_err(pairs: &[(&str, &str)], expected: InstructError) {
    assert_eq!(parse(pairs), Err(expected), "headers {pairs:?}");
}

fn check(pairs: &[(&str, &str)], f: impl FnOnce(Instruct) -> Instruct) {
    let expected = f(Instruct::default());
    assert_eq!(parse(pairs).unwrap(), expected, "headers {pairs:?}");
}

fn ka(data: &[u8], timeout_secs: u64, mode: KeepAliveMode) -> Option<KeepAlive> {
    Some(KeepAlive {
        data: Bytes::copy_from_slice(data),
        timeout_secs,
        mode,
    })
}

#[test]
fn detection() {
    assert!(is_grip_response(&headers(&[("Grip-Set-Meta", "a=b")])));
    assert!(is_grip_response(&headers(&[("GRIP-STATUS", "200")])));
    assert!(is_grip_response(&headers(&[(
        "Content-Type",
        "application/grip-instruct; charset=utf-8"
    )])));
    assert!(!is_grip_response(&headers(&[
        ("Content-Type", "text/plain"),
        ("X-Grip", "1")
    ])));
    assert!(is_instruct_body(&headers(&[(
        "Content-Type",
        "Application/Grip-Instruct"
    )])));
    let mut h = headers(&[("Grip-Hold", "stream"), ("Grip-Channel", "a"), ("X-A", "b")]);
    strip_grip_headers(&mut h);
    assert_eq!(h.len(), 1);
    assert!(h.contains_key("x-a"));
}

#[test]
fn no_hold() {
    check(
        &[("Content-Type", "text/plain"), ("Grip-Channel", "test")],
        |mut i| {
            i.channels = vec![ch("test", None, &[])];
            i
        },
    );
    check(&[("Grip-Status", "404")], |mut i| {
        i.status = Some((404, None));
        i
    });
    check(&[("Grip-Status", "404 Nothing To See Here")], |mut i| {
        i.status = Some((404, Some("Nothing To See Here".into())));
        i
    });
    check(&[("Grip-Status", "304")], |mut i| {
        i.status = Some((304, None));
        i
    });
    check_err(&[("Grip-Status", "1000")], InstructError::InvalidStatus);
    check_err(&[("Grip-Status", "-1")], InstructError::InvalidStatus);
    check_err(&[("Grip-Status", "abc OK")], InstructError::InvalidStatus);
    assert_eq!(reason_phrase(404), "Not Found");
    assert_eq!(reason_phrase(299), "Undefined Reason");
}

#[test]
fn hold_modes() {
    check(&[("Grip-Hold", "response")], |mut i| {
        i.hold = Some(HoldMode::Response);
        i
    });
    check(&[("Grip-Hold", "stream")], |mut i| {
        i.hold = Some(HoldMode::Stream);
        i
    });
    check_err(&[("Grip-Hold", "Stream")], InstructError::InvalidHold);
    check_err(&[("Grip-Hold", "")], InstructError::InvalidHold);
}

#[test]
fn channels() {
    // instructtest responseHold: repeated headers and comma lists.
    check(
        &[
            ("Grip-Hold", "response"),
            ("Grip-Channel", "apple"),
            ("Grip-Channel", "banana, cherry"),
            ("Grip-Timeout", "120"),
            ("Grip-Set-Meta", "foo=bar, bar=baz"),
        ],
        |mut i| {
            i.hold = Some(HoldMode::Response);
            i.channels = vec![
                ch("apple", None, &[]),
                ch("banana", None, &[]),
                ch("cherry", None, &[]),
            ];
            i.timeout_secs = 120;
            i.meta = vec![("foo".into(), "bar".into()), ("bar".into(), "baz".into())];
            i
        },
    );
    // instructtest responseHoldChannelParams.
    check(
        &[
            ("Grip-Channel", "apple; prev-id=item1; filter=f1"),
            (
                "Grip-Channel",
                "banana; filter=f2, cherry; filter=f1; filter=f2",
            ),
        ],
        |mut i| {
            i.channels = vec![
                ch("apple", Some("item1"), &["f1"]),
                ch("banana", None, &["f2"]),
                ch("cherry", None, &["f1", "f2"]),
            ];
            i
        },
    );
    // django-eventstream, verbatim.
    check(
        &[(
            "Grip-Channel",
            "events-x; prev-id=0; filter=build-id; filter=skip-users, user-anonymous; filter=require-sub",
        )],
        |mut i| {
            i.channels = vec![
                ch("events-x", Some("0"), &["build-id", "skip-users"]),
                ch("user-anonymous", None, &["require-sub"]),
            ];
            i
        },
    );
    check(&[("Grip-Channel", "a; prev-id=\"x, y\"")], |mut i| {
        i.channels = vec![ch("a", Some("x, y"), &[])];
        i
    });
    // Broken quoting: the value is skipped, like Pushpin.
    check(
        &[("Grip-Channel", "a; prev-id=\"x"), ("Grip-Channel", "b")],
        |mut i| {
            i.channels = vec![ch("b", None, &[])];
            i
        },
    );
    check_err(&[("Grip-Channel", "")], InstructError::InvalidChannel);
    check_err(&[("Grip-Channel", "a, , b")], InstructError::InvalidChannel);
    check_err(
        &[("Grip-Channel", "; prev-id=1")],
        InstructError::InvalidChannel,
    );
}

#[test]
fn timeouts() {
    check(&[("Grip-Timeout", "7")], |mut i| {
        i.timeout_secs = 7;
        i
    });
    check(&[("Grip-Timeout", "1")], |mut i| {
        i.timeout_secs = 5;
        i
    });
    check(&[("Grip-Timeout", "0")], |mut i| {
        i.timeout_secs = 5;
        i
    });
    check(&[], |i| {
        assert_eq!(i.timeout_secs, 55);
        i
    });
    check_err(&[("Grip-Timeout", "abc")], InstructError::InvalidTimeout);
    check_err(&[("Grip-Timeout", "1.5")], InstructError::InvalidTimeout);
    check_err(&[("Grip-Timeout", "")], InstructError::InvalidTimeout);
    check_err(&[("Grip-Timeout", "-1")], InstructError::NegativeTimeout);
}

#[test]
fn keep_alive() {
    use KeepAliveMode::{Idle, Interval};
    let cases: &[(&str, Option<KeepAlive>)] = &[
        ("ping1\\n; timeout=10", ka(b"ping1\\n", 10, Idle)),
        ("ping2\\n; format=cstring", ka(b"ping2\n", 55, Idle)),
        ("cGluZzMK; format=base64", ka(b"ping3\n", 55, Idle)),
        ("ping4\\n; mode=interval", ka(b"ping4\\n", 55, Interval)),
        ("\\n; format=cstring; timeout=5", ka(b"\n", 5, Idle)),
        ("x; mode=idle; timeout=0", ka(b"x", 1, Idle)),
        (
            "a\\x41\\t\\r\\\\\\q; format=cstring",
            ka(b"aA\t\r\\", 55, Idle),
        ),
        ("a, b; format=raw", ka(b"a, b", 55, Idle)),
        (
            "event: keep-alive\\ndata:\\n\\n; format=cstring; timeout=20",
            ka(b"event: keep-alive\ndata:\n\n", 20, Idle),
        ),
        ("ka\\n; format=cstring; timeout=3", ka(b"ka\n", 3, Idle)),
    ];
    for (value, expected) in cases {
        let got = parse(&[("Grip-Keep-Alive", value)]).unwrap().keep_alive;
        assert_eq!(&got, expected, "Grip-Keep-Alive: {value}");
    }
    let errors: &[(&str, InstructError)] = &[
        (
            "x; format=hex",
            InstructError::UnknownKeepAliveFormat("hex".into()),
        ),
        (
            "x; mode=foo",
            InstructError::UnknownKeepAliveMode("foo".into()),
        ),
        (
            "x\\; format=cstring",
            InstructError::InvalidKeepAliveCstring,
        ),
        (
            "x\\xZ1; format=cstring",
            InstructError::InvalidKeepAliveCstring,
        ),
        (
            "x\\x4; format=cstring",
            InstructError::InvalidKeepAliveCstring,
        ),
        ("; format=raw", InstructError::EmptyKeepAlive),
        ("x; timeout=abc", InstructError::InvalidKeepAliveTimeout),
        ("x; timeout=-2", InstructError::InvalidKeepAliveTimeout),
        ("x; timeout", InstructError::InvalidKeepAliveTimeout),
        ("***; format=base64", InstructError::InvalidKeepAliveBase64),
    ];
    for (value, expected) in errors {
        check_err(&[("Grip-Keep-Alive", value)], expected.clone());
    }
}

#[test]
fn set_meta() {
    check(
        &[(
            "Grip-Set-Meta",
            "id_format=\"wire-eef5ba:%(events-wire-eef5ba)s\", user=\"anonymous\"",
        )],
        |mut i| {
            i.meta = vec![
                (
                    "id_format".into(),
                    "wire-eef5ba:%(events-wire-eef5ba)s".into(),
                ),
                ("user".into(), "anonymous".into()),
            ];
            i
        },
    );
    check(
        &[
            ("Grip-Set-Meta", "k=v, k2=\"v 2\""),
            ("Grip-Set-Meta", "k=w"),
        ],
        |mut i| {
            i.meta = vec![("k".into(), "w".into()), ("k2".into(), "v 2".into())];
            i
        },
    );
    check(&[("Grip-Set-Meta", "user=\"a\\\"b\"")], |mut i| {
        i.meta = vec![("user".into(), "a\"b".into())];
        i
    });
    check(&[("Grip-Set-Meta", "flag")], |mut i| {
        i.meta = vec![("flag".into(), String::new())];
        i
    });
    check_err(
        &[("Grip-Set-Meta", "a=b,,c=d")],
        InstructError::EmptySetMeta,
    );
}

#[test]
fn links() {
    check(&[("Grip-Link", "</next>; rel=next")], |mut i| {
        i.next_link = Some(NextLink {
            uri: "/next".into(),
            timeout_secs: 120,
        });
        i
    });
    check(
        &[("Grip-Link", "</a>; rel=next; timeout=10, </b>; rel=next")],
        |mut i| {
            i.next_link = Some(NextLink {
                uri: "/b".into(),
                timeout_secs: 120,
            });
            i
        },
    );
    check(
        &[
            ("Grip-Link", "</a>; rel=next; timeout=10"),
            ("Grip-Link", "</g>; rel=gone"),
        ],
        |mut i| {
            i.next_link = Some(NextLink {
                uri: "/a".into(),
                timeout_secs: 10,
            });
            i.gone_link = Some("/g".into());
            i
        },
    );
    check(
        &[
            ("Grip-Link", "</a>; rel=prev"),
            ("Grip-Link", "</b>; title=x"),
        ],
        |i| i,
    );
    check(&[("Grip-Link", "no-params-is-ignored")], |i| i);
    check(
        &[(
            "Grip-Link",
            "</events/wire-eef5ba/?link=next&recover=true&es-meta=eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJlcyJ9.DRn0>; rel=next",
        )],
        |mut i| {
            i.next_link = Some(NextLink {
                uri: "/events/wire-eef5ba/?link=next&recover=true&es-meta=eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJlcyJ9.DRn0".into(),
                timeout_secs: 120,
            });
            i
        },
    );
    check_err(
        &[("Grip-Link", "/next; rel=next")],
        InstructError::InvalidLink,
    );
    check_err(&[("Grip-Link", "<>; rel=next")], InstructError::InvalidLink);
    check_err(
        &[("Grip-Link", "<a b>; rel=next")],
        InstructError::InvalidLinkUri,
    );
    check_err(
        &[("Grip-Link", "</a>; rel=next; timeout=x")],
        InstructError::InvalidLinkTimeout,
    );
    check_err(
        &[("Grip-Link", "</a>; rel=next; timeout=-1")],
        InstructError::InvalidLinkTimeout,
    );
}

#[test]
fn expose_headers() {
    check(
        &[
            ("Grip-Expose-Headers", "Content-Type, X-A"),
            ("Grip-Expose-Headers", "X-B"),
        ],
        |mut i| {
            i.expose_headers = Some(vec!["Content-Type".into(), "X-A".into(), "X-B".into()]);
            i
        },
    );
}

#[test]
fn django_eventstream_full_response() {
    let h = headers(&[
        ("Content-Type", "text/event-stream"),
        ("Grip-Hold", "stream"),
        (
            "Grip-Channel",
            "events-wire-eef5ba; prev-id=0; filter=build-id; filter=skip-users, user-anonymous; filter=require-sub",
        ),
        ("Grip-Keep-Alive", "event: keep-alive\\ndata:\\n\\n; format=cstring; timeout=20"),
        ("Grip-Set-Meta", "id_format=\"wire-eef5ba:%(events-wire-eef5ba)s\", user=\"anonymous\""),
        ("Grip-Link", "</events/wire-eef5ba/?link=next&recover=true>; rel=next"),
    ]);
    let i = Instruct::from_response(200, &h, b"body").unwrap();
    assert_eq!(i.hold, Some(HoldMode::Stream));
    assert_eq!(i.channels.len(), 2);
    assert_eq!(
        i.keep_alive,
        ka(b"event: keep-alive\ndata:\n\n", 20, KeepAliveMode::Idle)
    );
    assert_eq!(i.meta.len(), 2);
    assert_eq!(
        i.next_link.unwrap().uri,
        "/events/wire-eef5ba/?link=next&recover=true"
    );
    assert_eq!(i.response, None);
}

fn json(status: u16, body: &str, extra: &[(&str, &str)]) -> Result<Instruct, InstructError> {
    let mut pairs = vec![("Content-Type", "application/grip-instruct")];
    pairs.extend_from_slice(extra);
    Instruct::from_response(status, &headers(&pairs), body.as_bytes())
}

fn resp(
    code: u16,
    reason: Option<&str>,
    hdrs: &[(&str, &str)],
    body: &str,
) -> Option<InstructResponse> {
    Some(InstructResponse {
        code,
        reason: reason.map(str::to_owned),
        headers: hdrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

#[test]
fn json_instruct() {
    // instructtest noHold (body form).
    let i = json(
        200,
        r#"{"response":{"code": 200,"headers":{"Content-Type":"text/plain"},"body":"hello world"}}"#,
        &[],
    )
    .unwrap();
    assert_eq!(i.hold, None);
    assert_eq!(
        i.response,
        resp(200, None, &[("Content-Type", "text/plain")], "hello world")
    );

    // instructtest responseHold (body form).
    let i = json(
        200,
        r#"{"hold":{"mode":"response","channels":[{"name":"test"}],"timeout":120,"meta":{"foo":"bar","bar":"baz"}},"response":{"code": 200,"headers":{"Content-Type":"text/plain"},"body":"hello world"}}"#,
        &[],
    )
    .unwrap();
    assert_eq!(i.hold, Some(HoldMode::Response));
    assert_eq!(i.channels, vec![ch("test", None, &[])]);
    assert_eq!(i.timeout_secs, 120);
    assert_eq!(i.meta.len(), 2);

    // instructtest responseHoldChannelParams (body form).
    let i = json(
        200,
        r#"{"hold":{"mode":"response","channels":[{"name":"apple","prev-id":"item1","filters":["f1"]},{"name":"banana","filters":["f2"]},{"name":"cherry","filters":["f1","f2"]}]}}"#,
        &[],
    )
    .unwrap();
    assert_eq!(
        i.channels,
        vec![
            ch("apple", Some("item1"), &["f1"]),
            ch("banana", None, &["f2"]),
            ch("cherry", None, &["f1", "f2"])
        ]
    );
    assert_eq!(i.response, resp(200, None, &[], ""));

    // instructtest streamHold (body form), JSON hold overrides Grip-Hold.
    let i = json(
        200,
        r#"{"hold":{"mode":"stream","channels":[{"name":"test"}]}}"#,
        &[("Grip-Hold", "response")],
    )
    .unwrap();
    assert_eq!(i.hold, Some(HoldMode::Stream));

    // Default mode, headers as pairs, body-bin, Grip-Status as base.
    let i = json(
        200,
        r#"{"hold":{"channels":[]},"response":{"headers":[["X-A","1"],["X-A","2"]],"body-bin":"AAEC"}}"#,
        &[("Grip-Status", "404 Nope")],
    )
    .unwrap();
    assert_eq!(i.hold, Some(HoldMode::Response));
    let r = i.response.unwrap();
    assert_eq!((r.code, r.reason.as_deref()), (404, Some("Nope")));
    assert_eq!(r.headers.len(), 2);
    assert_eq!(&r.body[..], &[0, 1, 2]);

    // A JSON code clears the Grip-Status reason.
    let i = json(
        200,
        r#"{"response":{"code":201}}"#,
        &[("Grip-Status", "404 Nope")],
    )
    .unwrap();
    assert_eq!(i.response, resp(201, None, &[], ""));

    // Keep-alive from JSON: interval-like, default 55 s; header mode kept.
    let i = json(
        200,
        r#"{"hold":{"mode":"stream","channels":[],"keep-alive":{"content":"ka"}}}"#,
        &[],
    )
    .unwrap();
    assert_eq!(i.keep_alive, ka(b"ka", 55, KeepAliveMode::Interval));
    let i = json(
        200,
        r#"{"hold":{"mode":"stream","channels":[],"keep-alive":{"content-bin":"cGluZw==","timeout":0}}}"#,
        &[("Grip-Keep-Alive", "x")],
    )
    .unwrap();
    assert_eq!(i.keep_alive, ka(b"ping", 1, KeepAliveMode::Idle));

    // JSON channels add to header channels; timeout clamps.
    let i = json(
        200,
        r#"{"hold":{"channels":[{"name":"b"}],"timeout":1}}"#,
        &[("Grip-Channel", "a")],
    )
    .unwrap();
    assert_eq!(i.channels, vec![ch("a", None, &[]), ch("b", None, &[])]);
    assert_eq!(i.timeout_secs, 5);
}

#[test]
fn json_instruct_errors() {
    let body_err = |s: &str| InstructError::InstructBody(s.to_owned());
    let cases: &[(u16, &str, InstructError)] = &[
        (201, "{}", InstructError::InstructNotOk),
        (200, "nope", InstructError::InstructNotJson),
        (200, "[1]", body_err("instruct must be an object")),
        (
            200,
            r#"{"hold":1}"#,
            body_err("instruct contains 'hold' with wrong type"),
        ),
        (
            200,
            r#"{"hold":{}}"#,
            body_err("hold does not contain 'channels'"),
        ),
        (
            200,
            r#"{"hold":{"channels":{}}}"#,
            body_err("hold contains 'channels' with wrong type"),
        ),
        (
            200,
            r#"{"hold":{"mode":"x","channels":[]}}"#,
            body_err("hold 'mode' must be set to either 'response' or 'stream'"),
        ),
        (
            200,
            r#"{"hold":{"mode":1,"channels":[]}}"#,
            body_err("hold contains 'mode' with wrong type"),
        ),
        (
            200,
            r#"{"hold":{"channels":[{}]}}"#,
            body_err("channel does not contain 'name'"),
        ),
        (
            200,
            r#"{"hold":{"channels":[1]}}"#,
            body_err("channel is not an object"),
        ),
        (
            200,
            r#"{"hold":{"channels":[{"name":"a","filters":[1]}]}}"#,
            body_err("filters contains value with wrong type"),
        ),
        (
            200,
            r#"{"hold":{"channels":[],"timeout":"x"}}"#,
            body_err("hold contains 'timeout' with wrong type"),
        ),
        (
            200,
            r#"{"hold":{"channels":[],"timeout":-1}}"#,
            body_err("hold contains 'timeout' with invalid value"),
        ),
        (
            200,
            r#"{"hold":{"channels":[],"meta":{"a":1}}}"#,
            body_err("'meta' contains 'a' with wrong type"),
        ),
        (
            200,
            r#"{"response":1}"#,
            body_err("instruct contains 'response' with wrong type"),
        ),
        (
            200,
            r#"{"response":{"code":1000}}"#,
            body_err("response contains 'code' with invalid value"),
        ),
        (
            200,
            r#"{"response":{"headers":[["a"]]}}"#,
            body_err("headers contains list with wrong number of elements"),
        ),
        (
            200,
            r#"{"response":{"headers":3}}"#,
            body_err("response contains 'headers' with wrong type"),
        ),
        (
            200,
            r#"{"response":{"body":3}}"#,
            body_err("response contains 'body' with wrong type"),
        ),
    ];
    for (status, body, expected) in cases {
        assert_eq!(
            json(*status, body, &[]),
            Err(expected.clone()),
            "body {body}"
        );
    }
}

proptest! {
    #[test]
    fn never_panics(
        name in prop_oneof![
            Just("grip-hold"), Just("grip-channel"), Just("grip-timeout"), Just("grip-keep-alive"),
            Just("grip-set-meta"), Just("grip-status"), Just("grip-link"), Just("grip-expose-headers")
        ],
        value in proptest::collection::vec(any::<u8>(), 0..48),
        body in proptest::collection::vec(any::<u8>(), 0..48),
    ) {
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let mut h = HeaderMap::new();
            h.insert(name, v);
            let _ = Instruct::from_headers(&h);
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grip-instruct"));
            let _ = Instruct::from_response(200, &h, &body);
        }
    }

    #[test]
    fn never_panics_json(body in "[{}\\[\\]\",:a-z0-9 -]{0,64}") {
        let h = headers(&[("Content-Type", "application/grip-instruct")]);
        let _ = Instruct::from_response(200, &h, body.as_bytes());
    }
}
