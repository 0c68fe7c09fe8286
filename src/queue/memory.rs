//! In-memory [`Queue`]: the embedded default (`syncback demo`) and unit tests.
//!
//! Same contract as RabbitMQ, minus durability across restarts: a delivery that is
//! dropped without being settled goes back to the head of the queue marked
//! `redelivered` (as a closed channel would), delayed retries really wait, and the
//! dead-letter list keeps insertion order.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    DeadLetter, Delivery, DeliveryMeta, Depths, DlqFilter, DlqProgress, Failure, Message, Queue,
    QueueError, Subscription,
};

#[derive(Default)]
struct State {
    ready: VecDeque<(Message, DeliveryMeta)>,
    retrying: u64,
    dead: Vec<DeadLetter>,
}

struct Inner {
    state: Mutex<State>,
    notify: Notify,
    unavailable: AtomicBool,
}

/// A process-local queue. Clones share the same queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

impl Default for MemoryQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryQueue {
    pub fn new() -> Self {
        MemoryQueue {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                notify: Notify::new(),
                unavailable: AtomicBool::new(false),
            }),
        }
    }

    /// Simulate a broker outage: publishes and pings fail with `Unavailable`.
    pub fn set_unavailable(&self, down: bool) {
        self.inner.unavailable.store(down, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), QueueError> {
        if self.inner.unavailable.load(Ordering::SeqCst) {
            Err(QueueError::Unavailable(
                "in-memory queue set unavailable".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Inner {
    fn push_back(&self, msg: Message, meta: DeliveryMeta) {
        self.state.lock().unwrap().ready.push_back((msg, meta));
        self.notify.notify_one();
    }
    fn push_front(&self, msg: Message, meta: DeliveryMeta) {
        self.state.lock().unwrap().ready.push_front((msg, meta));
        self.notify.notify_one();
    }
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn publish(&self, msg: &Message) -> Result<(), QueueError> {
        self.check()?;
        self.inner.push_back(msg.clone(), DeliveryMeta::default());
        Ok(())
    }

    async fn subscribe(&self, prefetch: u16) -> Result<Box<dyn Subscription>, QueueError> {
        self.check()?;
        Ok(Box::new(MemorySubscription {
            inner: self.inner.clone(),
            permits: Arc::new(Semaphore::new(prefetch.max(1) as usize)),
            cancelled: false,
        }))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.check()
    }

    async fn depths(&self) -> Result<Depths, QueueError> {
        let s = self.inner.state.lock().unwrap();
        Ok(Depths {
            main: s.ready.len() as u64,
            retrying: s.retrying,
            dead: s.dead.len() as u64,
        })
    }

    async fn dlq_list_with_progress(
        &self,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<Vec<DeadLetter>, QueueError> {
        // A snapshot under the lock; the callback runs without it.
        let snapshot = self.inner.state.lock().unwrap().dead.clone();
        let total = Some(snapshot.len() as u64);
        for seen in 1..=snapshot.len() as u64 {
            progress(DlqProgress {
                seen,
                total,
                removed: 0,
            });
        }
        Ok(snapshot)
    }

    async fn dlq_replay(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, QueueError> {
        self.check()?;
        let mut n = 0;
        loop {
            let next = {
                let mut s = self.inner.state.lock().unwrap();
                let pos = s.dead.iter().position(|d| filter.matches(d));
                pos.map(|p| s.dead.remove(p))
            };
            let Some(d) = next else { break };
            // Attempts reset: a replayed event starts over (R13).
            self.inner.push_back(d.message, DeliveryMeta::default());
            n += 1;
            progress(n);
        }
        Ok(n)
    }

    async fn dlq_purge(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<u64, QueueError> {
        // One dead letter per lock, the callback outside it (as `dlq_replay`); those
        // dead-lettered meanwhile are behind the ones counted and are not examined.
        let total = self.inner.state.lock().unwrap().dead.len() as u64;
        let (mut at, mut removed) = (0, 0);
        for seen in 1..=total {
            {
                let mut s = self.inner.state.lock().unwrap();
                let Some(d) = s.dead.get(at) else { break };
                if filter.matches(d) {
                    s.dead.remove(at);
                    removed += 1;
                } else {
                    at += 1;
                }
            }
            progress(DlqProgress {
                seen,
                total: Some(total),
                removed,
            });
        }
        Ok(removed)
    }
}

struct MemorySubscription {
    inner: Arc<Inner>,
    permits: Arc<Semaphore>,
    cancelled: bool,
}

#[async_trait]
impl Subscription for MemorySubscription {
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>, QueueError>> {
        if self.cancelled {
            return None;
        }
        // Prefetch: at most `prefetch` unsettled deliveries per subscription.
        let permit = self.permits.clone().acquire_owned().await.ok()?;
        loop {
            let notified = self.inner.notify.notified();
            if let Some((msg, meta)) = self.inner.state.lock().unwrap().ready.pop_front() {
                return Some(Ok(Box::new(MemoryDelivery {
                    inner: self.inner.clone(),
                    msg: Some((msg, meta)),
                    _permit: permit,
                })));
            }
            notified.await;
        }
    }

    async fn cancel(&mut self) -> Result<(), QueueError> {
        self.cancelled = true;
        Ok(())
    }
}

struct MemoryDelivery {
    inner: Arc<Inner>,
    /// `None` once settled.
    msg: Option<(Message, DeliveryMeta)>,
    _permit: OwnedSemaphorePermit,
}

impl MemoryDelivery {
    fn take(&mut self) -> (Message, DeliveryMeta) {
        self.msg.take().expect("delivery settled twice")
    }
}

/// An unsettled delivery that is dropped goes back to the head of the queue, like an
/// unacked message on a closed AMQP channel.
impl Drop for MemoryDelivery {
    fn drop(&mut self) {
        if let Some((msg, mut meta)) = self.msg.take() {
            meta.redelivered = true;
            self.inner.push_front(msg, meta);
        }
    }
}

#[async_trait]
impl Delivery for MemoryDelivery {
    fn message(&self) -> &Message {
        &self.msg.as_ref().expect("settled").0
    }
    fn meta(&self) -> &DeliveryMeta {
        &self.msg.as_ref().expect("settled").1
    }

    async fn ack(mut self: Box<Self>) -> Result<(), QueueError> {
        self.take();
        Ok(())
    }

    async fn retry_later(
        mut self: Box<Self>,
        delay: Duration,
        _failure: &Failure,
    ) -> Result<(), QueueError> {
        let (msg, meta) = self.take();
        let meta = DeliveryMeta {
            attempts: meta.attempts + 1,
            first_failure_at: meta.first_failure_at.or_else(|| Some(Utc::now())),
            redelivered: false,
        };
        let inner = self.inner.clone();
        inner.state.lock().unwrap().retrying += 1;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            inner.state.lock().unwrap().retrying -= 1;
            inner.push_back(msg, meta);
        });
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, failure: &Failure) -> Result<(), QueueError> {
        let (msg, meta) = self.take();
        let now = Utc::now();
        self.inner.state.lock().unwrap().dead.push(DeadLetter {
            message: msg,
            reason_kind: failure.kind.clone(),
            reason_message: failure.message.clone(),
            attempts: meta.attempts + 1,
            first_failure_at: meta.first_failure_at.or(Some(now)),
            last_failure_at: Some(now),
            learner_id: failure.learner_id.clone(),
        });
        Ok(())
    }

    async fn release(mut self: Box<Self>) -> Result<(), QueueError> {
        let (msg, mut meta) = self.take();
        meta.redelivered = true;
        self.inner.push_front(msg, meta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: &str) -> Message {
        Message {
            webhook_id: id.into(),
            received_at: Utc::now(),
            envelope: serde_json::json!({"id": id, "type": "learner.updated"}),
        }
    }

    fn failure(kind: &str) -> Failure {
        Failure {
            kind: kind.into(),
            message: "boom".into(),
            learner_id: Some("L1".into()),
        }
    }

    #[tokio::test]
    async fn fifo_ack_retry_and_dead_letter() {
        let q = MemoryQueue::new();
        for id in ["a", "b", "c"] {
            q.publish(&msg(id)).await.unwrap();
        }
        let mut sub = q.subscribe(10).await.unwrap();
        let a = sub.next().await.unwrap().unwrap();
        assert_eq!(a.message().webhook_id, "a");
        a.ack().await.unwrap();
        let b = sub.next().await.unwrap().unwrap();
        b.retry_later(Duration::from_millis(20), &failure("transient"))
            .await
            .unwrap();
        let c = sub.next().await.unwrap().unwrap();
        assert_eq!(c.message().webhook_id, "c");
        c.dead_letter(&failure("account_not_found")).await.unwrap();
        let b2 = sub.next().await.unwrap().unwrap();
        assert_eq!(b2.message().webhook_id, "b");
        assert_eq!(b2.meta().attempts, 1);
        assert!(b2.meta().first_failure_at.is_some());
        b2.ack().await.unwrap();
        let dead = q.dlq_list().await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].reason_kind, "account_not_found");
        assert_eq!(dead[0].learner_id.as_deref(), Some("L1"));
        assert_eq!(q.depths().await.unwrap().dead, 1);
    }

    #[tokio::test]
    async fn dropped_delivery_is_redelivered_and_prefetch_limits() {
        let q = MemoryQueue::new();
        q.publish(&msg("a")).await.unwrap();
        q.publish(&msg("b")).await.unwrap();
        let mut sub = q.subscribe(1).await.unwrap();
        let a = sub.next().await.unwrap().unwrap();
        // prefetch 1: the second delivery waits until the first is settled
        assert!(tokio::time::timeout(Duration::from_millis(50), sub.next())
            .await
            .is_err());
        drop(a);
        let again = sub.next().await.unwrap().unwrap();
        assert_eq!(again.message().webhook_id, "a");
        assert!(again.meta().redelivered);
    }

    #[tokio::test]
    async fn replay_resets_attempts_and_purge_filters() {
        let q = MemoryQueue::new();
        for id in ["a", "b", "c"] {
            q.publish(&msg(id)).await.unwrap();
        }
        let mut sub = q.subscribe(10).await.unwrap();
        for kind in ["x", "y", "x"] {
            let d = sub.next().await.unwrap().unwrap();
            d.dead_letter(&failure(kind)).await.unwrap();
        }
        let filter = DlqFilter {
            reason: Some("x".into()),
            ..Default::default()
        };
        let n = q.dlq_replay(&filter, &|_| {}).await.unwrap();
        assert_eq!(n, 2);
        let order: Vec<_> = q
            .dlq_list()
            .await
            .unwrap()
            .iter()
            .map(|d| d.message.webhook_id.clone())
            .collect();
        assert_eq!(order, vec!["b"]);
        let d = sub.next().await.unwrap().unwrap();
        assert_eq!(
            (d.message().webhook_id.as_str(), d.meta().attempts),
            ("a", 0)
        );
        assert_eq!(
            q.dlq_purge(&DlqFilter::default(), &|_| {}).await.unwrap(),
            1
        );
        q.set_unavailable(true);
        assert!(matches!(
            q.publish(&msg("z")).await,
            Err(QueueError::Unavailable(_))
        ));
    }

    /// `dlq list`/`dlq purge` progress (R13): one report per dead letter gone through,
    /// with the DLQ's depth as the total and the running count removed.
    #[tokio::test]
    async fn list_and_purge_report_progress_per_dead_letter() {
        let q = MemoryQueue::new();
        let ids = ["a", "b", "c", "d", "e"];
        for id in ids {
            q.publish(&msg(id)).await.unwrap();
        }
        let mut sub = q.subscribe(10).await.unwrap();
        for kind in ["x", "y", "x", "y", "x"] {
            let d = sub.next().await.unwrap().unwrap();
            d.dead_letter(&failure(kind)).await.unwrap();
        }
        let seen = Mutex::new(Vec::new());
        let record = |p: DlqProgress| seen.lock().unwrap().push(p);
        let listed = q.dlq_list_with_progress(&record).await.unwrap();
        assert_eq!(listed.len(), 5);
        let reports = std::mem::take(&mut *seen.lock().unwrap());
        let expected: Vec<_> = (1..=5)
            .map(|n| DlqProgress {
                seen: n,
                total: Some(5),
                removed: 0,
            })
            .collect();
        assert_eq!(reports, expected);

        let x = DlqFilter {
            reason: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(q.dlq_purge(&x, &record).await.unwrap(), 3);
        let reports = std::mem::take(&mut *seen.lock().unwrap());
        let got: Vec<_> = reports.iter().map(|p| (p.seen, p.removed)).collect();
        assert_eq!(got, [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3)]);
        assert!(reports.iter().all(|p| p.total == Some(5)));
        let left: Vec<_> = q
            .dlq_list()
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.message.webhook_id)
            .collect();
        assert_eq!(left, ["b", "d"], "the rest stays, in order");

        assert_eq!(
            q.dlq_purge(&DlqFilter::default(), &record).await.unwrap(),
            2
        );
        let got: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.seen, p.total, p.removed))
            .collect();
        assert_eq!(got, [(1, Some(2), 1), (2, Some(2), 2)]);
        assert!(q.dlq_list().await.unwrap().is_empty());
    }
}
