//! A read-only view shared by JSON and tnetstring documents.
//!
//! Publish items arrive as JSON (HTTP, `J` on ZMQ) or as tnetstrings (bare or `T` on ZMQ), and
//! Pushpin validates both with the same rules and the same error texts. Parsing code is written
//! once against [`Node`]. The one real difference is kept visible through [`Node::IS_JSON`]:
//! `*-bin` fields are base64 text in JSON but raw bytes in tnetstrings.

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use crate::tnetstring::Tn;

/// Read access to a decoded document node.
pub(crate) trait Node: Sized {
    /// Whether the document came from JSON (where binary data is base64 text).
    const IS_JSON: bool;
    fn is_object(&self) -> bool;
    /// A member of an object (`None` when absent or when `self` is not an object).
    fn field(&self, key: &str) -> Option<&Self>;
    /// Members of an object, in document order.
    fn entries(&self) -> Vec<(String, &Self)>;
    /// A string value (JSON string, or tnetstring bytes read as UTF-8, lossily).
    fn text(&self) -> Option<String>;
    /// A string value as bytes (JSON string as UTF-8, tnetstring bytes as they are).
    fn bytes(&self) -> Option<Bytes>;
    /// A number, truncated to an integer.
    fn int(&self) -> Option<i64>;
    fn boolean(&self) -> Option<bool>;
    fn list(&self) -> Option<&[Self]>;
    fn to_json(&self) -> Value;
}

impl Node for Value {
    const IS_JSON: bool = true;

    fn is_object(&self) -> bool {
        self.is_object()
    }

    fn field(&self, key: &str) -> Option<&Self> {
        self.as_object().and_then(|o| o.get(key))
    }

    fn entries(&self) -> Vec<(String, &Self)> {
        self.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v)).collect())
            .unwrap_or_default()
    }

    fn text(&self) -> Option<String> {
        self.as_str().map(str::to_owned)
    }

    fn bytes(&self) -> Option<Bytes> {
        self.as_str().map(|s| Bytes::copy_from_slice(s.as_bytes()))
    }

    fn int(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            _ => None,
        }
    }

    fn boolean(&self) -> Option<bool> {
        self.as_bool()
    }

    fn list(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }

    fn to_json(&self) -> Value {
        self.clone()
    }
}

impl Node for Tn {
    const IS_JSON: bool = false;

    fn is_object(&self) -> bool {
        matches!(self, Tn::Dict(_))
    }

    fn field(&self, key: &str) -> Option<&Self> {
        self.get(key)
    }

    fn entries(&self) -> Vec<(String, &Self)> {
        match self {
            Tn::Dict(d) => d
                .iter()
                .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), v))
                .collect(),
            _ => Vec::new(),
        }
    }

    fn text(&self) -> Option<String> {
        match self {
            Tn::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    fn bytes(&self) -> Option<Bytes> {
        match self {
            Tn::Bytes(b) => Some(b.clone()),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Tn::Int(i) => Some(*i),
            Tn::Float(f) => Some(*f as i64),
            _ => None,
        }
    }

    fn boolean(&self) -> Option<bool> {
        match self {
            Tn::Bool(b) => Some(*b),
            _ => None,
        }
    }

    fn list(&self) -> Option<&[Self]> {
        match self {
            Tn::List(l) => Some(l),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        Tn::to_json(self)
    }
}

/// A member that must be a string when present. Errors carry Pushpin's wording.
pub(crate) fn get_string<N: Node>(
    obj: &N,
    pn: &str,
    key: &str,
    required: bool,
) -> Result<Option<String>, String> {
    match obj.field(key) {
        None if required => Err(format!("{pn} does not contain '{key}'")),
        None => Ok(None),
        Some(v) => v
            .text()
            .map(Some)
            .ok_or_else(|| format!("{pn} contains '{key}' with wrong type")),
    }
}

/// A member that must be a list when present.
pub(crate) fn get_list<'a, N: Node>(
    obj: &'a N,
    pn: &str,
    key: &str,
    required: bool,
) -> Result<Option<&'a [N]>, String> {
    match obj.field(key) {
        None if required => Err(format!("{pn} does not contain '{key}'")),
        None => Ok(None),
        Some(v) => v
            .list()
            .map(Some)
            .ok_or_else(|| format!("{pn} contains '{key}' with wrong type")),
    }
}

/// A member that must be an object when present.
pub(crate) fn get_object<'a, N: Node>(
    obj: &'a N,
    pn: &str,
    key: &str,
) -> Result<Option<&'a N>, String> {
    match obj.field(key) {
        None => Ok(None),
        Some(v) if v.is_object() => Ok(Some(v)),
        Some(_) => Err(format!("{pn} contains '{key}' with wrong type")),
    }
}

/// A member that must be a number when present (truncated to an integer).
pub(crate) fn get_int<N: Node>(obj: &N, pn: &str, key: &str) -> Result<Option<i64>, String> {
    match obj.field(key) {
        None => Ok(None),
        Some(v) => v
            .int()
            .map(Some)
            .ok_or_else(|| format!("{pn} contains '{key}' with wrong type")),
    }
}

/// A list of strings (filters); `elem_err` is the text for a non-string element.
pub(crate) fn get_string_list<N: Node>(
    obj: &N,
    pn: &str,
    key: &str,
    elem_err: &str,
) -> Result<Option<Vec<String>>, String> {
    let Some(list) = get_list(obj, pn, key, false)? else {
        return Ok(None);
    };
    list.iter()
        .map(|v| v.text().ok_or_else(|| elem_err.to_owned()))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// A `meta`-style object whose values must all be strings.
pub(crate) fn get_string_map<N: Node>(
    obj: &N,
    pn: &str,
    key: &str,
) -> Result<Vec<(String, String)>, String> {
    let Some(m) = get_object(obj, pn, key)? else {
        return Ok(Vec::new());
    };
    m.entries()
        .into_iter()
        .map(|(k, v)| match v.text() {
            Some(t) => Ok((k, t)),
            None => Err(format!("'{key}' contains '{k}' with wrong type")),
        })
        .collect()
}

/// HTTP headers given either as an object or as a list of `[name, value]` pairs.
pub(crate) fn get_headers<N: Node>(obj: &N, pn: &str) -> Result<Vec<(String, String)>, String> {
    let Some(v) = obj.field("headers") else {
        return Ok(Vec::new());
    };
    if let Some(list) = v.list() {
        let mut out = Vec::with_capacity(list.len());
        for pair in list {
            let Some(pair) = pair.list() else {
                return Err("headers contains element with wrong type".to_owned());
            };
            let [name, value] = pair else {
                return Err("headers contains list with wrong number of elements".to_owned());
            };
            let name = name
                .text()
                .ok_or("header contains name element with wrong type")?;
            let value = value
                .text()
                .ok_or("header contains value element with wrong type")?;
            out.push((name, value));
        }
        Ok(out)
    } else if v.is_object() {
        v.entries()
            .into_iter()
            .map(|(k, val)| match val.text() {
                Some(t) => Ok((k, t)),
                None => Err(format!("headers contains '{k}' with wrong type")),
            })
            .collect()
    } else {
        Err(format!("{pn} contains 'headers' with wrong type"))
    }
}

/// Decodes base64 the forgiving way Qt's `fromBase64` does: whitespace is ignored and padding is
/// optional. Both the standard and URL-safe alphabets are accepted. `None` when it is not base64.
pub(crate) fn decode_base64(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, CONFIG);
    const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, CONFIG);
    let cleaned: Vec<u8> = text
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(&cleaned)
        .or_else(|_| URL_SAFE.decode(&cleaned))
        .ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_forgiving() {
        assert_eq!(decode_base64(b"cGluZzMK").unwrap(), b"ping3\n");
        assert_eq!(decode_base64(b"cGluZzM").unwrap(), b"ping3");
        assert_eq!(decode_base64(b"cGlu\nZzM=").unwrap(), b"ping3");
        assert_eq!(decode_base64(b"").unwrap(), b"");
        assert!(decode_base64(b"***").is_none());
    }
}
