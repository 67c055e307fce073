//! Persistence of learned profiles in the state directory (`/var/lib/custos/profiles`).
//!
//! One JSON file per workload identity, named `<name>-<hash>.json` (see
//! [`WorkloadIdentity::file_stem`]). JSON of the canonical model rather than the YAML view:
//! it keeps the full learning state (container ids, millisecond times) that the YAML `status`
//! summarises, and it is fast to write every second.
//!
//! Writes are atomic: the new contents go to a temporary file in the same directory, which is
//! fsynced, renamed over the old file, and the directory is fsynced. A crash (`kill -9`, power
//! loss) therefore leaves either the old or the new version, never a mix. Together with a
//! caller that saves dirty profiles at least once a second (see
//! [`ProfileSet::flush`](super::registry::ProfileSet::flush)), nothing learned more than a
//! second before a crash is lost.
//!
//! Loading never deletes or rewrites a file it cannot read: a corrupt file is reported with
//! its path and skipped, so a person can look at it. Only leftover temporary files of an
//! interrupted write (which never hold the only copy of anything) are removed.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::identity::WorkloadIdentity;
use super::merge::merge_into;
use super::model::Profile;

/// The on-disk format version this agent writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const EXTENSION: &str = "json";
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create profile directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list profile directory {}: {source}", dir.display())]
    ListDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read profile file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt profile file {} (skipped, left in place): {source}", path.display())]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "profile file {} has format {found}, this agent reads format {expected} (skipped)",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("cannot write profile file {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove profile file {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Serialize)]
struct StoredRef<'a> {
    format: u32,
    profile: &'a Profile,
}

#[derive(Deserialize)]
struct StoredHeader {
    format: u32,
}

#[derive(Deserialize)]
struct Stored {
    profile: Profile,
}

/// What [`ProfileStore::load_all`] found.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Sorted by identity; files with the same identity are merged.
    pub profiles: Vec<Profile>,
    /// Files that were skipped, with why.
    pub errors: Vec<StoreError>,
}

/// The profile files of one directory.
#[derive(Debug, Clone)]
pub struct ProfileStore {
    dir: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl ProfileStore {
    /// Opens (creating, mode 0700) the directory and removes leftover temporary files of
    /// interrupted writes.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| StoreError::CreateDir {
                dir: dir.clone(),
                source,
            })?;
        let store = Self { dir };
        store.remove_stale_temp_files();
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file a profile of `identity` is kept in.
    pub fn path_for(&self, identity: &WorkloadIdentity) -> PathBuf {
        self.dir
            .join(format!("{}.{EXTENSION}", identity.file_stem()))
    }

    fn remove_stale_temp_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                match fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed leftover temporary profile file")
                    }
                    Err(err) => {
                        tracing::warn!(path = %path.display(), %err, "cannot remove leftover temporary profile file")
                    }
                }
            }
        }
    }

    /// Loads every `*.json` profile of the directory. Fails only when the directory cannot
    /// be listed; unreadable or corrupt files are reported in [`LoadReport::errors`] (and
    /// logged) and skipped.
    pub fn load_all(&self) -> Result<LoadReport, StoreError> {
        let entries = fs::read_dir(&self.dir).map_err(|source| StoreError::ListDir {
            dir: self.dir.clone(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
                p.extension().is_some_and(|e| e == EXTENSION)
                    && name.is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        paths.sort();

        let mut report = LoadReport::default();
        let mut by_identity: std::collections::BTreeMap<WorkloadIdentity, Profile> =
            std::collections::BTreeMap::new();
        for path in paths {
            match Self::load_file(&path) {
                Ok(profile) => match by_identity.get_mut(&profile.identity) {
                    Some(existing) => {
                        tracing::warn!(path = %path.display(), identity = %profile.identity, "second file for one workload; merged");
                        let _ = merge_into(existing, &profile);
                    }
                    None => {
                        by_identity.insert(profile.identity.clone(), profile);
                    }
                },
                Err(err) => {
                    tracing::warn!(%err, "skipping profile file");
                    report.errors.push(err);
                }
            }
        }
        report.profiles = by_identity.into_values().collect();
        Ok(report)
    }

    /// Reads one profile file.
    pub fn load_file(path: &Path) -> Result<Profile, StoreError> {
        let bytes = fs::read(path).map_err(|source| StoreError::Read {
            path: path.to_owned(),
            source,
        })?;
        let corrupt = |source| StoreError::Corrupt {
            path: path.to_owned(),
            source,
        };
        let header: StoredHeader = serde_json::from_slice(&bytes).map_err(corrupt)?;
        if header.format != FORMAT_VERSION {
            return Err(StoreError::UnsupportedFormat {
                path: path.to_owned(),
                found: header.format,
                expected: FORMAT_VERSION,
            });
        }
        let stored: Stored = serde_json::from_slice(&bytes).map_err(corrupt)?;
        Ok(stored.profile)
    }

    /// Writes a profile atomically (temp file, fsync, rename, fsync of the directory) and
    /// returns its path. Blocking I/O: call it from a blocking context.
    pub fn save(&self, profile: &Profile) -> Result<PathBuf, StoreError> {
        let path = self.path_for(&profile.identity);
        let write_err = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(&StoredRef {
            format: FORMAT_VERSION,
            profile,
        })
        .map_err(|e| write_err(std::io::Error::other(e)))?;
        let tmp = self.dir.join(format!(
            "{TEMP_PREFIX}{}-{}-{}",
            profile.identity.file_stem(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            drop(file);
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(err) = result {
            let _ = fs::remove_file(&tmp);
            return Err(write_err(err));
        }
        Ok(path)
    }

    /// Removes the file of `identity`; false when there was none.
    pub fn remove(&self, identity: &WorkloadIdentity) -> Result<bool, StoreError> {
        let path = self.path_for(identity);
        match fs::remove_file(&path) {
            Ok(()) => {
                let _ = File::open(&self.dir).and_then(|d| d.sync_all());
                Ok(true)
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Remove { path, source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::model::{FileAccess, Observation};

    fn profile(workload: &str) -> Profile {
        let mut p = Profile::new(WorkloadIdentity::new(
            workload,
            "app",
            "docker.io/library/app",
        ));
        p.learn(&Observation::Exec {
            path: "/bin/app".into(),
            parent_exe: Some("/bin/sh".into()),
        });
        p.learn(&Observation::File {
            path: "/proc/12/stat".into(),
            access: FileAccess::Read,
        });
        p.observe_container("c1", std::time::SystemTime::now());
        p
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path().join("profiles")).unwrap();
        let a = profile("a");
        let b = profile("b");
        let path = store.save(&a).unwrap();
        assert_eq!(path, store.path_for(&a.identity));
        store.save(&b).unwrap();
        // Saving again replaces the file.
        let mut a2 = a.clone();
        a2.learn(&Observation::Syscall {
            name: "read".into(),
        });
        store.save(&a2).unwrap();

        let report = ProfileStore::open(store.dir()).unwrap().load_all().unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.profiles, vec![a2, b]);
        let names: Vec<_> = fs::read_dir(store.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
    }

    #[test]
    fn corrupt_and_torn_files_are_reported_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path()).unwrap();
        let good = profile("good");
        store.save(&good).unwrap();
        let full = serde_json::to_string(&StoredRef {
            format: FORMAT_VERSION,
            profile: &profile("torn"),
        })
        .unwrap();
        let torn = dir.path().join("torn.json");
        fs::write(&torn, &full[..full.len() / 2]).unwrap();
        let garbage = dir.path().join("garbage.json");
        fs::write(&garbage, b"\x00\x01 not json").unwrap();
        let future = dir.path().join("future.json");
        fs::write(&future, r#"{"format": 99, "profile": {}}"#).unwrap();
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();

        let report = store.load_all().unwrap();
        assert_eq!(report.profiles, vec![good]);
        assert_eq!(report.errors.len(), 3);
        let messages: Vec<String> = report.errors.iter().map(ToString::to_string).collect();
        for path in [&torn, &garbage, &future] {
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains(&path.display().to_string())),
                "{path:?} not reported in {messages:?}"
            );
            assert!(path.exists(), "{path:?} must not be deleted");
        }
        assert!(matches!(
            report
                .errors
                .iter()
                .find(|e| matches!(e, StoreError::UnsupportedFormat { .. })),
            Some(StoreError::UnsupportedFormat { found: 99, .. })
        ));
    }

    #[test]
    fn leftover_temp_files_are_cleaned_and_never_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(".tmp-web-app-0000-1-0");
        fs::write(&leftover, "{partial").unwrap();
        let store = ProfileStore::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        assert!(store.load_all().unwrap().profiles.is_empty());
    }

    #[test]
    fn remove_and_unlistable_dir() {
        let dir = tempfile::tempdir().unwrap();
        let store = ProfileStore::open(dir.path()).unwrap();
        let p = profile("x");
        store.save(&p).unwrap();
        assert!(store.remove(&p.identity).unwrap());
        assert!(!store.remove(&p.identity).unwrap());
        let gone = ProfileStore {
            dir: dir.path().join("missing"),
        };
        assert!(matches!(gone.load_all(), Err(StoreError::ListDir { .. })));
    }
}
