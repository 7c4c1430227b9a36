//! System packages and toolchain components: check, install when we can (apt-get as root on
//! Debian/Ubuntu), otherwise fail with the exact command to run. `cargo xtask` calls it before
//! building anything that needs the packages.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Makes sure every Debian package in `pkgs` is installed.
///
/// On a Debian/Ubuntu machine, missing packages are installed with apt-get when running as root
/// (after `apt-get update`: a fresh machine's package lists can be empty); otherwise this fails
/// with the exact command to run. Elsewhere it only checks what it can (ALSA and Opus through
/// pkg-config) and says what to install.
pub fn ensure_packages(pkgs: &[&str]) -> Result<()> {
    if !on_path("dpkg-query") {
        for (pkg, lib, what) in [
            ("libasound2-dev", "alsa", "ALSA"),
            ("libopus-dev", "opus", "Opus"),
        ] {
            if pkgs.contains(&pkg) && !pkg_config_has(lib) {
                bail!(
                    "the {what} development files are missing (pkg-config cannot find `{lib}`); \
                     install your distribution's {what} development package and pkg-config \
                     (Debian names: {})",
                    pkgs.join(" ")
                );
            }
        }
        return Ok(());
    }
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !is_root() || !on_path("apt-get") {
        bail!(
            "missing system packages: {list}\n  install them with:\n    sudo apt-get update && \
             sudo apt-get install -y --no-install-recommends {list}"
        );
    }
    eprintln!("installing missing system packages: {list}");
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    let still: Vec<&str> = missing
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still missing: {}",
            still.join(" ")
        );
    }
    Ok(())
}

/// rustfmt and clippy ship as rustup components; a minimal toolchain lacks them.
pub fn ensure_rust_components() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(sub, _)| !quiet_ok(Command::new(&cargo).args([sub, "--version"])))
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !on_path("rustup") {
        bail!(
            "missing Rust components: {} (install them for your toolchain)",
            missing.join(" ")
        );
    }
    eprintln!("adding Rust components: {}", missing.join(" "));
    let st = Command::new("rustup")
        .args(["component", "add"])
        .args(&missing)
        .status()
        .context("could not run rustup")?;
    if !st.success() {
        bail!("`rustup component add {}` failed", missing.join(" "));
    }
    Ok(())
}

fn apt(args: &[&str]) -> Result<()> {
    let st = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("could not run apt-get")?;
    if !st.success() {
        bail!("`apt-get {}` failed ({st})", args.join(" "));
    }
    Ok(())
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn pkg_config_has(lib: &str) -> bool {
    quiet_ok(Command::new("pkg-config").args(["--exists", lib]))
}

/// Whether this process runs as root (effective uid 0): only root can install packages.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether an executable file named `program` is in a `PATH` directory.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| {
            std::fs::metadata(d.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_and_only_those() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-program-anywhere-7f3a"));
    }

    #[test]
    fn nothing_to_install_is_fine() {
        assert!(ensure_packages(&[]).is_ok());
    }
}
