//! Where the JSON-lines sink writes: standard output, or a file rotated by size.
//!
//! Rotation keeps whole lines: a line is never split between two files. When the next line
//! would take the live file past `max_bytes`, `custos.jsonl` becomes `custos.jsonl.1`, the
//! older ones shift (`.1` → `.2`, …), the one past `keep` is deleted, and a new live file is
//! started. A line longer than `max_bytes` on its own still goes, alone, into one file.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
};

/// Receives whole lines (each ending with `\n`).
pub trait LineWriter: Send {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()>;
    /// Makes what was written visible to readers.
    fn flush(&mut self) -> io::Result<()>;
    /// Rotations done so far (0 for a stream).
    fn rotations(&self) -> u64 {
        0
    }
}

/// Lines to the agent's standard output.
pub struct Stdout(BufWriter<io::Stdout>);

impl Stdout {
    pub fn new() -> Self {
        Self(BufWriter::with_capacity(64 * 1024, io::stdout()))
    }
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl LineWriter for Stdout {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.0.write_all(line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Lines appended to a file that is rotated when it reaches a size.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    /// Bytes in the live file, written or buffered.
    size: u64,
    rotations: u64,
}

impl RotatingFile {
    /// Opens `path` for appending (creating it and its directory if needed): lines of an
    /// earlier run are kept, and count towards the size.
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = Self::open_live(path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path: path.to_path_buf(),
            max_bytes,
            keep,
            file: BufWriter::with_capacity(64 * 1024, file),
            size,
            rotations: 0,
        })
    }

    fn open_live(path: &Path) -> io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// `path.N`.
    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            fs::remove_file(&self.path)?;
        } else {
            // The oldest goes; rename replaces it if it is there.
            for n in (1..self.keep).rev() {
                match fs::rename(self.rotated(n), self.rotated(n + 1)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                    _ => {}
                }
            }
            fs::rename(&self.path, self.rotated(1))?;
        }
        self.file = BufWriter::with_capacity(64 * 1024, Self::open_live(&self.path)?);
        self.size = 0;
        self.rotations += 1;
        Ok(())
    }
}

impl LineWriter for RotatingFile {
    fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotations(&self) -> u64 {
        self.rotations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: usize, len: usize) -> Vec<u8> {
        let mut line = format!("{n:04}").into_bytes();
        line.resize(len - 1, b'x');
        line.push(b'\n');
        line
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap_or_default()
    }

    #[test]
    fn rotates_on_whole_lines_and_keeps_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/custos.jsonl");
        let mut file = RotatingFile::open(&path, 100, 2).unwrap();
        // 30-byte lines: three fit in 100 bytes, the fourth starts a new file.
        for n in 0..10 {
            file.write_line(&line(n, 30)).unwrap();
        }
        file.flush().unwrap();
        assert_eq!(file.rotations(), 3);
        let live = read(&path);
        let first = read(&file.rotated(1));
        let second = read(&file.rotated(2));
        assert!(!file.rotated(3).exists(), "more than `keep` rotated files");
        for text in [&live, &first, &second] {
            assert!(text.len() as u64 <= 100, "{text:?}");
            assert!(text.ends_with('\n'));
            assert!(
                text.lines().all(|l| l.len() == 29),
                "split line in {text:?}"
            );
        }
        let starts = |text: &str| -> Vec<String> { text.lines().map(|l| l[..4].into()).collect() };
        assert_eq!(starts(&second), ["0003", "0004", "0005"]);
        assert_eq!(starts(&first), ["0006", "0007", "0008"]);
        assert_eq!(starts(&live), ["0009"]);
    }

    #[test]
    fn appends_to_an_existing_file_and_counts_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.jsonl");
        fs::write(&path, line(0, 80)).unwrap();
        let mut file = RotatingFile::open(&path, 100, 1).unwrap();
        file.write_line(&line(1, 30)).unwrap();
        file.flush().unwrap();
        assert_eq!(file.rotations(), 1);
        assert!(read(&file.rotated(1)).starts_with("0000"));
        assert!(read(&path).starts_with("0001"));
    }

    #[test]
    fn a_line_longer_than_the_limit_gets_a_file_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.jsonl");
        let mut file = RotatingFile::open(&path, 50, 3).unwrap();
        file.write_line(&line(0, 10)).unwrap();
        file.write_line(&line(1, 120)).unwrap();
        file.write_line(&line(2, 10)).unwrap();
        file.flush().unwrap();
        assert_eq!(read(&file.rotated(2)).len(), 10);
        assert_eq!(read(&file.rotated(1)).len(), 120);
        assert_eq!(read(&path).len(), 10);
    }

    #[test]
    fn keep_zero_keeps_only_the_live_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.jsonl");
        let mut file = RotatingFile::open(&path, 50, 0).unwrap();
        for n in 0..4 {
            file.write_line(&line(n, 30)).unwrap();
        }
        file.flush().unwrap();
        assert!(read(&path).starts_with("0003"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
