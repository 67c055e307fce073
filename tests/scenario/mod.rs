//! A workload that deviates, for the tests of what deviations feed (the OCSF output,
//! metrics): it is learned in `learn` mode, switched to `monitor` by editing the configuration
//! file (or `enforce`), then run with actions it never did: an exec (`/bin/ls`), a file read
//! (`/etc/shadow`) and an outbound connect (`127.0.0.1:9`, refused).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::support::*;

const NAMESPACE: &str = "qa";
pub const WORKLOAD: &str = "deviant";

/// Writes the agent's configuration: the workload in `mode`, and `sections` (top-level key,
/// YAML value) on top of the built-in configuration. Rewritten whole each time, so pass the
/// same sections on every call.
pub fn config(dir: &Path, mode: &str, sections: &[(&str, &str)]) -> PathBuf {
    let modes = format!(
        "default: off\nworkloads:\n- {{workload: {WORKLOAD}, namespace: {NAMESPACE}, mode: {mode}}}\n"
    );
    let path = agent_config(dir, &modes, 3600);
    let text = std::fs::read_to_string(&path).expect("read the configuration");
    let mut config: serde_norway::Value = serde_norway::from_str(&text).expect("parse it");
    for (key, yaml) in sections {
        config[*key] = serde_norway::from_str(yaml).expect("a YAML section");
    }
    std::fs::write(&path, serde_norway::to_string(&config).expect("YAML")).expect("write it");
    path
}

/// The workload's root filesystem: busybox with `nc` and `ls`, and an `/etc/shadow`.
pub fn rootfs() -> Rootfs {
    let rootfs = Rootfs::busybox_with(&["nc", "ls"]);
    std::fs::write(rootfs.path().join("etc/shadow"), "root:x:1::::::\n").expect("shadow");
    rootfs
}

fn labels(pod: &str) -> PodLabels<'_> {
    PodLabels {
        namespace: NAMESPACE,
        pod,
        container: "app",
    }
}

/// Runs the workload's usual behaviour and waits until its profile holds it.
pub async fn learn(agent: &Agent, rootfs: &Rootfs) {
    // `true` (a builtin) last, so that the shell forks for every external command.
    let usual = [
        "/bin/sh",
        "-c",
        "/bin/sleep 0; /bin/cat /etc/hostname; true",
    ];
    run_container(
        &container_id(),
        rootfs,
        &labels(&format!("{WORKLOAD}-0")),
        &usual,
    );
    let mut client = agent.client().await;
    wait_for_profile(agent, &mut client, WORKLOAD, |p| {
        p.executables >= 2 && p.files >= 1
    })
    .await;
}

/// Switches the workload to `mode` (`monitor` or `enforce`; rewriting the configuration with
/// `sections`), waits for the reload, and runs the unusual behaviour (in `enforce`, its
/// unlearned execs are killed: the shell goes on); returns the container's id.
pub async fn deviate(dir: &Path, mode: &str, sections: &[(&str, &str)], rootfs: &Rootfs) -> String {
    config(dir, mode, sections);
    // Reloads are checked every 250 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // A learned pause first: the agent puts a new container under kernel policy within a
    // moment of seeing it, and enforcement applies from then on. No redirections: the shell
    // opens those itself, and in enforce mode an unlearned open kills the shell.
    let pause = if mode == "enforce" { 2 } else { 0 };
    let script = format!(
        "/bin/sleep {pause}; /bin/cat /etc/hostname; /bin/ls /; /bin/cat /etc/shadow; \
         /bin/nc 127.0.0.1 9; true"
    );
    let id = container_id();
    run_container_with(
        &id,
        rootfs,
        &labels(&format!("{WORKLOAD}-1")),
        &["/bin/sh", "-c", &script],
        // The host's network namespace, for a loopback that is up.
        &["--net-host"],
    );
    id
}
