//! Node identity and the mesh key: the ed25519 node key (its libp2p PeerId) and the
//! optional private-network pre-shared key, both files in the data dir with mode 0600.

use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::PeerId;
use rand::RngCore;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "node.key";
pub const PSK_FILE: &str = "swarm.key";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a node key (expected 64 hex characters of an ed25519 secret); recreate it with `mesh-agent init --force`")]
    BadKey { path: PathBuf },
    #[error(
        "{path}: not a pre-shared key file ({reason}); create one with `mesh-agent init --psk`"
    )]
    BadPsk { path: PathBuf, reason: String },
    #[error("{path}: not an operator key; create one with `mesh-agent operator init`")]
    BadOperatorKey { path: PathBuf },
    #[error("the node key is not an ed25519 key; recreate it with `mesh-agent init --force`")]
    NotEd25519,
    #[error(
        "{path} already exists; pass --force to replace it (this changes the node's identity)"
    )]
    Exists { path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temp file + rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let tmp = path.with_extension("tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        f.write_all(contents).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Makes `dir` a private data dir: created with mode 0700 (parents too) if missing, and
/// tightened to 0700 if it exists with access for group or others, with a warning. The
/// data dir holds the node key, the mesh key, the control token and the document, so
/// nobody but the node's user may list or enter it. Returns whether it was tightened.
pub fn ensure_private_dir(dir: &Path) -> Result<bool, IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        let mode = std::fs::metadata(dir)
            .map_err(io_err(dir))?
            .permissions()
            .mode();
        if mode & 0o077 == 0 {
            return Ok(false);
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_err(dir))?;
        tracing::warn!(
            dir = %dir.display(),
            was = format!("{:o}", mode & 0o777),
            "data dir was open to other users; tightened it to 0700"
        );
        Ok(true)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        Ok(false)
    }
}

/// Creates a new node key in `dir`. Refuses to overwrite unless `force`.
pub fn create_node_key(dir: &Path, force: bool) -> Result<Keypair, IdentityError> {
    let path = dir.join(KEY_FILE);
    if path.exists() && !force {
        return Err(IdentityError::Exists { path });
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
    write_private(
        &path,
        format!("{}\n", hex::encode(signing.to_bytes())).as_bytes(),
    )?;
    keypair_from_secret(secret).ok_or(IdentityError::BadKey { path })
}

fn keypair_from_secret(secret: [u8; 32]) -> Option<Keypair> {
    Keypair::ed25519_from_bytes(secret).ok()
}

/// Loads the node key from `dir`.
pub fn load_node_key(dir: &Path) -> Result<Keypair, IdentityError> {
    let path = dir.join(KEY_FILE);
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    let bytes =
        hex::decode(text.trim()).map_err(|_| IdentityError::BadKey { path: path.clone() })?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| IdentityError::BadKey { path: path.clone() })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "node key is readable by other users; chmod 600 it");
            }
        }
    }
    keypair_from_secret(secret).ok_or(IdentityError::BadKey { path })
}

/// The signer of this node's facts: the same ed25519 key as its peer id, so the author
/// name in every fact it writes is its peer id.
pub fn signer(key: &Keypair) -> Result<crate::core::trust::Signer, IdentityError> {
    let ed = key
        .clone()
        .try_into_ed25519()
        .map_err(|_| IdentityError::NotEd25519)?;
    let secret: [u8; 32] = ed
        .secret()
        .as_ref()
        .try_into()
        .map_err(|_| IdentityError::NotEd25519)?;
    Ok(crate::core::trust::Signer::from_key(
        ed25519_dalek::SigningKey::from_bytes(&secret),
    ))
}

/// Where `mesh-agent operator init` puts the operator key unless told otherwise:
/// `$MESH_OPERATOR_KEY`, else `~/.config/mesh-agent/operator.key` (outside every node's
/// data dir: a human's key, not a node's).
pub fn default_operator_key_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MESH_OPERATOR_KEY").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".config").join("mesh-agent").join("operator.key")
}

/// The first line of an operator key file (so it is never mistaken for a node key).
const OPERATOR_KEY_HEADER: &str = "mesh-agent operator key v1";

/// Creates a new operator key at `path` (mode 0600, parent dirs 0700). Refuses to
/// overwrite unless `force`.
pub fn create_operator_key(
    path: &Path,
    force: bool,
) -> Result<crate::core::trust::Signer, IdentityError> {
    if path.exists() && !force {
        return Err(IdentityError::Exists {
            path: path.to_path_buf(),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            ensure_private_dir(parent)?;
        }
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let signing = ed25519_dalek::SigningKey::from_bytes(&secret);
    write_private(
        path,
        format!(
            "{OPERATOR_KEY_HEADER}\n{}\n",
            hex::encode(signing.to_bytes())
        )
        .as_bytes(),
    )?;
    Ok(crate::core::trust::Signer::from_key(signing))
}

/// Loads the operator key at `path`.
pub fn load_operator_key(path: &Path) -> Result<crate::core::trust::Signer, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bad = || IdentityError::BadOperatorKey {
        path: path.to_path_buf(),
    };
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(OPERATOR_KEY_HEADER) {
        return Err(bad());
    }
    let bytes = hex::decode(lines.next().unwrap_or("").trim()).map_err(|_| bad())?;
    let secret: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "operator key is readable by other users; chmod 600 it");
            }
        }
    }
    Ok(crate::core::trust::Signer::from_key(
        ed25519_dalek::SigningKey::from_bytes(&secret),
    ))
}

pub fn peer_id(key: &Keypair) -> PeerId {
    key.public().to_peer_id()
}

/// Creates a new random pre-shared key file (go-libp2p/IPFS `swarm.key` format).
pub fn create_psk(path: &Path, force: bool) -> Result<PreSharedKey, IdentityError> {
    if path.exists() && !force {
        return Err(IdentityError::Exists {
            path: path.to_path_buf(),
        });
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let psk = PreSharedKey::new(bytes);
    write_private(path, psk.to_key_file().as_bytes())?;
    Ok(psk)
}

pub fn load_psk(path: &Path) -> Result<PreSharedKey, IdentityError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    text.parse::<PreSharedKey>()
        .map_err(|e| IdentityError::BadPsk {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fact's author is the node's peer id as libp2p writes it, so a peer's facts and
    /// its connections name the same node.
    #[test]
    fn a_node_signs_its_facts_as_its_peer_id() {
        let d = tempfile::tempdir().unwrap();
        for _ in 0..8 {
            let key = create_node_key(d.path(), true).unwrap();
            let signer = signer(&key).unwrap();
            assert_eq!(signer.author(), peer_id(&key).to_string());
            let sealed = signer.seal("node/x", "{}");
            let opened =
                crate::core::trust::open("node/x", &sealed, crate::core::trust::KeyScheme::PeerIds)
                    .unwrap();
            assert_eq!(opened.author, peer_id(&key).to_string());
        }
    }

    #[test]
    fn node_key_is_private_stable_and_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let k = create_node_key(d.path(), false).unwrap();
        let again = load_node_key(d.path()).unwrap();
        assert_eq!(peer_id(&k), peer_id(&again));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(d.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(matches!(
            create_node_key(d.path(), false),
            Err(IdentityError::Exists { .. })
        ));
        let other = create_node_key(d.path(), true).unwrap();
        assert_ne!(peer_id(&other), peer_id(&k));
    }

    #[cfg(unix)]
    #[test]
    fn the_data_dir_is_created_private_and_tightened_if_open() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("a/b/data");
        assert!(!ensure_private_dir(&dir).unwrap(), "created, not tightened");
        assert_eq!(mode(&dir), 0o700);
        create_node_key(&dir, false).unwrap();
        for open in [0o755, 0o750, 0o707, 0o711] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(open)).unwrap();
            assert!(ensure_private_dir(&dir).unwrap(), "{open:o} is tightened");
            assert_eq!(mode(&dir), 0o700, "from {open:o}");
        }
        assert!(!ensure_private_dir(&dir).unwrap(), "0700 stays as it is");
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600, "the node key stays 0600");
        assert!(load_node_key(&dir).is_ok());
    }

    #[test]
    fn corrupt_keys_are_clear_errors() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(KEY_FILE), "zz").unwrap();
        let e = load_node_key(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a node key"), "{e}");
        let p = d.path().join(PSK_FILE);
        std::fs::write(&p, "hello").unwrap();
        let e = load_psk(&p).unwrap_err().to_string();
        assert!(e.contains("not a pre-shared key file"), "{e}");
        let psk = create_psk(&p, true).unwrap();
        assert_eq!(
            load_psk(&p).unwrap().fingerprint().to_string(),
            psk.fingerprint().to_string()
        );
    }
}
