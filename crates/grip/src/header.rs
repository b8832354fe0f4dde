//! GRIP header-value syntax, shared by every `Grip-*` header.
//!
//! A header may be repeated, and one header value may hold several comma-separated values; commas
//! inside double quotes do not split. Each value is `first[; name[=value]]*`, where `value` may be a
//! quoted-string with backslash escapes. The first token is taken verbatim up to the first `;`
//! (it is not quote-aware, so `<uri>` links and keep-alive data survive untouched).
//!
//! This mirrors Pushpin's header parser so origins see the same acceptance rules: values are
//! trimmed of ASCII whitespace, parameter names are matched case-insensitively, values are kept
//! case-sensitive, and a parameter without `=` has no value (`None`), which differs from an empty
//! value (`Some("")`).

use thiserror::Error;

/// One parsed header value: `first; name=value; flag`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderItem {
    /// The leading token, verbatim (trimmed), e.g. the channel name or `<uri>`.
    pub first: String,
    /// Parameters in order; names as written, values unquoted. `None` for a bare `name`.
    pub params: Vec<(String, Option<String>)>,
}

/// Why a header value could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// A quoted-string was not closed.
    #[error("unterminated quoted string in header value")]
    UnterminatedQuote,
    /// A backslash was the last character of a quoted-string.
    #[error("dangling escape in header value")]
    DanglingEscape,
}

// === impl HeaderItem ===

impl HeaderItem {
    /// The first parameter called `name` (ASCII case-insensitive): `None` when absent,
    /// `Some(None)` when present without `=`.
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of the first parameter called `name`, if it has one.
    pub fn param_value(&self, name: &str) -> Option<&str> {
        self.param(name).flatten()
    }

    /// Whether a parameter called `name` is present (with or without a value).
    pub fn has_param(&self, name: &str) -> bool {
        self.param(name).is_some()
    }

    /// Values of every parameter called `name`, in order (bare ones are skipped).
    pub fn param_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.params
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .filter_map(|(_, v)| v.as_deref())
    }
}

/// Parses every value of a (possibly repeated) header into items. Strict: any malformed value
/// fails the whole header. (The instruct parser is lenient like Pushpin and skips such values.)
pub fn parse_header_items<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Vec<HeaderItem>, HeaderError> {
    let mut out = Vec::new();
    for value in values {
        for part in split_values(value) {
            out.push(parse_item(part)?);
        }
    }
    Ok(out)
}

/// Splits one header value on commas that are not inside double quotes. Parts are trimmed. Empty
/// parts between commas are kept (callers decide whether that is an error); a trailing comma adds
/// nothing. A part with an unterminated quote runs to the end of the value.
pub fn split_values(value: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut pos = 0;
    while pos < value.len() {
        match find_unquoted_comma(value, pos) {
            Some(end) => {
                parts.push(value[pos..end].trim_ascii());
                pos = end + 1;
            }
            None => {
                parts.push(value[pos..].trim_ascii());
                pos = value.len();
            }
        }
    }
    parts
}

/// Parses one value (already split) as `first[; params]`; the first token is verbatim.
pub fn parse_item(value: &[u8]) -> Result<HeaderItem, HeaderError> {
    let (first, rest) = match value.iter().position(|&b| b == b';') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &value[value.len()..]),
    };
    Ok(HeaderItem {
        first: lossy(first.trim_ascii()),
        params: parse_params(rest)?,
    })
}

/// Parses `name[=value][; name[=value]]*` (every element a parameter, including the first).
/// Used directly for `Grip-Set-Meta`, whose values are `key=value`.
pub fn parse_params(value: &[u8]) -> Result<Vec<(String, Option<String>)>, HeaderError> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < value.len() {
        let Some(at) = value[start..]
            .iter()
            .position(|&b| b == b'=' || b == b';')
            .map(|p| p + start)
        else {
            out.push((lossy(value[start..].trim_ascii()), None));
            break;
        };
        let name = lossy(value[start..at].trim_ascii());
        if value[at] == b';' {
            out.push((name, None));
            start = at + 1;
            continue;
        }
        let vstart = at + 1;
        if value.get(vstart) == Some(&b'"') {
            let (unquoted, after) = parse_quoted(value, vstart + 1)?;
            out.push((name, Some(lossy(&unquoted))));
            // Anything between the closing quote and the next `;` is ignored, as Pushpin does.
            start = match value[after..].iter().position(|&b| b == b';') {
                Some(p) => after + p + 1,
                None => value.len(),
            };
        } else {
            let end = value[vstart..]
                .iter()
                .position(|&b| b == b';')
                .map_or(value.len(), |p| p + vstart);
            out.push((name, Some(lossy(value[vstart..end].trim_ascii()))));
            start = end + 1;
        }
    }
    Ok(out)
}

/// Quotes `s` as a header quoted-string, escaping `"` and `\`.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Position of the next comma outside quotes, from `offset`. `None` means "to the end" (no comma,
/// or a broken quote that swallows the rest).
fn find_unquoted_comma(value: &[u8], offset: usize) -> Option<usize> {
    let mut in_quote = false;
    let mut n = offset;
    while n < value.len() {
        let c = value[n];
        if in_quote {
            if c == b'\\' {
                n += 1;
            } else if c == b'"' {
                in_quote = false;
            }
        } else if c == b'"' {
            in_quote = true;
        } else if c == b',' {
            return Some(n);
        }
        n += 1;
    }
    None
}

/// Reads a quoted-string body starting just after the opening quote. Returns the unescaped bytes
/// and the index just after the closing quote.
fn parse_quoted(value: &[u8], mut n: usize) -> Result<(Vec<u8>, usize), HeaderError> {
    let mut out = Vec::new();
    while n < value.len() {
        match value[n] {
            b'\\' => {
                let escaped = value.get(n + 1).ok_or(HeaderError::DanglingEscape)?;
                out.push(*escaped);
                n += 2;
            }
            b'"' => return Ok((out, n + 1)),
            c => {
                out.push(c);
                n += 1;
            }
        }
    }
    Err(HeaderError::UnterminatedQuote)
}

pub(crate) fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(first: &str, params: &[(&str, Option<&str>)]) -> HeaderItem {
        HeaderItem {
            first: first.to_owned(),
            params: params
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.map(str::to_owned)))
                .collect(),
        }
    }

    fn check(values: &[&str], expected: Result<Vec<HeaderItem>, HeaderError>) {
        let got = parse_header_items(values.iter().map(|v| v.as_bytes()));
        assert_eq!(got, expected, "input {values:?}");
    }

    #[test]
    fn parses_items() {
        check(&["a"], Ok(vec![item("a", &[])]));
        check(
            &["a, b", "c"],
            Ok(vec![item("a", &[]), item("b", &[]), item("c", &[])]),
        );
        check(
            &["a; x=1; y"],
            Ok(vec![item("a", &[("x", Some("1")), ("y", None)])]),
        );
        check(
            &["a; x=\"1, 2\", b"],
            Ok(vec![item("a", &[("x", Some("1, 2"))]), item("b", &[])]),
        );
        check(
            &["a; x=\"q\\\"q\""],
            Ok(vec![item("a", &[("x", Some("q\"q"))])]),
        );
        check(
            &["a; x=\"q\" junk; y=2"],
            Ok(vec![item("a", &[("x", Some("q")), ("y", Some("2"))])]),
        );
        check(&["a; x="], Ok(vec![item("a", &[("x", Some(""))])]));
        check(
            &["  a  ;  x = 1  "],
            Ok(vec![item("a", &[("x", Some("1"))])]),
        );
        check(&["a,"], Ok(vec![item("a", &[])]));
        check(
            &["a,,b"],
            Ok(vec![item("a", &[]), item("", &[]), item("b", &[])]),
        );
        check(&[""], Ok(vec![]));
        check(&["a; x=\"open"], Err(HeaderError::UnterminatedQuote));
        check(&["a; x=\"open\\"], Err(HeaderError::DanglingEscape));
        check(
            &["<http://a/?x=1;y>; rel=next"],
            Ok(vec![item(
                "<http://a/?x=1",
                &[("y>", None), ("rel", Some("next"))],
            )]),
        );
    }

    #[test]
    fn django_eventstream_channel() {
        check(
            &["events-x; prev-id=0; filter=build-id; filter=skip-users, user-anonymous; filter=require-sub"],
            Ok(vec![
                item(
                    "events-x",
                    &[
                        ("prev-id", Some("0")),
                        ("filter", Some("build-id")),
                        ("filter", Some("skip-users")),
                    ],
                ),
                item("user-anonymous", &[("filter", Some("require-sub"))]),
            ]),
        );
    }

    #[test]
    fn params_mode_and_lookup() {
        let p = parse_params(b"id_format=\"a:%(b)s\"").unwrap();
        assert_eq!(
            p,
            vec![("id_format".to_owned(), Some("a:%(b)s".to_owned()))]
        );
        let it = parse_item(b"c; Prev-Id=5; filter=a; filter=b").unwrap();
        assert_eq!(it.param_value("prev-id"), Some("5"));
        assert_eq!(it.param_values("filter").collect::<Vec<_>>(), ["a", "b"]);
        assert!(!it.has_param("x"));
    }

    #[test]
    fn quote_round_trips() {
        for s in ["plain", "with \"quotes\"", "back\\slash", "a, b; c"] {
            let q = quote(s);
            let p = parse_params(format!("k={q}").as_bytes()).unwrap();
            assert_eq!(p[0].1.as_deref(), Some(s));
        }
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_header_items([bytes.as_slice()]);
            let _ = parse_params(&bytes);
        }

        #[test]
        fn quote_round_trip_any(s in "\\PC*") {
            let q = quote(&s);
            let p = parse_params(format!("k={q}").as_bytes()).unwrap();
            prop_assert_eq!(p[0].1.as_deref(), Some(s.as_str()));
        }
    }
}
