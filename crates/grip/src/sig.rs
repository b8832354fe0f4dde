//! `Grip-Sig`: the JWT the proxy adds to origin requests so origins can trust GRIP headers.
//!
//! Pushpin signs HS256 tokens whose claims are exactly `{"iss": <sig_iss>, "exp": now + 3600}`,
//! and validates an incoming `Grip-Sig` against `upstream_key` to recognise a trusted upstream
//! proxy. Time is injected (`now_unix`) so callers and tests control the clock.
//!
//! Key syntax (`sig_key`, `upstream_key`): a plain string, or `base64:<b64>` for a binary secret.
//! `file:<path>` needs file I/O, so [`SigKey::parse`] reports it as [`SigKeyError::NeedsFile`] and
//! the daemon reads the file and calls [`SigKey::from_file_contents`].

use std::fmt;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::value::decode_base64;

/// Lifetime of a signature, in seconds.
pub const SIG_LIFETIME_SECS: u64 = 3600;

/// A shared HS256 secret. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigKey {
    secret: Vec<u8>,
}

/// Why a key spec could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigKeyError {
    /// `file:<path>`: the caller must read the file and use [`SigKey::from_file_contents`].
    #[error("key must be read from file {0}")]
    NeedsFile(String),
    #[error("invalid base64 key")]
    InvalidBase64,
    /// PEM keys (ES256/RS256 in Pushpin 1.36) are not supported.
    #[error("unsupported key file format")]
    UnsupportedFile,
}

/// Why a token could not be signed.
#[derive(Debug, Error)]
#[error("failed to sign Grip-Sig: {0}")]
pub struct SigError(#[from] jsonwebtoken::errors::Error);

#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    exp: u64,
}

// === impl SigKey ===

impl SigKey {
    /// Parses a key spec: `base64:<b64>` or a plain string (`file:` → [`SigKeyError::NeedsFile`]).
    pub fn parse(spec: &str) -> Result<Self, SigKeyError> {
        if let Some(b64) = spec.strip_prefix("base64:") {
            let secret = decode_base64(b64.as_bytes()).ok_or(SigKeyError::InvalidBase64)?;
            return Ok(Self { secret });
        }
        if let Some(path) = spec.strip_prefix("file:") {
            return Err(SigKeyError::NeedsFile(path.to_owned()));
        }
        Ok(Self::from_bytes(spec.as_bytes().to_vec()))
    }

    /// A key from raw secret bytes.
    pub fn from_bytes(secret: Vec<u8>) -> Self {
        Self { secret }
    }

    /// A key from the contents of a `file:` key: a hex-encoded secret (Pushpin 1.38+),
    /// surrounding whitespace ignored. PEM files are not supported.
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, SigKeyError> {
        let text = contents.trim_ascii();
        if text.starts_with(b"-----") || text.len() % 2 == 1 {
            return Err(SigKeyError::UnsupportedFile);
        }
        let secret = text
            .chunks(2)
            .map(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|s| u8::from_str_radix(s, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or(SigKeyError::UnsupportedFile)?;
        Ok(Self { secret })
    }

    /// The secret bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.secret
    }
}

impl fmt::Debug for SigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigKey(<redacted>)")
    }
}

/// Signs a `Grip-Sig` token: HS256, claims exactly `{"iss": iss, "exp": now + 3600}`.
pub fn sign(iss: &str, key: &SigKey, now_unix: u64) -> Result<String, SigError> {
    let claims = Claims {
        iss: iss.to_owned(),
        exp: now_unix.saturating_add(SIG_LIFETIME_SECS),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&key.secret),
    )?)
}

/// Whether `token` is an HS256 JWT signed with `key` whose `exp` is after `now_unix`. The
/// issuer is not checked (Pushpin does not check it for upstream keys).
pub fn validate(token: &str, key: &SigKey, now_unix: u64) -> bool {
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry is checked below against the injected clock, not the system one.
    validation.validate_exp = false;
    validation.required_spec_claims.clear();
    let Ok(data) = jsonwebtoken::decode::<serde_json::Value>(
        token,
        &DecodingKey::from_secret(&key.secret),
        &validation,
    ) else {
        return false;
    };
    data.claims
        .get("exp")
        .and_then(serde_json::Value::as_u64)
        .is_some_and(|exp| exp > now_unix)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine;

    fn part(token: &str, n: usize) -> serde_json::Value {
        let b64 = token.split('.').nth(n).unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .unwrap();
        serde_json::from_slice(&raw).unwrap()
    }

    #[test]
    fn signs_exact_claims_and_verifies() {
        let key = SigKey::parse("changeme").unwrap();
        let token = sign("pushpin", &key, 1_000).unwrap();
        assert_eq!(
            part(&token, 0),
            serde_json::json!({"typ": "JWT", "alg": "HS256"})
        );
        assert_eq!(
            part(&token, 1),
            serde_json::json!({"iss": "pushpin", "exp": 4600})
        );
        assert!(validate(&token, &key, 1_000));
        assert!(validate(&token, &key, 4_599));
        assert!(!validate(&token, &key, 4_600));
        assert!(!validate(&token, &SigKey::parse("other").unwrap(), 1_000));
        assert!(!validate("not.a.jwt", &key, 1_000));
        assert!(!validate("", &key, 1_000));
    }

    #[test]
    fn key_specs() {
        assert_eq!(SigKey::parse("base64:AAEC").unwrap().as_bytes(), &[0, 1, 2]);
        assert_eq!(SigKey::parse("plain").unwrap().as_bytes(), b"plain");
        assert_eq!(SigKey::parse("base64:***"), Err(SigKeyError::InvalidBase64));
        assert_eq!(
            SigKey::parse("file:keys/sig"),
            Err(SigKeyError::NeedsFile("keys/sig".into()))
        );
        assert_eq!(
            SigKey::from_file_contents(b"0a0B\n").unwrap().as_bytes(),
            &[10, 11]
        );
        assert_eq!(
            SigKey::from_file_contents(b"-----BEGIN EC PRIVATE KEY-----"),
            Err(SigKeyError::UnsupportedFile)
        );
        assert_eq!(
            format!("{:?}", SigKey::parse("secret").unwrap()),
            "SigKey(<redacted>)"
        );
    }

    #[test]
    fn validates_tokens_from_other_signers() {
        // A token with claims in the other order and an extra header field still validates.
        let key = SigKey::parse("changeme").unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k".into());
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"exp": 5000, "iss": "x"}),
            &EncodingKey::from_secret(b"changeme"),
        )
        .unwrap();
        assert!(validate(&token, &key, 10));
    }
}
