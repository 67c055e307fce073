//! Builds the kernel programs (crate `custos-ebpf`, for bpfel-unknown-none) so they can be
//! embedded in the `custos` binary, and generates the gRPC code from `proto/`.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    build_proto()?;
    build_ebpf()
}

fn build_proto() -> anyhow::Result<()> {
    let proto_root = "../proto";
    let file = "../proto/custos/v1/custos.proto";
    println!("cargo:rerun-if-changed={proto_root}");
    // protox compiles the .proto in pure Rust: no system protoc needed.
    let descriptors = protox::compile([file], [proto_root]).context("compiling proto/")?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("custos_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // `custos events -o json` prints the messages as they are (see agent/src/output.rs).
        .type_attribute(".custos.v1", "#[derive(serde::Serialize)]")
        .type_attribute(
            ".custos.v1.Event.body",
            "#[serde(rename_all = \"snake_case\")]",
        )
        .field_attribute(
            ".custos.v1.FileOpenEvent.access",
            "#[serde(serialize_with = \"crate::output::file_access_name\")]",
        )
        .field_attribute(
            ".custos.v1.NetworkEvent.operation",
            "#[serde(serialize_with = \"crate::output::network_operation_name\")]",
        )
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)
        .context("generating gRPC code")?;
    Ok(())
}

fn build_ebpf() -> anyhow::Result<()> {
    // With AYA_BUILD_SKIP (quick checks of user-space code) aya-build does nothing; leave an
    // empty object so the binary still compiles and refuses, clearly, to load probes.
    if std::env::var_os("AYA_BUILD_SKIP").is_some() {
        let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out_dir.join("custos-probes"), b"")?;
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf_package = packages
        .into_iter()
        .find(|p| p.name.as_str() == "custos-ebpf")
        .ok_or_else(|| anyhow!("custos-ebpf package not found"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("custos-ebpf manifest has no parent"))?
        .to_string();
    // The eBPF crate needs `-Z build-std=core`. RUSTC_BOOTSTRAP lets the stable toolchain
    // (the only one a fresh machine is guaranteed to have) accept it, for that child cargo only.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "custos-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom("stable"),
    )
}
