//! Standard Webhooks signatures (docs/rules.md "Webhook contract").
//!
//! `webhook-signature` is a space-separated list of `v1,<base64 HMAC-SHA256>` over
//! `"{webhook-id}.{webhook-timestamp}.{raw body}"`, keyed with the bytes of a
//! `whsec_<base64>` secret. Several secrets may be configured (rotation): any valid one
//! passes. The comparison is constant-time (`Mac::verify_slice`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "whsec_";

/// Why a request failed verification (all map to `401`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from now (tolerance {1} s)")]
    Stale(i64, u64),
    #[error("webhook-signature has no v1 signature")]
    NoV1Signature,
    #[error("no signature matches any configured secret")]
    Mismatch,
}

/// A decoded signing key.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([redacted])")
    }
}

/// Decode `whsec_<base64>` (the prefix is optional, as in the reference libraries).
pub fn decode_secret(secret: &str) -> Result<SigningKey, String> {
    let b64 = secret.strip_prefix(PREFIX).unwrap_or(secret);
    let key = STANDARD
        .decode(b64)
        .map_err(|e| format!("secret is not whsec_<base64>: {e}"))?;
    if key.is_empty() {
        return Err("secret is empty".into());
    }
    Ok(SigningKey(key))
}

impl SigningKey {
    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of a message (used by the demo sender and tests).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }
}

/// Verifies requests against every configured secret.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: Vec<SigningKey>,
    tolerance_secs: u64,
}

impl Verifier {
    pub fn new(secrets: &[impl AsRef<str>], tolerance_secs: u64) -> Result<Self, String> {
        let keys = secrets
            .iter()
            .map(|s| decode_secret(s.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys,
            tolerance_secs,
        })
    }

    /// Verify headers + raw body at `now` (unix seconds).
    pub fn verify(
        &self,
        id: Option<&str>,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let id = id.ok_or(SignatureError::MissingHeader("webhook-id"))?;
        let ts_raw = timestamp.ok_or(SignatureError::MissingHeader("webhook-timestamp"))?;
        let sig_header = signature.ok_or(SignatureError::MissingHeader("webhook-signature"))?;
        let ts: i64 = ts_raw
            .trim()
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let skew = now.saturating_sub(ts);
        if skew.unsigned_abs() > self.tolerance_secs {
            return Err(SignatureError::Stale(skew, self.tolerance_secs));
        }
        let candidates: Vec<Vec<u8>> = sig_header
            .split(' ')
            .filter_map(|part| part.strip_prefix("v1,"))
            .filter_map(|b64| STANDARD.decode(b64).ok())
            .collect();
        if candidates.is_empty() {
            return Err(SignatureError::NoV1Signature);
        }
        for key in &self.keys {
            let mac = key.mac(id, ts_raw.trim(), body);
            for sig in &candidates {
                if mac.clone().verify_slice(sig).is_ok() {
                    return Ok(());
                }
            }
        }
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn standard_webhooks_reference_vector() {
        // Vector from the Standard Webhooks specification's reference test suite.
        let key = decode_secret(SECRET).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = key.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let v = Verifier::new(&[SECRET], 300).unwrap();
        v.verify(
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek"),
            Some("1614265330"),
            Some(&sig),
            body,
            1614265330,
        )
        .unwrap();
    }

    #[test]
    fn rejection_paths() {
        let key = decode_secret(SECRET).unwrap();
        let v = Verifier::new(&[SECRET], 300).unwrap();
        let body = b"{}";
        let now = 1_700_000_000;
        let sig = key.sign("evt_1", now, body);
        let ts = now.to_string();
        assert_eq!(
            v.verify(None, Some(&ts), Some(&sig), body, now),
            Err(SignatureError::MissingHeader("webhook-id"))
        );
        assert_eq!(
            v.verify(Some("evt_1"), None, Some(&sig), body, now),
            Err(SignatureError::MissingHeader("webhook-timestamp"))
        );
        assert_eq!(
            v.verify(Some("evt_1"), Some(&ts), None, body, now),
            Err(SignatureError::MissingHeader("webhook-signature"))
        );
        assert_eq!(
            v.verify(Some("evt_1"), Some("soon"), Some(&sig), body, now),
            Err(SignatureError::BadTimestamp)
        );
        assert!(matches!(
            v.verify(Some("evt_1"), Some(&ts), Some(&sig), body, now + 301),
            Err(SignatureError::Stale(301, 300))
        ));
        assert!(matches!(
            v.verify(Some("evt_1"), Some(&ts), Some(&sig), body, now - 301),
            Err(SignatureError::Stale(-301, 300))
        ));
        assert_eq!(
            v.verify(Some("evt_1"), Some(&ts), Some("v2,abc"), body, now),
            Err(SignatureError::NoV1Signature)
        );
        assert_eq!(
            v.verify(Some("evt_2"), Some(&ts), Some(&sig), body, now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            v.verify(Some("evt_1"), Some(&ts), Some(&sig), b"{ }", now),
            Err(SignatureError::Mismatch)
        );
        // Within tolerance on both sides.
        v.verify(Some("evt_1"), Some(&ts), Some(&sig), body, now + 300)
            .unwrap();
        v.verify(Some("evt_1"), Some(&ts), Some(&sig), body, now - 300)
            .unwrap();
    }

    #[test]
    fn rotation_and_multiple_signatures() {
        let old = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let new = "whsec_dGhpcyBpcyB0aGUgbmV3IHNlY3JldA==";
        let v = Verifier::new(&[new, old], 300).unwrap();
        let now = 1_700_000_000;
        let by_old = decode_secret(old).unwrap().sign("e", now, b"x");
        let by_other = decode_secret("whsec_b3RoZXI=")
            .unwrap()
            .sign("e", now, b"x");
        // The sender lists several signatures; one valid one is enough.
        let header = format!("v1,bm90LWEtc2ln {by_other} {by_old}");
        v.verify(Some("e"), Some(&now.to_string()), Some(&header), b"x", now)
            .unwrap();
        assert_eq!(
            v.verify(
                Some("e"),
                Some(&now.to_string()),
                Some(&by_other),
                b"x",
                now
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn bad_secrets_are_reported() {
        assert!(decode_secret("whsec_!!!").is_err());
        assert!(decode_secret("whsec_").is_err());
        assert!(Verifier::new(&["whsec_%%"], 300).is_err());
    }
}
