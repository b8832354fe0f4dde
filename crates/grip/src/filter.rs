//! Subscription filters (`Grip-Channel: c; filter=NAME`): who receives an item, and how its
//! content is rewritten for each subscriber.
//!
//! Delivery filters: `skip-self` (sub meta `user` equals pub meta `sender`), `skip-users` (sub
//! `user` in the comma list pub `skip_users`), `require-sub` (the session must also be subscribed
//! to pub `require_sub`). Content filters, applied in the subscription's order: `build-id`
//! (`%I` becomes an id rendered from sub meta `id_format`) and `var-subst` (`%(name)s` becomes
//! sub meta `name`). Unknown filter names are ignored, as in Pushpin.
//!
//! Content filtering has a fast path: without content filters the input `Bytes` is returned as
//! is, with no copy.

use std::collections::BTreeMap;

use bytes::Bytes;
use thiserror::Error;

/// Filter names with a content effect, in the order Pushpin knows them.
pub const CONTENT_FILTERS: [&str; 2] = ["build-id", "var-subst"];

/// What the filters may look at for one (subscription, item) pair.
pub struct FilterContext<'a> {
    /// Subscription meta (`Grip-Set-Meta`, WebSocket `set-meta`).
    pub sub_meta: &'a BTreeMap<String, String>,
    /// The item's `meta`.
    pub pub_meta: &'a BTreeMap<String, String>,
    /// Channel → current id for the session's channels, after the item being delivered.
    pub prev_ids: &'a BTreeMap<String, String>,
    /// Whether the session is subscribed to a channel (for `require-sub`).
    pub subscribed: &'a dyn Fn(&str) -> bool,
}

/// Why content filtering failed (the item then fails for that subscriber).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    #[error("no sub meta 'id_format'")]
    NoIdFormat,
    #[error("failed to render ID: {0}")]
    RenderId(String),
    #[error("unsupported encoding: {0}")]
    UnsupportedEncoding(String),
    #[error("{0}")]
    Format(String),
}

/// Whether delivery filters let the item through.
pub fn should_deliver(filters: &[String], ctx: &FilterContext<'_>) -> bool {
    filters.iter().all(|f| match f.as_str() {
        "skip-self" => {
            let user = meta(ctx.sub_meta, "user");
            let sender = meta(ctx.pub_meta, "sender");
            user.is_empty() || sender.is_empty() || user != sender
        }
        "skip-users" => {
            let user = meta(ctx.sub_meta, "user");
            user.is_empty()
                || !meta(ctx.pub_meta, "skip_users")
                    .split(',')
                    .map(str::trim)
                    .any(|u| !u.is_empty() && u == user)
        }
        "require-sub" => {
            let required = meta(ctx.pub_meta, "require_sub");
            required.is_empty() || (ctx.subscribed)(required)
        }
        _ => true,
    })
}

/// The content filters among `filters`, in order (what a publisher must declare in
/// `content-filters` when it declares any).
pub fn content_filters_of(filters: &[String]) -> Vec<&str> {
    filters
        .iter()
        .map(String::as_str)
        .filter(|f| CONTENT_FILTERS.contains(f))
        .collect()
}

/// Applies the content filters among `filters`, in order. Returns `content` itself (no copy)
/// when there is nothing to do.
pub fn apply_content_filters(
    filters: &[String],
    ctx: &FilterContext<'_>,
    content: Bytes,
) -> Result<Bytes, FilterError> {
    let mut out = content;
    for f in filters {
        out = match f.as_str() {
            "build-id" => build_id(ctx, out)?,
            "var-subst" => var_subst(ctx, out)?,
            _ => continue,
        };
    }
    Ok(out)
}

fn meta<'a>(m: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    m.get(key).map_or("", String::as_str)
}

fn build_id(ctx: &FilterContext<'_>, content: Bytes) -> Result<Bytes, FilterError> {
    let id_format = ctx
        .sub_meta
        .get("id_format")
        .ok_or(FilterError::NoIdFormat)?;
    // With no channel ids at all Pushpin has no default id: only `%(literal)I` works then.
    let id = if ctx.prev_ids.is_empty() {
        None
    } else {
        let rendered = format(id_format.as_bytes(), |kind, arg| {
            if kind != b's' {
                return Err(format!("Unknown directive '{}'", char::from(kind)));
            }
            let arg = arg.ok_or("Directive 's' requires argument")?;
            let name = String::from_utf8_lossy(arg);
            ctx.prev_ids
                .get(name.as_ref())
                .map(|v| v.as_bytes().to_vec())
                .ok_or_else(|| format!("No such variable '{name}'"))
        })
        .map_err(FilterError::RenderId)?;
        Some(rendered)
    };
    let hex = match ctx.sub_meta.get("id_encoding").map(String::as_str) {
        None => false,
        Some("hex") => true,
        Some(other) => return Err(FilterError::UnsupportedEncoding(other.to_owned())),
    };
    if !content.contains(&b'%') {
        return Ok(content);
    }
    let out = format(&content, |kind, arg| {
        if kind != b'I' {
            return Err(format!("Unknown directive '{}'", char::from(kind)));
        }
        let id = match arg {
            Some(literal) => literal.to_vec(),
            None => id
                .clone()
                .ok_or("No ID specified and no default ID in context")?,
        };
        Ok(if hex { to_hex(&id) } else { id })
    })
    .map_err(FilterError::Format)?;
    Ok(Bytes::from(out))
}

fn var_subst(ctx: &FilterContext<'_>, content: Bytes) -> Result<Bytes, FilterError> {
    if !content.contains(&b'%') {
        return Ok(content);
    }
    let out = format(&content, |kind, arg| {
        if kind != b's' {
            return Err(format!("Unknown directive '{}'", char::from(kind)));
        }
        let arg = arg.ok_or("Directive 's' requires argument")?;
        let name = String::from_utf8_lossy(arg);
        ctx.sub_meta
            .get(name.as_ref())
            .map(|v| v.as_bytes().to_vec())
            .ok_or_else(|| format!("No such variable '{name}'"))
    })
    .map_err(FilterError::Format)?;
    Ok(Bytes::from(out))
}

fn to_hex(b: &[u8]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    b.iter()
        .flat_map(|x| [DIGITS[usize::from(x >> 4)], DIGITS[usize::from(x & 0xf)]])
        .collect()
}

type Directive<'a> = dyn FnMut(u8, Option<&[u8]>) -> Result<Vec<u8>, String> + 'a;

/// Pushpin's `%`-format: `%%` is `%`, `%X` (a letter) and `%(arg)X` call `handle`; `\` escapes
/// a character inside `(...)`. Anything else after `%` is an error, as is a dangling `%`.
fn format(
    input: &[u8],
    mut handle: impl FnMut(u8, Option<&[u8]>) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let handle: &mut Directive<'_> = &mut handle;
    let mut out = Vec::with_capacity(input.len());
    let mut n = 0;
    while n < input.len() {
        let c = input[n];
        if c != b'%' {
            out.push(c);
            n += 1;
            continue;
        }
        let Some(&next) = input.get(n + 1) else {
            return Err(format!("Expected directive after '%' at position {n}"));
        };
        n += 1;
        if next == b'%' {
            out.push(b'%');
            n += 1;
        } else if next == b'(' {
            let field_start = n;
            n += 1;
            let mut arg = Vec::new();
            let mut closed = false;
            while n < input.len() {
                match input[n] {
                    b'\\' => {
                        let Some(&e) = input.get(n + 1) else {
                            return Err(format!("Expected character after '\\' at position {n}"));
                        };
                        arg.push(e);
                        n += 2;
                    }
                    b')' => {
                        closed = true;
                        break;
                    }
                    other => {
                        arg.push(other);
                        n += 1;
                    }
                }
            }
            if !closed {
                return Err(format!(
                    "Unterminated field starting at position {field_start}"
                ));
            }
            let Some(&kind) = input.get(n + 1) else {
                return Err(format!("Expected directive after ')' at position {n}"));
            };
            n += 1;
            let value = handle(kind, Some(&arg)).map_err(|e| format!("{e} at position {n}"))?;
            out.extend_from_slice(&value);
            n += 1;
        } else if next.is_ascii_alphabetic() {
            let value = handle(next, None).map_err(|e| format!("{e} at position {n}"))?;
            out.extend_from_slice(&value);
            n += 1;
        } else {
            return Err(format!(
                "Unknown directive '{}' at position {n}",
                char::from(next)
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn names(f: &[&str]) -> Vec<String> {
        f.iter().map(|s| (*s).to_owned()).collect()
    }

    fn deliver(filters: &[&str], sub: &[(&str, &str)], publ: &[(&str, &str)]) -> bool {
        let (sub, publ, ids) = (map(sub), map(publ), map(&[("a", "1"), ("b", "1")]));
        let subscribed = |c: &str| ids.contains_key(c);
        let ctx = FilterContext {
            sub_meta: &sub,
            pub_meta: &publ,
            prev_ids: &ids,
            subscribed: &subscribed,
        };
        should_deliver(&names(filters), &ctx)
    }

    #[test]
    fn delivery() {
        type Case<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            bool,
        );
        let cases: &[Case<'_>] = &[
            (
                &["skip-self"],
                &[("user", "alice")],
                &[("sender", "alice")],
                false,
            ),
            (
                &["skip-self"],
                &[("user", "alice")],
                &[("sender", "bob")],
                true,
            ),
            (&["skip-self"], &[], &[("sender", "")], true),
            (&["skip-self"], &[("user", "")], &[("sender", "")], true),
            (&[], &[("user", "alice")], &[("sender", "alice")], true),
            (
                &["skip-users"],
                &[("user", "alice")],
                &[("skip_users", "bob, alice")],
                false,
            ),
            (
                &["skip-users"],
                &[("user", "alice")],
                &[("skip_users", "bob,carol")],
                true,
            ),
            (
                &["skip-users"],
                &[("user", "anonymous")],
                &[("skip_users", "42,anonymous")],
                false,
            ),
            (&["skip-users"], &[], &[("skip_users", "bob")], true),
            (&["require-sub"], &[], &[("require_sub", "b")], true),
            (&["require-sub"], &[], &[("require_sub", "c")], false),
            (&["require-sub"], &[], &[], true),
            (
                &["unknown-filter"],
                &[("user", "a")],
                &[("sender", "a")],
                true,
            ),
            (
                &["build-id", "skip-self"],
                &[("user", "a")],
                &[("sender", "a")],
                false,
            ),
        ];
        for (filters, sub, publ, expected) in cases {
            assert_eq!(
                deliver(filters, sub, publ),
                *expected,
                "{filters:?} {sub:?} {publ:?}"
            );
        }
    }

    fn check(
        filters: &[&str],
        sub: &[(&str, &str)],
        ids: &[(&str, &str)],
        input: &str,
        expected: Result<&str, FilterError>,
    ) {
        let (sub, publ, ids) = (map(sub), map(&[]), map(ids));
        let ctx = FilterContext {
            sub_meta: &sub,
            pub_meta: &publ,
            prev_ids: &ids,
            subscribed: &|_| true,
        };
        let got = apply_content_filters(&names(filters), &ctx, Bytes::from(input.to_owned()));
        let got = got.map(|b| String::from_utf8(b.to_vec()).unwrap());
        assert_eq!(
            got.as_deref().map_err(Clone::clone),
            expected,
            "{filters:?} {input:?}"
        );
    }

    #[test]
    fn content() {
        let fmt = [("id_format", "x:%(x)s")];
        let es = [
            ("id_format", "wire-eef5ba:%(events-wire-eef5ba)s"),
            ("user", "anonymous"),
        ];
        let es_ids = [("events-wire-eef5ba", "1")];
        check(
            &["build-id"],
            &fmt,
            &[("x", "2")],
            "id: %I\n",
            Ok("id: x:2\n"),
        );
        check(
            &["build-id"],
            &fmt,
            &[("x", "2")],
            "100%% %(abc)I",
            Ok("100% abc"),
        );
        check(
            &["build-id"],
            &[("id_format", "%(x)s"), ("id_encoding", "hex")],
            &[("x", "ab")],
            "%I",
            Ok("6162"),
        );
        check(
            &["build-id"],
            &[],
            &[("x", "2")],
            "%I",
            Err(FilterError::NoIdFormat),
        );
        check(
            &["build-id"],
            &[],
            &[("x", "2")],
            "no percent",
            Err(FilterError::NoIdFormat),
        );
        check(
            &["build-id"],
            &[("id_format", "%(y)s")],
            &[("x", "2")],
            "%I",
            Err(FilterError::RenderId(
                "No such variable 'y' at position 4".into(),
            )),
        );
        check(
            &["build-id"],
            &[("id_format", "x"), ("id_encoding", "b64")],
            &[("x", "2")],
            "%I",
            Err(FilterError::UnsupportedEncoding("b64".into())),
        );
        check(
            &["build-id"],
            &fmt,
            &[],
            "%I",
            Err(FilterError::Format(
                "No ID specified and no default ID in context at position 1".into(),
            )),
        );
        check(&["build-id"], &fmt, &[], "%(lit)I", Ok("lit"));
        check(
            &["build-id"],
            &fmt,
            &[("x", "2")],
            "50%",
            Err(FilterError::Format(
                "Expected directive after '%' at position 2".into(),
            )),
        );
        check(
            &["build-id"],
            &fmt,
            &[("x", "2")],
            "%s",
            Err(FilterError::Format(
                "Unknown directive 's' at position 1".into(),
            )),
        );
        check(
            &["build-id"],
            &fmt,
            &[("x", "2")],
            "%(a",
            Err(FilterError::Format(
                "Unterminated field starting at position 1".into(),
            )),
        );
        check(
            &["build-id"],
            &fmt,
            &[("x", "2")],
            "%!",
            Err(FilterError::Format(
                "Unknown directive '!' at position 1".into(),
            )),
        );
        // django-eventstream send_event, json and raw data.
        check(
            &["build-id", "skip-users"],
            &es,
            &es_ids,
            "event: message\nid: %I\ndata: {\"text\": \"hi 100%%\"}\n\n",
            Ok("event: message\nid: wire-eef5ba:1\ndata: {\"text\": \"hi 100%\"}\n\n"),
        );
        check(
            &["build-id"],
            &es,
            &es_ids,
            "data: line1\ndata: line2 %%I\n\n",
            Ok("data: line1\ndata: line2 %I\n\n"),
        );
        check(
            &["var-subst"],
            &[("name", "Bob")],
            &[],
            "Hi %(name)s",
            Ok("Hi Bob"),
        );
        check(
            &["var-subst"],
            &[],
            &[],
            "Hi %(name)s",
            Err(FilterError::Format(
                "No such variable 'name' at position 10".into(),
            )),
        );
        check(
            &["var-subst"],
            &[],
            &[],
            "%I",
            Err(FilterError::Format(
                "Unknown directive 'I' at position 1".into(),
            )),
        );
        check(
            &["var-subst"],
            &[("a\\)", "v")],
            &[],
            "%(a\\\\\\))s",
            Ok("v"),
        );
        check(
            &["build-id", "var-subst"],
            &[("id_format", "%(x)s"), ("n", "N")],
            &[("x", "7")],
            "%I %%(n)s",
            Ok("7 N"),
        );
        check(
            &["skip-self", "other"],
            &[],
            &[],
            "%untouched",
            Ok("%untouched"),
        );
    }

    #[test]
    fn fast_path_does_not_copy() {
        let (sub, ids) = (map(&[("id_format", "%(x)s")]), map(&[("x", "1")]));
        let ctx = FilterContext {
            sub_meta: &sub,
            pub_meta: &sub,
            prev_ids: &ids,
            subscribed: &|_| true,
        };
        let input = Bytes::from_static(b"plain");
        for filters in [
            names(&[]),
            names(&["skip-self"]),
            names(&["build-id", "var-subst"]),
        ] {
            let out = apply_content_filters(&filters, &ctx, input.clone()).unwrap();
            assert_eq!(out.as_ptr(), input.as_ptr());
        }
        assert_eq!(
            content_filters_of(&names(&["skip-self", "var-subst", "build-id", "x"])),
            ["var-subst", "build-id"]
        );
    }

    proptest! {
        #[test]
        fn never_panics(content in proptest::collection::vec(any::<u8>(), 0..64), fmt in "[%()a-zI\\\\]{0,16}") {
            let (sub, ids) = (map(&[("id_format", &fmt), ("a", "A")]), map(&[("a", "1")]));
            let ctx = FilterContext { sub_meta: &sub, pub_meta: &sub, prev_ids: &ids, subscribed: &|_| true };
            let _ = apply_content_filters(&names(&["build-id", "var-subst"]), &ctx, Bytes::from(content));
        }
    }
}
