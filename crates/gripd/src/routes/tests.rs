//! Tests for the routes parser and matcher: Pushpin's own line vectors (restated), the routing
//! checklist of the GRIP reference (§6.1, §6.4, §2.3), error line numbers, and a no-panic loop.

#![allow(clippy::unwrap_used)]

use super::*;

/// Renders the sections of a line as `value[name=value|...]` separated by spaces, or the error.
fn sections(line: &str) -> String {
    match split_sections(line) {
        Err(e) => format!("error: {e}"),
        Ok(sections) => sections
            .iter()
            .map(|s| {
                let props: Vec<String> = s.props.iter().map(|(n, v)| format!("{n}={v}")).collect();
                if props.is_empty() {
                    s.value.clone()
                } else {
                    format!("{}[{}]", s.value, props.join("|"))
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Loads `routes` (which must load without errors) and checks which line `request` picks
/// (0 = no route). `request` is `<http|https|ws|wss> <host> <path>`.
fn check(routes: &str, request: &str, want: usize) {
    let (parsed, errors) = Routes::parse(routes);
    assert!(
        errors.is_empty(),
        "{routes:?}: unexpected errors {errors:?}"
    );
    let parts: Vec<&str> = request.splitn(3, ' ').collect();
    let [scheme, host, path] = parts[..] else {
        panic!("bad request spec {request:?}");
    };
    let (is_ws, is_https) = match scheme {
        "http" => (false, false),
        "https" => (false, true),
        "ws" => (true, false),
        "wss" => (true, true),
        _ => panic!("bad scheme in {request:?}"),
    };
    let got = parsed
        .find(host, path, is_ws, is_https)
        .map_or(0, |r| r.line);
    assert_eq!(got, want, "routes {routes:?}, request {request:?}");
}

/// Parses one route line, which must succeed.
fn route(line: &str) -> Route {
    let (routes, errors) = Routes::parse(line);
    assert!(errors.is_empty(), "{line:?}: unexpected errors {errors:?}");
    let first = routes.iter().next().cloned();
    first.unwrap()
}

/// Loads `text` and compares the rendered errors, and the number of routes that loaded.
fn check_errors(text: &str, want_errors: &[&str], want_loaded: usize) {
    let (routes, errors) = Routes::parse(text);
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(got, want_errors, "{text:?}");
    assert_eq!(routes.len(), want_loaded, "{text:?}");
}

#[test]
fn pushpin_line_vectors() {
    // Restated from fastly/pushpin src/proxy/routesfiletest.cpp.
    let cases = [
        ("apple", "apple"),
        ("apple banana", "apple banana"),
        ("  apple   banana  # comment", "apple banana"),
        (
            r#"apple,organic,type=gala,from="washington, \"usa\"""#,
            r#"apple[organic=|type=gala|from=washington, "usa"]"#,
        ),
        (
            "apple,organic banana cherry,type=bing",
            "apple[organic=] banana cherry[type=bing]",
        ),
        (",organic", "[organic=]"),
        ("type=gala", "[type=gala]"),
        (r#"apple,organic,type="gala"#, "error: unterminated quote"),
        ("apple,organic,", "error: expecting prop"),
        ("apple,organic,=gala", "error: empty prop name"),
    ];
    for (line, want) in cases {
        assert_eq!(sections(line), want, "{line:?}");
    }
}

#[test]
fn tokenizer_edges() {
    let cases = [
        ("", ""),
        ("   ", ""),
        ("# only a comment", ""),
        ("apple#comment", "apple"),
        ("apple,a=1#c banana", "apple[a=1]"),
        ("\tapple\tbanana\t", "apple banana"),
        (r#"a"b c"d e"#, "ab cd e"),
        (r##"a,x="#not a comment" b"##, "a[x=#not a comment] b"),
        (r#"a,x="" b"#, "a[x=] b"),
        (r#"a,x=\ b"#, r"a[x=\] b"),
        (r#"a,x="\\" b"#, r"a[x=\] b"),
        (r#"a,x="1\"2" b"#, r#"a[x=1"2] b"#),
        (r#"a,x="\n""#, r"error: invalid escape '\n' in quotes"),
        (r#"a,x="\"#, "error: unterminated quote"),
        (r#""x=y" t"#, "[x=y] t"),
        (r#""*" t"#, "* t"),
        ("a,k=v=w", "a[k=v=w]"),
        ("a,,b", "error: expecting prop"),
        ("a, b", "error: expecting prop"),
        ("a ,b", "a [b=]"),
        ("*,id=x,path_beg=/é t", "*[id=x|path_beg=/é] t"),
        ("é,\"ü", "error: unterminated quote"),
    ];
    for (line, want) in cases {
        assert_eq!(sections(line), want, "{line:?}");
    }
}

#[test]
fn matching() {
    let cases = [
        // §6.4: `*` routes everything; an exact domain wins for its Host, whatever the port/case.
        (
            "* 127.0.0.1:8000\nexample.com 127.0.0.1:8001",
            "http example.com /x",
            2,
        ),
        (
            "* 127.0.0.1:8000\nexample.com 127.0.0.1:8001",
            "http example.com:7999 /",
            2,
        ),
        (
            "* 127.0.0.1:8000\nexample.com 127.0.0.1:8001",
            "https EXAMPLE.com:443 /",
            2,
        ),
        (
            "* 127.0.0.1:8000\nexample.com 127.0.0.1:8001",
            "http other.com /x",
            1,
        ),
        (
            "* 127.0.0.1:8000\nExample.COM 127.0.0.1:8001",
            "http example.com /x",
            2,
        ),
        ("* a:1\n::1 b:2", "http [::1]:7999 /", 2),
        ("* a:1\n127.0.0.1 b:2", "http 127.0.0.1:7999 /", 2),
        ("* a:1", "http  /", 1),
        // No partial wildcards.
        ("*.example.com a:1", "http www.example.com /", 0),
        // Pushpin: once a domain has routes, `*` is not consulted for it, even with no match.
        (
            "example.com,path_beg=/api a:1\n* b:2",
            "http example.com /other",
            0,
        ),
        (
            "example.com,path_beg=/api a:1\n* b:2",
            "http example.com /api/x",
            1,
        ),
        // §6.4: path_beg beats no path_beg; longer path_beg beats shorter; line order irrelevant.
        (
            "* 127.0.0.1:8000\n*,path_beg=/api 127.0.0.1:8002",
            "http h /api/x",
            2,
        ),
        (
            "*,path_beg=/api 127.0.0.1:8002\n* 127.0.0.1:8000",
            "http h /api/x",
            1,
        ),
        (
            "*,path_beg=/api 127.0.0.1:8002\n* 127.0.0.1:8000",
            "http h /ap",
            2,
        ),
        ("*,path_beg=/a a:1\n*,path_beg=/api b:2", "http h /api/x", 2),
        ("*,path_beg=/api b:2\n*,path_beg=/a a:1", "http h /api/x", 1),
        ("*,path_beg=/api b:2\n*,path_beg=/a a:1", "http h /apx", 2),
        // path_beg is a plain byte prefix of the encoded path, case-sensitive, no segment logic.
        ("*,path_beg=/api a:1", "http h /apiary", 1),
        ("*,path_beg=/api a:1", "http h /API", 0),
        ("*,path_beg=/a%20b a:1", "http h /a%20b/c", 1),
        ("*,path_beg=/a%20b a:1", "http h /a b/c", 0),
        ("*,path_beg=/api a:1", "http h /api?x=1", 1),
        ("*,path_beg=/x a:1", "http h /api?p=/x", 0),
        // §6.4: proto=ws is used only for WebSocket handshakes, proto=http only for the others.
        ("*,proto=ws a:1", "ws h /", 1),
        ("*,proto=ws a:1", "http h /", 0),
        ("*,proto=http a:1", "ws h /", 0),
        ("*,proto=ws a:1\n* b:2", "http h /", 2),
        ("*,proto=ws a:1\n* b:2", "wss h /", 1),
        // Explicit proto beats a longer path_beg.
        (
            "*,path_beg=/ws/long b:2\n*,proto=ws a:1",
            "ws h /ws/long/x",
            2,
        ),
        (
            "*,path_beg=/ws/long b:2\n*,proto=ws a:1",
            "http h /ws/long/x",
            1,
        ),
        // ssl: explicit beats unspecified, but only after path_beg length.
        ("*,ssl=yes a:1\n* b:2", "https h /", 1),
        ("*,ssl=yes a:1\n* b:2", "http h /", 2),
        ("*,ssl=no a:1\n*,ssl=yes b:2", "https h /", 2),
        ("*,ssl=no a:1\n*,ssl=yes b:2", "http h /", 1),
        ("*,path_beg=/p a:1\n*,ssl=yes b:2", "https h /p", 1),
        ("*,ssl=yes b:2\n*,path_beg=/p a:1", "https h /p", 2),
        (
            "*,path_beg=/p a:1\n*,path_beg=/p,ssl=yes b:2",
            "https h /p",
            2,
        ),
        // Routes with an empty domain are reachable only by id.
        ("id=foo a:1", "http h /", 0),
        // The brief's pair: the ws prefix route for /ws/x, the catch-all for the rest.
        (
            "*,path_beg=/ws/ 127.0.0.1:18000,over_http\n* 127.0.0.1:18000",
            "ws h /ws/x",
            1,
        ),
        (
            "*,path_beg=/ws/ 127.0.0.1:18000,over_http\n* 127.0.0.1:18000",
            "http h /ws/x",
            1,
        ),
        (
            "*,path_beg=/ws/ 127.0.0.1:18000,over_http\n* 127.0.0.1:18000",
            "http h /x",
            2,
        ),
        (
            "*,path_beg=/ws/ 127.0.0.1:18000,over_http\n* 127.0.0.1:18000",
            "ws h /ws",
            2,
        ),
        // Debian's shipped routes file.
        ("* test", "http localhost:7999 /", 1),
        ("* test\n", "wss anything /stream?channel=x", 1),
        ("# comment\n\n* test # everything", "http h /", 3),
        // Nothing loaded, nothing found.
        ("", "http h /", 0),
    ];
    for (routes, request, want) in cases {
        check(routes, request, want);
    }
}

#[test]
fn route_fields() {
    type Case = (&'static str, fn(&Route) -> bool);
    let cases: &[Case] = &[
        ("* test", |r| r.targets == [Target::new(TargetKind::Test)]),
        ("* test", |r| r.condition == Condition::default()),
        ("* 127.0.0.1:8000", |r| {
            r.targets[0].kind
                == TargetKind::Host {
                    host: "127.0.0.1".into(),
                    port: 8000,
                }
        }),
        ("* [::1]:80", |r| {
            r.targets[0].kind
                == TargetKind::Host {
                    host: "::1".into(),
                    port: 80,
                }
        }),
        ("* [::1]:80", |r| r.targets[0].kind.to_string() == "[::1]:80"),
        ("* a:65535", |r| r.targets[0].kind.to_string() == "a:65535"),
        ("example.com a:1", |r| {
            r.condition.domain.as_deref() == Some("example.com") && !r.condition.id_only
        }),
        ("id=foo a:1", |r| {
            r.condition.id_only && r.condition.domain.is_none() && r.id.as_deref() == Some("foo")
        }),
        ("*,id= a:1", |r| r.id.is_none()),
        ("*,proto=ws,ssl=no,path_beg=/x a:1", |r| {
            r.condition.proto == Some(Proto::Ws)
                && r.condition.ssl == Some(false)
                && r.condition.path_beg.as_deref() == Some("/x")
        }),
        ("*,sig_iss=me,sig_key=secret a:1", |r| {
            r.props.sig_iss.as_deref() == Some("me")
                && r.props.sig_key_bytes() == Some(b"secret".to_vec())
        }),
        ("*,sig_key=base64:aGVsbG8= a:1", |r| {
            r.props.sig_key_bytes() == Some(b"hello".to_vec())
        }),
        ("*,sig_key=base64:aGVsbG8 a:1", |r| {
            r.props.sig_key_bytes() == Some(b"hello".to_vec())
        }),
        ("* a:1", |r| r.props.sig_key_bytes().is_none()),
        // §6.4 prefix, header, no_grip, sub, as_host.
        ("*,prefix=app1- origin:80", |r| {
            r.props.prefix.as_deref() == Some("app1-")
        }),
        ("*,header=X-Test:1 origin:80", |r| {
            r.props.headers == [("X-Test".to_owned(), "1".to_owned())]
        }),
        (r#"*,header="A:  x y",header=B:2 o:80"#, |r| {
            r.props.headers == [("A".into(), "x y".into()), ("B".into(), "2".into())]
        }),
        (r#"*,header="A: x, y" o:80"#, |r| {
            r.props.headers == [("A".into(), "x, y".into())]
        }),
        ("*,header=A:b:c o:80", |r| {
            r.props.headers == [("A".into(), "b:c".into())]
        }),
        ("*,no_grip origin:80", |r| r.props.no_grip && !r.props.aco),
        ("*,aco,debug,session o:1", |r| {
            r.props.aco && r.props.debug && r.props.session
        }),
        ("* origin:80,sub=news", |r| r.targets[0].subs == ["news"]),
        ("* o:80,sub=a,sub=,sub=b", |r| r.targets[0].subs == ["a", "b"]),
        ("*,as_host=example.com:8080 o:80", |r| {
            r.props.as_host.as_deref() == Some("example.com:8080")
        }),
        // Target options.
        ("* o:443,ssl,insecure,host=api.example.com", |r| {
            let t = &r.targets[0];
            t.ssl && t.insecure && t.host_header.as_deref() == Some("api.example.com")
        }),
        ("* o:80,over_http,one_event,untrusted,trust_connect_host", |r| {
            let t = &r.targets[0];
            t.over_http && t.one_event && t.untrusted && t.trust_connect_host && !t.ssl
        }),
        // Like Pushpin, a flag is set whatever value it is given.
        ("* o:80,ssl=no", |r| r.targets[0].ssl),
        // Several targets, in order; options belong to their own target.
        ("* a:1,ssl b:2 test", |r| {
            r.targets.len() == 3
                && r.targets[0].ssl
                && !r.targets[1].ssl
                && r.targets[2].kind == TargetKind::Test
        }),
        // The last value of a repeated single-valued prop wins, as in Pushpin.
        ("*,prefix=a,prefix=b o:1", |r| {
            r.props.prefix.as_deref() == Some("b")
        }),
        // Accepted but ignored props are kept by name.
        (
            "*,jsonp_mode=basic,jsonp_cb=cb,sockjs=/s,orig_headers,log_level=3 o:1,ipc_file_mode=600",
            |r| {
                r.props.ignored == ["jsonp_mode", "jsonp_cb", "sockjs", "orig_headers", "log_level"]
                    && r.targets[0].ignored == ["ipc_file_mode"]
            },
        ),
        ("*,jsonp_body=b,jsonp_defcb=f,jsonp_defmethod=POST,sockjs_as_path=/p o:1", |r| {
            r.props.ignored.len() == 4
        }),
        ("* o:1,client_cert=c.pem,client_key=k.pem", |r| {
            r.targets[0].ignored == ["client_cert", "client_key"]
        }),
        // The id Pushpin generates from the condition (with its inverted ssl labels).
        ("* a:1", |r| r.condition_id() == "*,*,*,*"),
        ("example.com,proto=ws,ssl=yes,path_beg=/x a:1", |r| {
            r.condition_id() == "example.com,ws,no-ssl,/x"
        }),
        ("*,proto=http,ssl=no a:1", |r| r.condition_id() == "*,http,ssl,*"),
    ];
    for (line, ok) in cases {
        let r = route(line);
        assert!(ok(&r), "{line:?}: {r:#?}");
    }
}

#[test]
fn rewriting() {
    let cases = [
        // §6.4 / §2.3.
        (
            "*,path_beg=/api,replace_beg=/v1 origin:80",
            "/api/x?q=1",
            "/v1/x?q=1",
        ),
        ("*,path_beg=/api,path_rem=4 origin:80", "/api/x", "/x"),
        (
            "*,path_beg=/api,path_rem=4 origin:80",
            "/api/x?a=/api",
            "/x?a=/api",
        ),
        ("*,path_beg=/api/,replace_beg=/ o:80", "/api/x", "/x"),
        ("*,path_beg=/api/,replace_beg=/ o:80", "/api/", "/"),
        // replace_beg overrides path_rem, whatever their order.
        (
            "*,path_beg=/api,replace_beg=/v1,path_rem=1 o:80",
            "/api/x",
            "/v1/x",
        ),
        (
            "*,path_rem=1,path_beg=/api,replace_beg=/v1 o:80",
            "/api/x",
            "/v1/x",
        ),
        // replace_beg without path_beg prepends.
        ("*,replace_beg=/v1 o:80", "/x", "/v1/x"),
        // No rewriting props: unchanged.
        ("* o:80", "/a/b?c", "/a/b?c"),
        ("* o:80", "/", "/"),
        // Removing too much still gives a valid request target.
        ("*,path_rem=100 o:80", "/api?q", "/?q"),
        ("*,path_rem=1 o:80", "/x", "/x"),
        ("*,path_rem=0 o:80", "/x", "/x"),
        // Multi-byte text in a raw path does not split a character.
        ("*,path_rem=2 o:80", "/éa", "/a"),
    ];
    for (line, input, want) in cases {
        assert_eq!(route(line).rewrite_path(input), want, "{line:?} {input:?}");
    }
}

#[test]
fn test_handler_path() {
    let cases = [
        ("* test", "/stream", "/stream"),
        ("*,path_beg=/t/ test", "/t/stream", "/stream"),
        ("*,path_beg=/t test", "/t/stream", "/stream"),
        ("*,path_beg=/ test", "/stream", "/stream"),
    ];
    for (line, input, want) in cases {
        assert_eq!(route(line).test_handler_path(input), want, "{line:?}");
    }
}

#[test]
fn errors() {
    let cases: &[(&str, &[&str], usize)] = &[
        (
            "*",
            &["line 1: must specify condition and at least one target"],
            0,
        ),
        (
            "* test\n\n*,path_beg=/x",
            &["line 3: must specify condition and at least one target"],
            1,
        ),
        // §6.4: an unterminated quote skips that line only.
        (
            "* a:1\n*,path_beg=\"/x b:2\n*,proto=ws c:3",
            &["line 2: unterminated quote"],
            2,
        ),
        (
            "*,proto=tcp a:1",
            &["line 1: proto must be set to 'http' or 'ws'"],
            0,
        ),
        (
            "*,ssl=true a:1",
            &["line 1: ssl must be set to 'yes' or 'no'"],
            0,
        ),
        ("*,path_beg= a:1", &["line 1: path_beg cannot be empty"], 0),
        ("*,path_beg a:1", &["line 1: path_beg cannot be empty"], 0),
        (
            "*,path_rem=x a:1",
            &["line 1: path_rem must be a non-negative integer"],
            0,
        ),
        (
            "*,path_rem=-1 a:1",
            &["line 1: path_rem must be a non-negative integer"],
            0,
        ),
        (
            "*,header=NoColon a:1",
            &["line 1: header must use format 'name:value'"],
            0,
        ),
        (
            "*,header=:v a:1",
            &["line 1: header must use format 'name:value'"],
            0,
        ),
        (
            "*,jsonp_mode=fancy a:1",
            &["line 1: jsonp_mode must be set to 'basic' or 'extended'"],
            0,
        ),
        (
            "*,sig_key=base64:!!! a:1",
            &["line 1: sig_key has invalid base64"],
            0,
        ),
        // Typos are caught, and misplaced options are explained.
        (
            "*,pathbeg=/x a:1",
            &["line 1: unknown route option 'pathbeg'"],
            0,
        ),
        (
            "* a:1,over_htttp",
            &["line 1: unknown target option 'over_htttp'"],
            0,
        ),
        (
            "*,over_http a:1",
            &["line 1: unknown route option 'over_http' (it is a target option)"],
            0,
        ),
        (
            "* a:1,path_beg=/x",
            &["line 1: unknown target option 'path_beg' (it is a route option)"],
            0,
        ),
        // Targets.
        (
            "* localhost",
            &["line 1: target bad format: 'localhost' (expected host:port or test)"],
            0,
        ),
        (
            "* :80",
            &["line 1: target bad format: ':80' (expected host:port or test)"],
            0,
        ),
        (
            "* [::1]",
            &["line 1: target bad format: '[::1]' (expected host:port or test)"],
            0,
        ),
        ("* a:0", &["line 1: target invalid port: '0'"], 0),
        ("* a:65536", &["line 1: target invalid port: '65536'"], 0),
        ("* a:", &["line 1: target invalid port: ''"], 0),
        ("* a:+80", &["line 1: target invalid port: '+80'"], 0),
        ("* a:b:80", &["line 1: target invalid port: 'b:80'"], 0),
        (
            "* ::1:80",
            &["line 1: target bad format: '::1:80' (expected host:port or test)"],
            0,
        ),
        (
            "* a:1 b",
            &["line 1: target bad format: 'b' (expected host:port or test)"],
            0,
        ),
        (
            "* zhttp/tcp://127.0.0.1:10000",
            &["line 1: zhttp targets are not supported"],
            0,
        ),
        (
            "* zhttpreq/tcp://127.0.0.1:10001",
            &["line 1: zhttp targets are not supported"],
            0,
        ),
        // Duplicate conditions: the later line is reported; proto/ssl/path_beg/domain distinguish.
        (
            "* a:1\n* b:2",
            &["line 2: duplicate condition (same as line 1)"],
            1,
        ),
        (
            "x.com a:1\nX.COM b:2",
            &["line 2: duplicate condition (same as line 1)"],
            1,
        ),
        (
            "*,path_beg=/a a:1\n\n# c\n*,path_beg=/a,id=z b:2",
            &["line 4: duplicate condition (same as line 1)"],
            1,
        ),
        (
            "* a:1\nx.com a:1\n*,proto=ws a:1\n*,ssl=no a:1\n*,path_beg=/ a:1",
            &[],
            5,
        ),
        ("id=a x:1\nid=b x:1", &[], 2),
        // Every bad line is reported, with its own number.
        (
            "*,ssl=maybe a:1\n* test\nfoo\n* b:99999",
            &[
                "line 1: ssl must be set to 'yes' or 'no'",
                "line 3: must specify condition and at least one target",
                "line 4: target invalid port: '99999'",
            ],
            1,
        ),
        // CRLF line endings and a byte order mark are fine.
        ("\u{feff}* a:1\r\nx.com b:2\r\n", &[], 2),
    ];
    for (text, want, loaded) in cases {
        check_errors(text, want, *loaded);
    }
}

#[test]
fn by_id() {
    let text =
        "id=foo a:1\n*,id=bar,path_beg=/bar b:2\n*,id=dup c:3\nx.com,id=dup d:4\n*,proto=http e:5";
    let (routes, errors) = Routes::parse(text);
    assert!(errors.is_empty(), "{errors:?}");
    let line = |id: &str| routes.find_by_id(id).map(|r| r.line);
    assert_eq!(line("foo"), Some(1));
    assert_eq!(line("bar"), Some(2));
    assert_eq!(line("dup"), None, "a shared id is unusable");
    assert_eq!(line("nope"), None);
    assert_eq!(line("*,http,*,*"), Some(5), "generated id");
    let bar = routes.find_by_id("bar").unwrap();
    assert!(bar.matches_path("/bar/x"));
    assert!(!bar.matches_path("/x"));
    assert!(routes.find_by_id("foo").unwrap().matches_path("/anything"));
}

#[test]
fn from_lines_numbers_each_line() {
    let (routes, errors) = Routes::from_lines(["* test", "bad", "*,path_beg=/x 127.0.0.1:80"]);
    assert_eq!(routes.len(), 2);
    assert!(!routes.is_empty());
    let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        ["line 2: must specify condition and at least one target"]
    );
    assert_eq!(
        routes.find("h", "/x/y", false, false).map(|r| r.line),
        Some(3)
    );

    let (empty, errors) = Routes::from_lines(Vec::<&str>::new());
    assert!(empty.is_empty() && errors.is_empty());
}

/// Feeds many arbitrary lines to the parser and to every lookup: nothing may panic.
#[test]
fn arbitrary_input_never_panics() {
    const PIECES: &[&str] = &[
        " ",
        " ",
        ",",
        ",",
        "=",
        "\"",
        "\\",
        "#",
        ":",
        "[",
        "]",
        "\t",
        "\n",
        "\r",
        "*",
        "é",
        "ü",
        "\u{feff}",
        "a",
        "x.com",
        "80",
        "0",
        "65536",
        "test",
        "127.0.0.1:8000",
        "[::1]:80",
        "zhttp/",
        "path_beg",
        "path_beg=/",
        "proto=ws",
        "proto=http",
        "ssl=yes",
        "ssl",
        "id=",
        "replace_beg=",
        "path_rem=",
        "path_rem=3",
        "header=",
        "sub=",
        "over_http",
        "host=",
        "sig_key=base64:",
        "jsonp_mode=",
        "/",
        "/api",
        "?",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64: deterministic, so a failure is reproducible.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let len = (next() % 24) as usize;
        let text: String = (0..len)
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        let (routes, errors) = Routes::parse(&text);
        for e in &errors {
            assert!(e.line >= 1 && !e.message.is_empty(), "{text:?}: {e:?}");
        }
        let path: String = (0..(next() % 4))
            .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
            .collect();
        for host in ["x.com", "[::1]:80", "", ":", "[", "X.COM:1"] {
            routes.find(host, &path, next() % 2 == 0, next() % 2 == 0);
        }
        for route in routes.iter() {
            assert!(!route.targets.is_empty());
            route.rewrite_path(&path);
            route.test_handler_path(&path);
            route.matches_path(&path);
            routes.find_by_id(&route.condition_id());
            route.props.sig_key_bytes();
        }
    }
}
