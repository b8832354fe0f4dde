//! tnetstrings: the self-delimiting encoding used on Pushpin's ZeroMQ publish sockets.
//!
//! Each value is `<decimal length>:<payload><type>` with types `,` bytes, `#` integer, `^` float,
//! `!` boolean, `~` null, `]` list and `}` dict (alternating keys and values, keys are bytes).
//! The parser is total: truncated input, oversized lengths, bad payloads and nesting deeper than
//! [`MAX_DEPTH`] are errors, never panics (Pushpin 1.36's handler exits on such input; we must
//! not).

use bytes::Bytes;
use serde_json::{Map, Number, Value};
use thiserror::Error;

/// Deepest nesting of lists/dicts accepted, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 64;

/// Most digits accepted in a length prefix (the tnetstring spec's limit).
const LENGTH_DIGITS_MAX: usize = 9;

/// A tnetstring value.
#[derive(Debug, Clone, PartialEq)]
pub enum Tn {
    Bytes(Bytes),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    List(Vec<Tn>),
    /// Entries in wire order; keys are byte strings.
    Dict(Vec<(Bytes, Tn)>),
}

/// Why a tnetstring could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TnError {
    #[error("invalid tnetstring length prefix")]
    InvalidLength,
    #[error("truncated tnetstring")]
    Truncated,
    #[error("unknown tnetstring type {0:#04x}")]
    UnknownType(u8),
    #[error("invalid tnetstring {0} payload")]
    InvalidPayload(&'static str),
    #[error("tnetstring dict key is not a byte string")]
    InvalidDictKey,
    #[error("tnetstring nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("trailing bytes after tnetstring")]
    TrailingBytes,
}

/// Parses one value from the front of `input`, returning it and the unconsumed rest.
pub fn parse(input: &[u8]) -> Result<(Tn, &[u8]), TnError> {
    parse_at_depth(input, 0)
}

/// Parses exactly one value; trailing bytes are an error.
pub fn parse_exact(input: &[u8]) -> Result<Tn, TnError> {
    let (value, rest) = parse(input)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(TnError::TrailingBytes)
    }
}

/// Encodes a value.
pub fn encode(value: &Tn) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

// === impl Tn ===

impl Tn {
    /// Converts to JSON. Byte strings become JSON strings (lossy only when not UTF-8); non-finite
    /// floats become `null`.
    pub fn to_json(&self) -> Value {
        match self {
            Tn::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
            Tn::Int(i) => Value::Number((*i).into()),
            Tn::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Tn::Bool(b) => Value::Bool(*b),
            Tn::Null => Value::Null,
            Tn::List(l) => Value::Array(l.iter().map(Tn::to_json).collect()),
            Tn::Dict(d) => {
                let mut map = Map::new();
                for (k, v) in d {
                    map.insert(String::from_utf8_lossy(k).into_owned(), v.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// Converts from JSON. Strings become byte strings; integers that fit `i64` become `Int`,
    /// other numbers `Float`.
    pub fn from_json(value: &Value) -> Tn {
        match value {
            Value::Null => Tn::Null,
            Value::Bool(b) => Tn::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Tn::Int(i),
                None => Tn::Float(n.as_f64().unwrap_or(0.0)),
            },
            Value::String(s) => Tn::Bytes(Bytes::copy_from_slice(s.as_bytes())),
            Value::Array(a) => Tn::List(a.iter().map(Tn::from_json).collect()),
            Value::Object(o) => Tn::Dict(
                o.iter()
                    .map(|(k, v)| (Bytes::copy_from_slice(k.as_bytes()), Tn::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The value stored under `key` in a dict (last one wins, like a hash insert).
    pub fn get(&self, key: &str) -> Option<&Tn> {
        match self {
            Tn::Dict(d) => d
                .iter()
                .rev()
                .find(|(k, _)| k.as_ref() == key.as_bytes())
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

fn parse_at_depth(input: &[u8], depth: usize) -> Result<(Tn, &[u8]), TnError> {
    if depth > MAX_DEPTH {
        return Err(TnError::TooDeep);
    }
    let colon = input
        .iter()
        .take(LENGTH_DIGITS_MAX + 1)
        .position(|&b| b == b':')
        .ok_or(if input.len() <= LENGTH_DIGITS_MAX {
            TnError::Truncated
        } else {
            TnError::InvalidLength
        })?;
    let digits = &input[..colon];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(TnError::InvalidLength);
    }
    let len = digits
        .iter()
        .fold(0usize, |acc, d| acc * 10 + usize::from(d - b'0'));
    let body = &input[colon + 1..];
    // Need the payload plus the type byte.
    if body.len() <= len {
        return Err(TnError::Truncated);
    }
    let payload = &body[..len];
    let kind = body[len];
    let rest = &body[len + 1..];
    let value = match kind {
        b',' => Tn::Bytes(Bytes::copy_from_slice(payload)),
        b'#' => Tn::Int(
            std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(TnError::InvalidPayload("integer"))?,
        ),
        b'^' => Tn::Float(
            std::str::from_utf8(payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(TnError::InvalidPayload("float"))?,
        ),
        b'!' => match payload {
            b"true" => Tn::Bool(true),
            b"false" => Tn::Bool(false),
            _ => return Err(TnError::InvalidPayload("boolean")),
        },
        b'~' if payload.is_empty() => Tn::Null,
        b'~' => return Err(TnError::InvalidPayload("null")),
        b']' => {
            let mut items = Vec::new();
            let mut p = payload;
            while !p.is_empty() {
                let (v, r) = parse_at_depth(p, depth + 1)?;
                items.push(v);
                p = r;
            }
            Tn::List(items)
        }
        b'}' => {
            let mut entries = Vec::new();
            let mut p = payload;
            while !p.is_empty() {
                let (k, r) = parse_at_depth(p, depth + 1)?;
                let Tn::Bytes(k) = k else {
                    return Err(TnError::InvalidDictKey);
                };
                if r.is_empty() {
                    return Err(TnError::Truncated);
                }
                let (v, r) = parse_at_depth(r, depth + 1)?;
                entries.push((k, v));
                p = r;
            }
            Tn::Dict(entries)
        }
        other => return Err(TnError::UnknownType(other)),
    };
    Ok((value, rest))
}

fn encode_into(value: &Tn, out: &mut Vec<u8>) {
    let frame = |payload: &[u8], kind: u8, out: &mut Vec<u8>| {
        out.extend_from_slice(payload.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(payload);
        out.push(kind);
    };
    match value {
        Tn::Bytes(b) => frame(b, b',', out),
        Tn::Int(i) => frame(i.to_string().as_bytes(), b'#', out),
        Tn::Float(f) => frame(format!("{f:?}").as_bytes(), b'^', out),
        Tn::Bool(b) => frame(if *b { b"true" } else { b"false" }, b'!', out),
        Tn::Null => frame(b"", b'~', out),
        Tn::List(items) => {
            let mut payload = Vec::new();
            for item in items {
                encode_into(item, &mut payload);
            }
            frame(&payload, b']', out);
        }
        Tn::Dict(entries) => {
            let mut payload = Vec::new();
            for (k, v) in entries {
                encode_into(&Tn::Bytes(k.clone()), &mut payload);
                encode_into(v, &mut payload);
            }
            frame(&payload, b'}', out);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &str) -> Tn {
        Tn::Bytes(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn check(input: &[u8], expected: Result<Tn, TnError>) {
        assert_eq!(
            parse_exact(input),
            expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn parses_values() {
        check(b"3:abc,", Ok(b("abc")));
        check(b"0:,", Ok(b("")));
        check(b"2:42#", Ok(Tn::Int(42)));
        check(b"3:-42#", Ok(Tn::Int(-42)));
        check(b"3:1.5^", Ok(Tn::Float(1.5)));
        check(b"4:true!", Ok(Tn::Bool(true)));
        check(b"5:false!", Ok(Tn::Bool(false)));
        check(b"0:~", Ok(Tn::Null));
        check(b"0:]", Ok(Tn::List(vec![])));
        check(b"8:1:a,1:b,]", Ok(Tn::List(vec![b("a"), b("b")])));
        check(
            b"8:1:k,1:v,}",
            Ok(Tn::Dict(vec![(Bytes::from_static(b"k"), b("v"))])),
        );
    }

    #[test]
    fn rejects_bad_input() {
        check(b"3:abc", Err(TnError::Truncated));
        check(b"5:abc,", Err(TnError::Truncated));
        check(b"T3:abc", Err(TnError::InvalidLength));
        check(b"", Err(TnError::Truncated));
        check(b"3", Err(TnError::Truncated));
        check(b"99999999999:x,", Err(TnError::InvalidLength));
        check(b"999999999:x,", Err(TnError::Truncated));
        check(b":x,", Err(TnError::InvalidLength));
        check(b"3:abc?", Err(TnError::UnknownType(b'?')));
        check(b"2:4x#", Err(TnError::InvalidPayload("integer")));
        check(b"3:yes!", Err(TnError::InvalidPayload("boolean")));
        check(b"1:x~", Err(TnError::InvalidPayload("null")));
        check(b"4:1:k,}", Err(TnError::Truncated));
        check(b"7:1:1#0:~}", Err(TnError::InvalidDictKey));
        check(b"3:abc,x", Err(TnError::TrailingBytes));
        check(b"5:3:ab,]", Err(TnError::Truncated));
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let mut s = b"0:]".to_vec();
        for _ in 0..(MAX_DEPTH + 2) {
            let mut next = format!("{}:", s.len()).into_bytes();
            next.extend_from_slice(&s);
            next.push(b']');
            s = next;
        }
        assert_eq!(parse_exact(&s), Err(TnError::TooDeep));
    }

    #[test]
    fn json_conversion() {
        let v = serde_json::json!({"a": [1, 2.5, true, null, "x"]});
        let tn = Tn::from_json(&v);
        assert_eq!(tn.to_json(), v);
        assert_eq!(parse_exact(&encode(&tn)).unwrap().to_json(), v);
        assert_eq!(tn.get("a").map(|_| ()), Some(()));
    }

    fn arb_tn() -> impl Strategy<Value = Tn> {
        let leaf = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(|v| Tn::Bytes(Bytes::from(v))),
            any::<i64>().prop_map(Tn::Int),
            (-1e12f64..1e12f64).prop_map(Tn::Float),
            any::<bool>().prop_map(Tn::Bool),
            Just(Tn::Null),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Tn::List),
                proptest::collection::vec(
                    (
                        proptest::collection::vec(any::<u8>(), 0..8).prop_map(Bytes::from),
                        inner
                    ),
                    0..6
                )
                .prop_map(Tn::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trip(tn in arb_tn()) {
            prop_assert_eq!(parse_exact(&encode(&tn)), Ok(tn));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn never_panics_structured(s in "[0-9:,#^!~\\]}a-z]{0,40}") {
            let _ = parse(s.as_bytes());
        }
    }
}
