//! The node's WireGuard private key: kept in a file (flanneld's
//! `/run/flannel/wgkey`, or `$WIREGUARD_KEY_FILE`), base64 as `wg genkey`
//! writes it, mode 0400, made when missing and read again at every start,
//! so that a restart keeps the node's public key. The key is never logged.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use boringtun::x25519::{PublicKey, StaticSecret};
use tracing::info;

use crate::error::{Error, Result};
use crate::forward::wg::Key;

/// flanneld's default key file.
pub(crate) const DEFAULT_KEY_FILE: &str = "/run/flannel/wgkey";

/// The key file: `$WIREGUARD_KEY_FILE` when set, else flanneld's default.
pub(crate) fn key_file() -> PathBuf {
    std::env::var_os("WIREGUARD_KEY_FILE")
        .filter(|p| !p.is_empty())
        .map_or_else(|| DEFAULT_KEY_FILE.into(), PathBuf::from)
}

fn failed(path: &Path, what: &str, source: std::io::Error) -> Error {
    Error::KeyFile { path: path.display().to_string(), what: what.into(), source }
}

/// The private key in `path`, made (and written with mode 0400) when the
/// file does not exist. A file that holds no key is an error, never
/// replaced: another key would change the node's identity for its peers.
pub(crate) fn load_or_create(path: &Path) -> Result<Key> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key: Key = text
                .parse()
                .map_err(|e| Error::BadKeyFile { path: path.display().to_string(), reason: format!("{e}") })?;
            let mode =
                std::fs::metadata(path).map_err(|e| failed(path, "reading the mode of", e))?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o400))
                    .map_err(|e| failed(path, "making private (0400)", e))?;
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Key::generate();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| failed(dir, "creating the directory", e))?;
            }
            // Written to a new file beside it, then renamed: a crash never
            // leaves half a key.
            let tmp = path.with_extension("new");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o400)
                .open(&tmp)
                .map_err(|e| failed(&tmp, "creating", e))?;
            f.write_all(format!("{}\n", key.to_base64()).as_bytes()).map_err(|e| failed(&tmp, "writing", e))?;
            f.sync_all().map_err(|e| failed(&tmp, "writing", e))?;
            std::fs::rename(&tmp, path).map_err(|e| failed(path, "renaming the new key file to", e))?;
            info!(path = %path.display(), public_key = %key.public().to_base64(), "made a new WireGuard private key");
            Ok(key)
        }
        Err(e) => Err(failed(path, "reading", e)),
    }
}

/// Why a peer's public key cannot be used, if it cannot: this node's own
/// key (a copied key file, or a lease of this node's written again), or a
/// key with which no secret can be shared (a low-order point such as all
/// zeros: with it, anyone who knows this node's public key could handshake
/// in that peer's name; kernel WireGuard refuses such keys too).
pub(crate) fn refusal(own: &StaticSecret, own_public: &Key, peer: &Key) -> Option<&'static str> {
    if peer == own_public {
        return Some("its PublicKey is this node's own");
    }
    if !own.diffie_hellman(&PublicKey::from(peer.0)).was_contributory() {
        return Some(
            "its PublicKey is a weak key (a low-order point, such as all zeros): no secret can be shared with it",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_weak_keys_are_refused() {
        let own = StaticSecret::from([7u8; 32]);
        let own_public = Key(PublicKey::from(&own).to_bytes());
        let other = Key(PublicKey::from(&StaticSecret::from([9u8; 32])).to_bytes());
        assert_eq!(refusal(&own, &own_public, &other), None);
        assert!(refusal(&own, &own_public, &own_public).unwrap().contains("this node's own"));
        // All zeros and one (the identity and a point of order 4 on the
        // curve's twist): no shared secret.
        let mut one = [0u8; 32];
        one[0] = 1;
        for weak in [[0u8; 32], one] {
            assert!(refusal(&own, &own_public, &Key(weak)).unwrap().contains("weak key"), "{weak:?}");
        }
    }

    #[test]
    fn a_key_is_made_once_private_and_then_kept() {
        let dir = std::env::temp_dir().join(format!("weft-wgkey-{}", std::process::id()));
        let path = dir.join("sub").join("wgkey");
        let first = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim().len(), 44, "base64 of 32 bytes, as wg genkey prints");
        assert_eq!(load_or_create(&path).unwrap(), first, "the second start reads the same key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_holds_no_key_is_an_error_and_stays() {
        let dir = std::env::temp_dir().join(format!("weft-wgkey-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("wgkey");
        std::fs::write(&path, "not a key\n").unwrap();
        let err = load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("wgkey") && err.contains("not a WireGuard private key"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
