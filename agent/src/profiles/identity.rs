//! Workload identity: which profile an event belongs to.
//!
//! A profile describes a *workload*, not a pod: every replica of a Deployment, every pod of a
//! StatefulSet, every run of a CronJob shares one profile, and a profile learned in `qa`
//! applies in `prod`. So the identity is (owning workload name, container name, image
//! repository) and deliberately leaves out the namespace, the pod name's random parts, and the
//! image tag or digest (a new build of the same image is the same workload).
//!
//! The owning workload is derived from the pod name alone — the event model carries no owner
//! references — using the names controllers generate (see [`owner_name`]). Where that guess is
//! wrong (a bare pod called `web-1`, a Deployment whose name ends in something hash-like), pod
//! labels override each part: [`LABEL_WORKLOAD`], [`LABEL_CONTAINER`], [`LABEL_IMAGE`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;

use serde::{Deserialize, Serialize};

use crate::api::proto;

/// Pod label that sets the workload name of every container of the pod.
pub const LABEL_WORKLOAD: &str = "custos.dev/workload";
/// Pod label that sets the container part (useful when one pod has one container whose name
/// changed between versions).
pub const LABEL_CONTAINER: &str = "custos.dev/container";
/// Pod label that sets the image part (e.g. to share a profile across a registry mirror).
pub const LABEL_IMAGE: &str = "custos.dev/image";

/// Read access to a pod's labels, whatever map the caller holds them in.
pub trait Labels {
    fn label(&self, key: &str) -> Option<&str>;
}

impl<S: BuildHasher> Labels for HashMap<String, String, S> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

impl Labels for BTreeMap<String, String> {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// Labels looked up in the first source, then the second.
struct Layered<'a, A, B>(&'a A, &'a B);

impl<A: Labels, B: Labels> Labels for Layered<'_, A, B> {
    fn label(&self, key: &str) -> Option<&str> {
        self.0.label(key).or_else(|| self.1.label(key))
    }
}

/// No labels.
impl Labels for () {
    fn label(&self, _key: &str) -> Option<&str> {
        None
    }
}

/// The identity a profile is keyed by. Two replicas of one workload have equal identities.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentity {
    pub workload: String,
    pub container: String,
    pub image: String,
}

impl WorkloadIdentity {
    /// An identity from parts already in canonical form.
    pub fn new(
        workload: impl Into<String>,
        container: impl Into<String>,
        image: impl Into<String>,
    ) -> Self {
        Self {
            workload: workload.into(),
            container: container.into(),
            image: image.into(),
        }
    }

    /// The identity of a container of a pod: derived names, overridden by labels where set
    /// (non-empty).
    pub fn from_pod(pod: &str, container: &str, image: &str, labels: &impl Labels) -> Self {
        let label = |key| labels.label(key).map(str::trim).filter(|v| !v.is_empty());
        Self {
            workload: label(LABEL_WORKLOAD)
                .unwrap_or_else(|| owner_name(pod))
                .to_owned(),
            container: label(LABEL_CONTAINER).unwrap_or(container).to_owned(),
            image: image_repository(label(LABEL_IMAGE).unwrap_or(image)),
        }
    }

    /// The identity of an event's workload; `None` for host processes and containers not
    /// started by a kubelet (no pod name). `labels` win over the workload's own pod labels.
    pub fn from_workload(workload: &proto::Workload, labels: &impl Labels) -> Option<Self> {
        if workload.host || workload.pod.is_empty() {
            return None;
        }
        Some(Self::from_pod(
            &workload.pod,
            &workload.container,
            &workload.image,
            &Layered(labels, &workload.pod_labels),
        ))
    }

    /// A Kubernetes-style name for the profile document (`web-nginx`): lowercase
    /// alphanumerics and `-`, at most 253 characters.
    pub fn default_name(&self) -> String {
        let raw = if self.workload == self.container || self.container.is_empty() {
            self.workload.clone()
        } else {
            format!("{}-{}", self.workload, self.container)
        };
        let mut name: String = raw
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_alphanumeric() { c } else { '-' }
            })
            .collect();
        name.truncate(253);
        let name = name.trim_matches('-').to_owned();
        if name.is_empty() {
            "profile".to_owned()
        } else {
            name
        }
    }

    /// A stable key usable as a file name: the readable name plus a hash of the full
    /// identity, so that different identities never share a file.
    pub fn file_stem(&self) -> String {
        let mut name = self.default_name();
        name.truncate(100);
        format!("{name}-{:016x}", fnv1a64(self))
    }
}

impl fmt::Display for WorkloadIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} ({})", self.workload, self.container, self.image)
    }
}

/// FNV-1a over the three parts with separators; stable across Rust versions (unlike
/// `DefaultHasher`), which matters for file names kept on disk.
fn fnv1a64(id: &WorkloadIdentity) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [&id.workload, &id.container, &id.image] {
        for b in part.bytes().chain(std::iter::once(0u8)) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Characters of generated name suffixes and template hashes. Kubernetes generates them from
/// `bcdfghjklmnpqrstvwxz2456789` (no vowels, so no words); names seen in the wild and in older
/// versions also carry `0`, `1` and `3` (numeric hashes before 1.8), so the check accepts any
/// lowercase consonant or digit — but never a vowel or `y`, which is what keeps readable names
/// such as `nginx`, `proxy`, `cache` or `mysql` from being taken for a suffix.
fn is_generated_char(b: u8) -> bool {
    b.is_ascii_digit() || (b.is_ascii_lowercase() && !b"aeiouy".contains(&b))
}

fn is_generated(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(is_generated_char)
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A StatefulSet ordinal: decimal, no leading zero (except `0` itself), at most 5 digits.
fn is_ordinal(s: &str) -> bool {
    is_digits(s) && s.len() <= 5 && (s == "0" || !s.starts_with('0'))
}

/// The name of the workload that owns a pod, from the pod name:
///
/// | pod name                    | owner   | rule                                             |
/// |-----------------------------|---------|--------------------------------------------------|
/// | `web-7f9c5d8b6-x2x1q`       | `web`   | Deployment: `-<template hash 6–10>-<suffix 5>`   |
/// | `backup-28391234-abcde`     | `backup`| CronJob: `-<scheduled time, 8–12 digits>-<5>`    |
/// | `work-3-x2x1q`              | `work`  | indexed Job: `-<index>-<suffix 5>`               |
/// | `db-0`                      | `db`    | StatefulSet: `-<ordinal>`                        |
/// | `agent-x2x1q`               | `agent` | DaemonSet, Job, bare ReplicaSet: `-<suffix 5>`   |
/// | `my-app`, `nginx-proxy`     | same    | no generated suffix: a bare pod keeps its name   |
///
/// Only one rule applies (the first that matches, in this order), so a Deployment called
/// `web-1` yields `web-1` from `web-1-7f9c5d8b6-x2x1q`. The CronJob rule accepts any five
/// lowercase alphanumerics as the suffix because the scheduled-time number is already strong
/// evidence.
pub fn owner_name(pod: &str) -> &str {
    let parts: Vec<&str> = pod.rsplitn(3, '-').collect();
    // parts are reversed: [last, middle, rest].
    if let [last, middle, rest] = parts[..]
        && !rest.is_empty()
    {
        let cron = is_digits(middle)
            && (8..=12).contains(&middle.len())
            && last.len() == 5
            && last
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let deployment = is_generated(middle, 6, 10) && is_generated(last, 5, 5);
        let indexed_job = is_digits(middle) && is_generated(last, 5, 5);
        if cron || deployment || indexed_job {
            return rest;
        }
    }
    if let Some((rest, last)) = pod.rsplit_once('-')
        && !rest.is_empty()
        && (is_ordinal(last) || is_generated(last, 5, 5))
    {
        return rest;
    }
    pod
}

/// The repository of an image reference: without tag or digest, with Docker Hub's implicit
/// parts spelled out (`nginx:1.27` → `docker.io/library/nginx`), so that the same image named
/// two ways by two runtimes is one identity.
pub fn image_repository(image: &str) -> String {
    let image = image.trim();
    let without_digest = image.split_once('@').map_or(image, |(name, _)| name);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let without_tag = match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    };
    if without_tag.is_empty() {
        return String::new();
    }
    let mut parts = without_tag.splitn(2, '/');
    let first = parts.next().unwrap_or("");
    match parts.next() {
        // `registry.local:5000/team/nginx`, `localhost/x`: the first part is a registry.
        Some(_) if first.contains('.') || first.contains(':') || first == "localhost" => {
            without_tag.to_owned()
        }
        Some(_) => format!("docker.io/{without_tag}"),
        None => format!("docker.io/library/{without_tag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_names_from_real_pod_names() {
        let cases = [
            // Deployments (ReplicaSet pods).
            ("web-7f9c5d8b6-x2x1q", "web"),
            ("coredns-5d78c9869d-4xq2p", "coredns"),
            ("metrics-server-6d94bc8694-k7zvn", "metrics-server"),
            (
                "ingress-nginx-controller-7d9bf8c6f5-tq2rl",
                "ingress-nginx-controller",
            ),
            (
                "local-path-provisioner-6c86858495-9kqwz",
                "local-path-provisioner",
            ),
            ("my-app-v2-84b6d9f7c-zz8kd", "my-app-v2"),
            ("web-1-7f9c5d8b6-x2x1q", "web-1"),
            ("legacy-3794238438-x2x1q", "legacy"),
            // CronJob and Job pods.
            ("backup-28391234-abcde", "backup"),
            ("db-backup-28391234-x7k2p", "db-backup"),
            ("report-1712345678-q2w8z", "report"),
            ("migrate-x7k2p", "migrate"),
            ("work-3-x2x1q", "work"),
            // StatefulSets.
            ("db-0", "db"),
            ("web-1", "web"),
            ("kafka-12", "kafka"),
            ("postgres-ha-2", "postgres-ha"),
            // DaemonSets.
            ("agent-x2x1q", "agent"),
            ("kube-proxy-7tdcq", "kube-proxy"),
            ("calico-node-2xk9m", "calico-node"),
            ("fluent-bit-vq5bt", "fluent-bit"),
            ("web-notahash-x2x1q", "web-notahash"),
        ];
        for (pod, owner) in cases {
            assert_eq!(owner_name(pod), owner, "pod {pod}");
        }
    }

    #[test]
    fn names_that_must_not_be_truncated() {
        for pod in [
            "my-app",
            "nginx",
            "nginx-proxy",
            "redis-cache",
            "api-mysql",
            "web-front",
            "web-01",
            "web-v1",
            "web-",
            "-x2x1q",
            "app-a1",
            "etcd-control-plane",
            "kube-apiserver-node1",
            "my-app-backend-worker",
            "backup-28391234-ABCDE",
            "backup-1234-abcde",
            "web-7f9c5d8b6-nginx",
            "",
        ] {
            assert_eq!(owner_name(pod), pod, "pod {pod} must keep its name");
        }
    }

    #[test]
    fn image_repositories() {
        let cases = [
            (
                "registry.local:5000/team/nginx:1.27@sha256:0123456789abcdef",
                "registry.local:5000/team/nginx",
            ),
            (
                "registry.local:5000/team/nginx",
                "registry.local:5000/team/nginx",
            ),
            ("nginx", "docker.io/library/nginx"),
            ("nginx:1.27", "docker.io/library/nginx"),
            ("docker.io/library/nginx:1.27", "docker.io/library/nginx"),
            ("bitnami/redis:7.2", "docker.io/bitnami/redis"),
            ("ghcr.io/org/app@sha256:abc", "ghcr.io/org/app"),
            ("localhost/app:dev", "localhost/app"),
            (
                "quay.io/prometheus/node-exporter:v1.8.0",
                "quay.io/prometheus/node-exporter",
            ),
            ("", ""),
        ];
        for (image, repo) in cases {
            assert_eq!(image_repository(image), repo, "image {image}");
        }
    }

    #[test]
    fn replicas_share_an_identity_across_namespaces() {
        let a = WorkloadIdentity::from_pod("web-7f9c5d8b6-x2x1q", "nginx", "nginx:1.27", &());
        let b = WorkloadIdentity::from_pod(
            "web-7f9c5d8b6-q9zkd",
            "nginx",
            "docker.io/library/nginx:1.27@sha256:aa",
            &(),
        );
        assert_eq!(a, b);
        let wl = |ns: &str| proto::Workload {
            namespace: ns.into(),
            pod: "web-7f9c5d8b6-x2x1q".into(),
            container: "nginx".into(),
            image: "nginx:1.27".into(),
            ..Default::default()
        };
        assert_eq!(
            WorkloadIdentity::from_workload(&wl("qa"), &()),
            WorkloadIdentity::from_workload(&wl("prod"), &())
        );
        // The workload's own pod labels override; labels given by the caller win over them.
        let mut labelled = wl("qa");
        labelled
            .pod_labels
            .insert(LABEL_WORKLOAD.into(), "storefront".into());
        let identity = WorkloadIdentity::from_workload(&labelled, &()).unwrap();
        assert_eq!(identity.workload, "storefront");
        let caller = BTreeMap::from([(LABEL_WORKLOAD.to_owned(), "other".to_owned())]);
        let identity = WorkloadIdentity::from_workload(&labelled, &caller).unwrap();
        assert_eq!(identity.workload, "other");
        let host = proto::Workload {
            host: true,
            ..Default::default()
        };
        assert_eq!(WorkloadIdentity::from_workload(&host, &()), None);
    }

    #[test]
    fn labels_override_each_part() {
        let labels = HashMap::from([
            (LABEL_WORKLOAD.to_owned(), "web".to_owned()),
            (LABEL_IMAGE.to_owned(), "mirror.local/nginx:1".to_owned()),
            (LABEL_CONTAINER.to_owned(), " ".to_owned()),
        ]);
        let id = WorkloadIdentity::from_pod("web-1", "nginx", "nginx", &labels);
        assert_eq!(
            id,
            WorkloadIdentity::new("web", "nginx", "mirror.local/nginx")
        );
        let labels = BTreeMap::from([(LABEL_CONTAINER.to_owned(), "app".to_owned())]);
        let id = WorkloadIdentity::from_pod("web-1", "nginx", "nginx", &labels);
        assert_eq!(id.container, "app");
        assert_eq!(id.workload, "web");
    }

    #[test]
    fn names_and_file_stems() {
        let id = WorkloadIdentity::new("web", "nginx", "docker.io/library/nginx");
        assert_eq!(id.default_name(), "web-nginx");
        assert_eq!(
            WorkloadIdentity::new("Web_App", "Web_App", "x").default_name(),
            "web-app"
        );
        let stem = id.file_stem();
        assert!(stem.starts_with("web-nginx-"), "{stem}");
        assert_eq!(stem, id.file_stem());
        assert_ne!(
            stem,
            WorkloadIdentity::new("web", "nginx", "other").file_stem()
        );
    }
}
