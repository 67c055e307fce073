//! Real gRPC over a real unix socket in a temporary directory; no root needed.
use std::future::Future;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::codec::Streaming;

use super::*;
use crate::api::tls::test_certs as certs;
use crate::client::connect_unix;

const WAIT: Duration = Duration::from_secs(10);
const ID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn status_provider() -> StatusProvider {
    Arc::new(|| proto::AgentStatus {
        version: "test".to_owned(),
        node: "node-1".to_owned(),
        ..Default::default()
    })
}

struct Running {
    hub: EventHub,
    path: PathBuf,
    tcp: Option<SocketAddr>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(path: &Path) -> Self {
        Self::start_with_tcp(path, None).await
    }

    async fn start_with_tcp(path: &Path, tcp: Option<TcpEndpoint>) -> Self {
        let hub = EventHub::new(64);
        let server = ApiServer::bind(hub.clone(), status_provider(), path, tcp)
            .await
            .unwrap_or_else(|e| panic!("bind {}: {e:#}", path.display()));
        assert_eq!(server.unix_path(), path);
        let tcp = server.tcp_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        Self {
            hub,
            path: path.to_owned(),
            tcp,
            stop,
            task,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        within("the server to stop", self.task)
            .await
            .expect("server task panicked")
            .expect("server failed");
    }
}

fn workload(namespace: &str, pod: &str) -> proto::Workload {
    proto::Workload {
        host: false,
        container_id: ID_A.to_owned(),
        runtime: "containerd".to_owned(),
        namespace: namespace.to_owned(),
        pod: pod.to_owned(),
        container: "main".to_owned(),
        ..Default::default()
    }
}

fn exec(pid: u32, workload: proto::Workload) -> proto::Event {
    proto::Event {
        repeats_suppressed: 0,
        time_unix_nano: 1_795_622_400_000_000_000 + u64::from(pid),
        node: "node-1".to_owned(),
        workload: Some(workload),
        process: Some(proto::Process {
            pid,
            tid: pid,
            ppid: 1,
            comm: "cat".to_owned(),
            ..Default::default()
        }),
        body: Some(proto::event::Body::Exec(proto::ExecEvent {
            path: "/bin/cat".to_owned(),
            argv: vec!["cat".to_owned(), "/etc/hostname".to_owned()],
            ..Default::default()
        })),
    }
}

fn exit(pid: u32, workload: proto::Workload) -> proto::Event {
    proto::Event {
        repeats_suppressed: 0,
        body: Some(proto::event::Body::Exit(proto::ExitEvent {
            exit_code: 0,
            signal: 0,
        })),
        ..exec(pid, workload)
    }
}

fn host() -> proto::Workload {
    proto::Workload {
        host: true,
        ..Default::default()
    }
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|s| (*s).to_owned()).collect()
}

async fn subscribe(
    path: &Path,
    filter: proto::EventFilter,
) -> Result<Streaming<proto::Event>, Status> {
    let mut client = connect_unix(path).await.expect("connect");
    client
        .subscribe(proto::SubscribeRequest {
            filter: Some(filter),
        })
        .await
        .map(Response::into_inner)
}

async fn next(stream: &mut Streaming<proto::Event>) -> proto::Event {
    within("an event", stream.message())
        .await
        .expect("stream failed")
        .expect("stream ended")
}

/// All remaining events until the server ends the stream.
async fn drain(stream: &mut Streaming<proto::Event>) -> Vec<proto::Event> {
    let mut events = Vec::new();
    while let Some(event) = within("the end of the stream", stream.message())
        .await
        .expect("stream failed")
    {
        events.push(event);
    }
    events
}

fn publish(hub: &EventHub, events: &[proto::Event]) {
    for event in events {
        hub.publish(Arc::new(event.clone()));
    }
}

#[tokio::test]
async fn subscribe_with_a_filter_receives_matching_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(&dir.path().join("custos.sock")).await;
    let mut stream = subscribe(
        &server.path,
        proto::EventFilter {
            namespaces: strings(&["qa"]),
            kinds: strings(&["exec"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The subscription exists once the response headers are in.
    assert_eq!(server.hub.subscriber_count(), 1);

    let events = [
        exec(1, workload("qa", "web-1")),
        exec(2, workload("prod", "web-1")),
        exit(3, workload("qa", "web-1")),
        exec(4, host()),
        exec(5, workload("qa", "web-2")),
    ];
    publish(&server.hub, &events);
    assert_eq!(next(&mut stream).await, events[0]);
    assert_eq!(next(&mut stream).await, events[4]);
    server.stop().await;
    assert_eq!(drain(&mut stream).await, []);
}

#[tokio::test]
async fn invalid_filters_are_rejected_with_a_precise_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(&dir.path().join("custos.sock")).await;

    let status = subscribe(
        &server.path,
        proto::EventFilter {
            kinds: strings(&["exec", "opne"]),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        r#"invalid filter: unknown event kind "opne"; valid kinds: exec, exit, fork, open, connect, listen, accept, syscall, drop, deviation"#
    );

    let status = subscribe(
        &server.path,
        proto::EventFilter {
            container_ids: strings(&["abc"]),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(r#"invalid container id "abc""#),
        "{}",
        status.message()
    );
    assert_eq!(server.hub.subscriber_count(), 0);
    server.stop().await;
}

#[tokio::test]
async fn two_subscribers_each_get_exactly_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(&dir.path().join("custos.sock")).await;
    let mut web1 = subscribe(
        &server.path,
        proto::EventFilter {
            pods: strings(&["web-1"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut host_exits = subscribe(
        &server.path,
        proto::EventFilter {
            host_only: true,
            kinds: strings(&["exit"]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(server.hub.subscriber_count(), 2);

    let events = [
        exec(1, workload("qa", "web-1")),
        exit(2, host()),
        exec(3, host()),
        exit(4, workload("qa", "web-1")),
        exec(5, workload("qa", "web-2")),
        exit(6, host()),
    ];
    publish(&server.hub, &events);
    // Wait for the last expected event of each, then stop: the streams end, and whatever
    // else they would have carried shows up in `drain`.
    let mut got_web1 = vec![next(&mut web1).await, next(&mut web1).await];
    let mut got_host = vec![next(&mut host_exits).await, next(&mut host_exits).await];
    server.stop().await;
    got_web1.extend(drain(&mut web1).await);
    got_host.extend(drain(&mut host_exits).await);
    assert_eq!(got_web1, [events[0].clone(), events[3].clone()]);
    assert_eq!(got_host, [events[1].clone(), events[5].clone()]);
}

#[tokio::test]
async fn reconnecting_subscriber_is_counted_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(&dir.path().join("custos.sock")).await;
    let mut client = connect_unix(&server.path).await.unwrap();

    for round in 0..3 {
        let stream = subscribe(&server.path, proto::EventFilter::default())
            .await
            .unwrap();
        assert_eq!(server.hub.subscriber_count(), 1, "round {round}");
        let status = client
            .get_status(proto::GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(status.subscribers, 1, "round {round}");
        // The client goes away.
        drop(stream);
        within(
            "the subscriber to be removed",
            server.hub.wait_for_subscribers(|n| *n == 0),
        )
        .await;
        // Events published with nobody listening go nowhere, without error.
        publish(&server.hub, &[exec(round, host())]);
    }

    let mut stream = subscribe(&server.path, proto::EventFilter::default())
        .await
        .unwrap();
    let event = exec(99, host());
    publish(&server.hub, std::slice::from_ref(&event));
    assert_eq!(next(&mut stream).await, event);
    let status = client
        .get_status(proto::GetStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.subscribers, 1);
    assert_eq!(status.subscriber_lagged_events, 0);
    assert_eq!(status.version, "test");
    server.stop().await;
}

/// A server with a TCP listener on 127.0.0.1 with TLS; mutual TLS when `mutual`.
async fn start_with_tls(dir: &Path, mutual: bool) -> (Running, certs::PkiFiles) {
    let files = certs::PkiFiles::write(dir);
    let tls = crate::config::TlsConfig {
        cert_file: files.server_cert.clone(),
        key_file: files.server_key.clone(),
        client_ca_file: mutual.then(|| files.ca.clone()),
    };
    let endpoint = TcpEndpoint {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls: ServerTls::load(&tls).unwrap(),
    };
    let server = Running::start_with_tcp(&dir.join("custos.sock"), Some(endpoint)).await;
    (server, files)
}

/// `GetStatus` over TCP as a client trusting the test CA, presenting `identity` (cert, key).
async fn status_over_tls(
    addr: SocketAddr,
    files: &certs::PkiFiles,
    identity: Option<(&Path, &Path)>,
) -> Result<proto::AgentStatus, String> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |path: &Path| std::fs::read(path).unwrap();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(WAIT);
    let channel = within("a TLS connection", endpoint.connect())
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = proto::custos_client::CustosClient::new(channel);
    within("GetStatus", client.get_status(proto::GetStatusRequest {}))
        .await
        .map(Response::into_inner)
        .map_err(|status| format!("{status:?}"))
}

#[tokio::test]
async fn tcp_with_mutual_tls_answers_clients_with_a_certificate_of_the_ca_only() {
    let dir = tempfile::tempdir().unwrap();
    let (server, files) = start_with_tls(dir.path(), true).await;
    let addr = server.tcp.expect("TCP address");

    let status = status_over_tls(addr, &files, Some((&files.client_cert, &files.client_key)))
        .await
        .expect("a client with a certificate of the CA is served");
    assert_eq!(status.node, "node-1");

    let error = status_over_tls(addr, &files, None)
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(!error.is_empty());
    let error = status_over_tls(
        addr,
        &files,
        Some((&files.stranger_cert, &files.stranger_key)),
    )
    .await
    .expect_err("a client with a certificate of another CA must be refused");
    assert!(!error.is_empty());

    // Plain HTTP/2 on the TLS port gets no answer either.
    let plain = async {
        let mut client =
            proto::custos_client::CustosClient::connect(format!("http://{addr}")).await?;
        client
            .get_status(proto::GetStatusRequest {})
            .await
            .map_err(anyhow::Error::from)?;
        anyhow::Ok(())
    };
    assert!(within("a plaintext client", plain).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn tcp_with_tls_only_serves_clients_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server, files) = start_with_tls(dir.path(), false).await;
    let addr = server.tcp.expect("TCP address");
    let status = status_over_tls(addr, &files, None).await.unwrap();
    assert_eq!(status.node, "node-1");
    server.stop().await;
}

#[tokio::test]
async fn health_answers_serving_and_not_serving_after_shutdown_starts() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.sock");
    let server = Running::start(&path).await;
    let mut health = HealthClient::new(crate::client::unix_channel(&path).await.unwrap());
    for service in ["", "custos.v1.Custos"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = within("the first health status", watch.message()).await;
    assert_eq!(first.unwrap().unwrap().status(), ServingStatus::Serving);
    let _ = server.stop.send(());
    let next = within("the health status on shutdown", watch.message()).await;
    assert_eq!(next.unwrap().unwrap().status(), ServingStatus::NotServing);
    drop(watch);
    within("the server to stop", server.task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn reflection_lists_the_services_and_describes_custos() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.sock");
    let server = Running::start(&path).await;
    let channel = crate::client::unix_channel(&path).await.unwrap();
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("custos.v1.Custos".to_owned()),
    ]
    .map(|message_request| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message_request),
    });
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = within("the service list", responses.message())
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "custos.v1.Custos",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(&expected), "{expected} not in {names:?}");
    }
    let file = within("the file of custos.v1.Custos", responses.message())
        .await
        .unwrap()
        .unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("not a file descriptor: {file:?}");
    };
    let descriptor: prost_types::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(descriptor.package(), "custos.v1");
    assert!(descriptor.service.iter().any(|s| s.name() == "Custos"));
    drop(responses);
    server.stop().await;
}

#[tokio::test]
async fn socket_is_private_and_removed_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("run").join("custos");
    let path = parent.join("custos.sock");
    let server = Running::start(&path).await;

    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    for created in [dir.path().join("run"), parent.clone()] {
        let mode = std::fs::metadata(&created).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", created.display());
    }
    // Nothing but the socket is left beside it (the private bind directory is gone).
    let entries: Vec<_> = std::fs::read_dir(&parent)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, [std::ffi::OsString::from("custos.sock")]);

    server.stop().await;
    assert!(!path.exists(), "socket left behind after shutdown");
}

#[tokio::test]
async fn existing_live_socket_is_another_agent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.sock");
    let first = Running::start(&path).await;

    let error = ApiServer::bind(EventHub::new(1), status_provider(), &path, None)
        .await
        .err()
        .expect("a second agent must not bind");
    assert_eq!(
        error.to_string(),
        format!("another agent is already listening on {}", path.display())
    );
    assert!(matches!(
        error.downcast_ref::<SocketError>(),
        Some(SocketError::AlreadyListening { .. })
    ));

    // The first agent is unaffected.
    let mut client = connect_unix(&path).await.unwrap();
    client.get_status(proto::GetStatusRequest {}).await.unwrap();
    first.stop().await;
}

#[tokio::test]
async fn stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );

    let server = Running::start(&path).await;
    let mut client = connect_unix(&path).await.unwrap();
    client.get_status(proto::GetStatusRequest {}).await.unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    server.stop().await;
}

#[tokio::test]
async fn other_files_at_the_socket_path_are_left_alone() {
    let dir = tempfile::tempdir().unwrap();

    let file = dir.path().join("file.sock");
    std::fs::write(&file, "keep me").unwrap();
    let directory = dir.path().join("dir.sock");
    std::fs::create_dir(&directory).unwrap();
    std::fs::write(directory.join("inside"), "keep me too").unwrap();
    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();

    for (path, kind) in [
        (&file, "a regular file"),
        (&directory, "a directory"),
        (&link, "a symbolic link"),
    ] {
        let error = ApiServer::bind(EventHub::new(1), status_provider(), path, None)
            .await
            .err()
            .unwrap_or_else(|| panic!("bound over {kind}"));
        let message = error.to_string();
        assert!(
            message.starts_with(&format!(
                "{} exists and is {kind}, not a socket",
                path.display()
            )),
            "{message}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert_eq!(
        std::fs::read_to_string(directory.join("inside")).unwrap(),
        "keep me too"
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // No temporary directories were left behind either.
    let mut entries: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    entries.sort();
    assert_eq!(entries, ["dir.sock", "file.sock", "link.sock"]);
}

#[tokio::test]
async fn socket_file_is_not_removed_if_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.sock");
    let server = Running::start(&path).await;
    // Someone replaces the socket while the server runs; the server must not delete theirs.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, "not ours").unwrap();
    server.stop().await;
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "not ours");
}

#[tokio::test]
async fn too_long_socket_path_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x".repeat(120));
    let error = bind_unix_socket(&path).await.unwrap_err();
    assert!(matches!(error, SocketError::TooLong { .. }), "{error}");
    assert!(error.to_string().contains("too long"), "{error}");
}

/// A syscall sensor that knows one container, `ID_A`, which used read (0) and execve (59).
struct OneContainer;

#[tonic::async_trait]
impl SyscallSetLookup for OneContainer {
    async fn syscall_set(&self, id: &str) -> Result<proto::SyscallSet, SyscallLookupError> {
        if !ID_A.starts_with(id) {
            return Err(SyscallLookupError::NotFound { id: id.to_owned() });
        }
        let syscall = |number, name: &str| proto::SyscallEvent {
            number,
            name: name.to_owned(),
            verdict: String::new(),
        };
        Ok(proto::SyscallSet {
            container_id: ID_A.to_owned(),
            syscalls: vec![syscall(0, "read"), syscall(59, "execve")],
        })
    }
}

#[tokio::test]
async fn get_syscalls_answers_found_not_found_and_invalid_ids_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("custos.sock");
    let server = ApiServer::bind(EventHub::new(1), status_provider(), &path, None)
        .await
        .unwrap()
        .with_syscalls(Arc::new(OneContainer));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    let mut client = within("connect", connect_unix(&path)).await.unwrap();
    let ask = |id: &str| proto::GetSyscallsRequest {
        container_id: id.to_owned(),
    };

    // Full id, 12-character prefix, upper case.
    for id in [ID_A, &ID_A[..12], &ID_A[..20].to_ascii_uppercase()] {
        let set = client.get_syscalls(ask(id)).await.unwrap().into_inner();
        assert_eq!(set.container_id, ID_A, "asked {id}");
        assert_eq!(set.syscalls.len(), 2);
    }
    let status = client.get_syscalls(ask(&"f".repeat(64))).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status}");
    for bad in [
        "",
        &ID_A[..11],
        "0123456789abcdefg",
        &format!("{ID_A}0"),
        "../../etc/x",
    ] {
        let status = client.get_syscalls(ask(bad)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}: {status}");
        assert!(status.message().contains("container_id"), "{status}");
    }

    let _ = stop.send(());
    within("the server to stop", task).await.unwrap().unwrap();
}

#[tokio::test]
async fn get_syscalls_without_the_sensor_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Running::start(&dir.path().join("custos.sock")).await;
    let mut client = within("connect", connect_unix(&server.path)).await.unwrap();
    let status = client
        .get_syscalls(proto::GetSyscallsRequest {
            container_id: ID_A.to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    server.stop().await;
}
