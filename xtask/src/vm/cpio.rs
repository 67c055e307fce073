//! The initramfs archive: a "newc" cpio stream, the format the kernel unpacks into its first
//! root filesystem. Written here rather than with `cpio -o` so that host files can land at any
//! path of the guest (stripped copies at the original binaries' paths) without a staging tree.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// What one path of the guest holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir {
        mode: u32,
    },
    /// A regular file with the contents of a host file.
    HostFile {
        source: PathBuf,
        mode: u32,
    },
    /// A regular file with the given contents.
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: PathBuf,
    },
}

/// The guest tree, keyed by absolute guest path. A `BTreeMap` of paths orders by component, so
/// every directory is written before what it contains, as the kernel's unpacker needs.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Archive {
    /// A directory (and its parents).
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_path_buf(),
            Entry::Dir {
                mode: mode & 0o7777,
            },
        );
    }

    /// A file at `path` with the contents of the host file `source` (read when writing).
    pub fn host_file(&mut self, path: impl AsRef<Path>, source: &Path, mode: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_path_buf(),
            Entry::HostFile {
                source: source.to_path_buf(),
                mode: mode & 0o7777,
            },
        );
    }

    /// A file at `path` holding `data`.
    pub fn data(&mut self, path: impl AsRef<Path>, data: impl Into<Vec<u8>>, mode: u32) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_path_buf(),
            Entry::Data {
                data: data.into(),
                mode: mode & 0o7777,
            },
        );
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: impl AsRef<Path>) {
        let path = path.as_ref();
        self.parents(path);
        self.entries.insert(
            path.to_path_buf(),
            Entry::Symlink {
                target: target.as_ref().to_path_buf(),
            },
        );
    }

    /// The host file or directory `path`, at the same path in the guest, with every symbolic
    /// link on the way reproduced (`/lib64` -> `usr/lib64` on a merged-/usr host), so that the
    /// guest resolves the path exactly as the host does. Directories are added empty.
    pub fn host_path(&mut self, path: &Path) -> Result<()> {
        self.host_path_within(path, 0)
    }

    fn host_path_within(&mut self, path: &Path, depth: u32) -> Result<()> {
        if depth > 40 {
            bail!("too many levels of symbolic links at {}", path.display());
        }
        if !path.is_absolute() {
            bail!("{} is not an absolute path", path.display());
        }
        let mut resolved = PathBuf::from("/");
        let mut components = normalize(path).into_iter();
        while let Some(name) = components.next() {
            let here = resolved.join(&name);
            let meta = std::fs::symlink_metadata(&here)
                .with_context(|| format!("reading {}", here.display()))?;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&here)
                    .with_context(|| format!("reading the link {}", here.display()))?;
                self.symlink(&here, &target);
                let mut rest = resolved.join(&target);
                rest.extend(components);
                return self.host_path_within(&rest, depth + 1);
            }
            let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
            if meta.is_dir() {
                if !matches!(self.entries.get(&here), Some(Entry::Dir { .. })) {
                    self.dir(&here, mode);
                }
            } else if meta.is_file() {
                self.host_file(&here, &here, mode);
            } else {
                bail!(
                    "{} is neither a file, a directory nor a link",
                    here.display()
                );
            }
            resolved = here;
        }
        Ok(())
    }

    /// Directories for every missing ancestor of `path` (mode 0755).
    fn parents(&mut self, path: &Path) {
        for ancestor in path.ancestors().skip(1) {
            if ancestor == Path::new("/") || ancestor.as_os_str().is_empty() {
                break;
            }
            self.entries
                .entry(ancestor.to_path_buf())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
    }

    /// Writes the archive (newc, trailer included) to `out`.
    pub fn write(&self, out: &mut impl Write) -> Result<()> {
        for (ino, (path, entry)) in (1..).zip(&self.entries) {
            let name = path
                .strip_prefix("/")
                .with_context(|| format!("{} is not an absolute path", path.display()))?;
            let name = name.as_os_str().as_encoded_bytes();
            match entry {
                Entry::Dir { mode } => header(out, ino, 0o040_000 | mode, 2, 0, name)?,
                Entry::Data { data, mode } => {
                    header(out, ino, 0o100_000 | mode, 1, data.len(), name)?;
                    out.write_all(data)?;
                    pad(out, data.len())?;
                }
                Entry::Symlink { target } => {
                    let target = target.as_os_str().as_encoded_bytes();
                    header(out, ino, 0o120_777, 1, target.len(), name)?;
                    out.write_all(target)?;
                    pad(out, target.len())?;
                }
                Entry::HostFile { source, mode } => {
                    let mut file = File::open(source)
                        .with_context(|| format!("opening {}", source.display()))?;
                    let len = file.metadata()?.len();
                    let len = usize::try_from(len)
                        .with_context(|| format!("{} is too large", source.display()))?;
                    header(out, ino, 0o100_000 | mode, 1, len, name)?;
                    let copied = io::copy(&mut file, out)
                        .with_context(|| format!("copying {}", source.display()))?;
                    if copied != len as u64 {
                        bail!("{} changed size while being archived", source.display());
                    }
                    pad(out, len)?;
                }
            }
        }
        header(out, 0, 0, 1, 0, b"TRAILER!!!")?;
        Ok(())
    }
}

/// The normal components of an absolute path, `..` applied lexically (the caller resolves
/// links component by component, so this never crosses one).
fn normalize(path: &Path) -> Vec<std::ffi::OsString> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// One newc header and the entry's name, padded to 4 bytes.
fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    name: &[u8],
) -> Result<()> {
    let size = u32::try_from(size).context("a file of 4 GiB or more cannot go in a newc cpio")?;
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        0,
        0,
        namesize as u32,
        0,
    ];
    let mut text = String::from("070701");
    for field in fields {
        text.push_str(&format!("{field:08x}"));
    }
    out.write_all(text.as_bytes())?;
    out.write_all(name)?;
    out.write_all(&[0])?;
    pad(out, text.len() + namesize)?;
    Ok(())
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    let zeros = [0u8; 3];
    out.write_all(&zeros[..(4 - len % 4) % 4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_newc_with_parents_first_and_padding() {
        let mut archive = Archive::default();
        archive.data("/etc/hosts", b"127.0.0.1 localhost\n".to_vec(), 0o644);
        archive.symlink("/bin", "usr/bin");
        let mut out = Vec::new();
        archive.write(&mut out).expect("write");

        // Entries: bin (link), etc (dir, added as a parent), etc/hosts, trailer.
        let text = String::from_utf8_lossy(&out);
        let names: Vec<&str> = ["bin\0", "etc\0", "etc/hosts\0", "TRAILER!!!\0"]
            .into_iter()
            .filter(|name| text.contains(name))
            .collect();
        assert_eq!(names.len(), 4, "{text:?}");
        assert!(text.find("etc\0").unwrap() < text.find("etc/hosts\0").unwrap());
        assert_eq!(out.len() % 4, 0);
        // The first header: magic, ino 1, a symlink, nlink 1, size 7 ("usr/bin"), name "bin".
        assert!(
            text.starts_with("070701000000010000a1ff"),
            "{}",
            &text[..40]
        );
        assert_eq!(&text[54..62], "00000007");
        assert_eq!(&text[94..102], "00000004");
        assert_eq!(&out[110..114], b"bin\0");
        assert_eq!(&out[116..123], b"usr/bin");
    }

    #[test]
    fn host_paths_keep_their_links() {
        let dir = std::env::temp_dir().join(format!("custos-cpio-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("usr/lib")).expect("mkdir");
        std::fs::write(dir.join("usr/lib/libx.so.1.2"), b"elf").expect("write");
        std::os::unix::fs::symlink("usr/lib", dir.join("lib")).expect("link");
        std::os::unix::fs::symlink("libx.so.1.2", dir.join("usr/lib/libx.so.1")).expect("link");

        let mut archive = Archive::default();
        archive
            .host_path(&dir.join("lib/libx.so.1"))
            .expect("host path");
        let _ = std::fs::remove_dir_all(&dir);

        assert_eq!(
            archive.entries.get(&dir.join("lib")),
            Some(&Entry::Symlink {
                target: "usr/lib".into()
            })
        );
        assert_eq!(
            archive.entries.get(&dir.join("usr/lib/libx.so.1")),
            Some(&Entry::Symlink {
                target: "libx.so.1.2".into()
            })
        );
        assert!(matches!(
            archive.entries.get(&dir.join("usr/lib/libx.so.1.2")),
            Some(Entry::HostFile { .. })
        ));
        assert!(matches!(
            archive.entries.get(&dir.join("usr")),
            Some(Entry::Dir { .. })
        ));
    }
}
