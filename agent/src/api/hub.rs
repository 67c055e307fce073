//! The fan-out from the event pipeline to gRPC subscribers.
//!
//! Each subscriber has its own bounded queue and its own filter, applied at publish time, so a
//! queue only ever holds events its subscriber asked for and a quiet filter is never crowded
//! out by unrelated traffic. [`EventHub::publish`] never blocks and never waits on a
//! subscriber: when a queue is full the event is dropped for that subscriber only, and the loss
//! is counted (per subscriber and in total, for `GetStatus`) and logged once per lagging
//! episode.
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::task::{Context, Poll};

use tokio::sync::{mpsc, watch};

use super::filter::EventFilter;
use super::proto;

/// Fan-out of events to subscribers. Cheap to clone; clones share subscribers and counters.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    capacity: usize,
    next_id: AtomicU64,
    subscribers: RwLock<Vec<Slot>>,
    /// Live subscriber count, for waiters ([`EventHub::wait_for_subscribers`]).
    count: watch::Sender<usize>,
    published: AtomicU64,
    lagged_total: AtomicU64,
    observer: OnceLock<PublishObserver>,
}

/// Sees every published event before the fan-out (metrics count events there). It runs on the
/// pipeline's path: it must be quick and never block.
pub type PublishObserver = Box<dyn Fn(&proto::Event) + Send + Sync>;

struct Slot {
    id: u64,
    filter: EventFilter,
    tx: mpsc::Sender<Arc<proto::Event>>,
    shared: Arc<SubscriberShared>,
}

/// State shared between a subscriber's slot in the hub and its [`Subscription`].
#[derive(Default)]
struct SubscriberShared {
    lagged: AtomicU64,
    /// Losses since the last event that got through; nonzero while an episode lasts.
    lagging_since: AtomicU64,
    lagging: AtomicBool,
}

/// Counters of the hub, for `GetStatus` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HubStats {
    /// Live subscribers.
    pub subscribers: usize,
    /// Events handed to [`EventHub::publish`].
    pub published: u64,
    /// Events dropped because a subscriber's queue was full, summed over all subscribers
    /// (past and present).
    pub lagged_events: u64,
}

impl EventHub {
    /// A hub whose subscribers each have a queue of `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::new(HubInner {
                capacity: capacity.max(1),
                next_id: AtomicU64::new(1),
                subscribers: RwLock::new(Vec::new()),
                count: watch::Sender::new(0),
                published: AtomicU64::new(0),
                lagged_total: AtomicU64::new(0),
                observer: OnceLock::new(),
            }),
        }
    }

    /// Queue size of each subscriber.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Hands `event` to every subscriber whose filter matches it. Never blocks: a subscriber
    /// whose queue is full loses the event, and the loss is counted.
    pub fn publish(&self, event: Arc<proto::Event>) {
        self.inner.published.fetch_add(1, Ordering::Relaxed);
        if let Some(observe) = self.inner.observer.get() {
            observe(&event);
        }
        let subscribers = self
            .inner
            .subscribers
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        for slot in subscribers.iter().filter(|s| s.filter.matches(&event)) {
            match slot.tx.try_send(Arc::clone(&event)) {
                Ok(()) => {
                    if slot.shared.lagging.swap(false, Ordering::Relaxed) {
                        let lost = slot.shared.lagging_since.swap(0, Ordering::Relaxed);
                        tracing::info!(
                            subscriber = slot.id,
                            lost,
                            "subscriber caught up after losing events"
                        );
                    }
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    slot.shared.lagged.fetch_add(1, Ordering::Relaxed);
                    slot.shared.lagging_since.fetch_add(1, Ordering::Relaxed);
                    self.inner.lagged_total.fetch_add(1, Ordering::Relaxed);
                    if !slot.shared.lagging.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            subscriber = slot.id,
                            capacity = self.inner.capacity,
                            "subscriber reads too slowly: its queue is full, dropping its events"
                        );
                    }
                }
                // The subscription is being dropped; its Drop removes the slot.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Installs the [`PublishObserver`]; there is one at most, so a second one is handed back.
    pub fn set_observer(&self, observer: PublishObserver) -> Result<(), PublishObserver> {
        self.inner.observer.set(observer)
    }

    /// Registers a subscriber that receives the events matching `filter` from now on. The
    /// subscriber is removed when the returned [`Subscription`] is dropped.
    pub fn subscribe(&self, filter: EventFilter) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.capacity);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let shared = Arc::new(SubscriberShared::default());
        tracing::debug!(subscriber = id, ?filter, "subscriber added");
        let mut subscribers = self
            .inner
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.push(Slot {
            id,
            filter,
            tx,
            shared: Arc::clone(&shared),
        });
        self.inner.count.send_replace(subscribers.len());
        Subscription {
            id,
            rx,
            shared,
            hub: Arc::clone(&self.inner),
        }
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        *self.inner.count.borrow()
    }

    /// Events lost by slow subscribers, in total (`AgentStatus.subscriber_lagged_events`).
    pub fn lagged_events(&self) -> u64 {
        self.inner.lagged_total.load(Ordering::Relaxed)
    }

    /// All counters at once.
    pub fn stats(&self) -> HubStats {
        HubStats {
            subscribers: self.subscriber_count(),
            published: self.inner.published.load(Ordering::Relaxed),
            lagged_events: self.lagged_events(),
        }
    }

    /// Waits until the number of live subscribers satisfies `condition` (returns at once if it
    /// already does). Lets tests and start-up code wait for a client without sleeping.
    pub async fn wait_for_subscribers(&self, condition: impl FnMut(&usize) -> bool) -> usize {
        let mut rx = self.inner.count.subscribe();
        // The sender lives in `self.inner`, so the channel cannot close while we wait.
        rx.wait_for(condition).await.map(|c| *c).unwrap_or_default()
    }
}

impl std::fmt::Debug for EventHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventHub")
            .field("capacity", &self.inner.capacity)
            .field("stats", &self.stats())
            .finish()
    }
}

/// One subscriber's end of the hub: a stream of the events matching its filter. Dropping it
/// unsubscribes.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Arc<proto::Event>>,
    shared: Arc<SubscriberShared>,
    hub: Arc<HubInner>,
}

impl Subscription {
    /// Identifier of this subscriber in logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Events this subscriber lost because its queue was full.
    pub fn lagged(&self) -> u64 {
        self.shared.lagged.load(Ordering::Relaxed)
    }

    /// The next matching event. Never returns `None` while the hub exists.
    pub async fn recv(&mut self) -> Option<Arc<proto::Event>> {
        self.rx.recv().await
    }

    /// The next matching event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<proto::Event>> {
        self.rx.try_recv().ok()
    }
}

impl futures::Stream for Subscription {
    type Item = Arc<proto::Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = self
            .hub
            .subscribers
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        subscribers.retain(|slot| slot.id != self.id);
        self.hub.count.send_replace(subscribers.len());
        drop(subscribers);
        let lagged = self.lagged();
        if lagged > 0 {
            tracing::info!(
                subscriber = self.id,
                lagged,
                "subscriber left; it lost events"
            );
        } else {
            tracing::debug!(subscriber = self.id, "subscriber left");
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("lagged", &self.lagged())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;

    use super::*;

    fn event(pid: u32, kind: &str) -> Arc<proto::Event> {
        let body = match kind {
            "exec" => proto::event::Body::Exec(proto::ExecEvent::default()),
            _ => proto::event::Body::Exit(proto::ExitEvent::default()),
        };
        Arc::new(proto::Event {
            process: Some(proto::Process {
                pid,
                ..Default::default()
            }),
            workload: Some(proto::Workload {
                host: true,
                ..Default::default()
            }),
            body: Some(body),
            ..Default::default()
        })
    }

    fn pid(event: &proto::Event) -> u32 {
        event.process.as_ref().map_or(0, |p| p.pid)
    }

    fn kinds(names: &[&str]) -> EventFilter {
        EventFilter::try_from_proto(&proto::EventFilter {
            kinds: names.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn delivers_matching_events_in_order() {
        let hub = EventHub::new(16);
        let mut all = hub.subscribe(EventFilter::all());
        let mut exits = hub.subscribe(kinds(&["exit"]));
        for (pid, kind) in [(1, "exec"), (2, "exit"), (3, "exec"), (4, "exit")] {
            hub.publish(event(pid, kind));
        }
        let got: Vec<u32> = (0..4).map(|_| pid(&all.try_recv().unwrap())).collect();
        assert_eq!(got, [1, 2, 3, 4]);
        assert!(all.try_recv().is_none());
        assert_eq!(pid(&exits.recv().await.unwrap()), 2);
        assert_eq!(pid(&exits.next().await.unwrap()), 4);
        assert!(exits.try_recv().is_none());
        assert_eq!(hub.stats().published, 4);
        assert_eq!(hub.lagged_events(), 0);
    }

    #[test]
    fn slow_subscriber_loses_events_and_they_are_counted() {
        let hub = EventHub::new(2);
        let mut slow = hub.subscribe(EventFilter::all());
        let mut quiet = hub.subscribe(kinds(&["exit"]));
        for pid in 1..=5 {
            hub.publish(event(pid, "exec"));
        }
        // The oldest events stay; the ones that did not fit are lost.
        assert_eq!(pid(&slow.try_recv().unwrap()), 1);
        assert_eq!(pid(&slow.try_recv().unwrap()), 2);
        assert!(slow.try_recv().is_none());
        assert_eq!(slow.lagged(), 3);
        // Unrelated traffic does not fill a subscriber's queue.
        assert_eq!(quiet.lagged(), 0);
        assert!(quiet.try_recv().is_none());
        assert_eq!(hub.lagged_events(), 3);

        // Once it reads again, it gets new events.
        hub.publish(event(6, "exit"));
        assert_eq!(pid(&slow.try_recv().unwrap()), 6);
        assert_eq!(pid(&quiet.try_recv().unwrap()), 6);

        // The total survives the subscriber.
        drop(slow);
        assert_eq!(hub.stats().lagged_events, 3);
    }

    #[tokio::test]
    async fn counts_live_subscribers() {
        let hub = EventHub::new(4);
        assert_eq!(hub.subscriber_count(), 0);
        let a = hub.subscribe(EventFilter::all());
        let b = hub.subscribe(EventFilter::all());
        assert_eq!(hub.subscriber_count(), 2);
        drop(a);
        assert_eq!(hub.subscriber_count(), 1);

        let waiter = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wait_for_subscribers(|n| *n == 0).await })
        };
        drop(b);
        let count = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("wait_for_subscribers did not return")
            .unwrap();
        assert_eq!(count, 0);
        // Publishing with no subscribers is fine.
        hub.publish(event(1, "exec"));
    }

    #[test]
    fn the_observer_sees_every_published_event() {
        let hub = EventHub::new(1);
        let seen = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&seen);
        hub.set_observer(Box::new(move |_| {
            counter.fetch_add(1, Ordering::Relaxed);
        }))
        .unwrap_or_else(|_| panic!("first observer refused"));
        assert!(hub.set_observer(Box::new(|_| {})).is_err());
        // With or without subscribers, full queues included.
        hub.publish(event(1, "exec"));
        let _sub = hub.subscribe(EventFilter::all());
        for pid in 2..=4 {
            hub.publish(event(pid, "exit"));
        }
        assert_eq!(seen.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn zero_capacity_is_one() {
        let hub = EventHub::new(0);
        assert_eq!(hub.capacity(), 1);
        let mut sub = hub.subscribe(EventFilter::all());
        hub.publish(event(1, "exec"));
        hub.publish(event(2, "exec"));
        assert_eq!(pid(&sub.try_recv().unwrap()), 1);
        assert_eq!(sub.lagged(), 1);
    }
}
