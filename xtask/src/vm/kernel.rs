//! The guest kernel: Debian 12's cloud kernel (`linux-image-6.1.0-<N>-cloud-amd64`, BPF LSM
//! built in, BTF, kprobes and fentry available), fetched with `apt-get download`, unpacked with
//! `dpkg -x` and kept under `target/vm/kernel/<package>/` so later runs skip both.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use crate::cmd::{self, note, step};

/// `apt-cache search` pattern for the candidates; the newest ABI number wins.
const PACKAGE_PATTERN: &str = r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$";

pub struct Kernel {
    /// The Debian package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// The kernel image (`boot/vmlinuz-<release>` of the package).
    pub image: PathBuf,
}

/// The kernel of `package`, or of the newest cloud kernel the archive offers; downloaded and
/// unpacked only if it is not cached yet.
pub fn fetch(cache: &Path, package: Option<&str>) -> Result<Kernel> {
    let package = match package {
        Some(package) => package.to_owned(),
        None => newest_package(cache)?,
    };
    step(format!("guest kernel {package}"));
    let dir = cache.join(&package);
    if let Some(image) = image_in(&dir)? {
        note(format!("already present ({})", image.display()));
        return Ok(Kernel { package, image });
    }

    let download = cache.join(format!("{package}.download"));
    let _ = fs::remove_dir_all(&download);
    fs::create_dir_all(&download).with_context(|| format!("creating {}", download.display()))?;
    let mut apt = Command::new("apt-get");
    apt.args(["download", "-q", &package]);
    if crate::setup::is_root() {
        // apt's download user (_apt) cannot write into root's directories; download as root
        // rather than warn about it.
        apt.args(["-o", "APT::Sandbox::User=root"]);
    }
    cmd::run(apt.current_dir(&download).stdin(Stdio::null())).with_context(|| {
        format!("downloading {package} (is it in the apt sources? `apt-cache policy {package}`)")
    })?;
    let deb = fs::read_dir(&download)?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .with_context(|| format!("apt-get download left no .deb in {}", download.display()))?;

    // Unpack beside the final place and rename, so an interrupted run leaves nothing that
    // looks complete.
    let unpacked = cache.join(format!("{package}.partial"));
    let _ = fs::remove_dir_all(&unpacked);
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked))
        .with_context(|| format!("unpacking {}", deb.display()))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&unpacked, &dir)
        .with_context(|| format!("renaming {} to {}", unpacked.display(), dir.display()))?;
    let _ = fs::remove_dir_all(&download);
    let image = image_in(&dir)?
        .with_context(|| format!("{package} holds no boot/vmlinuz-* (in {})", dir.display()))?;
    note(format!("unpacked {}", image.display()));
    Ok(Kernel { package, image })
}

/// `boot/vmlinuz-*` inside an unpacked package directory, if it is there.
fn image_in(dir: &Path) -> Result<Option<PathBuf>> {
    let boot = dir.join("boot");
    if !boot.is_dir() {
        return Ok(None);
    }
    Ok(fs::read_dir(&boot)
        .with_context(|| format!("listing {}", boot.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        }))
}

/// The newest `linux-image-6.1.0-<N>-cloud-amd64` apt knows of (after an `apt-get update` if
/// it knows none); without any, the newest one already cached.
fn newest_package(cache: &Path) -> Result<String> {
    let search = || {
        cmd::output(Command::new("apt-cache").args(["search", "--names-only", PACKAGE_PATTERN]))
            .map(|text| newest(text.lines().filter_map(|l| l.split_whitespace().next())))
    };
    let mut found = search().context("asking apt-cache for Debian 12 cloud kernels")?;
    if found.is_none() && crate::setup::is_root() {
        note("apt knows no cloud kernel; updating its package lists");
        cmd::run(
            Command::new("apt-get")
                .args(["update", "-q"])
                .stdin(Stdio::null()),
        )?;
        found = search()?;
    }
    if let Some(package) = found {
        return Ok(package);
    }
    let cached = fs::read_dir(cache)
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            image_in(&cache.join(&name)).ok().flatten().map(|_| name)
        });
    let cached: Vec<String> = cached.collect();
    newest(cached.iter().map(String::as_str)).with_context(|| {
        format!(
            "no linux-image-6.1.0-<N>-cloud-amd64 package is known to apt (`apt-cache search \
             '{PACKAGE_PATTERN}'` is empty) and none is cached in {}: add Debian 12's archive \
             to the apt sources, or pass --kernel PACKAGE",
            cache.display()
        )
    })
}

/// The name with the highest ABI number among `linux-image-6.1.0-<N>-cloud-amd64` names; other
/// names (`-dbg`, `-unsigned`, other flavours) are ignored.
fn newest<'a>(names: impl Iterator<Item = &'a str>) -> Option<String> {
    names
        .filter_map(|name| {
            let abi = name
                .strip_prefix("linux-image-6.1.0-")?
                .strip_suffix("-cloud-amd64")?;
            let abi: u32 = abi.parse().ok()?;
            Some((abi, name))
        })
        .max()
        .map(|(_, name)| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::newest;

    #[test]
    fn picks_the_highest_abi_of_the_plain_cloud_kernel() {
        let names = [
            "linux-image-6.1.0-9-cloud-amd64",
            "linux-image-6.1.0-56-cloud-amd64-unsigned",
            "linux-image-6.1.0-47-cloud-amd64",
            "linux-image-6.1.0-55-cloud-amd64-dbg",
            "linux-image-6.1.0-50-cloud-amd64",
            "linux-image-6.1.0-60-amd64",
            "linux-image-6.1.0-x-cloud-amd64",
        ];
        assert_eq!(
            newest(names.into_iter()).as_deref(),
            Some("linux-image-6.1.0-50-cloud-amd64")
        );
        assert_eq!(newest(std::iter::empty()), None);
    }
}
