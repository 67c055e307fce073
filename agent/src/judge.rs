//! Monitor mode: every action of a workload in `monitor` (or `enforce`) mode that its profile
//! does not allow becomes a deviation event, with the profile, the closest allowed entry, a
//! verdict and a severity. A deviation that repeats (same container, kind and value) is
//! reported once, then once per interval with the number of occurrences, never once each.
//!
//! In `enforce` the kernel stops what it can (see `enforcement`); the event then carries its
//! verdict (`killed` for exec and open, EPERM for network calls: `blocked`), which the deviation
//! reports. Global rules (`enforcement::global_rules`) are judged in every mode but `off`.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    api::{hub::EventHub, proto},
    config::Config,
    enforcement::global_rules::GlobalRule,
    learning::{Learner, is_container_runtime},
    modes::Mode,
    profiles::{FileAccess, Observation, Profile, WorkloadIdentity},
};

/// A repeated deviation is reported at most once per interval.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Repeats remembered at most; beyond it the oldest are forgotten (and reported anew).
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DeviationKey {
    container_id: String,
    kind: &'static str,
    observed: String,
}

struct Repeats {
    /// The last deviation event sent, as the template of the next report.
    last: proto::Event,
    reported_at: Instant,
    /// Occurrences since `reported_at` (not yet reported).
    since: u64,
}

pub struct Judge {
    learner: Arc<Learner>,
    hub: EventHub,
    config: watch::Receiver<Config>,
    repeats: Mutex<HashMap<DeviationKey, Repeats>>,
}

impl Judge {
    pub fn new(learner: Arc<Learner>, hub: EventHub, config: watch::Receiver<Config>) -> Arc<Self> {
        Arc::new(Self {
            learner,
            hub,
            config,
            repeats: Mutex::default(),
        })
    }

    /// Judges one event against the global rules (every mode but `off`) and its workload's
    /// profile (`monitor` and `enforce`), and publishes the deviations. The verdict is the
    /// kernel's when it acted (`killed`, `blocked`), `alerted` otherwise.
    pub fn judge(&self, event: &proto::Event) {
        let Some(workload) = &event.workload else {
            return;
        };
        if workload.host || workload.container_id.is_empty() || is_container_runtime(event) {
            return;
        }
        let mode = self.learner.mode_for(workload);
        if mode == Mode::Off {
            return;
        }
        let Some(identity) = WorkloadIdentity::from_workload(workload, &()) else {
            return;
        };
        let observations = Observation::from_event(event);
        if observations.is_empty() {
            return;
        }
        let global = self.config.borrow().enforcement.global_rules;
        let kernel_verdict = kernel_verdict(event, mode);
        let judged = matches!(mode, Mode::Monitor | Mode::Enforce);
        let mut deviations: Vec<proto::DeviationEvent> =
            self.learner.with_profile(&identity, |profile| {
                observations
                    .iter()
                    .filter_map(|observation| {
                        if let Some(rule) = global.check(observation) {
                            return Some(global_deviation(observation, rule, mode));
                        }
                        let profile = profile.filter(|_| judged)?;
                        // The kernel acted on it: reported even if user space, with its exact
                        // patterns, would have let it through.
                        (kernel_verdict.is_some() || !profile.allows(observation))
                            .then(|| deviation(profile, observation, mode))
                    })
                    .take(1)
                    .collect()
            });
        for deviation in &mut deviations {
            deviation.verdict = kernel_verdict.unwrap_or("alerted").into();
        }
        for deviation in deviations {
            self.report(event, workload, deviation);
        }
    }

    fn report(
        &self,
        event: &proto::Event,
        workload: &proto::Workload,
        deviation: proto::DeviationEvent,
    ) {
        let key = DeviationKey {
            container_id: workload.container_id.clone(),
            kind: kind_name(&deviation.kind),
            observed: deviation.observed.clone(),
        };
        let outgoing = proto::Event {
            body: Some(proto::event::Body::Deviation(deviation)),
            repeats_suppressed: 0,
            ..event.clone()
        };
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = repeats.get_mut(&key) {
            known.since += 1;
            known.last = outgoing;
            return;
        }
        if repeats.len() >= MAX_TRACKED
            && let Some(oldest) = repeats
                .iter()
                .min_by_key(|(_, r)| r.reported_at)
                .map(|(k, _)| k.clone())
        {
            repeats.remove(&oldest);
        }
        repeats.insert(
            key,
            Repeats {
                last: outgoing.clone(),
                reported_at: Instant::now(),
                since: 0,
            },
        );
        drop(repeats);
        self.hub.publish(Arc::new(outgoing));
    }

    /// Every [`REPORT_INTERVAL`], reports each deviation that repeated since its last report,
    /// with the number of occurrences, and forgets those that stopped.
    pub async fn run_reporter(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(REPORT_INTERVAL / 4);
        loop {
            ticker.tick().await;
            self.report_repeats(REPORT_INTERVAL);
        }
    }

    /// Reports repeats older than `interval`; returns how many reports were published.
    pub fn report_repeats(&self, interval: Duration) -> usize {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut repeats = self.repeats.lock().unwrap_or_else(|p| p.into_inner());
        repeats.retain(|_, repeat| {
            if now.duration_since(repeat.reported_at) < interval {
                return true;
            }
            if repeat.since == 0 {
                // Quiet for a whole interval: the next occurrence is reported at once.
                return false;
            }
            let mut event = repeat.last.clone();
            if let Some(proto::event::Body::Deviation(deviation)) = &mut event.body {
                deviation.count = repeat.since;
            }
            due.push(event);
            repeat.since = 0;
            repeat.reported_at = now;
            true
        });
        drop(repeats);
        let reported = due.len();
        for event in due {
            self.hub.publish(Arc::new(event));
        }
        reported
    }
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "exec" => "exec",
        "file" => "file",
        "connect" => "connect",
        "listen" => "listen",
        _ => "syscall",
    }
}

/// What the kernel did about the action of `event`, if anything.
fn kernel_verdict(event: &proto::Event, mode: Mode) -> Option<&'static str> {
    use proto::event::Body;
    const EPERM: i32 = 1;
    match event.body.as_ref()? {
        Body::Exec(exec) => stopped(&exec.verdict),
        Body::Open(open) => stopped(&open.verdict),
        // The cgroup programs make a denied call fail with EPERM, and judge only enforce mode.
        Body::Network(net) if mode == Mode::Enforce && net.result == -EPERM => Some("blocked"),
        Body::Syscall(syscall) if syscall.verdict == "killed" => Some("killed"),
        _ => None,
    }
}

/// A verdict that says the kernel stopped the action (`alerted` is not one).
fn stopped(verdict: &str) -> Option<&'static str> {
    match verdict {
        "killed" => Some("killed"),
        "blocked" => Some("blocked"),
        _ => None,
    }
}

/// A deviation from a global rule: what the profile says does not matter.
fn global_deviation(
    observation: &Observation,
    rule: GlobalRule,
    mode: Mode,
) -> proto::DeviationEvent {
    let (kind, observed) = describe(observation);
    proto::DeviationEvent {
        kind: kind.into(),
        observed,
        profile: format!("global rule {}", rule.name),
        nearest_allowed: String::new(),
        verdict: "alerted".into(),
        severity: rule.severity.into(),
        count: 1,
        mode: mode.name().into(),
    }
}

/// Files whose reading alone is an alarm.
const SENSITIVE_READS: &[&str] = &["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/root/.ssh"];

/// The deviation's kind, observed value and severity.
fn describe_with_severity(observation: &Observation) -> (&'static str, String, &'static str) {
    match observation {
        Observation::Exec { path, parent_exe } => (
            "exec",
            match parent_exe {
                Some(parent) => format!("{path} (parent {parent})"),
                None => path.clone(),
            },
            "high",
        ),
        Observation::File { path, access } => {
            let severity = match access {
                FileAccess::Write | FileAccess::Exec => "high",
                FileAccess::Read if SENSITIVE_READS.iter().any(|s| path.starts_with(s)) => "high",
                FileAccess::Read => "medium",
            };
            ("file", format!("{path} {access}"), severity)
        }
        Observation::Connect {
            protocol,
            address,
            port,
        } => (
            "connect",
            format!("{protocol} {address} port {port}"),
            "medium",
        ),
        Observation::Listen { protocol, port } => {
            ("listen", format!("{protocol} port {port}"), "medium")
        }
        Observation::Syscall { name } => ("syscall", name.clone(), "low"),
    }
}

fn describe(observation: &Observation) -> (&'static str, String) {
    let (kind, observed, _) = describe_with_severity(observation);
    (kind, observed)
}

fn deviation(profile: &Profile, observation: &Observation, mode: Mode) -> proto::DeviationEvent {
    let (kind, observed, severity) = describe_with_severity(observation);
    proto::DeviationEvent {
        kind: kind.into(),
        observed,
        profile: profile.identity.default_name(),
        nearest_allowed: nearest_allowed(profile, observation).unwrap_or_default(),
        verdict: "alerted".into(),
        severity: severity.into(),
        count: 1,
        mode: mode.name().into(),
    }
}

/// The allowed entry of the same kind that shares the longest prefix with what was observed.
fn nearest_allowed(profile: &Profile, observation: &Observation) -> Option<String> {
    fn closest<'a>(target: &str, candidates: impl Iterator<Item = String> + 'a) -> Option<String> {
        candidates.max_by_key(|candidate| {
            candidate
                .bytes()
                .zip(target.bytes())
                .take_while(|(a, b)| a == b)
                .count()
        })
    }
    match observation {
        Observation::Exec { path, .. } => closest(
            path,
            profile.executables.iter().map(|rule| match &rule.parent {
                Some(parent) => format!("{} (parent {parent})", rule.path),
                None => rule.path.to_string(),
            }),
        ),
        Observation::File { path, .. } => closest(
            path,
            profile.files.iter().map(|(pattern, accesses)| {
                let accesses: Vec<String> = accesses.iter().map(ToString::to_string).collect();
                format!("{pattern} {}", accesses.join(","))
            }),
        ),
        Observation::Connect { address, .. } => closest(
            address,
            profile
                .egress
                .iter()
                .map(|rule| format!("{} {} port {}", rule.protocol, rule.address, rule.port)),
        ),
        Observation::Listen { .. } => closest(
            "",
            profile
                .listen
                .iter()
                .map(|rule| format!("{} port {}", rule.protocol, rule.port)),
        ),
        Observation::Syscall { name } => closest(name, profile.syscalls.iter().cloned()),
    }
}
