//! End to end, behaviour profiles: a real agent learns a real two-container workload (a busybox
//! httpd on a loopback port and a client that fetches pages into `mktemp` files) in namespace
//! `qa`; the profile is read through the real gRPC API and the `custos profiles` CLI.
//!
//! What must hold: the export is readable `BehaviorProfile` YAML with the executables, files,
//! peers and syscalls the workload used, volatile parts generalised; another run of the same
//! workload adds nothing; the exported profile, imported into another agent, is the one that
//! applies to the workload in `prod`; profiles survive `kill -9`; bad YAML is refused with its
//! line and changes nothing; merge, diff and seccomp work on what was learned.
//! Needs root; `cargo xtask test` (and CI) run it as root.
mod support;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use custos::api::proto;
use serde::Deserialize as _;
use serde_norway::Value;
use support::*;

/// How long anything the tests wait for may take.
const DEADLINE: Duration = Duration::from_secs(60);
/// The quiet period after which a profile is `stable`, short for tests.
const STABLE_AFTER_SECONDS: u64 = 2;

const INDEX_HTML: &str = "<html><body>custos profile e2e</body></html>\n";
const ABOUT_TXT: &str = "about: custos profile e2e\n";

// ---------------------------------------------------------------------------------------------
// The workload.

/// A free TCP port on loopback (the workload uses the same one on every run, as a real
/// deployment's port is fixed).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// Five characters of a generated pod-name suffix (Kubernetes' alphabet: no vowels).
fn pod_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    container_id()
        .bytes()
        .take(5)
        .enumerate()
        .map(|(i, b)| {
            let v = (b as char).to_digit(16).unwrap_or(0) as usize;
            ALPHABET[(v * 7 + i * 3) % ALPHABET.len()] as char
        })
        .collect()
}

/// One Deployment (`name`) whose pods have two containers on the host network: `httpd`
/// serving /www on 127.0.0.1:`port`, and `fetch`, which downloads two pages into `mktemp`
/// files, prints and removes them.
struct WebWorkload {
    name: &'static str,
    port: u16,
    server_fs: Rootfs,
    client_fs: Rootfs,
}

impl WebWorkload {
    fn new(name: &'static str) -> Self {
        let server_fs = Rootfs::busybox_with(&["httpd"]);
        let www = server_fs.path().join("www");
        std::fs::create_dir_all(&www).expect("mkdir www");
        std::fs::write(www.join("index.html"), INDEX_HTML).expect("index.html");
        std::fs::write(www.join("about.txt"), ABOUT_TXT).expect("about.txt");
        let client_fs = Rootfs::busybox_with(&["wget", "mktemp", "rm", "touch"]);
        Self {
            name,
            port: free_port(),
            server_fs,
            client_fs,
        }
    }

    fn server_profile(&self) -> String {
        format!("{}-httpd", self.name)
    }

    fn client_profile(&self) -> String {
        format!("{}-fetch", self.name)
    }

    /// A new pod name of the Deployment, as a ReplicaSet would generate it.
    fn pod(&self) -> String {
        format!("{}-7f9c5d8b6-{}", self.name, pod_suffix())
    }

    /// Starts the server container and waits until it serves (a readiness probe from the
    /// host, the way a kubelet would probe it).
    fn start_server(&self, namespace: &str, pod: &str) -> BackgroundContainer {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut server = BackgroundContainer::start(
            &container_id(),
            &self.server_fs,
            &PodLabels {
                namespace,
                pod,
                container: "httpd",
            },
            &["/bin/httpd", "-f", "-p", &listen, "-h", "/www"],
            &["--net-host"],
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            server.assert_running();
            if let Some(body) = http_get(self.port, "/index.html")
                && body == INDEX_HTML
            {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "httpd on {listen} did not serve /index.html within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client's shell script; prints `tmp <name>` for each temp file, then its content.
    /// Commands are run by path: busybox-static's shell runs applets called by name through
    /// `/proc/self/exe`, which hides which program ran.
    fn fetch_script(&self, then: &str) -> String {
        format!(
            "set -e\n\
             export PATH=/bin\n\
             for page in index.html about.txt; do\n\
             \x20 t=$(/bin/mktemp /tmp/out.XXXXXX)\n\
             \x20 echo \"tmp $t\"\n\
             \x20 /bin/wget -q -O \"$t\" \"http://127.0.0.1:{port}/$page\"\n\
             \x20 /bin/cat \"$t\"\n\
             \x20 /bin/rm \"$t\"\n\
             done\n\
             {then}",
            port = self.port
        )
    }

    /// One replica from start to end in `namespace`. Returns the temp file names it used.
    fn run_once(&self, namespace: &str) -> Vec<String> {
        let pod = self.pod();
        let server = self.start_server(namespace, &pod);
        let script = self.fetch_script("");
        let out = run_container_with(
            &container_id(),
            &self.client_fs,
            &PodLabels {
                namespace,
                pod: &pod,
                container: "fetch",
            },
            &["/bin/sh", "-c", &script],
            &["--net-host"],
        );
        server.stop();
        assert!(
            out.contains(INDEX_HTML) && out.contains(ABOUT_TXT),
            "the client did not fetch both pages:\n{out}"
        );
        let temps: Vec<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("tmp "))
            .map(str::to_owned)
            .collect();
        assert_eq!(temps.len(), 2, "temp file names in:\n{out}");
        temps
    }
}

/// `GET path` over HTTP/1.0; the body of a 200 response.
fn http_get(port: u16, path: &str) -> Option<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.lines()
        .next()
        .is_some_and(|status| status.contains(" 200 "))
        .then(|| body.to_owned())
}

// ---------------------------------------------------------------------------------------------
// The agent: configuration, CLI, waiting.

/// The built-in configuration with `modes` replaced, a short quiet period, and a profiles
/// directory of the test's own (not the host's /etc/custos/profiles).
fn write_config(dir: &Path, modes: &str) -> PathBuf {
    agent_config(dir, modes, STABLE_AFTER_SECONDS)
}

/// Learn `workload` in `qa`, monitor it in `prod`, nothing else anywhere (other tests' agents
/// and containers run at the same time).
fn modes_for(workload: &str) -> String {
    format!(
        "default: off\n\
         namespaces: {{kube-system: off}}\n\
         workloads:\n\
         - {{workload: {workload}, namespace: qa, mode: learn}}\n\
         - {{workload: {workload}, namespace: prod, mode: monitor}}\n"
    )
}

async fn start_agent(dir: &Path, workload: &str) -> Agent {
    let config = write_config(dir, &modes_for(workload));
    Agent::start_with([OsString::from("--config"), config.into_os_string()]).await
}

/// `custos profiles ARGS...`.
fn cli<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    Command::new(custos_bin())
        .arg("profiles")
        .args(args)
        .output()
        .expect("run custos profiles")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `custos profiles ARGS...` that must succeed; its stdout.
fn cli_ok<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> String {
    let output = cli(args);
    assert!(output.status.success(), "{}", describe(&output));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

async fn summaries(agent: &Agent) -> Vec<proto::ProfileSummary> {
    agent
        .client()
        .await
        .list_profiles(proto::ListProfilesRequest {})
        .await
        .expect("ListProfiles")
        .into_inner()
        .profiles
}

async fn export(agent: &Agent) -> String {
    agent
        .client()
        .await
        .export_profiles(proto::ExportProfilesRequest { names: vec![] })
        .await
        .expect("ExportProfiles")
        .into_inner()
        .yaml
}

fn summary<'a>(all: &'a [proto::ProfileSummary], name: &str) -> &'a proto::ProfileSummary {
    all.iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no profile {name} in {all:#?}"))
}

/// Waits until the named profiles have seen `containers` containers each, nothing more is
/// being learned (their observation counters stand still for 1.5 s) and they are `stable`.
async fn settle(agent: &Agent, names: &[String], containers: u32) -> Vec<proto::ProfileSummary> {
    let deadline = Instant::now() + DEADLINE;
    let mut last_observations = None;
    let mut quiet_since = Instant::now();
    loop {
        let all = summaries(agent).await;
        let yaml = export(agent).await;
        let observations: Vec<u64> = names
            .iter()
            .map(|name| {
                docs(&yaml)
                    .into_iter()
                    .find(|d| d["metadata"]["name"].as_str() == Some(name))
                    .and_then(|d| d["status"]["observations"].as_u64())
                    .unwrap_or(0)
            })
            .collect();
        if last_observations.as_ref() != Some(&observations) {
            last_observations = Some(observations);
            quiet_since = Instant::now();
        }
        let ready = names.iter().all(|name| {
            all.iter()
                .any(|p| &p.name == name && p.containers >= containers && p.status == "stable")
        });
        if ready && quiet_since.elapsed() >= Duration::from_millis(1500) {
            return all;
        }
        assert!(
            Instant::now() < deadline,
            "profiles {names:?} did not settle (stable, {containers} containers) within \
             {DEADLINE:?}: {all:#?}\nagent log:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Reading exported YAML.

fn docs(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("exported YAML parses"))
        .filter(|v| !v.is_null())
        .collect()
}

fn doc<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no document named {name} in {docs:#?}"))
}

/// The documents without `status` (what describes behaviour, not observation history).
fn specs(yaml: &str) -> Vec<Value> {
    docs(yaml)
        .into_iter()
        .map(|mut d| {
            if let Some(map) = d.as_mapping_mut() {
                map.remove("status");
            }
            d
        })
        .collect()
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map_or(&[], Vec::as_slice)
}

fn exec_paths(doc: &Value) -> BTreeSet<String> {
    seq(&doc["spec"]["executables"])
        .iter()
        .filter_map(|e| e["path"].as_str().map(str::to_owned))
        .collect()
}

/// `path` → accesses.
fn files(doc: &Value) -> Vec<(String, BTreeSet<String>)> {
    seq(&doc["spec"]["files"])
        .iter()
        .map(|f| {
            let path = f["path"].as_str().unwrap_or_default().to_owned();
            let access = seq(&f["access"])
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            (path, access)
        })
        .collect()
}

fn has_file(doc: &Value, path: &str, access: &str) -> bool {
    files(doc)
        .iter()
        .any(|(p, a)| p == path && a.contains(access))
}

fn syscalls(doc: &Value) -> BTreeSet<String> {
    seq(&doc["spec"]["syscalls"])
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// Every path in the document (executables, parents, files).
fn all_paths(doc: &Value) -> Vec<String> {
    let mut out: Vec<String> = files(doc).into_iter().map(|(p, _)| p).collect();
    for e in seq(&doc["spec"]["executables"]) {
        out.extend(e["path"].as_str().map(str::to_owned));
        out.extend(e["parent"].as_str().map(str::to_owned));
    }
    out
}

fn assert_contains_all(have: &BTreeSet<String>, want: &[&str], what: &str, doc: &Value) {
    let missing: Vec<&&str> = want.iter().filter(|w| !have.contains(**w)).collect();
    assert!(
        missing.is_empty(),
        "{what}: missing {missing:?} in {have:?}\n{}",
        serde_norway::to_string(doc).unwrap_or_default()
    );
}

/// What every learned document must look like: a readable `BehaviorProfile` of `workload`'s
/// `container`, no raw pid anywhere in a path.
fn assert_well_formed(doc: &Value, workload: &str, container: &str) {
    let text = serde_norway::to_string(doc).unwrap_or_default();
    assert_eq!(
        doc["apiVersion"].as_str(),
        Some("custos.dev/v1alpha1"),
        "{text}"
    );
    assert_eq!(doc["kind"].as_str(), Some("BehaviorProfile"), "{text}");
    assert_eq!(
        doc["spec"]["selector"]["workload"].as_str(),
        Some(workload),
        "{text}"
    );
    assert_eq!(
        doc["spec"]["selector"]["container"].as_str(),
        Some(container),
        "{text}"
    );
    for path in all_paths(doc) {
        let numeric = path
            .split('/')
            .any(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        assert!(!numeric, "raw number (a pid?) in path {path}:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(flavor = "multi_thread")]
async fn learned_profile_is_readable_generalised_and_stops_growing_when_rerun() {
    if !privileged("learned_profile_is_readable_generalised_and_stops_growing_when_rerun") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("profiles-learn");
    let web = WebWorkload::new("shopweb");
    let agent = start_agent(dir.path(), web.name).await;
    let socket = agent.socket.clone();
    let names = [web.server_profile(), web.client_profile()];

    // Three replicas, one after the other: different pods, pids and temp names. Some syscalls
    // depend on timing (a connect that completes at once or not), so learning gets three runs
    // to converge before the re-run below must add nothing.
    let mut temps = web.run_once("qa");
    temps.extend(web.run_once("qa"));
    temps.extend(web.run_once("qa"));
    let before = settle(&agent, &names, 3).await;

    // The export, through the CLI: readable YAML with what the workload did.
    let file = dir.path().join("learned.yaml");
    cli_ok([
        "export".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "-f".as_ref(),
        file.as_os_str(),
    ]);
    let yaml = std::fs::read_to_string(&file).expect("exported file");
    assert!(
        yaml.starts_with("---\napiVersion: custos.dev/v1alpha1\nkind: BehaviorProfile\n"),
        "{yaml}"
    );
    let learned = docs(&yaml);
    let server = doc(&learned, &names[0]);
    let client = doc(&learned, &names[1]);
    assert_well_formed(server, web.name, "httpd");
    assert_well_formed(client, web.name, "fetch");

    assert_contains_all(
        &exec_paths(server),
        &["/bin/httpd"],
        "server executables",
        server,
    );
    for page in ["/www/index.html", "/www/about.txt"] {
        assert!(
            has_file(server, page, "read"),
            "server read {page}:\n{yaml}"
        );
    }
    let listen = seq(&server["spec"]["network"]["listen"]);
    assert!(
        listen.iter().any(|l| l["protocol"].as_str() == Some("tcp")
            && l["port"].as_u64() == Some(u64::from(web.port))),
        "server listen tcp {}:\n{yaml}",
        web.port
    );
    let server_calls = syscalls(server);
    assert_contains_all(
        &server_calls,
        &["bind", "listen"],
        "server syscalls",
        server,
    );
    assert!(
        server_calls.contains("accept") || server_calls.contains("accept4"),
        "server accept: {server_calls:?}"
    );

    assert_contains_all(
        &exec_paths(client),
        &["/bin/sh", "/bin/mktemp", "/bin/wget", "/bin/cat", "/bin/rm"],
        "client executables",
        client,
    );
    let egress = seq(&client["spec"]["network"]["egress"]);
    assert!(
        egress.iter().any(|e| e["protocol"].as_str() == Some("tcp")
            && e["address"].as_str() == Some("127.0.0.1")
            && e["port"].as_u64() == Some(u64::from(web.port))),
        "client egress tcp 127.0.0.1 port {}:\n{yaml}",
        web.port
    );
    assert_contains_all(
        &syscalls(client),
        &["socket", "connect"],
        "client syscalls",
        client,
    );
    // The temp files: one wildcard entry, none of the names actually used. Checked along
    // with the re-run below and reported together at the end, so that one run of the test
    // tells every acceptance point that fails.
    let mut failures: Vec<String> = Vec::new();
    let temp_patterns: Vec<(String, BTreeSet<String>)> = files(client)
        .into_iter()
        .filter(|(p, _)| p.starts_with("/tmp/"))
        .collect();
    if !temp_patterns
        .iter()
        .any(|(p, a)| p.contains('*') && a.contains("write"))
    {
        failures.push(format!(
            "no generalised temp file (e.g. /tmp/out.*) written; temp entries: {temp_patterns:?}"
        ));
    }
    let literal: Vec<&String> = temps.iter().filter(|t| yaml.contains(t.as_str())).collect();
    if !literal.is_empty() {
        failures.push(format!(
            "literal temp file names were learned: {literal:?} (mktemp gave {temps:?})"
        ));
    }

    // `profiles status`: the same progress as ListProfiles, for people and for programs.
    let table = cli_ok(["status".as_ref(), "--socket".as_ref(), socket.as_os_str()]);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("NAME") && header.contains("STATUS"),
        "{table}"
    );
    for name in &names {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no line for {name}:\n{table}"));
        assert_eq!(line.split_whitespace().nth(1), Some("stable"), "{table}");
    }
    let json = cli_ok([
        "status".as_ref(),
        "--socket".as_ref(),
        socket.as_os_str(),
        "-o".as_ref(),
        "json".as_ref(),
    ]);
    for name in &names {
        let line: serde_json::Value = json
            .lines()
            .map(|l| serde_json::from_str(l).expect("status JSON line"))
            .find(|v: &serde_json::Value| v["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no JSON line for {name}:\n{json}"));
        let s = summary(&before, name);
        assert_eq!(line["files"], s.files, "{json}");
        assert_eq!(line["syscalls"], s.syscalls, "{json}");
        assert_eq!(line["containers"], 3, "{json}");
        assert_eq!(line["status"], "stable", "{json}");
    }

    // A fourth replica does nothing new: nothing is added, the profiles stay stable.
    let rerun_temps = web.run_once("qa");
    let after = settle(&agent, &names, 4).await;
    let yaml_after = export(&agent).await;
    for name in &names {
        let (b, a) = (summary(&before, name), summary(&after, name));
        assert_eq!(a.containers, 4, "{a:?}");
        assert_eq!(a.status, "stable", "{a:?}");
        let counts =
            |s: &proto::ProfileSummary| (s.executables, s.files, s.egress, s.listen, s.syscalls);
        if counts(a) != counts(b) {
            failures.push(format!(
                "{name} grew on the re-run:\n  before {b:?}\n  after  {a:?}"
            ));
        }
    }
    let (spec_before, spec_after) = (specs(&yaml), specs(&yaml_after));
    if spec_before != spec_after {
        let added: Vec<String> = all_paths_of(&spec_after)
            .difference(&all_paths_of(&spec_before))
            .cloned()
            .collect();
        let diff: Vec<String> = yaml_after
            .lines()
            .filter(|line| !yaml.lines().any(|before| before == *line))
            .map(str::to_owned)
            .collect();
        failures.push(format!(
            "the re-run changed the exported profiles (new paths {added:?}; new lines {diff:?}; \
             re-run temp names {rerun_temps:?})"
        ));
    }

    // seccomp: the kubelet's JSON with the syscalls the server used.
    let seccomp_file = dir.path().join("httpd-seccomp.json");
    cli_ok([
        "seccomp".as_ref(),
        file.as_os_str(),
        "--name".as_ref(),
        names[0].as_ref(),
        "-f".as_ref(),
        seccomp_file.as_os_str(),
    ]);
    let seccomp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seccomp_file).expect("seccomp file"))
            .expect("seccomp JSON");
    assert_eq!(seccomp["defaultAction"], "SCMP_ACT_ERRNO", "{seccomp}");
    assert!(
        seccomp["architectures"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "SCMP_ARCH_X86_64")),
        "{seccomp}"
    );
    let rules = seccomp["syscalls"].as_array().expect("syscalls rules");
    assert_eq!(rules.len(), 1, "{seccomp}");
    assert_eq!(rules[0]["action"], "SCMP_ACT_ALLOW", "{seccomp}");
    let allowed: BTreeSet<String> = rules[0]["names"]
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().expect("name").to_owned())
        .collect();
    let expected: Vec<&str> = server_calls
        .iter()
        .map(String::as_str)
        .filter(|n| !n.starts_with("syscall_"))
        .collect();
    assert_contains_all(&allowed, &expected, "seccomp names", server);
    assert_contains_all(
        &allowed,
        &["bind", "listen", "execve"],
        "seccomp names",
        server,
    );

    // merge and diff on what was learned: two partial profiles of the client, cut in halves.
    let (part_a, part_b) = split_profile(client);
    let a_file = dir.path().join("part-a.yaml");
    let b_file = dir.path().join("part-b.yaml");
    std::fs::write(&a_file, &part_a).expect("part a");
    std::fs::write(&b_file, &part_b).expect("part b");
    let merged_file = dir.path().join("merged.yaml");
    cli_ok([
        "merge".as_ref(),
        a_file.as_os_str(),
        b_file.as_os_str(),
        "-f".as_ref(),
        merged_file.as_os_str(),
    ]);
    let merged = std::fs::read_to_string(&merged_file).expect("merged file");
    let merged_docs = specs(&merged);
    assert_eq!(merged_docs.len(), 1, "{merged}");
    assert_eq!(
        merged_docs[0]["spec"],
        specs(&yaml)
            .into_iter()
            .find(|d| d["metadata"]["name"].as_str() == Some(names[1].as_str()))
            .expect("client")["spec"],
        "the merge of the two halves is not the learned profile:\n{merged}"
    );
    // Different selectors are kept apart: learned (2 profiles) + part a = 2 documents.
    let all = cli_ok(["merge".as_ref(), file.as_os_str(), a_file.as_os_str()]);
    assert_eq!(docs(&all).len(), 2, "{all}");

    let added = cli_ok(["diff".as_ref(), a_file.as_os_str(), merged_file.as_os_str()]);
    let removed = cli_ok(["diff".as_ref(), merged_file.as_os_str(), a_file.as_os_str()]);
    assert!(
        !added.is_empty() && added.lines().all(|l| l.starts_with("+ ")),
        "{added}"
    );
    assert!(
        !removed.is_empty() && removed.lines().all(|l| l.starts_with("- ")),
        "{removed}"
    );
    assert_eq!(added.lines().count(), removed.lines().count());
    assert!(
        added.contains(&format!("+ egress tcp 127.0.0.1 port {}", web.port)),
        "{added}"
    );
    let same = cli_ok(["diff".as_ref(), file.as_os_str(), file.as_os_str()]);
    assert_eq!(same, "");

    assert!(
        failures.is_empty(),
        "{} acceptance point(s) failed:\n- {}\nlearned profiles:\n{yaml}",
        failures.len(),
        failures.join("\n- ")
    );
}

/// Every path of every document.
fn all_paths_of(docs: &[Value]) -> BTreeSet<String> {
    docs.iter().flat_map(all_paths).collect()
}

/// Two partial profiles of one workload: A has the executables and the first half of the
/// syscalls, B the files, the network and the other half.
fn split_profile(doc: &Value) -> (String, String) {
    let mut a = doc.clone();
    let mut b = doc.clone();
    for d in [&mut a, &mut b] {
        d.as_mapping_mut().expect("mapping").remove("status");
    }
    let calls: Vec<Value> = seq(&doc["spec"]["syscalls"]).to_vec();
    let half = calls.len() / 2;
    let spec_a = a["spec"].as_mapping_mut().expect("spec");
    spec_a.remove("files");
    spec_a.remove("network");
    spec_a.insert("syscalls".into(), Value::Sequence(calls[..half].to_vec()));
    let spec_b = b["spec"].as_mapping_mut().expect("spec");
    spec_b.remove("executables");
    spec_b.insert("syscalls".into(), Value::Sequence(calls[half..].to_vec()));
    let text = |v: &Value| format!("---\n{}", serde_norway::to_string(v).expect("yaml"));
    (text(&a), text(&b))
}

#[tokio::test(flavor = "multi_thread")]
async fn exported_profile_applies_to_the_same_workload_in_prod() {
    if !privileged("exported_profile_applies_to_the_same_workload_in_prod") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("profiles-prod");
    let web = WebWorkload::new("cartweb");
    let names = [web.server_profile(), web.client_profile()];

    // Learned in qa by one agent, exported to a file.
    let file = dir.path().join("cartweb.yaml");
    {
        let qa_dir = TempDir::new("profiles-prod-qa");
        let qa = start_agent(qa_dir.path(), web.name).await;
        web.run_once("qa");
        settle(&qa, &names, 1).await;
        cli_ok([
            "export".as_ref(),
            "--socket".as_ref(),
            qa.socket.as_os_str(),
            names[0].as_ref(),
            names[1].as_ref(),
            "-f".as_ref(),
            file.as_os_str(),
        ]);
    }
    let exported = std::fs::read_to_string(&file).expect("exported file");
    assert_eq!(docs(&exported).len(), 2, "{exported}");

    // Imported into another agent (fresh state) that monitors the workload in prod.
    let prod_dir = TempDir::new("profiles-prod-prod");
    let prod = start_agent(prod_dir.path(), web.name).await;
    assert!(
        summaries(&prod).await.is_empty(),
        "fresh agent has profiles"
    );
    let out = cli_ok([
        "import".as_ref(),
        "--socket".as_ref(),
        prod.socket.as_os_str(),
        file.as_os_str(),
    ]);
    for name in &names {
        assert!(
            out.contains(&format!("imported {name} from {}", file.display())),
            "{out}"
        );
    }
    let imported = export(&prod).await;
    assert_eq!(
        specs(&imported),
        specs(&exported),
        "import changed the profiles"
    );

    // The same workload in prod: another pod, the same profiles, the prod mode.
    let pod = web.pod();
    let server = web.start_server("prod", &pod);
    let script = web.fetch_script("touch /tmp/done\nexec sleep 600");
    let _ = std::fs::remove_file(web.client_fs.path().join("tmp/done"));
    let client = BackgroundContainer::start(
        &container_id(),
        &web.client_fs,
        &PodLabels {
            namespace: "prod",
            pod: &pod,
            container: "fetch",
        },
        &["/bin/sh", "-c", &script],
        &["--net-host"],
    );
    for (container, name) in [(&server.id, &names[0]), (&client.id, &names[1])] {
        let deadline = Instant::now() + DEADLINE;
        let profile = loop {
            let answer = prod
                .client()
                .await
                .get_container_profile(proto::GetContainerProfileRequest {
                    container_id: container.clone(),
                })
                .await;
            match answer {
                Ok(answer) => break answer.into_inner(),
                Err(status) if status.code() == tonic::Code::NotFound => {}
                Err(status) => panic!("GetContainerProfile {container}: {status}"),
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not know container {container} within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(
            (
                profile.container_id.as_str(),
                profile.namespace.as_str(),
                profile.pod.as_str(),
                profile.profile.as_str(),
                profile.profile_exists,
                profile.mode.as_str(),
            ),
            (
                container.as_str(),
                "prod",
                pod.as_str(),
                name.as_str(),
                true,
                "monitor"
            ),
            "{profile:?}"
        );
    }
    // Monitoring learns nothing: once the client has fetched, the profiles are unchanged.
    let deadline = Instant::now() + DEADLINE;
    while !web.client_fs.path().join("tmp/done").exists() {
        assert!(Instant::now() < deadline, "the prod client did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await; // let the events drain
    assert_eq!(
        specs(&export(&prod).await),
        specs(&exported),
        "monitor mode changed the profiles"
    );
    client.stop();
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn profiles_survive_kill_9_and_bad_imports_change_nothing() {
    if !privileged("profiles_survive_kill_9_and_bad_imports_change_nothing") {
        return;
    }
    ensure_containerd();
    let dir = TempDir::new("profiles-crash");
    let web = WebWorkload::new("payweb");
    let mut agent = start_agent(dir.path(), web.name).await;
    let names = [web.server_profile(), web.client_profile()];
    web.run_once("qa");
    let before = settle(&agent, &names, 1).await;
    let yaml = export(&agent).await;

    agent.kill9();
    agent.restart().await;
    let after_restart = export(&agent).await;
    assert_eq!(
        comparable(&yaml),
        comparable(&after_restart),
        "profiles changed across kill -9; before:\n{yaml}\nafter:\n{after_restart}"
    );
    let restarted = summaries(&agent).await;
    for name in &names {
        let (b, a) = (summary(&before, name), summary(&restarted, name));
        assert_eq!(
            (
                a.executables,
                a.files,
                a.egress,
                a.listen,
                a.syscalls,
                a.containers
            ),
            (
                b.executables,
                b.files,
                b.egress,
                b.listen,
                b.syscalls,
                b.containers
            ),
            "{name}"
        );
        assert_eq!(a.first_seen_unix, b.first_seen_unix, "{name}");
    }

    // Bad files: refused by the agent with the file, the line and the reason; exit status 1.
    let head = "apiVersion: custos.dev/v1alpha1\nkind: BehaviorProfile\nmetadata:\n  \
                name: payweb-httpd\nspec:\n  selector: {workload: payweb, container: httpd, image: example.com/payweb}\n";
    let bad = [
        (
            "syntax.yaml",
            "  syscalls: [read]\n executables: []\n",
            8,
            "did not find",
        ),
        (
            "unknown-field.yaml",
            "  syscalls: [read]\n  sycalls: [write]\n",
            8,
            "unknown field `sycalls`",
        ),
        (
            "wrong-type.yaml",
            "  network:\n    listen:\n    - {protocol: tcp, port: eighty}\n",
            9,
            "invalid type",
        ),
        (
            "bad-pattern.yaml",
            "  files:\n  - {path: etc/passwd, access: [read]}\n",
            8,
            "etc/passwd",
        ),
    ];
    for (name, tail, line, reason) in bad {
        let file = dir.path().join(name);
        std::fs::write(&file, format!("{head}{tail}")).expect("bad file");
        let output = cli([
            "import".as_ref(),
            "--socket".as_ref(),
            agent.socket.as_os_str(),
            file.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
        assert!(
            stderr.contains(&file.display().to_string())
                && stderr.contains(&format!("line {line},"))
                && stderr.contains(reason),
            "{name}: expected the file, line {line} and {reason:?}; {}",
            describe(&output)
        );
        assert!(output.stdout.is_empty(), "{}", describe(&output));
        agent.assert_running();
        assert_eq!(
            comparable(&export(&agent).await),
            comparable(&yaml),
            "{name} changed the profiles"
        );
    }

    // The same through the watched directory: a bad file changes nothing, a good one loads.
    let profiles_dir = dir.path().join("profiles.d");
    std::fs::write(
        profiles_dir.join("bad.yaml"),
        format!("{head}  sycalls: [x]\n"),
    )
    .expect("bad file");
    std::fs::write(
        profiles_dir.join("good.yaml"),
        "apiVersion: custos.dev/v1alpha1\nkind: BehaviorProfile\nmetadata:\n  name: other\n\
         spec:\n  selector: {workload: other, container: app, image: example.com/other}\n  \
         syscalls: [read, write]\n",
    )
    .expect("good file");
    let deadline = Instant::now() + DEADLINE;
    while !summaries(&agent)
        .await
        .iter()
        .any(|p| p.name == "other-app")
    {
        assert!(
            Instant::now() < deadline,
            "good.yaml in the profiles directory was not loaded:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.assert_running();
    let now = export(&agent).await;
    let mut expected = comparable(&yaml);
    expected.retain(|d| d["metadata"]["name"].as_str() != Some("other-app"));
    let mut got = comparable(&now);
    got.retain(|d| d["metadata"]["name"].as_str() != Some("other-app"));
    assert_eq!(
        got, expected,
        "the profiles directory changed the learned profiles"
    );
    assert!(
        agent.log().contains("bad.yaml"),
        "the bad file in the profiles directory was not reported:\n{}",
        agent.log()
    );
}

/// Documents with the status fields that depend on the clock removed.
fn comparable(yaml: &str) -> Vec<Value> {
    docs(yaml)
        .into_iter()
        .map(|mut d| {
            if let Some(status) = d["status"].as_mapping_mut() {
                for key in ["phase", "lastSeen", "observedSeconds"] {
                    status.remove(key);
                }
            }
            d
        })
        .collect()
}
