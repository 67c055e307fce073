//! The Kubernetes manifests in `deploy/`: they render, they are valid Kubernetes 1.30 objects,
//! they agree with the agent (its configuration parser, its paths, its profile format).
//!
//! - `kubectl kustomize` renders the base and both overlays;
//! - `kubernetes-validate -k 1.30.0 --strict` validates every rendered document offline (all
//!   of them are built-in kinds, the CRD included; a kind it has no schema for is a failure
//!   here, not the tool's warning). BehaviorProfile custom resources are not validated with
//!   it (it has no schema for them) but with the CRD's own schema, below;
//! - the rendered ConfigMap's `custos.yaml` parses with `Config::parse` and has the overlay's
//!   modes (and /metrics on the DaemonSet's metrics port), and the DaemonSet's paths are the
//!   configuration's;
//! - a profile exported by the library, and the prod overlay's example profiles, validate
//!   against the CRD's openAPIV3Schema (with the `jsonschema` crate), and broken documents are
//!   rejected by both the schema and the importer.
//!
//! `kubectl` and `kubernetes-validate` (`pip install kubernetes-validate`, installed by
//! `cargo xtask setup`) are needed for the first two; without them those tests print a loud
//! `skipping:` line, or fail under `CUSTOS_REQUIRE_PRIVILEGED=1` (`cargo xtask test`, CI).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use custos::config::{Config, DEFAULT_CONFIG};
use custos::modes::Mode;
use custos::profiles::pattern::PathPattern;
use custos::profiles::{
    FileAccess, LearnConfig, Observation, Profile, Protocol, WorkloadIdentity, yaml,
};
use serde::Deserialize;
use serde_json::{Value, json};

const KUBERNETES_VERSION: &str = "1.30.0";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn deploy(rel: &str) -> PathBuf {
    repo().join("deploy").join(rel)
}

/// True when `program` runs; otherwise a loud skip, or a failure under
/// `CUSTOS_REQUIRE_PRIVILEGED`.
fn tool(test: &str, program: &str, probe: &[&str], install: &str) -> bool {
    let runs = Command::new(program)
        .args(probe)
        .output()
        .is_ok_and(|out| out.status.success());
    if runs {
        return true;
    }
    let why = format!("{test}: `{program}` is not available ({install})");
    if std::env::var_os("CUSTOS_REQUIRE_PRIVILEGED").is_some() {
        panic!("{why}, and CUSTOS_REQUIRE_PRIVILEGED is set");
    }
    eprintln!("\n!!! skipping: {why} !!!\n");
    false
}

fn have_kubectl(test: &str) -> bool {
    tool(
        test,
        "kubectl",
        &["version", "--client"],
        "install kubectl; `cargo xtask setup` checks for it",
    )
}

fn have_kubernetes_validate(test: &str) -> bool {
    tool(
        test,
        "kubernetes-validate",
        &["--version"],
        "`pip install kubernetes-validate`, or `cargo xtask setup`",
    )
}

/// YAML documents as JSON values (empty documents dropped).
fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize deploy/<dir>`, as text.
fn render_text(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy(dir))
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn render(dir: &str) -> Vec<Value> {
    documents(&render_text(dir))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))
}

const RENDERED: [&str; 3] = ["base", "overlays/qa", "overlays/prod"];

#[test]
fn manifests_render_and_validate_against_kubernetes_1_30() {
    let test = "manifests_render_and_validate_against_kubernetes_1_30";
    if !have_kubectl(test) || !have_kubernetes_validate(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for overlay in RENDERED {
        let text = render_text(overlay);
        let count = documents(&text).len();
        assert!(count >= 10, "deploy/{overlay}: only {count} documents");
        let file = dir
            .path()
            .join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &text).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["-k", KUBERNETES_VERSION, "--strict"])
            .arg(&file)
            .output()
            .expect("run kubernetes-validate");
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "deploy/{overlay} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{report}"
        );
        // Every document must really have been checked: a kind without a schema is only a
        // warning for the tool.
        let passed = report.matches(" passed for resource ").count();
        assert_eq!(
            passed, count,
            "deploy/{overlay}: {passed} of {count} documents validated:\n{report}"
        );
    }
}

#[test]
fn a_broken_manifest_fails_validation() {
    // The validation above can fail: an unknown field in the pod spec is rejected.
    let test = "a_broken_manifest_fails_validation";
    if !have_kubectl(test) || !have_kubernetes_validate(test) {
        return;
    }
    let text = render_text("base").replace("hostPID: true", "hostPID: true\n      hostPIDs: true");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["-k", KUBERNETES_VERSION, "--strict", "--quiet"])
        .arg(&file)
        .output()
        .expect("run kubernetes-validate");
    assert!(!out.status.success(), "an unknown pod spec field passed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("hostPIDs"));
}

fn config_of(docs: &[Value]) -> Config {
    let map = find(docs, "ConfigMap", "custos-config");
    Config::parse(str_of(&map["data"]["custos.yaml"]), "rendered ConfigMap")
        .expect("the rendered custos.yaml parses with the agent's parser")
}

#[test]
fn rendered_configuration_is_the_agents_and_overlays_change_only_modes() {
    if !have_kubectl("rendered_configuration_is_the_agents_and_overlays_change_only_modes") {
        return;
    }
    let builtin = Config::parse(DEFAULT_CONFIG, "built-in").unwrap();

    let base = render("base");
    let map = find(&base, "ConfigMap", "custos-config");
    assert_eq!(
        str_of(&map["data"]["custos.yaml"]),
        DEFAULT_CONFIG,
        "the base ConfigMap must be deploy/config/custos.yaml, byte for byte"
    );
    assert_eq!(config_of(&base), builtin);

    let qa = config_of(&render("overlays/qa"));
    assert_eq!(qa.modes.mode_for("qa", "web"), Mode::Learn);
    assert_eq!(qa.modes.mode_for("prod", "web"), Mode::Off);
    assert_eq!(qa.modes.mode_for("kube-system", "coredns"), Mode::Off);

    let prod_docs = render("overlays/prod");
    let prod = config_of(&prod_docs);
    assert_eq!(prod.modes.mode_for("prod", "web"), Mode::Enforce);
    assert_eq!(prod.modes.mode_for("qa", "web"), Mode::Off);
    assert_eq!(prod.modes.mode_for("kube-system", "coredns"), Mode::Off);

    for (name, overlay) in [("qa", &qa), ("prod", &prod)] {
        assert_ne!(overlay.modes, builtin.modes, "{name}: modes unchanged");
        assert_eq!(
            overlay.metrics.listen.map(|addr| addr.port()),
            Some(9447),
            "{name}: /metrics on the DaemonSet's metrics port"
        );
        let mut same = (*overlay).clone();
        same.modes = builtin.modes.clone();
        same.metrics = builtin.metrics.clone();
        assert_eq!(
            same, builtin,
            "deploy/overlays/{name}/custos.yaml may differ from deploy/config/custos.yaml \
             only in `modes` and `metrics`"
        );
    }

    // The prod profiles ConfigMap holds exactly the files of deploy/overlays/prod/profiles.
    let profiles = find(&prod_docs, "ConfigMap", "custos-profiles");
    let keys: BTreeSet<String> = profiles["data"]
        .as_object()
        .expect("profiles data")
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        prod_profile_files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect(),
        "every file in deploy/overlays/prod/profiles must be listed in the prod kustomization"
    );
    for (key, text) in profiles["data"].as_object().unwrap() {
        let imported = yaml::import_str(str_of(text), Path::new(key)).expect("imports");
        assert!(!imported.is_empty(), "{key}: no profile");
    }

    for (name, docs) in [("base", &base), ("overlays/prod", &prod_docs)] {
        daemonset_agrees_with_configuration(name, docs, &config_of(docs));
    }
}

/// The DaemonSet's arguments, mounts and probes use the configuration's paths.
fn daemonset_agrees_with_configuration(overlay: &str, docs: &[Value], config: &Config) {
    let ds = find(docs, "DaemonSet", "custos");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true, "{overlay}: hostPID");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let agent = &pod["containers"][0];
    assert_eq!(agent["securityContext"]["privileged"], true);
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(str_of)
        .collect();
    let flag = |name: &str| -> &str {
        let at = args
            .iter()
            .position(|a| *a == name)
            .unwrap_or_else(|| panic!("{overlay}: no {name} in {args:?}"));
        args[at + 1]
    };
    assert_eq!(args[0], "agent");
    let mounts = agent["volumeMounts"].as_array().unwrap();
    let volumes = pod["volumes"].as_array().unwrap();
    let volume_at = |path: &Path| -> &Value {
        let mount = mounts
            .iter()
            .find(|m| Path::new(str_of(&m["mountPath"])) == path)
            .unwrap_or_else(|| panic!("{overlay}: nothing mounted at {}", path.display()));
        volumes
            .iter()
            .find(|v| v["name"] == mount["name"])
            .expect("mounted volume exists")
    };

    // --config names custos.yaml in the custos-config ConfigMap mount.
    let config_path = Path::new(flag("--config"));
    assert_eq!(config_path.file_name().unwrap(), "custos.yaml");
    assert_eq!(
        volume_at(config_path.parent().unwrap())["configMap"]["name"],
        "custos-config"
    );
    // profiles.directory is the (optional) custos-profiles ConfigMap.
    let profiles_dir = config
        .profiles
        .directory
        .as_deref()
        .expect("profiles.directory");
    let profiles = &volume_at(profiles_dir)["configMap"];
    assert_eq!(profiles["name"], "custos-profiles");
    assert_eq!(profiles["optional"], true);
    // State and the containerd socket come from the host.
    assert_eq!(
        volume_at(&config.state_dir)["hostPath"]["path"],
        config.state_dir.to_str().unwrap()
    );
    assert_eq!(
        volume_at(&config.containerd.socket)["hostPath"]["type"],
        "Socket"
    );
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        assert!(volume_at(Path::new(path))["hostPath"].is_object(), "{path}");
    }
    // The probes check the socket the agent listens on.
    let socket = flag("--listen-unix");
    assert!(socket.ends_with(".sock"));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(
            agent[probe]["exec"]["command"],
            json!(["test", "-S", socket]),
            "{overlay}: {probe}"
        );
    }
    // The Service reaches the TCP listener.
    let tcp: std::net::SocketAddr = flag("--listen-tcp").parse().unwrap();
    let service = find(docs, "Service", "custos");
    assert_eq!(service["spec"]["ports"][0]["port"], tcp.port());
    assert_eq!(agent["ports"][0]["containerPort"], tcp.port());
    assert_eq!(
        service["spec"]["ports"][0]["targetPort"],
        agent["ports"][0]["name"]
    );
    // The TCP listener serves mutual TLS, from the custos-tls Secret (cert-manager's keys).
    for (name, key) in [
        ("--tls-cert", "tls.crt"),
        ("--tls-key", "tls.key"),
        ("--tls-client-ca", "ca.crt"),
    ] {
        let path = Path::new(flag(name));
        assert_eq!(path.file_name().unwrap(), key, "{overlay}: {name}");
        let secret = &volume_at(path.parent().unwrap())["secret"];
        assert_eq!(secret["secretName"], "custos-tls", "{overlay}: {name}");
    }
    // Least privilege: read-only access to BehaviorProfiles, nothing else.
    let role = find(docs, "ClusterRole", "custos-agent");
    assert_eq!(
        role["rules"],
        json!([{
            "apiGroups": ["custos.dev"],
            "resources": ["behaviorprofiles"],
            "verbs": ["get", "list", "watch"],
        }])
    );
    assert_eq!(pod["serviceAccountName"], "custos");
}

// ---------------------------------------------------------------------------------------------
// The BehaviorProfile CRD against the agent's own format. These need no external tool.

fn crd() -> Value {
    let text = std::fs::read_to_string(deploy("base/crd-behaviorprofile.yaml")).unwrap();
    documents(&text).remove(0)
}

fn crd_schema() -> Value {
    crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// The schema as the API server applies it, for a plain JSON-schema validator: `x-kubernetes-*`
/// keys dropped, and every object schema with `properties` closed (`additionalProperties:
/// false`). A CRD may not say that itself, but a structural schema means the same: unknown
/// fields are pruned, and rejected under strict field validation (kubectl's default). The Rust
/// importer rejects them too (`deny_unknown_fields`).
fn as_validator_schema(schema: &Value) -> Value {
    match schema {
        Value::Object(map) => {
            let mut out = serde_json::Map::new();
            for (key, value) in map {
                if key.starts_with("x-kubernetes-") {
                    continue;
                }
                let value = if key == "properties" {
                    Value::Object(
                        value
                            .as_object()
                            .unwrap()
                            .iter()
                            .map(|(k, v)| (k.clone(), as_validator_schema(v)))
                            .collect(),
                    )
                } else {
                    as_validator_schema(value)
                };
                out.insert(key.clone(), value);
            }
            let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if map.contains_key("properties") && !preserve {
                out.insert("additionalProperties".into(), json!(false));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(as_validator_schema).collect()),
        other => other.clone(),
    }
}

fn validator() -> jsonschema::Validator {
    // OpenAPI v3.0 schemas are a draft-4 dialect.
    jsonschema::draft4::new(&as_validator_schema(&crd_schema())).expect("the CRD schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, doc: &Value) -> Vec<String> {
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path))
        .collect()
}

/// A profile learned through the library, as `custos profiles export` writes it.
fn learned_profile() -> Profile {
    let mut profile = Profile::new(WorkloadIdentity::new(
        "web",
        "nginx",
        "docker.io/library/nginx",
    ));
    let config = LearnConfig::default();
    let at = UNIX_EPOCH + Duration::from_secs(1_780_000_000);
    for observation in [
        Observation::Exec {
            path: "/usr/sbin/nginx".into(),
            parent_exe: Some("/docker-entrypoint.sh".into()),
        },
        Observation::Exec {
            path: "/docker-entrypoint.sh".into(),
            parent_exe: None,
        },
        Observation::File {
            path: "/etc/nginx/nginx.conf".into(),
            access: FileAccess::Read,
        },
        Observation::File {
            path: "/proc/42/stat".into(),
            access: FileAccess::Read,
        },
        Observation::File {
            path: "/var/log/nginx/access.log".into(),
            access: FileAccess::Write,
        },
        Observation::Connect {
            protocol: Protocol::Tcp,
            address: "10.244.3.17".into(),
            port: 5432,
        },
        Observation::Connect {
            protocol: Protocol::Udp,
            address: "1.1.1.1".into(),
            port: 53,
        },
        Observation::Connect {
            protocol: Protocol::UnixStream,
            address: "/run/app.sock".into(),
            port: 0,
        },
        Observation::Listen {
            protocol: Protocol::Tcp,
            port: 8080,
        },
        Observation::Syscall {
            name: "openat".into(),
        },
        Observation::Syscall {
            name: "accept4".into(),
        },
    ] {
        profile.learn_with(&observation, &config, at);
    }
    profile.labels.insert("team".into(), "storefront".into());
    profile
}

#[test]
fn crd_names_match_the_document_format() {
    let crd = crd();
    let spec = &crd["spec"];
    let version = &spec["versions"][0];
    assert_eq!(
        format!("{}/{}", str_of(&spec["group"]), str_of(&version["name"])),
        yaml::API_VERSION
    );
    assert_eq!(spec["names"]["kind"], yaml::KIND);
    assert_eq!(
        str_of(&crd["metadata"]["name"]),
        format!(
            "{}.{}",
            str_of(&spec["names"]["plural"]),
            str_of(&spec["group"])
        )
    );
    assert_eq!(version["served"], true);
    assert_eq!(version["storage"], true);
}

/// Rules the API server applies to a CRD schema that no offline validator checks (structural
/// schema: a type everywhere, no `additionalProperties` next to `properties`, no `$ref`, no
/// `uniqueItems: true`).
#[test]
fn crd_schema_is_structural() {
    fn check(node: &Value, at: &str, errors: &mut Vec<String>) {
        let Some(map) = node.as_object() else {
            return;
        };
        if !map.contains_key("type") && !map.contains_key("x-kubernetes-int-or-string") {
            errors.push(format!("{at}: no type"));
        }
        if map.contains_key("properties") && map.contains_key("additionalProperties") {
            errors.push(format!("{at}: additionalProperties next to properties"));
        }
        if map.contains_key("$ref") {
            errors.push(format!("{at}: $ref"));
        }
        if map.get("uniqueItems") == Some(&json!(true)) {
            errors.push(format!("{at}: uniqueItems"));
        }
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            for (name, schema) in props {
                check(schema, &format!("{at}.{name}"), errors);
            }
        }
        if let Some(items) = map.get("items") {
            check(items, &format!("{at}[]"), errors);
        }
    }
    let schema = crd_schema();
    let mut errors = Vec::new();
    check(&schema, "", &mut errors);
    assert!(errors.is_empty(), "{errors:#?}");
    // metadata may only be constrained in name/generateName; we leave it to the API server.
    assert_eq!(schema["properties"]["metadata"], json!({"type": "object"}));
}

#[test]
fn an_exported_profile_validates_against_the_crd_schema() {
    let validator = validator();
    let exported = yaml::export(&[learned_profile()]);
    let docs = documents(&exported);
    assert_eq!(docs.len(), 1, "{exported}");
    let doc = &docs[0];
    // The profile really exercises every section.
    for section in ["executables", "files", "syscalls"] {
        assert!(
            doc["spec"][section]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        );
    }
    assert!(
        doc["spec"]["executables"][1]["parent"].is_string(),
        "{exported}"
    );
    assert!(doc["spec"]["network"]["egress"].as_array().unwrap().len() >= 3);
    assert!(doc["spec"]["network"]["listen"].as_array().unwrap().len() == 1);
    assert!(doc["status"]["phase"].is_string(), "{exported}");
    let errors = schema_errors(&validator, doc);
    assert!(errors.is_empty(), "{exported}\n{errors:#?}");
}

#[test]
fn a_profile_that_opted_in_to_syscall_kills_validates_against_the_crd_schema() {
    let mut profile = learned_profile();
    profile.syscall_policy = custos::profiles::model::SyscallPolicy::Kill;
    let exported = yaml::export(&[profile]);
    let doc = &documents(&exported)[0];
    assert_eq!(doc["spec"]["syscallPolicy"], json!("kill"), "{exported}");
    let errors = schema_errors(&validator(), doc);
    assert!(errors.is_empty(), "{exported}\n{errors:#?}");
}

fn prod_profile_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("overlays/prod/profiles"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no example profile in deploy/overlays/prod/profiles"
    );
    files
}

#[test]
fn prod_example_profiles_import_and_validate_against_the_crd_schema() {
    let validator = validator();
    for file in prod_profile_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let profiles = yaml::import_str(&text, &file)
            .unwrap_or_else(|e| panic!("the agent's importer rejects it: {e}"));
        assert!(!profiles.is_empty(), "{}: no profile", file.display());
        for doc in documents(&text) {
            let errors = schema_errors(&validator, &doc);
            assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
        }
    }
}

/// Broken documents are rejected by the CRD schema and by the importer alike.
#[test]
fn broken_profiles_are_rejected_by_schema_and_importer() {
    let validator = validator();
    let good = yaml::export(&[learned_profile()]);
    let good_doc = documents(&good).remove(0);
    assert!(schema_errors(&validator, &good_doc).is_empty());

    type Breakage = (&'static str, fn(&mut Value));
    let breakages: &[Breakage] = &[
        ("unknown top-level field", |d| d["extra"] = json!(1)),
        ("unknown spec field", |d| {
            d["spec"]["executable"] = json!([])
        }),
        ("unknown field in an executable", |d| {
            d["spec"]["executables"][0]["pth"] = json!("/bin/sh")
        }),
        ("unknown selector field", |d| {
            d["spec"]["selector"]["namespace"] = json!("prod")
        }),
        ("missing selector", |d| {
            d["spec"].as_object_mut().unwrap().remove("selector");
        }),
        ("missing spec", |d| {
            d.as_object_mut().unwrap().remove("spec");
        }),
        ("blank workload", |d| {
            d["spec"]["selector"]["workload"] = json!("  ")
        }),
        ("file access not an enum value", |d| {
            d["spec"]["files"][0]["access"] = json!(["append"])
        }),
        ("file access empty", |d| {
            d["spec"]["files"][0]["access"] = json!([])
        }),
        ("file access a string", |d| {
            d["spec"]["files"][0]["access"] = json!("read")
        }),
        ("relative path", |d| {
            d["spec"]["files"][0]["path"] = json!("etc/hosts")
        }),
        ("recursive wildcard", |d| {
            d["spec"]["files"][0]["path"] = json!("/var/**")
        }),
        ("dot segment", |d| {
            d["spec"]["files"][0]["path"] = json!("/etc/../shadow")
        }),
        ("unknown protocol", |d| {
            d["spec"]["network"]["egress"][0]["protocol"] = json!("sctp")
        }),
        ("port out of range", |d| {
            d["spec"]["network"]["listen"][0]["port"] = json!(70000)
        }),
        ("port as a name", |d| {
            d["spec"]["network"]["egress"][0]["port"] = json!("http")
        }),
        ("egress without address", |d| {
            d["spec"]["network"]["egress"][0]
                .as_object_mut()
                .unwrap()
                .remove("address");
        }),
        ("uppercase syscall", |d| {
            d["spec"]["syscalls"][0] = json!("Openat")
        }),
        ("unknown syscall policy", |d| {
            d["spec"]["syscallPolicy"] = json!("block")
        }),
    ];
    for (what, breakage) in breakages {
        let mut doc = good_doc.clone();
        breakage(&mut doc);
        assert!(
            !schema_errors(&validator, &doc).is_empty(),
            "the CRD schema accepts a profile with {what}"
        );
        let text = serde_norway::to_string(&doc).unwrap();
        assert!(
            yaml::import_str(&text, Path::new("broken.yaml")).is_err(),
            "the importer accepts a profile with {what}"
        );
    }
}

/// The CRD's path regex and the importer's `PathPattern::parse` accept the same paths.
#[test]
fn path_pattern_regex_agrees_with_the_importer() {
    let schema = crd_schema();
    let path_schema =
        &schema["properties"]["spec"]["properties"]["files"]["items"]["properties"]["path"];
    let exec_schema =
        &schema["properties"]["spec"]["properties"]["executables"]["items"]["properties"];
    assert_eq!(&exec_schema["path"]["pattern"], &path_schema["pattern"]);
    assert_eq!(&exec_schema["parent"]["pattern"], &path_schema["pattern"]);
    let validator = jsonschema::draft4::new(path_schema).unwrap();
    let samples = [
        "/",
        "/a",
        "/etc/hosts",
        "/proc/*/stat",
        "/tmp/tmp.*",
        "/*",
        "/a*b*",
        "/*a*",
        "/.hidden",
        "/...",
        "/..a",
        "/.*",
        "/..*",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/données/été",
        "",
        "a",
        "etc/hosts",
        "//a",
        "/a/",
        "/a//b",
        "/.",
        "/..",
        "/a/./b",
        "/a/../b",
        "/**",
        "/a**",
        "/a/**/b",
        "/x**y",
        "/a\u{1}b",
        "/a\nb",
        "/a\u{7f}",
        "/a\u{85}",
    ];
    for sample in samples {
        assert_eq!(
            validator.is_valid(&json!(sample)),
            PathPattern::parse(sample).is_ok(),
            "{sample:?}: schema and importer disagree"
        );
    }
}
