//! The enforce-mode configuration of the overhead test: the bench workload's profile is learned
//! once, then every enforce round starts the agent with that workload in `enforce`, so the
//! loops run under kernel policy (known-good opens decided in the kernel, execs checked
//! against exact paths, connects by the cgroup programs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Agent, Env, WORKLOADS, grpc, run_container};
use crate::cmd::note;

/// The workload name the agent derives from the pod name `bench-0` (a StatefulSet ordinal).
const WORKLOAD: &str = "bench";
const NAMESPACE: &str = "custos-bench";
/// Long enough for the agent to put a new container under kernel policy (it does so within
/// ~200 ms of the container's first event) before the loop starts.
const WARMUP_MS: u32 = 1000;

/// `ctr run` arguments of a container of the learned workload (on top of the namespace label
/// every bench container has).
pub fn ctr_args() -> Vec<String> {
    [
        "--label",
        "io.kubernetes.pod.name=bench-0",
        "--label",
        "io.kubernetes.container.name=bench",
        "--env",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("BENCH_WARMUP_MS={WARMUP_MS}")])
    .collect()
}

/// Where the learned profile lives and the configuration that enforces it.
pub struct Enforce {
    pub config: PathBuf,
    pub state_dir: PathBuf,
}

/// The shipped configuration with `modes` replaced (everything off but the bench workload in
/// `mode`) and an empty profile directory under `dir`.
fn config(root: &Path, dir: &Path, mode: &str) -> Result<PathBuf> {
    let shipped = root.join("deploy/config/custos.yaml");
    let text = fs::read_to_string(&shipped)
        .with_context(|| format!("cannot read {}", shipped.display()))?;
    let (Some(start), Some(end)) = (text.find("\nmodes:\n"), text.find("\nprofiles:\n")) else {
        bail!(
            "{} has no top-level `modes:` followed by `profiles:`",
            shipped.display()
        );
    };
    let profiles = dir.join("profiles.d");
    fs::create_dir_all(&profiles)?;
    let directory = "  directory: /etc/custos/profiles\n";
    if !text[end..].contains(directory) {
        bail!("{} has no `{}`", shipped.display(), directory.trim());
    }
    let modes = format!(
        "\nmodes:\n  default: off\n  workloads:\n  - {{workload: {WORKLOAD}, namespace: \
         {NAMESPACE}, mode: {mode}}}"
    );
    let text = format!(
        "{}{modes}{}",
        &text[..start],
        text[end..].replacen(
            directory,
            &format!("  directory: {}\n", profiles.display()),
            1
        )
    );
    let path = dir.join(format!("custos-{mode}.yaml"));
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Learns the bench workload's profile: an agent with the workload in `learn` watches one
/// short run of every loop (same binary, paths and peer as the measured runs), until the
/// profile holds executables, files, an egress peer and a listening port and has stopped
/// growing; stopping the agent writes it to `state_dir`.
pub fn learn(env: &mut Env, root: &Path) -> Result<Enforce> {
    let dir = env.work.join("enforce");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let state_dir = dir.join("state");
    let learn = config(root, &dir, "learn")?;
    let agent = Agent::start_with(env, Some(&learn), Some(&state_dir))?;
    for workload in WORKLOADS {
        let args = [
            workload.mode.to_owned(),
            (workload.iterations / 100).max(10).to_string(),
        ];
        run_container(env, &args, &ctr_args())?;
    }
    let summary = wait_for_profile(env, &agent, true)?;
    note(format!(
        "learned profile `{WORKLOAD}`: {} executables, {} files, {} egress, {} listen",
        summary.executables, summary.files, summary.egress, summary.listen
    ));
    agent.stop()?;
    Ok(Enforce {
        config: config(root, &dir, "enforce")?,
        state_dir,
    })
}

/// Waits (20 s at most) for the bench profile to hold every kind of entry the loops need;
/// with `settle`, also until it has not changed for a second.
pub fn wait_for_profile(env: &Env, agent: &Agent, settle: bool) -> Result<grpc::ProfileSummary> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last: Option<(grpc::ProfileSummary, Instant)> = None;
    loop {
        let profiles = env.runtime.block_on(grpc::list_profiles(&agent.socket))?;
        let ready = profiles.into_iter().find(|p| {
            p.workload == WORKLOAD
                && p.executables >= 1
                && p.files >= 1
                && p.egress >= 1
                && p.listen >= 1
        });
        if let Some(ready) = ready {
            if !settle {
                return Ok(ready);
            }
            match &last {
                Some((seen, since))
                    if *seen == ready && since.elapsed() >= Duration::from_secs(1) =>
                {
                    return Ok(ready);
                }
                Some((seen, _)) if *seen == ready => {}
                _ => last = Some((ready, Instant::now())),
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the agent has no complete profile of workload `{WORKLOAD}` after 20 s \
                 (last seen: {last:?}); its log is {}",
                agent.log.display()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The kernel's enforcement counters of one agent (since it loaded its programs).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelCounters {
    pub allowed_in_kernel: u64,
    pub processes_killed: u64,
    pub network_blocked: u64,
}

/// Slots of the agent's `COUNTERS` per-CPU array (`agent-ebpf/src/lib.rs`, `Counter`).
const PROCESSES_KILLED: u32 = 9;
const NETWORK_BLOCKED: u32 = 10;
const ALLOWED_IN_KERNEL: u32 = 11;

/// Reads the `COUNTERS` map the agent process `pid` holds open, with bpftool (neither
/// `GetStatus` nor /metrics report these counters yet).
pub fn kernel_counters(pid: u32) -> Result<KernelCounters> {
    let fdinfo = format!("/proc/{pid}/fdinfo");
    let mut ids: Vec<u32> = fs::read_dir(&fdinfo)
        .with_context(|| format!("cannot read {fdinfo}"))?
        .filter_map(|e| fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        let show = bpftool(&["map", "show", "id", &id.to_string()])?;
        if show["name"].as_str() != Some("COUNTERS") {
            continue;
        }
        let dump = bpftool(&["map", "dump", "id", &id.to_string()])?;
        let slot = |index: u32| counter(&dump, index);
        return Ok(KernelCounters {
            allowed_in_kernel: slot(ALLOWED_IN_KERNEL),
            processes_killed: slot(PROCESSES_KILLED),
            network_blocked: slot(NETWORK_BLOCKED),
        });
    }
    bail!("agent process {pid} holds no BPF map named COUNTERS")
}

fn bpftool(args: &[&str]) -> Result<Value> {
    let output = Command::new("bpftool")
        .arg("-j")
        .args(args)
        .output()
        .context("cannot run bpftool")?;
    if !output.status.success() {
        bail!(
            "`bpftool {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout)
        .with_context(|| format!("`bpftool {}` printed no JSON", args.join(" ")))
}

/// Little-endian bytes given as bpftool's hex strings ("0x0b").
fn le_bytes(value: &Value) -> Option<u64> {
    let bytes = value.as_array()?;
    bytes.iter().rev().try_fold(0u64, |acc, b| {
        let b = u64::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()?;
        Some((acc << 8) | b)
    })
}

/// Slot `index` of a per-CPU array dump, summed over CPUs.
fn counter(dump: &Value, index: u32) -> u64 {
    dump.as_array()
        .into_iter()
        .flatten()
        .find(|entry| {
            le_bytes(&entry["key"]).or_else(|| entry["formatted"]["key"].as_u64())
                == Some(u64::from(index))
        })
        .map_or(0, |entry| {
            let values = if entry["values"].is_array() {
                &entry["values"]
            } else {
                &entry["formatted"]["values"]
            };
            values
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| le_bytes(&v["value"]).or_else(|| v["value"].as_u64()))
                .map(Option::unwrap_or_default)
                .sum()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sums_a_per_cpu_slot_of_a_raw_dump() {
        let dump = json!([
            {"key": ["0x0a", "0x00", "0x00", "0x00"], "values": [
                {"cpu": 0, "value": ["0x01", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"]}]},
            {"key": ["0x0b", "0x00", "0x00", "0x00"], "values": [
                {"cpu": 0, "value": ["0x00", "0x01", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"]},
                {"cpu": 1, "value": ["0x02", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"]}]}
        ]);
        assert_eq!(counter(&dump, ALLOWED_IN_KERNEL), 258);
        assert_eq!(counter(&dump, NETWORK_BLOCKED), 1);
        assert_eq!(counter(&dump, PROCESSES_KILLED), 0);
    }
}
