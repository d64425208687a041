//! Who wrote a fact: every value in the document is sealed with its author's ed25519
//! signature, and an author's name says which key must have signed.
//!
//! A sealed value is one line of text: `m1 <author> <signature> <json>`, where the
//! signature (base64url, no padding) covers the domain tag, the document key, the author
//! and the JSON — so a signed value moved to another key, or re-labelled with another
//! author, no longer verifies. The JSON is kept byte for byte as the author wrote it:
//! nothing is re-encoded before checking.
//!
//! An author is named by its libp2p peer id (`12D3KooW…`), which *is* its public key
//! (the identity multihash of the protobuf-encoded ed25519 key), so checking a signature
//! needs no directory. [`KeyScheme::TestNames`] also accepts plain names ("A", "node3")
//! whose keys are derived from the name: only tests and the simulator use it, where
//! nodes are called by short names and anyone could derive anyone's key.
//!
//! Pure: signing with ed25519 is deterministic, and nothing here reads a clock or does
//! I/O.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// The format tag every sealed value starts with.
const TAG: &str = "m1 ";
/// What a signature covers first: no signature made for anything else can pass as one.
const DOMAIN: &[u8] = b"mesh-agent/fact/v1\n";
/// A peer id's bytes: identity multihash (0x00, length 36) of the protobuf public key
/// (field 1 = Ed25519 (1), field 2 = 32 key bytes).
const PEER_ID_PREFIX: [u8; 6] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20];
/// Longest author name accepted (a peer id is 52 characters).
pub const MAX_AUTHOR_BYTES: usize = 64;

/// How author names map to public keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyScheme {
    /// Only peer ids: the key is in the name. What every real node uses.
    #[default]
    PeerIds,
    /// Peer ids, and any other name with a key derived from it ([`test_key`]). For tests
    /// and the simulator only: it lets anyone sign as anyone with a plain name.
    TestNames,
    /// Benchmarks only: any name, and signatures neither made nor checked, so that the
    /// same code measures what facts cost without them (`examples/doc_bench.rs`). Never
    /// reachable from a node's configuration.
    #[doc(hidden)]
    Unchecked,
}

/// Why a value was not admitted as its author's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unsealed {
    /// Not a sealed value at all (an old format, or written without a signature).
    Unsigned,
    /// The author's name names no key under this scheme.
    UnknownAuthor,
    /// The signature does not verify for that author, key and value.
    BadSignature,
}

impl Unsealed {
    pub fn as_str(self) -> &'static str {
        match self {
            Unsealed::Unsigned => "unsigned",
            Unsealed::UnknownAuthor => "unknown author",
            Unsealed::BadSignature => "bad signature",
        }
    }
}

/// A node's (or a test name's) signing identity.
#[derive(Clone)]
pub struct Signer {
    author: String,
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("author", &self.author)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A node's signer: its peer id is derived from the key, never given separately.
    pub fn from_key(key: SigningKey) -> Signer {
        Signer {
            author: peer_id_of(&key.verifying_key()),
            key,
        }
    }

    /// The signer a test name has under [`KeyScheme::TestNames`].
    pub fn for_test(name: &str) -> Signer {
        Signer {
            author: name.to_string(),
            key: test_key(name),
        }
    }

    pub fn author(&self) -> &str {
        &self.author
    }

    /// `json`, sealed for document key `key`.
    pub fn seal(&self, key: &str, json: &str) -> String {
        let sig = self.key.sign(&signed_bytes(key, &self.author, json));
        format!(
            "{TAG}{} {} {json}",
            self.author,
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        )
    }
}

/// `json` sealed for [`KeyScheme::Unchecked`]: the same shape and length as a signed
/// value, with a placeholder where the signature goes.
#[doc(hidden)]
pub fn seal_unchecked(author: &str, json: &str) -> String {
    format!("{TAG}{author} {} {json}", "A".repeat(86))
}

/// The key a plain test name signs with under [`KeyScheme::TestNames`].
pub fn test_key(name: &str) -> SigningKey {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(b"mesh-agent test identity\n")
        .chain_update(name.as_bytes())
        .finalize()
        .into();
    SigningKey::from_bytes(&seed)
}

/// The libp2p peer id (base58) of an ed25519 public key.
pub fn peer_id_of(key: &VerifyingKey) -> String {
    let mut bytes = PEER_ID_PREFIX.to_vec();
    bytes.extend_from_slice(key.as_bytes());
    bs58::encode(bytes).into_string()
}

/// The public key a peer id names, if it is an ed25519 peer id.
pub fn key_of_peer_id(peer: &str) -> Option<VerifyingKey> {
    if peer.len() > MAX_AUTHOR_BYTES {
        return None;
    }
    let bytes = bs58::decode(peer).into_vec().ok()?;
    let key: &[u8; 32] = bytes.strip_prefix(&PEER_ID_PREFIX)?.try_into().ok()?;
    VerifyingKey::from_bytes(key).ok()
}

/// Authors whose keys were decoded lately: decoding a key (a point decompression, or
/// for a test name a hash and a scalar multiplication) costs about as much again as
/// checking a signature, and a document holds many facts by few authors. Bounded: a
/// flood of authors only clears it. A cache, not state — results are the same with it
/// or without.
const KEY_CACHE_LEN: usize = 1024;

thread_local! {
    static KEYS: std::cell::RefCell<std::collections::HashMap<(String, KeyScheme), Option<VerifyingKey>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// The key `author` signs with under `scheme`.
pub fn key_of(author: &str, scheme: KeyScheme) -> Option<VerifyingKey> {
    let k = (author.to_string(), scheme);
    if let Some(found) = KEYS.with(|c| c.borrow().get(&k).copied()) {
        return found;
    }
    let found = decode_key(author, scheme);
    KEYS.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= KEY_CACHE_LEN {
            c.clear();
        }
        c.insert(k, found);
    });
    found
}

fn decode_key(author: &str, scheme: KeyScheme) -> Option<VerifyingKey> {
    match (key_of_peer_id(author), scheme) {
        (Some(k), _) => Some(k),
        (None, KeyScheme::TestNames | KeyScheme::Unchecked) if valid_author(author) => {
            Some(test_key(author).verifying_key())
        }
        (None, _) => None,
    }
}

fn valid_author(author: &str) -> bool {
    !author.is_empty()
        && author.len() <= MAX_AUTHOR_BYTES
        && !author
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
}

fn signed_bytes(key: &str, author: &str, json: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + key.len() + author.len() + json.len() + 2);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(key.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(author.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(json.as_bytes());
    m
}

/// A sealed value's author and JSON, its signature checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    pub author: &'a str,
    pub json: &'a str,
}

/// The author's name in a sealed value, unchecked: to count a rejected value against the
/// name it claims.
pub fn claimed_author(value: &str) -> Option<&str> {
    let rest = value.strip_prefix(TAG)?;
    let (author, _) = rest.split_once(' ')?;
    valid_author(author).then_some(author)
}

/// Checks that `value` at document key `key` was sealed by the author it names.
pub fn open<'a>(key: &str, value: &'a str, scheme: KeyScheme) -> Result<Opened<'a>, Unsealed> {
    open_as(key, value, scheme, true)
}

/// [`open`], checking the signature itself only when `verify`: every other check (the
/// format, an author that names a key, a signature of the right shape) is made either
/// way. Unverified only for a value this node verified before and kept on its own disk
/// (`Doc::load_stored`).
pub fn open_as<'a>(
    key: &str,
    value: &'a str,
    scheme: KeyScheme,
    verify: bool,
) -> Result<Opened<'a>, Unsealed> {
    let (opened, check) = unseal(key, value, scheme)?;
    if let Some(check) = check.filter(|_| verify) {
        if !check.holds() {
            return Err(Unsealed::BadSignature);
        }
    }
    Ok(opened)
}

/// A sealed value taken apart: its author and JSON, and the signature check it needs
/// (none under [`KeyScheme::Unchecked`]); every check but that one made.
fn unseal<'a>(
    key: &str,
    value: &'a str,
    scheme: KeyScheme,
) -> Result<(Opened<'a>, Option<SigCheck>), Unsealed> {
    let rest = value.strip_prefix(TAG).ok_or(Unsealed::Unsigned)?;
    let (author, rest) = rest.split_once(' ').ok_or(Unsealed::Unsigned)?;
    let (sig, json) = rest.split_once(' ').ok_or(Unsealed::Unsigned)?;
    let opened = Opened { author, json };
    if scheme == KeyScheme::Unchecked {
        return if valid_author(author) {
            Ok((opened, None))
        } else {
            Err(Unsealed::UnknownAuthor)
        };
    }
    let public = key_of(author, scheme).ok_or(Unsealed::UnknownAuthor)?;
    // 64 bytes are 86 base64 characters: anything longer is refused before decoding.
    if sig.len() != 86 {
        return Err(Unsealed::BadSignature);
    }
    let sig: [u8; 64] = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(Unsealed::BadSignature)?;
    let check = SigCheck {
        key: public,
        msg: signed_bytes(key, author, json),
        sig: Signature::from_bytes(&sig),
    };
    Ok((opened, Some(check)))
}

/// One signature to check, everything else about its value checked already.
#[derive(Debug, Clone)]
pub struct SigCheck {
    key: VerifyingKey,
    msg: Vec<u8>,
    sig: Signature,
}

impl SigCheck {
    /// The check [`open`] makes.
    pub fn holds(&self) -> bool {
        let sig = self.sig.to_bytes();
        let seen = GOOD.with_borrow(|good| {
            good.as_ref().map(|g| {
                g.get(&sig)
                    .is_some_and(|(k, m)| *k == self.key && *m == self.msg)
            })
        });
        if seen == Some(true) {
            return true;
        }
        let holds = self.key.verify_strict(&self.msg, &self.sig).is_ok();
        if holds && seen.is_some() {
            GOOD.with_borrow_mut(|good| {
                if let Some(g) = good {
                    if g.len() >= REMEMBERED {
                        g.clear();
                    }
                    g.insert(sig, (self.key, self.msg.clone()));
                }
            });
        }
        holds
    }
}

/// At most this many good signatures remembered on a thread at once (then forgotten all
/// at once and remembered afresh).
const REMEMBERED: usize = 1 << 16;

thread_local! {
    /// The signatures [`SigCheck::holds`] found good on this thread, by signature, each
    /// with its key and message; `None` unless [`remember_checks`] asked for it.
    static GOOD: std::cell::RefCell<Option<GoodChecks>> =
        const { std::cell::RefCell::new(None) };
}

/// Good signatures, each with the key and message it was checked against.
type GoodChecks = HashMap<[u8; 64], (VerifyingKey, Vec<u8>)>;

/// Makes [`SigCheck::holds`] on this thread remember each signature it finds good and
/// answer the same check again (the same key, message and signature, compared whole)
/// without the curve arithmetic; `false` forgets them and stops. For the simulator, whose
/// nodes share one thread and each check every value (~40 % of a run's time before): a
/// verdict is a function of the key, the message and the signature alone, so remembering
/// one changes no verdict, and a forgery (another message or key under a known signature)
/// is checked in full. A node in its own process checks a value once, when its change
/// arrives, and never turns this on.
pub fn remember_checks(on: bool) {
    GOOD.with_borrow_mut(|good| *good = on.then(HashMap::new));
}

/// The signature check [`open`] would make for `value` at `key`: `None` where it fails
/// before one (or makes none, under [`KeyScheme::Unchecked`]).
pub fn sig_check(key: &str, value: &str, scheme: KeyScheme) -> Option<SigCheck> {
    unseal(key, value, scheme).ok()?.1
}

/// Checks many signatures: each one's verdict, in order. Pure in effect — the verdicts
/// are [`SigCheck::holds`]'s — so a shell may run them on several cores; the core has
/// no threads and runs them one by one without one (`Doc::load_stored`).
#[derive(Clone)]
pub struct Checker(pub std::sync::Arc<CheckMany>);

/// What a [`Checker`] runs.
pub type CheckMany = dyn Fn(&[SigCheck]) -> Vec<bool> + Send + Sync;

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Checker")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_at_its_key_and_for_its_author() {
        let a = Signer::for_test("A");
        let sealed = a.seal("story/S-1@A", r#"{"x":1}"#);
        let opened = open("story/S-1@A", &sealed, KeyScheme::TestNames).unwrap();
        assert_eq!(
            opened,
            Opened {
                author: "A",
                json: r#"{"x":1}"#
            }
        );
        // Moved to another key.
        assert_eq!(
            open("story/S-2@A", &sealed, KeyScheme::TestNames),
            Err(Unsealed::BadSignature)
        );
        // Relabelled with another author, or its JSON changed.
        let relabelled = sealed.replacen("m1 A ", "m1 B ", 1);
        assert_eq!(
            open("story/S-1@A", &relabelled, KeyScheme::TestNames),
            Err(Unsealed::BadSignature)
        );
        let edited = sealed.replace(r#"{"x":1}"#, r#"{"x":2}"#);
        assert_eq!(
            open("story/S-1@A", &edited, KeyScheme::TestNames),
            Err(Unsealed::BadSignature)
        );
        // Test names mean nothing to a real node.
        assert_eq!(
            open("story/S-1@A", &sealed, KeyScheme::PeerIds),
            Err(Unsealed::UnknownAuthor)
        );
        for junk in ["", "{\"x\":1}", "m1 ", "m1 A", "m1 A sig", "m1 A  {}"] {
            assert!(open("k", junk, KeyScheme::TestNames).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn an_unchecked_value_counts_only_for_a_benchmark() {
        let v = seal_unchecked("A", r#"{"x":1}"#);
        assert_eq!(v.len(), Signer::for_test("A").seal("k", r#"{"x":1}"#).len());
        assert!(open("k", &v, KeyScheme::Unchecked).is_ok());
        assert_eq!(
            open("k", &v, KeyScheme::TestNames),
            Err(Unsealed::BadSignature)
        );
        assert_eq!(
            open("k", &v, KeyScheme::PeerIds),
            Err(Unsealed::UnknownAuthor)
        );
    }

    #[test]
    fn a_node_key_signs_as_its_peer_id() {
        let signer = Signer::from_key(SigningKey::from_bytes(&[7; 32]));
        assert!(
            signer.author().starts_with("12D3KooW"),
            "{}",
            signer.author()
        );
        let key = key_of_peer_id(signer.author()).unwrap();
        assert_eq!(key, SigningKey::from_bytes(&[7; 32]).verifying_key());
        let sealed = signer.seal("node/x", "{}");
        assert_eq!(
            open("node/x", &sealed, KeyScheme::PeerIds).map(|o| o.author),
            Ok(signer.author())
        );
        assert_eq!(claimed_author(&sealed), Some(signer.author()));
        assert_eq!(
            key_of_peer_id("12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAaaaaaa"),
            None
        );
        assert_eq!(key_of_peer_id(&"1".repeat(500)), None);
    }
}
