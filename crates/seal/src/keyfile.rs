//! Room key files: 32 random bytes as 64 hex digits, readable by their owner only.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::KEY_LEN;

/// The pre-shared room key every member of a private room holds.
///
/// It only ever authenticates the Noise handshake (NNpsk0's psk); audio and control are sealed
/// under keys derived from or sent inside that handshake. `Debug` never prints the bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RoomKey(pub(crate) [u8; KEY_LEN]);

impl RoomKey {
    /// A room key from raw bytes, for tests and tools that do not go through a file.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh random room key from the operating system's generator.
    pub fn generate() -> Result<Self, rand::rand_core::OsError> {
        let mut bytes = [0u8; KEY_LEN];
        OsRng.try_fill_bytes(&mut bytes)?;
        Ok(Self(bytes))
    }
}

impl fmt::Debug for RoomKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomKey(..)")
    }
}

/// Why a key file could not be written or read; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// `gen_key` never overwrites: an existing key may still be in use by a room.
    #[error("key file {path}: already exists, not overwriting it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is missing, unreadable, or could not be created or written.
    #[error("key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// Anyone but the owner may read or change it, so the key cannot be trusted to be secret.
    #[error("key file {path}: mode {mode:04o} lets others read or change it; run chmod 600 {path}")]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Not 64 hex digits (one optional trailing newline allowed).
    #[error("key file {path}: {why} (expected 64 hex digits, as written by --gen-key)")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with the content.
        why: String,
    },
    /// The operating system's random generator failed.
    #[error("key file {path}: no randomness from the operating system: {why}")]
    Random {
        /// The file.
        path: PathBuf,
        /// What the generator said.
        why: String,
    },
}

/// Writes a new random room key to `path` (mode 0600, created exclusively) and returns it.
pub fn gen_key(path: &Path) -> Result<RoomKey, KeyFileError> {
    let key = RoomKey::generate().map_err(|e| KeyFileError::Random {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    let io_err = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            KeyFileError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    let mut text = encode_hex(&key.0);
    text.push('\n');
    file.write_all(text.as_bytes()).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    Ok(key)
}

/// Reads the room key at `path`, refusing a file others may read or change.
pub fn load_key(path: &Path) -> Result<RoomKey, KeyFileError> {
    let io_err = |source: io::Error| KeyFileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::Malformed {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    // A key file is 65 bytes; refuse to read a large file into memory.
    if meta.len() > 256 {
        return Err(KeyFileError::Malformed {
            path: path.to_path_buf(),
            why: format!("{} bytes long", meta.len()),
        });
    }
    let bytes = fs::read(path).map_err(io_err)?;
    parse_key(&bytes)
        .map(RoomKey)
        .map_err(|why| KeyFileError::Malformed {
            path: path.to_path_buf(),
            why,
        })
}

fn parse_key(bytes: &[u8]) -> Result<[u8; KEY_LEN], String> {
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.len() != 2 * KEY_LEN {
        return Err(format!("{} characters", text.len()));
    }
    let mut key = [0u8; KEY_LEN];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = hex_digit(pair[0]);
        let lo = hex_digit(pair[1]);
        match (hi, lo) {
            (Some(hi), Some(lo)) => key[i] = hi << 4 | lo,
            _ => return Err(format!("not a hex digit at character {}", 2 * i + 1)),
        }
    }
    Ok(key)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn generated_key_loads_back_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("room.key");
        let key = gen_key(&path).expect("gen");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert_eq!(load_key(&path).expect("load"), key);
        let other = dir.path().join("other.key");
        assert_ne!(gen_key(&other).expect("gen"), key, "two keys are random");
    }

    #[test]
    fn gen_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("room.key");
        let key = gen_key(&path).expect("gen");
        let err = gen_key(&path).expect_err("second gen");
        assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        assert_eq!(
            load_key(&path).expect("load"),
            key,
            "the first key is untouched"
        );
    }

    #[test]
    fn load_refuses_missing_file_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.key");
        let err = load_key(&path).expect_err("missing");
        assert!(matches!(err, KeyFileError::Io { .. }));
        assert!(err.to_string().contains("absent.key"), "{err}");
    }

    #[test]
    fn load_refuses_group_or_world_access() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("room.key");
        gen_key(&path).expect("gen");
        for mode in [0o640, 0o604, 0o620, 0o666] {
            set_mode(&path, mode);
            let err = load_key(&path).expect_err("open permissions");
            assert!(
                matches!(err, KeyFileError::Permissions { .. }),
                "{mode:o}: {err}"
            );
            assert!(err.to_string().contains("room.key"), "{err}");
        }
        set_mode(&path, 0o400);
        assert!(load_key(&path).is_ok());
    }

    #[test]
    fn load_refuses_malformed_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        let good = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
        let cases: [&str; 5] = [
            "",
            "0011",
            &format!("{good}00"),
            &format!("g{}", &good[1..]),
            &format!("{good}\n\n"),
        ];
        for content in cases {
            fs::write(&path, content).expect("write");
            set_mode(&path, 0o600);
            let err = load_key(&path).expect_err(content);
            assert!(
                matches!(err, KeyFileError::Malformed { .. }),
                "{content:?}: {err}"
            );
            assert!(err.to_string().contains("bad.key"), "{err}");
        }
        fs::write(&path, good).expect("write");
        let key = load_key(&path).expect("no newline is fine");
        assert_eq!(key.0[0], 0x00);
        assert_eq!(key.0[31], 0xff);
        assert_eq!(format!("{key:?}"), "RoomKey(..)");
    }

    #[test]
    fn load_refuses_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        set_mode(dir.path(), 0o700);
        let err = load_key(dir.path()).expect_err("directory");
        assert!(matches!(err, KeyFileError::Malformed { .. }), "{err}");
    }
}
