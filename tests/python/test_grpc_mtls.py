"""A SIEM's view of the agent's gRPC API, written with grpcio and nothing of the Rust code.

The client stubs are generated here, at run time, from proto/ with grpcio-tools. Run by
tests/e2e_python_grpc.rs, which starts a real agent (TCP with mutual TLS, and its unix socket),
passes the addresses and certificate files in CUSTOS_* environment variables, and runs a real
container when this script prints "subscribed" on a line of its own. Exit status 0 when every
check passed; a failed check prints what was expected and what came instead.

Checks:
- health (grpc.health.v1) answers SERVING for "" and "custos.v1.Custos", over mutual TLS and
  on the unix socket;
- reflection (grpc.reflection.v1 and v1alpha) lists custos.v1.Custos, and its descriptors
  resolve into the service with its methods;
- a client without a certificate, with a certificate of another CA, or without TLS is refused;
- a subscription over mutual TLS receives the exec events of the container the test runs.
"""

import importlib.resources
import os
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_tools import protoc

SERVICE = "custos.v1.Custos"
TIMEOUT = 10


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"{name} is not set (this script is run by tests/e2e_python_grpc.rs)")
    return value


def read(path):
    with open(path, "rb") as f:
        return f.read()


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def generate_stubs(proto_root, out_dir):
    """custos_pb2 / custos_pb2_grpc from proto/, with grpcio-tools' protoc."""
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            os.path.join(proto_root, "custos/v1/custos.proto"),
        ]
    )
    check(status == 0, f"grpc_tools.protoc failed on {proto_root} (status {status})")
    sys.path.insert(0, out_dir)
    from custos.v1 import custos_pb2, custos_pb2_grpc  # noqa: E402 (generated just now)

    return custos_pb2, custos_pb2_grpc


def tls_channel(addr, ca, cert=None, key=None):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(ca),
        private_key=read(key) if key else None,
        certificate_chain=read(cert) if cert else None,
    )
    # The server certificate names 127.0.0.1 (and localhost), the address the agent is on.
    return grpc.secure_channel(addr, credentials)


def check_health(channel, where):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ["", SERVICE]:
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        check(
            response.status == health_pb2.HealthCheckResponse.SERVING,
            f"health of {service!r} {where}: {response.status}, expected SERVING",
        )
    print(f"ok: health answers SERVING for '' and {SERVICE} {where}")


def list_services(channel, method):
    """ListServices over `method` (v1 and v1alpha messages are the same on the wire)."""
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = list(call(iter([request]), timeout=TIMEOUT))
    check(len(responses) == 1, f"{method}: {len(responses)} responses to one request")
    return {s.name for s in responses[0].list_services_response.service}


def check_reflection(channel, where):
    for version in ["v1", "v1alpha"]:
        method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
        names = list_services(channel, method)
        for expected in [SERVICE, "grpc.health.v1.Health"]:
            check(expected in names, f"reflection {version} {where}: {expected} not in {names}")
    # A generic client (grpcurl-like) resolves the service from the reflected descriptors.
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    service = pool.FindServiceByName(SERVICE)
    methods = {m.name for m in service.methods}
    check(
        {"Subscribe", "GetStatus"} <= methods,
        f"reflected {SERVICE} has methods {methods}",
    )
    subscribe = service.FindMethodByName("Subscribe")
    check(
        subscribe.output_type.full_name == "custos.v1.Event",
        f"Subscribe returns {subscribe.output_type.full_name}",
    )
    print(f"ok: reflection v1 and v1alpha list {SERVICE} and describe it {where}")


def expect_refused(channel, pb2, pb2_grpc, what):
    stub = pb2_grpc.CustosStub(channel)
    try:
        status = stub.GetStatus(pb2.GetStatusRequest(), timeout=TIMEOUT)
    except grpc.RpcError as error:
        check(
            error.code() == grpc.StatusCode.UNAVAILABLE,
            f"{what}: expected UNAVAILABLE, got {error.code()}: {error.details()}",
        )
        print(f"ok: {what} is refused ({error.code().name}: {error.details()})")
        return
    raise AssertionError(f"{what} was served: {status}")


def check_refusals(addr, ca, pb2, pb2_grpc):
    with tls_channel(addr, ca) as channel:
        expect_refused(channel, pb2, pb2_grpc, "a TLS client without a certificate")
    stranger = (env("CUSTOS_STRANGER_CERT"), env("CUSTOS_STRANGER_KEY"))
    with tls_channel(addr, ca, *stranger) as channel:
        expect_refused(channel, pb2, pb2_grpc, "a client with a certificate of another CA")
    with grpc.insecure_channel(addr) as channel:
        expect_refused(channel, pb2, pb2_grpc, "a client without TLS")


def receive_container_execs(channel, pb2, pb2_grpc, container_id, pod, marker):
    stub = pb2_grpc.CustosStub(channel)
    request = pb2.SubscribeRequest(
        filter=pb2.EventFilter(container_ids=[container_id], kinds=["exec"])
    )
    stream = stub.Subscribe(request, timeout=60)
    # The agent answers with headers once the subscription is registered.
    stream.initial_metadata()
    print("subscribed", flush=True)
    for event in stream:
        check(event.WhichOneof("body") == "exec", f"filtered for exec, got {event}")
        workload = event.workload
        check(
            workload.container_id == container_id,
            f"filtered for {container_id}, got {workload.container_id}",
        )
        check(workload.pod == pod, f"pod {workload.pod!r}, expected {pod!r}")
        check(workload.namespace == "qa", f"namespace {workload.namespace!r}")
        print(f"event: exec {event.exec.path} {list(event.exec.argv)}", flush=True)
        if marker in event.exec.argv:
            stream.cancel()
            print(f"ok: received the exec of {marker} in container {container_id[:12]}")
            return
    raise AssertionError(f"the stream ended without the exec of {marker}")


def main():
    addr = env("CUSTOS_TCP_ADDR")
    ca = env("CUSTOS_CA")
    client = (env("CUSTOS_CLIENT_CERT"), env("CUSTOS_CLIENT_KEY"))
    unix = f"unix:{env('CUSTOS_UNIX_SOCKET')}"
    with tempfile.TemporaryDirectory(prefix="custos-stubs-") as out_dir:
        pb2, pb2_grpc = generate_stubs(env("CUSTOS_PROTO_DIR"), out_dir)
        print("ok: stubs generated from proto/ with grpcio-tools")

        with tls_channel(addr, ca, *client) as channel:
            status = pb2_grpc.CustosStub(channel).GetStatus(
                pb2.GetStatusRequest(), timeout=TIMEOUT
            )
            check(status.version, f"GetStatus without a version: {status}")
            print(f"ok: GetStatus over mutual TLS (agent {status.version} on {status.node})")
            check_health(channel, "over mutual TLS")
            check_reflection(channel, "over mutual TLS")
        # grpc-core sends the socket path as :authority, which the agent's HTTP/2 stack
        # rejects (hyperium/h2#487): unix socket clients name "localhost", as grpc-go does.
        unix_options = [("grpc.default_authority", "localhost")]
        with grpc.insecure_channel(unix, options=unix_options) as channel:
            check_health(channel, "on the unix socket")
            check_reflection(channel, "on the unix socket")
        check_refusals(addr, ca, pb2, pb2_grpc)

        with tls_channel(addr, ca, *client) as channel:
            receive_container_execs(
                channel,
                pb2,
                pb2_grpc,
                env("CUSTOS_CONTAINER_ID"),
                env("CUSTOS_POD"),
                env("CUSTOS_MARKER"),
            )
    print("all checks passed")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failure:
        print(f"FAILED: {failure}", flush=True)
        sys.exit(1)
    except grpc.RpcError as error:
        print(f"FAILED: unexpected gRPC error {error.code()}: {error.details()}", flush=True)
        sys.exit(1)
