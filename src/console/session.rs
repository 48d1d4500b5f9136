//! Console sessions: who signed in, until when, and the form key that
//! proves a POST came from one of the console's own pages.
//!
//! Invariants: the cookie holds only a random session id; the session
//! (kept in memory, at most `MAX_SESSIONS`) holds the token it was opened
//! with, and every request looks that token up again in the tokens file in
//! force, so a token removed from the file ends its sessions and a changed
//! scope takes effect at once. Sessions end `LIFETIME` after sign-in, at
//! sign-out, or at a restart.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::store::now_ms;

/// The session cookie's name.
pub const COOKIE: &str = "hookrelay_session";
/// How long a session lasts after sign-in.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Most sessions open at once; past it the oldest ends.
pub const MAX_SESSIONS: usize = 1000;
/// Most messages waiting to be shown on a session's next page.
const MAX_FLASH: usize = 8;

/// A message for the next page: the outcome of an action, a secret shown
/// once, a test send's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: &'static str,
    pub text: String,
    /// A secret to show once (after a creation or rotation).
    pub secret: Option<String>,
    /// A test send's answer, as the API gave it.
    pub test: Option<serde_json::Value>,
}

impl Flash {
    pub fn ok(text: impl Into<String>) -> Flash {
        Flash {
            kind: "ok",
            text: text.into(),
            secret: None,
            test: None,
        }
    }

    pub fn error(text: impl Into<String>) -> Flash {
        Flash {
            kind: "error",
            ..Flash::ok(text)
        }
    }
}

struct Session {
    token: String,
    /// The form key every POST of this session carries.
    csrf: String,
    /// Order of opening: the oldest session goes first when full.
    serial: u64,
    expires_ms: u64,
    flash: Vec<Flash>,
}

/// An open session as a request sees it.
pub struct Open {
    pub token: String,
    pub csrf: String,
}

/// The sessions of this process.
#[derive(Default)]
pub struct Sessions {
    /// By the SHA-256 of the session id.
    map: Mutex<HashMap<[u8; 32], Session>>,
    opened: std::sync::atomic::AtomicU64,
}

fn random_key() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// Opens a session for `token`; returns its id (the cookie's value).
    pub fn open(&self, token: &str) -> String {
        let id = random_key();
        let now = now_ms();
        let mut map = self.map.lock().expect("lock poisoned");
        map.retain(|_, s| s.expires_ms > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.serial).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(&id),
            Session {
                token: token.to_string(),
                csrf: random_key(),
                serial: self
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                expires_ms: now + LIFETIME.as_millis() as u64,
                flash: Vec::new(),
            },
        );
        id
    }

    /// The session `id` names, if it is open.
    pub fn get(&self, id: &str) -> Option<Open> {
        let key = digest(id);
        let mut map = self.map.lock().expect("lock poisoned");
        let now = now_ms();
        if map.get(&key).is_some_and(|s| s.expires_ms <= now) {
            map.remove(&key);
        }
        let s = map.get(&key)?;
        Some(Open {
            token: s.token.clone(),
            csrf: s.csrf.clone(),
        })
    }

    /// Takes the messages waiting for the session's next page.
    pub fn take_flash(&self, id: &str) -> Vec<Flash> {
        let mut map = self.map.lock().expect("lock poisoned");
        map.get_mut(&digest(id))
            .map(|s| std::mem::take(&mut s.flash))
            .unwrap_or_default()
    }

    /// Keeps a message for the session's next page.
    pub fn flash(&self, id: &str, flash: Flash) {
        let mut map = self.map.lock().expect("lock poisoned");
        if let Some(s) = map.get_mut(&digest(id)) {
            if s.flash.len() >= MAX_FLASH {
                s.flash.remove(0);
            }
            s.flash.push(flash);
        }
    }

    pub fn close(&self, id: &str) {
        self.map.lock().expect("lock poisoned").remove(&digest(id));
    }

    /// Ends every session opened with a token the tokens file no longer has.
    pub fn close_where(&self, gone: impl Fn(&str) -> bool) {
        self.map
            .lock()
            .expect("lock poisoned")
            .retain(|_, s| !gone(&s.token));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().expect("lock poisoned").len()
    }
}

/// Whether a form's key is the session's, compared in constant time.
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

/// The session id in a request's `Cookie` headers.
pub fn cookie_id(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

/// The `Set-Cookie` value that opens (`Some(id)`) or clears (`None`) a
/// session: HttpOnly, SameSite=Strict, scoped to `/ui`, Secure over TLS.
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_its_token_and_gives_its_messages_once() {
        let s = Sessions::default();
        let id = s.open("tok");
        s.flash(&id, Flash::ok("saved"));
        let open = s.get(&id).unwrap();
        assert_eq!(open.token, "tok");
        assert_eq!(s.take_flash(&id).len(), 1);
        assert!(s.take_flash(&id).is_empty());
        assert!(s.get("other").is_none());
        s.close(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::default();
        let first = s.open("a");
        for _ in 0..MAX_SESSIONS + 5 {
            s.open("b");
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.get(&first).is_none(), "the oldest session ends first");
    }

    #[test]
    fn sessions_of_removed_tokens_end() {
        let s = Sessions::default();
        let a = s.open("a");
        let b = s.open("b");
        s.close_where(|t| t == "a");
        assert!(s.get(&a).is_none());
        assert!(s.get(&b).is_some());
    }

    #[test]
    fn cookies() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "x=1; hookrelay_session=abc; y=2".parse().unwrap(),
        );
        assert_eq!(cookie_id(&h).as_deref(), Some("abc"));
        let c = set_cookie(Some("abc"), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(csrf_matches("k1", "k1") && !csrf_matches("k1", "k2") && !csrf_matches("k1", ""));
    }
}
