//! What a receiver's answer may not repeat: the credentials hookrelay sent
//! it. Receivers that echo the request (debug endpoints, request bins,
//! misconfigured proxies) would otherwise put a target's basic-auth
//! password or header values into the response excerpt, which the store
//! keeps and the admin API and console show.
//!
//! Invariant: the excerpt is the start of the body with every occurrence
//! of a sensitive value hookrelay sent replaced by `***`, including one
//! that straddles the excerpt's end (the body is read past the end by the
//! longest value, and an occurrence that starts inside is replaced whole).

use base64::Engine;

/// What an excerpt shows instead of a credential.
const SHOWN: &[u8] = b"***";

/// The sensitive values of one request, in the spellings an echo may use.
#[derive(Debug, Default)]
pub struct Redactor {
    /// Longest first, so a value is replaced before a part of it.
    values: Vec<Vec<u8>>,
}

impl Redactor {
    /// The values of `headers` marked sensitive (a target's `basic_auth`
    /// and `headers`, set so at load): each whole, the credentials after
    /// an `Authorization` scheme, and for `Basic` the decoded `user:password`
    /// and the password.
    pub fn of(headers: &http::HeaderMap) -> Redactor {
        let mut plain: Vec<Vec<u8>> = Vec::new();
        for (name, value) in headers {
            if !value.is_sensitive() {
                continue;
            }
            let bytes = value.as_bytes();
            plain.push(bytes.to_vec());
            if *name != http::header::AUTHORIZATION && *name != http::header::PROXY_AUTHORIZATION {
                continue;
            }
            let Some((scheme, credentials)) = value.to_str().ok().and_then(|v| v.split_once(' '))
            else {
                continue;
            };
            let credentials = credentials.trim();
            plain.push(credentials.as_bytes().to_vec());
            if !scheme.eq_ignore_ascii_case("basic") {
                continue;
            }
            if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(credentials) {
                if let Some(colon) = decoded.iter().position(|&b| b == b':') {
                    plain.push(decoded[colon + 1..].to_vec());
                }
                plain.push(decoded);
            }
        }
        let mut values = Vec::new();
        for v in plain {
            if v.is_empty() {
                continue;
            }
            // As a JSON string holds it (an echo of the headers as JSON),
            // and with `/` escaped too, as PHP's json_encode writes it.
            if let Some(json) = std::str::from_utf8(&v)
                .ok()
                .and_then(|s| serde_json::to_string(s).ok())
            {
                let inner = json[1..json.len() - 1].to_string();
                values.push(inner.replace('/', "\\/").into_bytes());
                values.push(inner.into_bytes());
            }
            values.push(v);
        }
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    /// How far past the excerpt the body must be read, so that a value
    /// starting inside it is seen whole.
    pub fn margin(&self) -> usize {
        self.values.first().map_or(0, Vec::len)
    }

    /// The first `limit` bytes of `body` (which holds at least `limit` plus
    /// [`margin`](Self::margin) bytes, or all of the body), with every
    /// value starting inside them replaced by `***`.
    pub fn excerpt(&self, body: &[u8], limit: usize) -> String {
        let mut out = Vec::with_capacity(limit.min(body.len()));
        let mut at = 0;
        while at < body.len().min(limit) {
            let rest = &body[at..];
            match self.values.iter().find(|v| rest.starts_with(v)) {
                Some(v) => {
                    out.extend_from_slice(SHOWN);
                    at += v.len();
                }
                None => {
                    out.push(body[at]);
                    at += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(pairs: &[(&str, &str, bool)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (n, v, sensitive) in pairs {
            let mut value = http::HeaderValue::from_str(v).unwrap();
            value.set_sensitive(*sensitive);
            h.append(http::HeaderName::from_bytes(n.as_bytes()).unwrap(), value);
        }
        h
    }

    #[test]
    fn every_spelling_of_a_credential_is_replaced() {
        // "lms:s3cr/et" in base64.
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("lms:s3cr/et")
        );
        let r = Redactor::of(&sent(&[
            ("authorization", &basic, true),
            ("x-api-key", "k-123\"quoted", true),
            ("webhook-id", "evt_1", false),
        ]));
        let token = basic.strip_prefix("Basic ").unwrap();
        let body = format!(
            "{{\"headers\":{{\"authorization\":\"{basic}\",\"x-api-key\":\"k-123\\\"quoted\"}},\
             \"token\":\"{token}\",\"user\":\"lms:s3cr/et\",\"pw\":\"s3cr/et\",\
             \"php\":\"s3cr\\/et\",\"raw\":k-123\"quoted,\"id\":\"evt_1\"}}"
        );
        let shown = r.excerpt(body.as_bytes(), 4096);
        for secret in [
            basic.as_str(),
            token,
            "s3cr/et",
            "s3cr\\/et",
            "k-123",
            "quoted",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("\"id\":\"evt_1\""), "{shown}");
        assert_eq!(shown.matches("***").count(), 7, "{shown}");
    }

    #[test]
    fn a_value_across_the_end_of_the_excerpt_is_replaced_whole() {
        let r = Redactor::of(&sent(&[("x-api-key", "0123456789abcdef", true)]));
        let mut body = vec![b'.'; 10];
        body.extend_from_slice(b"0123456789abcdef tail");
        let shown = r.excerpt(&body[..12 + r.margin()], 12);
        assert_eq!(shown, "..........***");
        // One that starts past the end is not shown at all.
        assert_eq!(r.excerpt(&body, 10), "..........");
    }

    #[test]
    fn nothing_sensitive_leaves_the_body_as_it_was() {
        let r = Redactor::of(&sent(&[("webhook-id", "evt_1", false)]));
        assert_eq!(r.margin(), 0);
        assert_eq!(r.excerpt(b"evt_1 ok", 1024), "evt_1 ok");
        assert_eq!(r.excerpt(b"evt_1 ok", 3), "evt");
    }
}
