//! The gRPC API as a SIEM sees it: a Python client (grpcio, stubs generated from proto/ with
//! grpcio-tools, nothing of the Rust code) against a real agent serving mutual TLS on TCP,
//! receiving the events of a real container; refused without a client certificate; health
//! and reflection answer. The checks themselves are in tests/python/test_grpc_mtls.py.
//! Needs root (the agent loads eBPF programs) and the pip packages `cargo xtask setup`
//! installs; `cargo xtask test` (and CI) run it as root.
#[path = "support/certs.rs"]
mod certs;
mod support;

use std::io::{BufRead as _, BufReader, Read as _};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use certs::PkiFiles;
use support::*;

/// Python modules the script imports; `cargo xtask setup` pip-installs their packages.
const PYTHON_MODULES: &str = "grpc, grpc_tools, grpc_health.v1, grpc_reflection.v1alpha";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// A TCP port on loopback that nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

fn ensure_python_grpc() {
    let output = Command::new("python3")
        .args(["-c", &format!("import {PYTHON_MODULES}")])
        .output()
        .expect("run python3 (Python 3 with pip is needed for this test)");
    assert!(
        output.status.success(),
        "python3 cannot import {PYTHON_MODULES}: run `cargo xtask setup` (it pip-installs grpcio, \
         grpcio-tools, grpcio-health-checking, grpcio-reflection):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The Python client, its stdout read line by line as it comes.
struct PythonClient {
    child: Child,
    lines: mpsc::Receiver<String>,
    output: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl PythonClient {
    fn start(envs: &[(&str, String)]) -> Self {
        let mut child = Command::new("python3")
            .arg("-u")
            .arg(repo_path("tests/python/test_grpc_mtls.py"))
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run python3");
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stderr_pipe = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text);
            text
        });
        Self {
            child,
            lines,
            output: Vec::new(),
            stderr,
        }
    }

    /// Reads lines until one equals `wanted`; false when the script ended or `timeout` passed.
    fn wait_for_line(&mut self, wanted: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line == wanted;
                    self.output.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
    }

    /// Waits for the script to end (killing it after `timeout`); its exit status and all it
    /// printed.
    fn finish(mut self, timeout: Duration) -> (Option<std::process::ExitStatus>, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for python3") {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.output.extend(self.lines.try_iter());
        // The reader thread may still hold the last lines for a moment after the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.output.push(line);
        }
        let stderr = self.stderr.join().unwrap_or_default();
        let text = format!(
            "--- python stdout ---\n{}\n--- python stderr ---\n{stderr}",
            self.output.join("\n")
        );
        (status, text)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_grpcio_client_subscribes_over_mutual_tls_and_is_refused_without_a_certificate() {
    if !privileged("python_grpcio_client_over_mutual_tls") {
        return;
    }
    ensure_containerd();
    ensure_python_grpc();
    let pki_dir = TempDir::new("pki");
    let files = PkiFiles::write(pki_dir.path());
    let addr = format!("127.0.0.1:{}", free_port());
    let path = |p: &Path| p.display().to_string();
    let agent = Agent::start_with([
        "--listen-tcp".to_owned(),
        addr.clone(),
        "--tls-cert".to_owned(),
        path(&files.server_cert),
        "--tls-key".to_owned(),
        path(&files.server_key),
        "--tls-client-ca".to_owned(),
        path(&files.ca),
    ])
    .await;

    let id = container_id();
    let pod = unique("siem-pod");
    let marker = unique("python-marker");
    let mut python = PythonClient::start(&[
        ("CUSTOS_TCP_ADDR", addr),
        ("CUSTOS_UNIX_SOCKET", path(&agent.socket)),
        ("CUSTOS_CA", path(&files.ca)),
        ("CUSTOS_CLIENT_CERT", path(&files.client_cert)),
        ("CUSTOS_CLIENT_KEY", path(&files.client_key)),
        ("CUSTOS_STRANGER_CERT", path(&files.stranger_cert)),
        ("CUSTOS_STRANGER_KEY", path(&files.stranger_key)),
        ("CUSTOS_PROTO_DIR", path(&repo_path("proto"))),
        ("CUSTOS_CONTAINER_ID", id.clone()),
        ("CUSTOS_POD", pod.clone()),
        ("CUSTOS_MARKER", marker.clone()),
    ]);
    // Stub generation, health, reflection and the refusals come first.
    let subscribed = python.wait_for_line("subscribed", Duration::from_secs(120));
    if subscribed {
        let rootfs = Rootfs::busybox();
        let labels = PodLabels {
            namespace: "qa",
            pod: &pod,
            container: "app",
        };
        let command = format!("/bin/echo {marker}");
        run_container(&id, &rootfs, &labels, &["/bin/sh", "-c", &command]);
    }
    let (status, output) = python.finish(Duration::from_secs(60));
    println!("{output}");
    assert!(
        subscribed,
        "the Python client never subscribed:\n{output}\n--- agent log ---\n{}",
        agent.log()
    );
    match status {
        Some(status) => assert!(
            status.success(),
            "the Python client failed ({status}):\n{output}\n--- agent log ---\n{}",
            agent.log()
        ),
        None => {
            panic!("the Python client did not finish within 60 s of the container's run:\n{output}")
        }
    }
    assert!(output.contains("all checks passed"), "{output}");
}

/// `custos agent` with the given arguments, expected to refuse to start: its stderr.
fn refused_start(args: &[&str], state: &Path) -> String {
    let output = Command::new(custos_bin())
        .arg("agent")
        .args([
            "--listen-unix",
            &state.join("custos.sock").display().to_string(),
        ])
        .args(["--state-dir", &state.join("state").display().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run custos agent");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "custos agent {args:?} should refuse to start; it exited with {}:\n{stderr}",
        output.status
    );
    stderr
}

#[test]
fn the_agent_refuses_tcp_without_tls_and_names_bad_tls_files() {
    // Both refusals come before anything is loaded into the kernel: no root needed.
    let dir = TempDir::new("tls-refusals");
    let files = PkiFiles::write(dir.path());
    let tcp = ["--listen-tcp", "127.0.0.1:1"];

    let stderr = refused_start(&tcp, dir.path());
    assert!(
        stderr.contains("only TLS") && stderr.contains("--tls-cert"),
        "TCP without TLS:\n{stderr}"
    );

    let missing = dir.path().join("no-such-cert.pem");
    let (missing, key) = (
        missing.display().to_string(),
        files.server_key.display().to_string(),
    );
    let stderr = refused_start(
        &[tcp[0], tcp[1], "--tls-cert", &missing, "--tls-key", &key],
        dir.path(),
    );
    assert!(stderr.contains(&missing), "missing certificate:\n{stderr}");

    // The server's key with the client's certificate: they do not belong together.
    let cert = files.client_cert.display().to_string();
    let stderr = refused_start(
        &[tcp[0], tcp[1], "--tls-cert", &cert, "--tls-key", &key],
        dir.path(),
    );
    assert!(
        stderr.contains(&cert) && stderr.contains(&key),
        "mismatched key:\n{stderr}"
    );
}
