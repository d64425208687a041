//! Who may act from the dashboard: a login with the node's control token opens a
//! session (a random id in an HttpOnly, SameSite=Strict cookie, kept in memory only);
//! every action form carries the session's CSRF token. Tokens are compared as SHA-256
//! digests in constant time, as the control endpoint does.

use axum::http::{header, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(super) const COOKIE: &str = "mesh_dashboard";
/// A session lasts this long after login.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept; a new login evicts the oldest.
const MAX_SESSIONS: usize = 64;

/// One logged-in browser.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub csrf: String,
    created: Instant,
    flash: Option<String>,
}

/// The sessions of one dashboard, in memory (a restart logs everyone out).
pub(super) struct Sessions {
    want: [u8; 32],
    map: Mutex<HashMap<String, Session>>,
}

fn digest(v: &[u8]) -> [u8; 32] {
    Sha256::digest(v).into()
}

/// A fresh random value, hex (`bytes` of entropy).
pub(super) fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    hex::encode(raw)
}

/// Whether two secrets are equal, in constant time (over their digests, so a length
/// mismatch tells nothing either).
pub(super) fn same_secret(given: &str, want: &str) -> bool {
    bool::from(digest(given.as_bytes()).ct_eq(&digest(want.as_bytes())))
}

impl Sessions {
    /// Sessions opened by `token` (the node's control token).
    pub fn new(token: &str) -> Sessions {
        Sessions {
            want: digest(token.as_bytes()),
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `given` is the control token.
    pub fn token_ok(&self, given: &str) -> bool {
        bool::from(digest(given.trim().as_bytes()).ct_eq(&self.want))
    }

    /// Opens a session; its id (for the cookie).
    pub fn open(&self) -> String {
        let id = random_hex(32);
        let mut map = self.lock();
        map.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        while map.len() >= MAX_SESSIONS {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.created)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(
            id.clone(),
            Session {
                csrf: random_hex(24),
                created: Instant::now(),
                flash: None,
            },
        );
        id
    }

    /// The live session the request's cookie names, with its id.
    pub fn of(&self, headers: &HeaderMap) -> Option<(String, Session)> {
        let id = cookie(headers, COOKIE)?;
        let map = self.lock();
        let s = map.get(id)?;
        (s.created.elapsed() < SESSION_TTL).then(|| (id.to_string(), s.clone()))
    }

    pub fn close(&self, id: &str) {
        self.lock().remove(id);
    }

    /// A one-line message shown once on the session's next page.
    pub fn set_flash(&self, id: &str, msg: String) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(msg);
        }
    }

    pub fn take_flash(&self, id: &str) -> Option<String> {
        self.lock().get_mut(id).and_then(|s| s.flash.take())
    }
}

/// The value of cookie `name` in the request, if any.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `set-cookie` value of a session (`Secure` when served over TLS).
pub(super) fn session_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}")
}

/// The `set-cookie` value that ends a session in the browser.
pub(super) fn expired_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_only_with_the_token_and_is_found_by_its_cookie() {
        let s = Sessions::new("secret-token");
        assert!(s.token_ok("secret-token") && s.token_ok(" secret-token\n"));
        assert!(!s.token_ok("secret-toke") && !s.token_ok(""));
        let id = s.open();
        let mut h = HeaderMap::new();
        assert!(s.of(&h).is_none());
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={id}").parse().unwrap(),
        );
        let (found, sess) = s.of(&h).expect("session");
        assert_eq!(found, id);
        assert!(same_secret(&sess.csrf, &sess.csrf) && !same_secret("x", &sess.csrf));
        s.set_flash(&id, "done".into());
        assert_eq!(s.take_flash(&id).as_deref(), Some("done"));
        assert_eq!(s.take_flash(&id), None);
        s.close(&id);
        assert!(s.of(&h).is_none());
        let mut wrong = HeaderMap::new();
        wrong.insert(header::COOKIE, format!("{COOKIE}=nope").parse().unwrap());
        assert!(s.of(&wrong).is_none());
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::new("t");
        let ids: Vec<String> = (0..MAX_SESSIONS + 5).map(|_| s.open()).collect();
        assert_eq!(s.lock().len(), MAX_SESSIONS);
        assert!(s.lock().contains_key(ids.last().unwrap()));
    }
}
