//! Booting the guest and reading what it says: QEMU's serial console is the only channel back.
//! The guest's `/init` frames everything with `custos-vm:` marker lines (see `initramfs.rs`);
//! [`Transcript`] turns the console into results, whatever else the kernel prints in between.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use crate::cmd::{self, note};

/// Prefix of every line `/init` writes for the host to read.
pub const MARKER: &str = "custos-vm:";

/// qboot starts a `-kernel` guest a second or two sooner than SeaBIOS under TCG, and prints
/// nothing; QEMU finds it in its data directory (Debian's qemu-system-data ships it).
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

pub struct Machine<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub append: &'a str,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// How the guest run ended, and what it reported.
pub struct Run {
    pub transcript: Transcript,
    pub timed_out: bool,
    pub elapsed: Duration,
}

/// Boots `machine` under QEMU (TCG: KVM is not usable on the machines this runs on), echoes
/// the console to stderr and `log`, and stops it after `timeout`.
pub fn boot(machine: &Machine, timeout: Duration, log: &Path) -> Result<Run> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &machine.cpus.to_string()])
        .args(["-m", &machine.memory_mib.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"]);
    if Path::new(QBOOT).is_file() {
        qemu.args(["-bios", QBOOT]);
    }
    qemu.arg("-kernel")
        .arg(machine.kernel)
        .arg("-initrd")
        .arg(machine.initrd)
        .args(["-append", machine.append])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    note(format!("$ {}", cmd::display(&qemu)));
    let mut log = File::create(log).with_context(|| format!("creating {}", log.display()))?;

    let started = Instant::now();
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86)")?;
    let (lines, receive) = mpsc::channel();
    let readers = [
        forward_lines(child.stdout.take(), lines.clone()),
        forward_lines(child.stderr.take(), lines),
    ];

    let deadline = started + timeout;
    let mut transcript = Transcript::default();
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receive.recv_timeout(left) {
            Ok(line) => {
                let line = printable(&line);
                eprintln!("vm| {line}");
                let _ = writeln!(log, "{line}");
                transcript.line(&line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    for reader in readers {
        let _ = reader.join();
    }
    if !timed_out && !status.success() {
        note(format!("qemu exited with {status}"));
    }
    Ok(Run {
        transcript,
        timed_out,
        elapsed: started.elapsed(),
    })
}

fn forward_lines(
    pipe: Option<impl Read + Send + 'static>,
    lines: mpsc::Sender<String>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let Some(pipe) = pipe else { return };
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            if lines
                .send(String::from_utf8_lossy(&buf).into_owned())
                .is_err()
            {
                return;
            }
            buf.clear();
        }
    })
}

/// The line without terminal control sequences (firmware clears the screen and turns off line
/// wrapping, which would reach the developer's terminal) or other control characters.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.next_if_eq(&'[').is_some() {
                    // CSI: parameters up to a final byte in @..~.
                    while chars.next().is_some_and(|c| !('@'..='~').contains(&c)) {}
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// One test binary's run inside the guest.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TestRun {
    pub name: String,
    /// Exit status; `None` if the guest never said it ended.
    pub code: Option<i32>,
    /// libtest's `test result: ...` lines.
    pub summary: Vec<String>,
    /// Tests libtest reported as `FAILED`.
    pub failed: Vec<String>,
}

impl TestRun {
    pub fn passed(&self) -> bool {
        self.code == Some(0)
    }
}

/// What the guest reported, read from its console.
#[derive(Debug, Default)]
pub struct Transcript {
    /// `uname -r` of the guest.
    pub kernel: Option<String>,
    /// `/sys/kernel/security/lsm`.
    pub lsm: Option<String>,
    pub tests: Vec<TestRun>,
    /// `/init` got to its end.
    pub done: bool,
    /// The kernel's panic line, if it panicked.
    pub panic: Option<String>,
    /// A message `/init` gave up with (e.g. containerd did not start).
    pub setup_error: Option<String>,
}

impl Transcript {
    pub fn line(&mut self, line: &str) {
        let line = line.trim_end();
        if let Some(at) = line.find(MARKER) {
            self.marker(line[at + MARKER.len()..].trim());
            return;
        }
        if line.contains("Kernel panic") && self.panic.is_none() {
            self.panic = Some(line.trim().to_owned());
        }
        let Some(run) = self.tests.last_mut().filter(|run| run.code.is_none()) else {
            return;
        };
        let text = line.trim();
        if text.starts_with("test result:") {
            run.summary.push(text.to_owned());
        } else if let Some(name) = text
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            run.failed.push(name.to_owned());
        }
    }

    fn marker(&mut self, text: &str) {
        let (word, rest) = text.split_once(' ').unwrap_or((text, ""));
        match word {
            "kernel" => self.kernel = Some(rest.to_owned()),
            "lsm" => self.lsm = Some(rest.to_owned()),
            "begin" => self.tests.push(TestRun {
                name: rest.to_owned(),
                ..TestRun::default()
            }),
            "end" => {
                let (name, code) = rest.rsplit_once(' ').unwrap_or((rest, ""));
                if let Some(run) = self.tests.iter_mut().rev().find(|run| run.name == name) {
                    run.code = Some(code.parse().unwrap_or(-1));
                }
            }
            "error" => self.setup_error = Some(rest.to_owned()),
            "done" => self.done = true,
            _ => {}
        }
    }

    /// Whether BPF LSM is active in the guest.
    pub fn bpf_lsm(&self) -> bool {
        self.lsm
            .as_deref()
            .is_some_and(|lsm| lsm.split(',').any(|name| name.trim() == "bpf"))
    }

    /// The test binary that was running when the console stopped, if one was.
    pub fn unfinished(&self) -> Option<&str> {
        self.tests
            .iter()
            .find(|run| run.code.is_none())
            .map(|run| run.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(console: &str) -> Transcript {
        let mut transcript = Transcript::default();
        for line in console.lines() {
            transcript.line(&printable(line));
        }
        transcript
    }

    #[test]
    fn reads_results_between_markers() {
        let t = read(
            "\u{1b}c\u{1b}[?7l\u{1b}[2JSeaBIOS\r
custos-vm: kernel 6.1.0-56-cloud-amd64
custos-vm: lsm lockdown,capability,bpf
custos-vm: begin e2e_exec

running 2 tests
test a ... ok
test b::c ... FAILED
[   12.5] some kernel line
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out
custos-vm: end e2e_exec 101
custos-vm: begin e2e_monitor
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out
[   40.1] custos-vm: end e2e_monitor 0
custos-vm: done
",
        );
        assert_eq!(t.kernel.as_deref(), Some("6.1.0-56-cloud-amd64"));
        assert!(t.bpf_lsm());
        assert!(t.done);
        assert_eq!(t.unfinished(), None);
        assert_eq!(
            t.tests[0],
            TestRun {
                name: "e2e_exec".into(),
                code: Some(101),
                summary: vec![
                    "test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 \
                     filtered out"
                        .into()
                ],
                failed: vec!["b::c".into()],
            }
        );
        assert!(!t.tests[0].passed());
        assert!(t.tests[1].passed());
    }

    #[test]
    fn notices_missing_lsm_hangs_and_panics() {
        let t = read(
            "custos-vm: lsm lockdown,capability,landlock,bpfx
custos-vm: begin e2e_exec
test a ... ok
[    9.9] Kernel panic - not syncing: Attempted to kill init!
",
        );
        assert!(!t.bpf_lsm());
        assert!(!t.done);
        assert_eq!(t.unfinished(), Some("e2e_exec"));
        assert_eq!(
            t.panic.as_deref(),
            Some("[    9.9] Kernel panic - not syncing: Attempted to kill init!")
        );
        assert!(!read("").bpf_lsm());
    }

    #[test]
    fn strips_control_sequences() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSea\tBIOS\r\n"),
            "Sea\tBIOS"
        );
    }
}
