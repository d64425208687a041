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
    let rest = value
        .strip_prefix(TAG)
        .or_else(|| value.strip_prefix(VOUCHED_TAG))?;
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
    let (opened, proof) = unseal(key, value, scheme)?;
    match proof {
        Proof::Signature(check) if verify && !check.holds() => Err(Unsealed::BadSignature),
        // Its seal is in its change, which only the document's reader has at hand
        // (`Doc::refresh`): a vouched value alone proves nothing.
        Proof::Seal if verify => Err(Unsealed::BadSignature),
        _ => Ok(opened),
    }
}

/// What proves a value its author's, once every other check of [`unseal`] passed.
// Returned by value and taken apart at once, never stored: no box for the check.
#[allow(clippy::large_enum_variant)]
enum Proof {
    /// Its own signature.
    Signature(SigCheck),
    /// A seal in the same change that lists it ([`vouch`]): checkable only with that
    /// change at hand.
    Seal,
    /// Nothing ([`KeyScheme::Unchecked`]).
    Nothing,
}

/// A sealed value taken apart: its author and JSON, and what proves it theirs (nothing
/// under [`KeyScheme::Unchecked`]); every check but that proof's made.
fn unseal<'a>(
    key: &str,
    value: &'a str,
    scheme: KeyScheme,
) -> Result<(Opened<'a>, Proof), Unsealed> {
    if let Some((author, id, json)) = open_vouched(value) {
        let opened = Opened { author, json };
        if !valid_author(author) || !valid_digest(id) {
            return Err(Unsealed::Unsigned);
        }
        if scheme == KeyScheme::Unchecked {
            return Ok((opened, Proof::Nothing));
        }
        key_of(author, scheme).ok_or(Unsealed::UnknownAuthor)?;
        return Ok((opened, Proof::Seal));
    }
    let rest = value.strip_prefix(TAG).ok_or(Unsealed::Unsigned)?;
    let (author, rest) = rest.split_once(' ').ok_or(Unsealed::Unsigned)?;
    let (sig, json) = rest.split_once(' ').ok_or(Unsealed::Unsigned)?;
    let opened = Opened { author, json };
    if scheme == KeyScheme::Unchecked {
        return if valid_author(author) {
            Ok((opened, Proof::Nothing))
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
    Ok((opened, Proof::Signature(check)))
}

// Values sealed together. A change that writes many values (a bulk load of stories)
// carries one signature per `MAX_VOUCHED` of them instead of one each: each value is
// written as `m2 <author> <id> <json>`, and beside it, in the same change, a seal at
// `seal/<author>/<id>`: a value sealed as any other (`m1`, the author's signature over
// its key and JSON) whose JSON lists a digest of each value it vouches for. A reader
// admits a vouched value only if a seal in the value's own change, by its author, with
// its id, checks and lists its digest: the verdict is a function of that change alone,
// which every node holds byte for byte, so every node gives the same one. A new epoch
// copies a vouched value with its seal, into one change, and it checks there as it did.

/// The format tag of a value vouched for by a seal beside it.
const VOUCHED_TAG: &str = "m2 ";
/// Where seals are: `seal/<author>/<id>`.
pub const SEAL_PREFIX: &str = "seal/";
/// The most values one seal vouches for. A new epoch copies a seal whole with any one
/// of its values, so a seal is kept small (~23 KB): at 100 000 stories a join checks
/// ~100 signatures instead of 100 000.
pub const MAX_VOUCHED: usize = 1024;
/// What a vouched value's digest covers first.
const VOUCH_DOMAIN: &[u8] = b"mesh-agent/vouched/v1\n";
/// A digest (and a seal's id) in base64url: 16 bytes. Forging a value that a seal
/// vouches for is finding a second preimage of one of its digests: 2^128 work.
const DIGEST_BYTES: usize = 16;
/// A seal of `MAX_VOUCHED` digests is ~25 KB; anything longer is not read.
const MAX_SEAL_BYTES: usize = 64 * 1024;
const DIGEST_CHARS: usize = 22;

type Digest16 = [u8; DIGEST_BYTES];

/// What a seal vouches for: a value's key, author and JSON, as its signature would.
fn digest(key: &str, author: &str, json: &str) -> Digest16 {
    let full = Sha256::new()
        .chain_update(VOUCH_DOMAIN)
        .chain_update(key.as_bytes())
        .chain_update(b"\n")
        .chain_update(author.as_bytes())
        .chain_update(b"\n")
        .chain_update(json.as_bytes())
        .finalize();
    let mut d = [0; DIGEST_BYTES];
    d.copy_from_slice(&full[..DIGEST_BYTES]);
    d
}

fn valid_digest(id: &str) -> bool {
    id.len() == DIGEST_CHARS
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A seal's JSON.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SealJson {
    vouches: Vec<String>,
}

/// Values sealed together ([`vouch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vouched {
    /// Each value as written, in the order given.
    pub values: Vec<String>,
    /// The seals to write beside them, in the same change: (key, sealed value).
    pub seals: Vec<(String, String)>,
}

/// `values` (document key, JSON) in `author`'s name, with one seal per [`MAX_VOUCHED`]
/// of them, each sealed by `seal` (key, JSON → sealed value: the author's signer, or
/// [`seal_unchecked`]). All of them must be written in one change.
pub fn vouch(
    author: &str,
    values: &[(&str, &str)],
    seal: impl Fn(&str, &str) -> String,
) -> Vouched {
    let mut out = Vouched {
        values: Vec::with_capacity(values.len()),
        seals: Vec::new(),
    };
    for chunk in values.chunks(MAX_VOUCHED) {
        let vouches = chunk
            .iter()
            .map(|(key, json)| URL_SAFE_NO_PAD.encode(digest(key, author, json)))
            .collect();
        // Serialising a list of strings cannot fail.
        let json = serde_json::to_string(&SealJson { vouches }).unwrap_or_default();
        let id = URL_SAFE_NO_PAD.encode(&Sha256::digest(json.as_bytes())[..DIGEST_BYTES]);
        let key = format!("{SEAL_PREFIX}{author}/{id}");
        out.seals.push((key.clone(), seal(&key, &json)));
        out.values.extend(
            chunk
                .iter()
                .map(|(_, json)| format!("{VOUCHED_TAG}{author} {id} {json}")),
        );
    }
    out
}

/// Whether `value` at `key` is a vouched value that passes every check but its seal's
/// (which needs its change: `Doc::refresh`).
pub fn needs_seal(key: &str, value: &str, scheme: KeyScheme) -> bool {
    value.starts_with(VOUCHED_TAG) && matches!(unseal(key, value, scheme), Ok((_, Proof::Seal)))
}

/// A vouched value's author, seal id and JSON, unchecked; `None` if it is not one.
pub fn open_vouched(value: &str) -> Option<(&str, &str, &str)> {
    let rest = value.strip_prefix(VOUCHED_TAG)?;
    let (author, rest) = rest.split_once(' ')?;
    let (id, json) = rest.split_once(' ')?;
    Some((author, id, json))
}

/// A seal taken apart: whose it is, its id, the digests it lists and the check of its
/// own signature (none under [`KeyScheme::Unchecked`]).
pub struct OpenedSeal<'a> {
    author: &'a str,
    id: &'a str,
    digests: std::collections::HashSet<Digest16>,
    pub check: Option<SigCheck>,
}

impl OpenedSeal<'_> {
    /// Whether this seal (its signature checked apart) vouches for `value` at `key`.
    pub fn vouches(&self, key: &str, value: &str) -> bool {
        open_vouched(value).is_some_and(|(author, id, json)| {
            author == self.author
                && id == self.id
                && self.digests.contains(&digest(key, author, json))
        })
    }
}

/// The seal `value` at `key` (`seal/<author>/<id>`, sealed by that author), its
/// signature not checked yet; `None` if it is not a well-formed one.
pub fn open_seal<'a>(key: &'a str, value: &'a str, scheme: KeyScheme) -> Option<OpenedSeal<'a>> {
    let (author, id) = key.strip_prefix(SEAL_PREFIX)?.split_once('/')?;
    if !valid_digest(id) || value.len() > MAX_SEAL_BYTES {
        return None;
    }
    let (opened, proof) = unseal(key, value, scheme).ok()?;
    let check = match proof {
        Proof::Signature(check) => Some(check),
        Proof::Nothing => None,
        Proof::Seal => return None,
    };
    if opened.author != author {
        return None;
    }
    // A seal's id is its list's: one author's seals at one key vouch for the same.
    if URL_SAFE_NO_PAD.encode(&Sha256::digest(opened.json.as_bytes())[..DIGEST_BYTES]) != id {
        return None;
    }
    let list: SealJson = serde_json::from_str(opened.json).ok()?;
    if list.vouches.len() > MAX_VOUCHED {
        return None;
    }
    let mut digests = std::collections::HashSet::with_capacity(list.vouches.len());
    for d in &list.vouches {
        let bytes = URL_SAFE_NO_PAD.decode(d).ok()?;
        digests.insert(bytes.try_into().ok()?);
    }
    Some(OpenedSeal {
        author,
        id,
        digests,
        check,
    })
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
    match unseal(key, value, scheme).ok()?.1 {
        Proof::Signature(check) => Some(check),
        Proof::Seal | Proof::Nothing => None,
    }
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

    /// Values sealed together: one seal per `MAX_VOUCHED`, each listing the digests of
    /// its values under an id that is its list's; a vouched value alone proves nothing.
    #[test]
    fn a_seal_vouches_for_exactly_the_values_it_lists() {
        let a = Signer::for_test("A");
        let jsons: Vec<String> = (0..MAX_VOUCHED + 1)
            .map(|i| format!("{{\"n\":{i}}}"))
            .collect();
        let keys: Vec<String> = (0..jsons.len()).map(|i| format!("story/S-{i}@A")).collect();
        let values: Vec<(&str, &str)> = keys
            .iter()
            .zip(&jsons)
            .map(|(k, j)| (k.as_str(), j.as_str()))
            .collect();
        let v = vouch("A", &values, |k, j| a.seal(k, j));
        assert_eq!(v.values.len(), values.len());
        assert_eq!(v.seals.len(), 2, "one seal per {MAX_VOUCHED}");
        let opened: Vec<OpenedSeal<'_>> = v
            .seals
            .iter()
            .map(|(k, s)| open_seal(k, s, KeyScheme::TestNames).expect("well formed"))
            .collect();
        assert!(opened
            .iter()
            .all(|s| s.check.as_ref().is_some_and(SigCheck::holds)));
        for (i, value) in v.values.iter().enumerate() {
            let by = usize::from(i >= MAX_VOUCHED);
            assert!(opened[by].vouches(&keys[i], value), "{i}");
            assert!(
                !opened[1 - by].vouches(&keys[i], value),
                "{i}: the other seal"
            );
            assert!(
                !opened[by].vouches(&keys[(i + 1) % keys.len()], value),
                "another key"
            );
        }
        let first = &v.values[0];
        assert_eq!(claimed_author(first), Some("A"));
        assert!(!opened[0].vouches(&keys[0], &first.replace("\"n\":0", "\"n\":9")));
        assert!(!opened[0].vouches(&keys[0], &first.replacen("m2 A ", "m2 B ", 1)));
        // Alone, a vouched value is refused: its seal is in its change.
        assert_eq!(
            open(&keys[0], first, KeyScheme::TestNames),
            Err(Unsealed::BadSignature)
        );
        assert!(needs_seal(&keys[0], first, KeyScheme::TestNames));
        assert!(!needs_seal(
            &keys[0],
            &a.seal(&keys[0], "{}"),
            KeyScheme::TestNames
        ));
        // A seal signed by another, moved to another id, or at another author's key.
        let (key, seal) = &v.seals[0];
        let json = seal.splitn(4, ' ').nth(3).unwrap();
        let by_b = Signer::for_test("B").seal(key, json);
        let check = open_seal(key, &by_b, KeyScheme::TestNames).map(|s| s.check.unwrap().holds());
        assert_eq!(check, None, "B's seal at A's key");
        let (_, id) = key.rsplit_once('/').unwrap();
        let other_id = format!("seal/A/{}", "x".repeat(id.len()));
        assert!(open_seal(&other_id, &a.seal(&other_id, json), KeyScheme::TestNames).is_none());
        let forged = seal.replacen("m1 A ", "m1 B ", 1);
        let b_key = key.replacen("seal/A/", "seal/B/", 1);
        let b = open_seal(&b_key, &forged, KeyScheme::TestNames).expect("well formed");
        assert!(!b.check.unwrap().holds(), "relabelled: its signature fails");
        for junk in ["", "m1 A", "{}"] {
            assert!(
                open_seal(key, junk, KeyScheme::TestNames).is_none(),
                "{junk:?}"
            );
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
