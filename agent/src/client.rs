//! The client side of the CLI: connecting to the agent's unix socket ([`connect_unix`], also
//! used by integration tests) and `custos events`.
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::api::proto;
use crate::api::proto::custos_client::CustosClient;
use crate::cli::EventsArgs;
use crate::output;

/// How long connecting to the socket may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the agent's gRPC API on the unix socket at `path`.
///
/// The error names the path and the cause, e.g. "cannot connect to the agent at
/// /run/custos/custos.sock: No such file or directory (os error 2) (is `custos agent`
/// running?)".
pub async fn connect_unix(path: impl AsRef<Path>) -> anyhow::Result<CustosClient<Channel>> {
    Ok(CustosClient::new(unix_channel(path).await?))
}

/// A channel to the unix socket at `path`, for any of the agent's services (`Custos`, health,
/// reflection); errors as [`connect_unix`].
pub async fn unix_channel(path: impl AsRef<Path>) -> anyhow::Result<Channel> {
    let path = path.as_ref().to_owned();
    let connector = {
        let path = path.clone();
        tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, io::Error>(TokioIo::new(stream))
            }
        })
    };
    // The URI only names the :authority of requests; the connector decides where they go.
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_with_connector(connector)
        .await
        .map_err(|error| connect_error(&path, &error))?;
    Ok(channel)
}

fn connect_error(path: &Path, error: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    // Report the innermost cause ("No such file or directory"), not tonic's "transport error".
    let mut cause: &(dyn std::error::Error + 'static) = error;
    let mut io_kind = None;
    loop {
        if let Some(io_error) = cause.downcast_ref::<io::Error>() {
            io_kind = Some(io_error.kind());
        }
        match cause.source() {
            Some(source) => cause = source,
            None => break,
        }
    }
    let hint = match io_kind {
        Some(io::ErrorKind::PermissionDenied) => {
            "(the socket is readable by its owner only: run as root?)"
        }
        _ => "(is `custos agent` running?)",
    };
    anyhow::anyhow!(
        "cannot connect to the agent at {}: {cause} {hint}",
        path.display()
    )
}

/// `custos events`: subscribes with the filter from `args` and prints each event on stdout, one
/// line each, until the agent ends the stream, the reader of stdout goes away or Ctrl-C.
pub async fn events(args: EventsArgs) -> anyhow::Result<()> {
    let filter = proto::EventFilter {
        namespaces: args.namespaces,
        pods: args.pods,
        container_ids: args.container_ids,
        kinds: args.kinds,
        host_only: args.host_only,
    };
    let mut client = connect_unix(&args.socket).await?;
    let mut stream = client
        .subscribe(proto::SubscribeRequest {
            filter: Some(filter),
        })
        .await
        .map_err(|status| status_error(&status, &args.socket))?
        .into_inner();

    let mut interrupted = std::pin::pin!(async {
        // If the handler cannot be installed, SIGINT keeps its default action.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    });
    let stdout = io::stdout();
    loop {
        let next = tokio::select! {
            biased;
            () = &mut interrupted => return Ok(()),
            next = stream.message() => next,
        };
        match next {
            Ok(Some(event)) => {
                let mut out = stdout.lock();
                let written =
                    output::write_event(&mut out, args.output, &event).and_then(|()| out.flush());
                match written {
                    Ok(()) => {}
                    // `custos events | head`: the reader has all it wanted.
                    Err(error) if error.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(error) => return Err(error).context("cannot write to stdout"),
                }
            }
            Ok(None) => {
                eprintln!(
                    "custos: the agent at {} ended the stream (is it stopping?)",
                    args.socket.display()
                );
                return Ok(());
            }
            Err(status) => return Err(status_error(&status, &args.socket)),
        }
    }
}

/// A gRPC error from the agent, for people.
fn status_error(status: &tonic::Status, socket: &Path) -> anyhow::Error {
    let socket: PathBuf = socket.to_owned();
    match status.code() {
        // The server's message says exactly what is wrong with the request.
        tonic::Code::InvalidArgument => anyhow::anyhow!("{}", status.message()),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            anyhow::anyhow!(
                "lost the connection to the agent at {}: {}",
                socket.display(),
                status.message()
            )
        }
        code => anyhow::anyhow!(
            "the agent at {} answered {code:?}: {}",
            socket.display(),
            status.message()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn missing_socket_is_explained() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let error = connect_unix(&path).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!(
                "cannot connect to the agent at {}: ",
                path.display()
            )),
            "{error}"
        );
        assert!(error.contains("No such file or directory"), "{error}");
        assert!(error.ends_with("(is `custos agent` running?)"), "{error}");
    }

    fn args(socket: &Path, kinds: &[&str]) -> EventsArgs {
        EventsArgs {
            socket: socket.to_owned(),
            output: crate::cli::OutputFormat::Json,
            namespaces: Vec::new(),
            pods: Vec::new(),
            container_ids: Vec::new(),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            host_only: false,
        }
    }

    async fn start_server(
        path: &Path,
    ) -> (
        crate::api::EventHub,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let hub = crate::api::EventHub::new(8);
        let status: crate::api::StatusProvider = std::sync::Arc::new(Default::default);
        let server = crate::api::ApiServer::bind(hub.clone(), status, path, None)
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        (hub, stop, task)
    }

    #[tokio::test]
    async fn events_reports_the_servers_reason_for_a_bad_filter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.sock");
        let (_hub, stop, task) = start_server(&path).await;
        let error = events(args(&path, &["exec", "bogus"])).await.unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"invalid filter: unknown event kind "bogus"; valid kinds: exec, exit, fork, open, connect, listen, accept, syscall, drop, deviation"#
        );
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn events_ends_cleanly_when_the_agent_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("custos.sock");
        let (hub, stop, task) = start_server(&path).await;
        let client = tokio::spawn(events(args(&path, &["exit"])));
        tokio::time::timeout(
            Duration::from_secs(10),
            hub.wait_for_subscribers(|n| *n == 1),
        )
        .await
        .expect("the client did not subscribe");
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), client)
            .await
            .expect("the client did not stop")
            .unwrap()
            .unwrap();
        task.await.unwrap().unwrap();
    }

    #[test]
    fn invalid_argument_shows_the_server_message() {
        let status = tonic::Status::invalid_argument("invalid filter: unknown event kind \"x\"");
        let error = status_error(&status, Path::new("/run/custos/custos.sock"));
        assert_eq!(
            error.to_string(),
            "invalid filter: unknown event kind \"x\""
        );
    }
}
