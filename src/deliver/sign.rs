//! Standard Webhooks signatures (v1, HMAC-SHA256).
//!
//! The signed content is `id.timestamp.body` over the bytes actually sent;
//! one `v1,<base64>` entry per configured secret, space-separated, so a
//! receiver can rotate keys without missing an event.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "whsec_";

/// A signing key. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Parses `whsec_<base64>` (the Standard Webhooks form). The key must be
    /// 24 to 64 bytes, as the specification asks.
    pub fn parse(s: &str) -> Result<Secret, String> {
        let b64 = s
            .strip_prefix(PREFIX)
            .ok_or_else(|| "a secret must look like whsec_<base64 of 24-64 bytes>".to_string())?;
        let key = B64
            .decode(b64)
            .map_err(|_| "the part after whsec_ is not valid base64".to_string())?;
        if !(24..=64).contains(&key.len()) {
            return Err(format!(
                "the key is {} bytes; Standard Webhooks keys are 24 to 64 bytes",
                key.len()
            ));
        }
        Ok(Secret(key))
    }

    /// `v1,<base64 HMAC-SHA256(key, id.timestamp.body)>`
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        // new_from_slice only fails for key sizes HMAC cannot take; it takes any.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The `webhook-signature` header value for `secrets`, or `None` without any.
pub fn signature_header(
    secrets: &[Secret],
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let sigs: Vec<String> = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect();
    Some(sigs.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published with the Standard Webhooks specification.
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: i64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn matches_the_specification_vector() {
        let secret = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(secret.sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIG);
    }

    #[test]
    fn several_secrets_give_several_signatures() {
        let a = Secret::parse(SPEC_SECRET).unwrap();
        let b = Secret::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap();
        let h = signature_header(&[a, b.clone()], SPEC_ID, SPEC_TS, SPEC_BODY).unwrap();
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], SPEC_SIG);
        assert_eq!(parts[1], b.sign(SPEC_ID, SPEC_TS, SPEC_BODY));
        assert_ne!(parts[0], parts[1]);
        assert_eq!(signature_header(&[], SPEC_ID, SPEC_TS, SPEC_BODY), None);
    }

    #[test]
    fn bad_secrets_are_refused_and_never_shown() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(Secret::parse("whsec_!!!").is_err());
        assert!(Secret::parse("whsec_AAAA").is_err());
        let s = Secret::parse(SPEC_SECRET).unwrap();
        assert_eq!(format!("{s:?}"), "***");
    }
}
