//! `custos profiles ...`: the command-line side of behaviour profiles.
//!
//! Three commands talk to a running agent over its gRPC API, like any other client:
//! - `status`: learning progress, one line per profile (`-o json`: one object per line);
//! - `export [NAME...]`: `BehaviorProfile` YAML documents, to stdout or a file;
//! - `import FILE...`: loads files into the agent; an invalid file is refused by the agent with
//!   its name, the line and the reason, which is printed as is (exit status 1).
//!
//! Three work on files alone, without an agent, with the same profile library the agent uses:
//! - `merge FILE...`: the union of partial profiles (same selector merged, others kept apart);
//! - `diff OLD NEW`: what a reviewer reads, `+`/`-` per entry;
//! - `seccomp FILE`: the syscall set as a kubelet `localhost/` seccomp profile (JSON).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Subcommand, ValueEnum};
use serde::Serialize;

use crate::api::proto;
use crate::cli::DEFAULT_SOCKET;
use crate::client::connect_unix;
use crate::profiles::{Profile, WorkloadIdentity, merge, seccomp, yaml};

/// `custos profiles`.
#[derive(Debug, clap::Args)]
pub struct ProfilesArgs {
    #[command(subcommand)]
    pub command: ProfilesCommand,
}

#[derive(Debug, Subcommand)]
pub enum ProfilesCommand {
    /// Learning progress of every profile the agent holds.
    Status(StatusArgs),
    /// Profiles as BehaviorProfile YAML (all of them, or the named ones).
    Export(ExportArgs),
    /// Load BehaviorProfile YAML files into the agent (each file all or nothing).
    Import(ImportArgs),
    /// Union of the profiles in FILEs (local; no agent needed).
    Merge(MergeArgs),
    /// Entries added (+) and removed (-) from OLD to NEW (local; no agent needed).
    Diff(DiffArgs),
    /// A profile's syscalls as a kubelet `localhost/` seccomp profile (local; no agent needed).
    Seccomp(SeccompArgs),
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Unix socket of the agent's gRPC API.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = StatusFormat::Table)]
    pub output: StatusFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    /// Aligned columns for people.
    Table,
    /// One JSON object per profile and line.
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Unix socket of the agent's gRPC API.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Profile names (as in `custos profiles status`); all profiles when none is given.
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Write to FILE instead of stdout.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Unix socket of the agent's gRPC API.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// BehaviorProfile YAML files, imported in order.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct MergeArgs {
    /// BehaviorProfile YAML files.
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// Write to OUT instead of stdout.
    #[arg(short = 'f', long = "file", value_name = "OUT")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The profiles before (YAML).
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The profiles after (YAML).
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct SeccompArgs {
    /// BehaviorProfile YAML file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Which profile of FILE (its name, e.g. `web-nginx`); needed when FILE holds several.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Leave out the syscalls every container needs to start and exit (execve, exit, ...).
    #[arg(long)]
    pub no_baseline: bool,
    /// Write to OUT instead of stdout.
    #[arg(short = 'f', long = "file", value_name = "OUT")]
    pub out: Option<PathBuf>,
}

/// Runs `custos profiles <command>`.
pub async fn run(args: ProfilesArgs) -> anyhow::Result<()> {
    match args.command {
        ProfilesCommand::Status(args) => status(args).await,
        ProfilesCommand::Export(args) => export(args).await,
        ProfilesCommand::Import(args) => import(args).await,
        ProfilesCommand::Merge(args) => {
            let text = merge_files(&args.files)?;
            write_output(args.out.as_deref(), &text)
        }
        ProfilesCommand::Diff(args) => {
            let diff = diff_files(&args.old, &args.new)?;
            write_output(None, &diff.text)?;
            eprintln!("{} added, {} removed", diff.added, diff.removed);
            Ok(())
        }
        ProfilesCommand::Seccomp(args) => {
            let (json, skipped) =
                seccomp_file(&args.file, args.name.as_deref(), !args.no_baseline)?;
            if !skipped.is_empty() {
                eprintln!(
                    "custos: left out names that are not valid syscall names: {}",
                    skipped.join(", ")
                );
            }
            write_output(args.out.as_deref(), &json)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Commands that talk to the agent.

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let mut client = connect_unix(&args.socket).await?;
    let mut profiles = client
        .list_profiles(proto::ListProfilesRequest {})
        .await
        .map_err(|status| rpc_error(&status, &args.socket))?
        .into_inner()
        .profiles;
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    let text = match args.output {
        StatusFormat::Table => {
            if profiles.is_empty() {
                eprintln!("custos: the agent holds no profile yet");
            }
            status_table(&profiles, SystemTime::now())
        }
        StatusFormat::Json => status_json(&profiles),
    };
    write_output(None, &text)
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    let mut client = connect_unix(&args.socket).await?;
    let yaml = client
        .export_profiles(proto::ExportProfilesRequest {
            names: args.names.clone(),
        })
        .await
        .map_err(|status| rpc_error(&status, &args.socket))?
        .into_inner()
        .yaml;
    if yaml.trim().is_empty() {
        eprintln!("custos: the agent holds no profile yet");
    }
    write_output(args.file.as_deref(), &yaml)
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    // Read every file first, so that an unreadable one stops the command before anything is
    // loaded.
    let mut files = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        files.push((path, text));
    }
    let mut client = connect_unix(&args.socket).await?;
    let mut imported: Vec<&Path> = Vec::new();
    for (path, text) in files {
        let source = path.display().to_string();
        let names = match client
            .import_profiles(proto::ImportProfilesRequest {
                yaml: text,
                source: source.clone(),
            })
            .await
        {
            Ok(response) => response.into_inner().names,
            Err(status) => {
                let mut error = rpc_error(&status, &args.socket);
                if !imported.is_empty() {
                    let done: Vec<String> =
                        imported.iter().map(|p| p.display().to_string()).collect();
                    error = error.context(format!(
                        "{source} was not imported (already imported: {})",
                        done.join(", ")
                    ));
                }
                return Err(error);
            }
        };
        let mut out = io::stdout().lock();
        if names.is_empty() {
            writeln!(out, "{source}: no profile (empty file)")?;
        }
        for name in names {
            writeln!(out, "imported {name} from {source}")?;
        }
        imported.push(path);
    }
    Ok(())
}

/// A gRPC error from the agent, for people. INVALID_ARGUMENT and NOT_FOUND carry the server's
/// precise message (file, line, reason; the missing name), which is printed as is.
fn rpc_error(status: &tonic::Status, socket: &Path) -> anyhow::Error {
    match status.code() {
        tonic::Code::InvalidArgument | tonic::Code::NotFound => {
            anyhow::anyhow!("{}", status.message())
        }
        tonic::Code::Unavailable => anyhow::anyhow!(
            "the agent at {} cannot answer profile requests: {}",
            socket.display(),
            status.message()
        ),
        code => anyhow::anyhow!(
            "the agent at {} answered {code:?}: {}",
            socket.display(),
            status.message()
        ),
    }
}

/// Writes `text` to `file`, or to stdout; a closed stdout (`| head`) is not an error.
fn write_output(file: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match file {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
        }
        None => {
            let mut out = io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
                Err(error) if error.kind() != io::ErrorKind::BrokenPipe => {
                    Err(error).context("cannot write to stdout")
                }
                _ => Ok(()),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Status rendering.

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; `never` for 0.
fn age(unix_secs: i64, now: SystemTime) -> String {
    if unix_secs <= 0 {
        return "never".to_owned();
    }
    let now = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let secs = u64::try_from(now.saturating_sub(unix_secs)).unwrap_or(0);
    format!("{} ago", coarse_duration(Duration::from_secs(secs)))
}

/// One or two units: `45s`, `3m20s`, `2h05m`, `3d04h`.
fn coarse_duration(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

const STATUS_COLUMNS: [&str; 10] = [
    "NAME",
    "STATUS",
    "EXEC",
    "FILES",
    "EGRESS",
    "LISTEN",
    "SYSCALLS",
    "LAST NEW",
    "OBSERVED",
    "CONTAINERS",
];

/// Aligned columns, one line per profile, header first.
fn status_table(profiles: &[proto::ProfileSummary], now: SystemTime) -> String {
    let rows: Vec<[String; 10]> = profiles
        .iter()
        .map(|p| {
            [
                p.name.clone(),
                p.status.clone(),
                p.executables.to_string(),
                p.files.to_string(),
                p.egress.to_string(),
                p.listen.to_string(),
                p.syscalls.to_string(),
                age(p.last_new_entry_unix, now),
                coarse_duration(Duration::from_secs(p.observed_seconds)),
                p.containers.to_string(),
            ]
        })
        .collect();
    let mut widths = STATUS_COLUMNS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&STATUS_COLUMNS);
    for row in &rows {
        let cells: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&cells);
    }
    out
}

/// The JSON form of one profile's status; keys are the proto's field names.
#[derive(Debug, Serialize)]
struct StatusLine<'a> {
    name: &'a str,
    workload: &'a str,
    container: &'a str,
    image: &'a str,
    status: &'a str,
    executables: u32,
    files: u32,
    egress: u32,
    listen: u32,
    syscalls: u32,
    first_seen_unix: i64,
    last_new_entry_unix: i64,
    observed_seconds: u64,
    containers: u32,
}

fn status_json(profiles: &[proto::ProfileSummary]) -> String {
    let mut out = String::new();
    for p in profiles {
        let line = StatusLine {
            name: &p.name,
            workload: &p.workload,
            container: &p.container,
            image: &p.image,
            status: &p.status,
            executables: p.executables,
            files: p.files,
            egress: p.egress,
            listen: p.listen,
            syscalls: p.syscalls,
            first_seen_unix: p.first_seen_unix,
            last_new_entry_unix: p.last_new_entry_unix,
            observed_seconds: p.observed_seconds,
            containers: p.containers,
        };
        // Plain strings and integers always serialise.
        out.push_str(&serde_json::to_string(&line).unwrap_or_default());
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Local commands.

fn load(path: &Path) -> anyhow::Result<Vec<Profile>> {
    // The error names the file, the line and column, and the reason.
    Ok(yaml::import_file(path)?)
}

/// `custos profiles merge`: every profile of every file, those with one selector merged, as
/// multi-document YAML sorted by selector.
pub fn merge_files(files: &[PathBuf]) -> anyhow::Result<String> {
    let mut merged: BTreeMap<WorkloadIdentity, Profile> = BTreeMap::new();
    for path in files {
        for profile in load(path)? {
            match merged.get_mut(&profile.identity) {
                // Same identity by construction: cannot fail.
                Some(existing) => {
                    merge::merge_into(existing, &profile)?;
                }
                None => {
                    merged.insert(profile.identity.clone(), profile);
                }
            }
        }
    }
    let profiles: Vec<Profile> = merged.into_values().collect();
    Ok(yaml::export(&profiles))
}

/// What `custos profiles diff` prints, and how much changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffOutput {
    pub text: String,
    pub added: usize,
    pub removed: usize,
}

/// `custos profiles diff`: one `+`/`-` line per entry. Profiles are paired by selector; when
/// each file holds exactly one profile they are compared whatever their selectors (a renamed
/// workload). With several profiles, each changed one gets a `# name (selector)` header.
pub fn diff_files(old: &Path, new: &Path) -> anyhow::Result<DiffOutput> {
    let old = load(old)?;
    let new = load(new)?;
    let mut out = DiffOutput {
        text: String::new(),
        added: 0,
        removed: 0,
    };
    if let ([old], [new]) = (&old[..], &new[..]) {
        let diff = merge::diff(old, new);
        out.added = diff.added.len();
        out.removed = diff.removed.len();
        out.text = diff.to_string();
        return Ok(out);
    }
    let empty = |identity: &WorkloadIdentity| Profile::new(identity.clone());
    let old: BTreeMap<WorkloadIdentity, Profile> =
        old.into_iter().map(|p| (p.identity.clone(), p)).collect();
    let new: BTreeMap<WorkloadIdentity, Profile> =
        new.into_iter().map(|p| (p.identity.clone(), p)).collect();
    let mut identities: Vec<&WorkloadIdentity> = old.keys().chain(new.keys()).collect();
    identities.sort();
    identities.dedup();
    for identity in identities {
        let (before, after) = (old.get(identity), new.get(identity));
        let note = match (before, after) {
            (None, Some(_)) => ", new profile",
            (Some(_), None) => ", removed profile",
            _ => "",
        };
        let before = before.cloned().unwrap_or_else(|| empty(identity));
        let after = after.cloned().unwrap_or_else(|| empty(identity));
        let diff = merge::diff(&before, &after);
        if diff.is_empty() && note.is_empty() {
            continue;
        }
        let _ = writeln!(out.text, "# {} ({identity}{note})", identity.default_name());
        out.text.push_str(&diff.to_string());
        out.added += diff.added.len();
        out.removed += diff.removed.len();
    }
    Ok(out)
}

/// `custos profiles seccomp`: the JSON and the names left out.
pub fn seccomp_file(
    file: &Path,
    name: Option<&str>,
    with_baseline: bool,
) -> anyhow::Result<(String, Vec<String>)> {
    let profiles = load(file)?;
    let names = || {
        profiles
            .iter()
            .map(|p| p.identity.default_name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let profile = match name {
        Some(name) => profiles
            .iter()
            .find(|p| p.identity.default_name() == name)
            .with_context(|| {
                format!(
                    "{}: no profile named {name} (profiles: {})",
                    file.display(),
                    names()
                )
            })?,
        None => match &profiles[..] {
            [one] => one,
            [] => anyhow::bail!("{}: no profile in the file", file.display()),
            _ => anyhow::bail!(
                "{} holds several profiles; choose one with --name ({})",
                file.display(),
                names()
            ),
        },
    };
    let export = seccomp::to_seccomp(profile, with_baseline)?;
    let mut json = export.to_json();
    json.push('\n');
    Ok((json, export.skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB_A: &str = "\
apiVersion: custos.dev/v1alpha1
kind: BehaviorProfile
metadata:
  name: web-httpd
spec:
  selector: {workload: web, container: httpd, image: docker.io/library/busybox}
  executables:
  - path: /bin/httpd
    parent: /bin/sh
  files:
  - path: /www/index.html
    access: [read]
  syscalls: [accept, read]
";

    const WEB_B: &str = "\
apiVersion: custos.dev/v1alpha1
kind: BehaviorProfile
metadata:
  name: web-httpd
spec:
  selector: {workload: web, container: httpd, image: docker.io/library/busybox}
  files:
  - path: /www/index.html
    access: [read]
  - path: /tmp/out.*
    access: [write]
  network:
    listen:
    - {protocol: tcp, port: 8080}
  syscalls: [read, write]
---
apiVersion: custos.dev/v1alpha1
kind: BehaviorProfile
metadata:
  name: client-wget
spec:
  selector: {workload: client, container: wget, image: registry.local/tools/wget}
  executables:
  - path: /bin/wget
  network:
    egress:
    - {protocol: tcp, address: 127.0.0.1, port: 8080}
  syscalls: [connect, syscall_999]
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn entries(profile: &Profile) -> Vec<String> {
        profile.entries().iter().map(ToString::to_string).collect()
    }

    #[test]
    fn merge_is_the_union_per_selector_and_keeps_other_selectors_apart() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.yaml", WEB_A);
        let b = write(dir.path(), "b.yaml", WEB_B);
        let text = merge_files(&[a, b]).unwrap();
        let merged = yaml::import_str(&text, Path::new("merged.yaml")).unwrap();
        assert_eq!(merged.len(), 2, "{text}");
        let client = &merged[0];
        assert_eq!(client.identity.workload, "client");
        assert_eq!(
            entries(client),
            [
                "exec /bin/wget (parent unknown)",
                "egress tcp 127.0.0.1 port 8080",
                "syscall connect",
                "syscall syscall_999",
            ]
        );
        let web = &merged[1];
        assert_eq!(web.identity.workload, "web");
        assert_eq!(
            entries(web),
            [
                "exec /bin/httpd (parent /bin/sh)",
                "file /tmp/out.* write",
                "file /www/index.html read",
                "listen tcp port 8080",
                "syscall accept",
                "syscall read",
                "syscall write",
            ]
        );
        assert_eq!(text.matches("kind: BehaviorProfile").count(), 2, "{text}");
        // Merging a file with itself changes nothing.
        let again = write(dir.path(), "merged.yaml", &text);
        assert_eq!(merge_files(&[again.clone(), again]).unwrap(), text);
    }

    #[test]
    fn merge_names_the_bad_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good.yaml", WEB_A);
        let bad = write(
            dir.path(),
            "bad.yaml",
            &WEB_A.replace("  syscalls:", "  sycalls:"),
        );
        let error = format!("{:#}", merge_files(&[good, bad]).unwrap_err());
        assert!(error.contains("bad.yaml"), "{error}");
        assert!(error.contains("line 13"), "{error}");
        assert!(error.contains("sycalls"), "{error}");
    }

    #[test]
    fn diff_of_single_profiles_lists_additions_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let old = write(dir.path(), "old.yaml", WEB_A);
        let new_text = WEB_B.split("---").next().unwrap();
        let new = write(dir.path(), "new.yaml", new_text);
        let out = diff_files(&old, &new).unwrap();
        assert_eq!(
            out.text,
            "- exec /bin/httpd (parent /bin/sh)\n\
             + file /tmp/out.* write\n\
             + listen tcp port 8080\n\
             - syscall accept\n\
             + syscall write\n"
        );
        assert_eq!((out.added, out.removed), (3, 2));
        let same = diff_files(&old, &old).unwrap();
        assert_eq!((same.text.as_str(), same.added, same.removed), ("", 0, 0));
    }

    #[test]
    fn diff_of_several_profiles_pairs_them_by_selector() {
        let dir = tempfile::tempdir().unwrap();
        let old = write(dir.path(), "old.yaml", WEB_B);
        let new = write(dir.path(), "new.yaml", WEB_A);
        let out = diff_files(&old, &new).unwrap();
        assert_eq!(
            out.text,
            "# client-wget (client/wget (registry.local/tools/wget), removed profile)\n\
             - exec /bin/wget (parent unknown)\n\
             - egress tcp 127.0.0.1 port 8080\n\
             - syscall connect\n\
             - syscall syscall_999\n\
             # web-httpd (web/httpd (docker.io/library/busybox))\n\
             + exec /bin/httpd (parent /bin/sh)\n\
             - file /tmp/out.* write\n\
             - listen tcp port 8080\n\
             + syscall accept\n\
             - syscall write\n"
        );
        assert_eq!((out.added, out.removed), (2, 7));
    }

    #[test]
    fn seccomp_is_the_kubelet_format_with_the_profiles_syscalls() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(dir.path(), "p.yaml", WEB_B);
        let error = seccomp_file(&file, None, true).unwrap_err().to_string();
        assert!(
            error.contains("--name") && error.contains("client-wget"),
            "{error}"
        );

        let (json, skipped) = seccomp_file(&file, Some("client-wget"), false).unwrap();
        assert_eq!(skipped, ["syscall_999"]);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(value["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
        assert_eq!(
            value["syscalls"][0]["names"],
            serde_json::json!(["connect"])
        );

        let (json, _) = seccomp_file(&file, Some("web-httpd"), true).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let names = value["syscalls"][0]["names"].as_array().unwrap();
        for expected in ["read", "write", "execve", "exit_group"] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {json}");
        }

        let error = seccomp_file(&file, Some("nope"), true)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no profile named nope"), "{error}");
    }

    #[test]
    fn bad_files_are_refused_with_file_line_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let head = "apiVersion: custos.dev/v1alpha1\nkind: BehaviorProfile\nmetadata:\n  \
                    name: bad\nspec:\n  selector: {workload: bad, container: app, image: x}\n";
        for (name, tail, line, reason) in [
            // Line 8 is dedented by one space: not a key of `spec`, not a top-level key.
            (
                "syntax.yaml",
                "  syscalls: [read]\n executables: []\n",
                8,
                "did not find",
            ),
            (
                "unknown.yaml",
                "  syscalls: [read]\n  sycalls: [write]\n",
                8,
                "unknown field `sycalls`",
            ),
            (
                "type.yaml",
                "  network:\n    listen:\n    - {protocol: tcp, port: eighty}\n",
                9,
                "invalid type",
            ),
        ] {
            let file = write(dir.path(), name, &format!("{head}{tail}"));
            let error = format!("{:#}", merge_files(&[file]).unwrap_err());
            assert!(error.contains(name), "{error}");
            assert!(error.contains(&format!("line {line},")), "{error}");
            assert!(error.contains(reason), "{error}");
        }
    }

    fn summary(name: &str, status: &str, last_new: i64, observed: u64) -> proto::ProfileSummary {
        proto::ProfileSummary {
            name: name.into(),
            workload: "web".into(),
            container: "httpd".into(),
            image: String::new(),
            status: status.into(),
            executables: 2,
            files: 13,
            egress: 0,
            listen: 1,
            syscalls: 41,
            first_seen_unix: 1_000,
            last_new_entry_unix: last_new,
            observed_seconds: observed,
            containers: 3,
        }
    }

    #[test]
    fn status_table_and_json() {
        let now = UNIX_EPOCH + Duration::from_secs(10_000);
        let profiles = [
            summary("web-httpd", "learning", 9_988, 200),
            summary("a-much-longer-name", "stable", 0, 90_000),
        ];
        assert_eq!(
            status_table(&profiles, now),
            "NAME                STATUS    EXEC  FILES  EGRESS  LISTEN  SYSCALLS  LAST NEW  OBSERVED  CONTAINERS\n\
             web-httpd           learning  2     13     0       1       41        12s ago   3m20s     3\n\
             a-much-longer-name  stable    2     13     0       1       41        never     1d01h     3\n"
        );
        let json = status_json(&profiles[..1]);
        let value: serde_json::Value = serde_json::from_str(json.trim_end()).unwrap();
        assert_eq!(value["name"], "web-httpd");
        assert_eq!(value["files"], 13);
        assert_eq!(value["last_new_entry_unix"], 9_988);
        assert_eq!(json.lines().count(), 1);
    }

    #[test]
    fn coarse_durations() {
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (3_599, "59m59s"),
            (3_600, "1h00m"),
            (86_399, "23h59m"),
            (86_400, "1d00h"),
        ] {
            assert_eq!(coarse_duration(Duration::from_secs(secs)), text);
        }
    }
}
