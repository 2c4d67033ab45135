//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! `webhook-signature: v1,<base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))>`
//!
//! The key: a secret written `whsec_<base64>` (the Standard Webhooks format)
//! is base64-decoded after the prefix; any other secret is used as its raw
//! UTF-8 bytes.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

/// The secret could not be turned into a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("must not be empty")]
    Empty,
    #[error("starts with `whsec_` but the rest is not valid base64 (a `whsec_` secret is `whsec_` + base64 of the key; any other text is used as the key bytes)")]
    BadBase64,
}

impl SigningKey {
    /// Builds the key from a configured secret (see module docs).
    pub fn from_secret(secret: &str) -> Result<Self, SecretError> {
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        match secret.strip_prefix("whsec_") {
            Some(b64) => {
                let key = STANDARD
                    .decode(b64.trim())
                    .map_err(|_| SecretError::BadBase64)?;
                if key.is_empty() {
                    return Err(SecretError::Empty);
                }
                Ok(SigningKey(key))
            }
            None => Ok(SigningKey(secret.as_bytes().to_vec())),
        }
    }

    /// The full header value `v1,<base64 signature>`.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        // `new_from_slice` accepts keys of any length for HMAC.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        };
        mac.update(webhook_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let sig = mac.finalize().into_bytes();
        let mut out = String::with_capacity(48);
        out.push_str("v1,");
        STANDARD.encode_string(sig, &mut out);
        out
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification.
    #[test]
    fn standard_webhooks_test_vector() {
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let sig = key.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn raw_secrets_use_their_bytes() {
        let raw = SigningKey::from_secret("not-prefixed").unwrap();
        assert_eq!(raw.0, b"not-prefixed");
        // same key written both ways signs identically
        let b64 = SigningKey::from_secret(&format!("whsec_{}", STANDARD.encode(b"not-prefixed")))
            .unwrap();
        assert_eq!(raw.sign("evt_1_0", 1, b"{}"), b64.sign("evt_1_0", 1, b"{}"));
    }

    #[test]
    fn signature_depends_on_every_part() {
        let k = SigningKey::from_secret("s3cret").unwrap();
        let base = k.sign("evt_1_0", 100, b"{}");
        assert_ne!(base, k.sign("evt_1_1", 100, b"{}"));
        assert_ne!(base, k.sign("evt_1_0", 101, b"{}"));
        assert_ne!(base, k.sign("evt_1_0", 100, b"{ }"));
    }

    #[test]
    fn bad_secrets() {
        assert_eq!(SigningKey::from_secret(""), Err(SecretError::Empty));
        assert_eq!(
            SigningKey::from_secret("whsec_***"),
            Err(SecretError::BadBase64)
        );
        assert_eq!(SigningKey::from_secret("whsec_"), Err(SecretError::Empty));
    }

    #[test]
    fn debug_does_not_leak() {
        let k = SigningKey::from_secret("topsecret").unwrap();
        assert!(!format!("{k:?}").contains("topsecret"));
    }
}
