//! Private rooms end to end: `streamd --gen-key` writes a room key only its owner can read,
//! and never overwrites one.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `streamd --gen-key PATH`: its exit code and stderr.
fn gen_key(path: &Path) -> (i32, String) {
    let out = Command::new(bin("streamd"))
        .arg("--gen-key")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let (code, err) = gen_key(&path);
    assert_eq!(code, 0, "streamd --gen-key: {err}");
    path
}

#[test]
fn gen_key_writes_a_private_key_once() {
    let dir = tempdir();
    let path = new_key(dir.path(), "room.key");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.trim_end().len(), 64);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    let (code, err) = gen_key(&path);
    assert_ne!(code, 0, "overwrote an existing key");
    assert!(
        err.contains("room.key") && err.trim().lines().count() == 1,
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "the key was changed"
    );
}
