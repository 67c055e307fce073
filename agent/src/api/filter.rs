//! Event filters of `Subscribe`: the wire form (`proto::EventFilter`) validated once into an
//! [`EventFilter`] that the hub evaluates for every published event.
//!
//! Semantics (from `proto/custos/v1/custos.proto`): every non-empty list narrows the stream;
//! within one list any entry may match (OR), across lists all must match (AND); an empty filter
//! passes every event. Host events have no namespace, pod or container, so they never match a
//! namespace, pod or container filter; `host_only` keeps host events only.
use std::fmt;

use super::proto;

/// Kinds of events, by the names clients use in filters and output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A process executed a file (`proto::ExecEvent`).
    Exec,
    /// A process ended (`proto::ExitEvent`).
    Exit,
    /// A process started a new process (`proto::ForkEvent`).
    Fork,
    /// A file was opened (`proto::FileOpenEvent`).
    Open,
    /// An outbound connection (`proto::NetworkEvent`, operation connect).
    Connect,
    /// A socket started listening (`proto::NetworkEvent`, operation listen).
    Listen,
    /// An inbound connection was accepted (`proto::NetworkEvent`, operation accept).
    Accept,
    /// A container used a syscall for the first time (`proto::SyscallEvent`).
    Syscall,
    /// The kernel lost records (`proto::DropEvent`).
    Drop,
    /// A workload did something outside its profile (`proto::DeviationEvent`).
    Deviation,
}

impl EventKind {
    /// Every kind, in the order they are listed to users.
    pub const ALL: [EventKind; 10] = [
        EventKind::Exec,
        EventKind::Exit,
        EventKind::Fork,
        EventKind::Open,
        EventKind::Connect,
        EventKind::Listen,
        EventKind::Accept,
        EventKind::Syscall,
        EventKind::Drop,
        EventKind::Deviation,
    ];

    /// The name used in filters and output.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Exec => "exec",
            EventKind::Exit => "exit",
            EventKind::Fork => "fork",
            EventKind::Open => "open",
            EventKind::Connect => "connect",
            EventKind::Listen => "listen",
            EventKind::Accept => "accept",
            EventKind::Syscall => "syscall",
            EventKind::Drop => "drop",
            EventKind::Deviation => "deviation",
        }
    }

    /// The kind with this exact name, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The kind of an event; `None` when the event has no body.
    pub fn of(event: &proto::Event) -> Option<Self> {
        use proto::NetworkOperation as Op;
        Some(match event.body.as_ref()? {
            proto::event::Body::Exec(_) => EventKind::Exec,
            proto::event::Body::Exit(_) => EventKind::Exit,
            proto::event::Body::Fork(_) => EventKind::Fork,
            proto::event::Body::Open(_) => EventKind::Open,
            proto::event::Body::Network(network) => match network.operation() {
                Op::Connect => EventKind::Connect,
                Op::Listen => EventKind::Listen,
                Op::Accept => EventKind::Accept,
                Op::Unspecified => return None,
            },
            proto::event::Body::Syscall(_) => EventKind::Syscall,
            proto::event::Body::Drop(_) => EventKind::Drop,
            proto::event::Body::Deviation(_) => EventKind::Deviation,
        })
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind name of an event (`exec`, `exit`), or `unknown` for an event without a body.
pub fn event_kind_name(event: &proto::Event) -> &'static str {
    EventKind::of(event).map_or("unknown", EventKind::name)
}

/// Shortest container id prefix a filter accepts.
pub const MIN_CONTAINER_ID_PREFIX: usize = 12;
/// Length of a full container id (containerd, CRI-O, Docker).
pub const CONTAINER_ID_LEN: usize = 64;

/// Why a `proto::EventFilter` was rejected. The messages are sent to clients as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("unknown event kind {kind:?}; valid kinds: {valid}", valid = valid_kinds())]
    UnknownKind { kind: String },
    #[error(
        "invalid container id {value:?}: {reason}; expected lowercase hex, the full \
         {CONTAINER_ID_LEN} characters or a prefix of at least {MIN_CONTAINER_ID_PREFIX}"
    )]
    InvalidContainerId {
        value: String,
        reason: ContainerIdProblem,
    },
    #[error("empty entry in {field}: give a value or leave the entry out")]
    EmptyEntry { field: &'static str },
    #[error(
        "host_only cannot be combined with {field}: host events have no namespace, pod or \
         container, so no event could match"
    )]
    HostOnlyWithWorkload { field: &'static str },
}

/// What is wrong with a container id in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerIdProblem {
    /// Shorter than [`MIN_CONTAINER_ID_PREFIX`].
    TooShort { len: usize },
    /// Longer than [`CONTAINER_ID_LEN`].
    TooLong { len: usize },
    /// Contains a character that is not `0-9a-f`.
    NotLowercaseHex { character: char },
}

impl fmt::Display for ContainerIdProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContainerIdProblem::TooShort { len } => write!(f, "too short ({len} characters)"),
            ContainerIdProblem::TooLong { len } => write!(f, "too long ({len} characters)"),
            ContainerIdProblem::NotLowercaseHex { character } => {
                write!(f, "contains {character:?}")
            }
        }
    }
}

fn valid_kinds() -> String {
    EventKind::ALL.map(EventKind::name).join(", ")
}

/// A validated event filter. Build it with [`EventFilter::try_from_proto`]; the default value
/// passes every event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    namespaces: Vec<String>,
    pods: Vec<String>,
    container_ids: Vec<String>,
    kinds: Vec<EventKind>,
    host_only: bool,
}

impl EventFilter {
    /// A filter that passes every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Validates a filter received from a client.
    pub fn try_from_proto(filter: &proto::EventFilter) -> Result<Self, FilterError> {
        let namespaces = non_empty_entries(&filter.namespaces, "namespaces")?;
        let pods = non_empty_entries(&filter.pods, "pods")?;
        let container_ids = filter
            .container_ids
            .iter()
            .map(|id| validate_container_id(id).map(|()| id.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut kinds = Vec::new();
        for name in &filter.kinds {
            let kind = EventKind::from_name(name)
                .ok_or_else(|| FilterError::UnknownKind { kind: name.clone() })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if filter.host_only {
            let conflict = [
                ("namespaces", namespaces.is_empty()),
                ("pods", pods.is_empty()),
                ("container_ids", container_ids.is_empty()),
            ]
            .into_iter()
            .find(|(_, empty)| !empty);
            if let Some((field, _)) = conflict {
                return Err(FilterError::HostOnlyWithWorkload { field });
            }
        }
        Ok(Self {
            namespaces,
            pods,
            container_ids,
            kinds,
            host_only: filter.host_only,
        })
    }

    /// The filter in wire form (normalised: duplicate kinds removed).
    pub fn to_proto(&self) -> proto::EventFilter {
        proto::EventFilter {
            namespaces: self.namespaces.clone(),
            pods: self.pods.clone(),
            container_ids: self.container_ids.clone(),
            kinds: self.kinds.iter().map(|k| k.name().to_owned()).collect(),
            host_only: self.host_only,
        }
    }

    /// True when the filter passes every event.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &proto::Event) -> bool {
        if !self.kinds.is_empty()
            && !EventKind::of(event).is_some_and(|kind| self.kinds.contains(&kind))
        {
            return false;
        }
        // An event without a workload is not attributed to any container: a host event.
        let container = event.workload.as_ref().filter(|w| !w.host);
        if self.host_only && container.is_some() {
            return false;
        }
        if !self.namespaces.is_empty()
            && !container.is_some_and(|w| self.namespaces.contains(&w.namespace))
        {
            return false;
        }
        if !self.pods.is_empty() && !container.is_some_and(|w| self.pods.contains(&w.pod)) {
            return false;
        }
        if !self.container_ids.is_empty()
            && !container.is_some_and(|w| {
                !w.container_id.is_empty()
                    && self
                        .container_ids
                        .iter()
                        .any(|prefix| w.container_id.starts_with(prefix.as_str()))
            })
        {
            return false;
        }
        true
    }
}

fn non_empty_entries(entries: &[String], field: &'static str) -> Result<Vec<String>, FilterError> {
    if entries.iter().any(String::is_empty) {
        return Err(FilterError::EmptyEntry { field });
    }
    Ok(entries.to_vec())
}

fn validate_container_id(value: &str) -> Result<(), FilterError> {
    let problem =
        if let Some(character) = value.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
            Some(ContainerIdProblem::NotLowercaseHex { character })
        } else if value.len() < MIN_CONTAINER_ID_PREFIX {
            Some(ContainerIdProblem::TooShort { len: value.len() })
        } else if value.len() > CONTAINER_ID_LEN {
            Some(ContainerIdProblem::TooLong { len: value.len() })
        } else {
            None
        };
    match problem {
        None => Ok(()),
        Some(reason) => Err(FilterError::InvalidContainerId {
            value: value.to_owned(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const ID_B: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

    fn container(namespace: &str, pod: &str, id: &str) -> proto::Workload {
        proto::Workload {
            host: false,
            container_id: id.to_owned(),
            runtime: "containerd".to_owned(),
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
            container: "main".to_owned(),
            ..Default::default()
        }
    }

    fn host() -> proto::Workload {
        proto::Workload {
            host: true,
            ..Default::default()
        }
    }

    fn exec(workload: Option<proto::Workload>) -> proto::Event {
        proto::Event {
            workload,
            body: Some(proto::event::Body::Exec(proto::ExecEvent::default())),
            ..Default::default()
        }
    }

    fn exit(workload: Option<proto::Workload>) -> proto::Event {
        proto::Event {
            workload,
            body: Some(proto::event::Body::Exit(proto::ExitEvent::default())),
            ..Default::default()
        }
    }

    fn filter(f: proto::EventFilter) -> EventFilter {
        EventFilter::try_from_proto(&f).unwrap_or_else(|e| panic!("filter {f:?} rejected: {e}"))
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn kind_names() {
        assert_eq!(event_kind_name(&exec(None)), "exec");
        assert_eq!(event_kind_name(&exit(None)), "exit");
        assert_eq!(event_kind_name(&proto::Event::default()), "unknown");
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(EventKind::from_name("EXEC"), None);
    }

    #[test]
    fn empty_filter_passes_everything() {
        let f = filter(proto::EventFilter::default());
        assert!(f.is_empty());
        assert!(f.matches(&exec(Some(host()))));
        assert!(f.matches(&exec(None)));
        assert!(f.matches(&exit(Some(container("qa", "web-1", ID_A)))));
        assert!(f.matches(&proto::Event::default()));
    }

    #[test]
    fn unknown_kind_is_named_with_the_valid_ones() {
        let error = EventFilter::try_from_proto(&proto::EventFilter {
            kinds: strings(&["exec", "opne"]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            error,
            FilterError::UnknownKind {
                kind: "opne".to_owned()
            }
        );
        assert_eq!(
            error.to_string(),
            r#"unknown event kind "opne"; valid kinds: exec, exit, fork, open, connect, listen, accept, syscall, drop, deviation"#
        );
    }

    #[test]
    fn kinds_are_or_within_the_list() {
        let only_exec = filter(proto::EventFilter {
            kinds: strings(&["exec"]),
            ..Default::default()
        });
        assert!(only_exec.matches(&exec(Some(host()))));
        assert!(!only_exec.matches(&exit(Some(host()))));
        assert!(!only_exec.matches(&proto::Event::default()));

        let both = filter(proto::EventFilter {
            kinds: strings(&["exit", "exec", "exit"]),
            ..Default::default()
        });
        assert!(both.matches(&exec(None)));
        assert!(both.matches(&exit(None)));
        assert_eq!(both.to_proto().kinds, strings(&["exit", "exec"]));
    }

    #[test]
    fn container_ids_are_validated() {
        let cases = [
            ("0123456789a", "too short (11 characters)"),
            ("", "too short (0 characters)"),
            ("0123456789ABcdef", "contains 'A'"),
            ("0123456789ab-def", "contains '-'"),
            (" 0123456789abcdef", "contains ' '"),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef0",
                "too long (65 characters)",
            ),
        ];
        for (value, reason) in cases {
            let error = EventFilter::try_from_proto(&proto::EventFilter {
                container_ids: strings(&[ID_A, value]),
                ..Default::default()
            })
            .expect_err(value);
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("invalid container id {value:?}: {reason};")),
                "{value:?}: got {message:?}"
            );
            assert!(message.contains("at least 12"), "{message}");
        }
        for ok in [ID_A, &ID_A[..12], &ID_A[..40]] {
            filter(proto::EventFilter {
                container_ids: strings(&[ok]),
                ..Default::default()
            });
        }
    }

    #[test]
    fn container_ids_match_full_ids_and_prefixes() {
        let a = exec(Some(container("qa", "web-1", ID_A)));
        let b = exec(Some(container("qa", "web-2", ID_B)));
        let full = filter(proto::EventFilter {
            container_ids: strings(&[ID_A]),
            ..Default::default()
        });
        assert!(full.matches(&a));
        assert!(!full.matches(&b));
        let prefixes = filter(proto::EventFilter {
            container_ids: strings(&[&ID_A[..12], &ID_B[..20]]),
            ..Default::default()
        });
        assert!(prefixes.matches(&a));
        assert!(prefixes.matches(&b));
        assert!(!prefixes.matches(&exec(Some(host()))));
        assert!(!prefixes.matches(&exec(None)));
        // A container whose id is unknown matches no id filter.
        assert!(!prefixes.matches(&exec(Some(container("qa", "web-1", "")))));
    }

    #[test]
    fn namespaces_and_pods() {
        let qa_web1 = exec(Some(container("qa", "web-1", ID_A)));
        let qa_web2 = exec(Some(container("qa", "web-2", ID_A)));
        let prod_web1 = exec(Some(container("prod", "web-1", ID_B)));

        let ns = filter(proto::EventFilter {
            namespaces: strings(&["qa", "dev"]),
            ..Default::default()
        });
        assert!(ns.matches(&qa_web1));
        assert!(ns.matches(&qa_web2));
        assert!(!ns.matches(&prod_web1));

        let pods = filter(proto::EventFilter {
            pods: strings(&["web-1"]),
            ..Default::default()
        });
        assert!(pods.matches(&qa_web1));
        assert!(!pods.matches(&qa_web2));
        assert!(pods.matches(&prod_web1));

        // AND across lists.
        let both = filter(proto::EventFilter {
            namespaces: strings(&["qa"]),
            pods: strings(&["web-1"]),
            ..Default::default()
        });
        assert!(both.matches(&qa_web1));
        assert!(!both.matches(&qa_web2));
        assert!(!both.matches(&prod_web1));

        let with_kind = filter(proto::EventFilter {
            namespaces: strings(&["qa"]),
            kinds: strings(&["exit"]),
            ..Default::default()
        });
        assert!(!with_kind.matches(&qa_web1));
        assert!(with_kind.matches(&exit(Some(container("qa", "web-1", ID_A)))));
        assert!(!with_kind.matches(&exit(Some(host()))));
    }

    #[test]
    fn host_events_never_match_workload_filters() {
        // A host event carrying stray metadata still is a host event.
        let mut stray = container("qa", "web-1", ID_A);
        stray.host = true;
        for workload in [Some(host()), None, Some(stray)] {
            let event = exec(workload);
            for f in [
                proto::EventFilter {
                    namespaces: strings(&["qa"]),
                    ..Default::default()
                },
                proto::EventFilter {
                    pods: strings(&["web-1"]),
                    ..Default::default()
                },
                proto::EventFilter {
                    container_ids: strings(&[ID_A]),
                    ..Default::default()
                },
            ] {
                assert!(
                    !filter(f.clone()).matches(&event),
                    "{f:?} matched {event:?}"
                );
            }
        }
    }

    #[test]
    fn empty_namespace_matches_nothing_by_accident() {
        // "" would otherwise match every container without kubelet labels.
        for f in [
            proto::EventFilter {
                namespaces: strings(&["qa", ""]),
                ..Default::default()
            },
            proto::EventFilter {
                pods: strings(&[""]),
                ..Default::default()
            },
        ] {
            let error = EventFilter::try_from_proto(&f).unwrap_err();
            assert!(matches!(error, FilterError::EmptyEntry { .. }), "{error}");
        }
    }

    #[test]
    fn host_only() {
        let f = filter(proto::EventFilter {
            host_only: true,
            ..Default::default()
        });
        assert!(f.matches(&exec(Some(host()))));
        assert!(f.matches(&exit(None)));
        assert!(!f.matches(&exec(Some(container("qa", "web-1", ID_A)))));
        // Unattributed container (no kubelet labels, no id yet) is still not the host.
        assert!(!f.matches(&exec(Some(container("", "", "")))));

        let host_exec = filter(proto::EventFilter {
            host_only: true,
            kinds: strings(&["exec"]),
            ..Default::default()
        });
        assert!(host_exec.matches(&exec(Some(host()))));
        assert!(!host_exec.matches(&exit(Some(host()))));
    }

    #[test]
    fn host_only_with_workload_filters_is_rejected() {
        let error = EventFilter::try_from_proto(&proto::EventFilter {
            host_only: true,
            pods: strings(&["web-1"]),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(error, FilterError::HostOnlyWithWorkload { field: "pods" });
        assert!(
            error
                .to_string()
                .contains("host_only cannot be combined with pods")
        );
    }

    #[test]
    fn round_trips_through_proto() {
        let wire = proto::EventFilter {
            namespaces: strings(&["qa"]),
            pods: strings(&["web-1", "web-2"]),
            container_ids: strings(&[&ID_A[..12]]),
            kinds: strings(&["exec"]),
            host_only: false,
        };
        assert_eq!(filter(wire.clone()).to_proto(), wire);
    }
}
