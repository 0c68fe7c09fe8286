//! Durable event queue (docs/rules.md "Flow", R13).
//!
//! One trait, [`Queue`], with a RabbitMQ implementation (`rabbitmq`, production: lapin,
//! publisher confirms, quorum queue, delayed-retry queues, dead-letter queue) and an
//! in-memory one (`memory`, the embedded default and unit tests). Workers receive
//! [`Delivery`]s and settle each exactly once: `ack`, `retry_later` or `dead_letter`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod memory;
pub mod rabbitmq;

/// What travels on the queue: the verified envelope plus receipt facts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The `webhook-id` header (equals `envelope.id`).
    pub webhook_id: String,
    pub received_at: DateTime<Utc>,
    /// The envelope as received (already schema-valid).
    pub envelope: serde_json::Value,
}

impl Message {
    /// Event type string from the envelope (for filters and metrics).
    pub fn event_type(&self) -> Option<&str> {
        self.envelope.get("type").and_then(|t| t.as_str())
    }
}

/// Delivery bookkeeping carried beside a message (AMQP headers on RabbitMQ).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeliveryMeta {
    /// Failed attempts so far (0 on first delivery).
    pub attempts: u32,
    pub first_failure_at: Option<DateTime<Utc>>,
    /// The broker says this delivery may have been seen before (crash/redelivery).
    pub redelivered: bool,
}

/// Why an event failed; becomes DLQ headers (R13).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable reason kind, e.g. `account_not_found`, `contact_ambiguous`, `max_attempts`.
    pub kind: String,
    pub message: String,
    pub learner_id: Option<String>,
}

/// A message in the dead-letter queue, as `dlq list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub message: Message,
    pub reason_kind: String,
    pub reason_message: String,
    pub attempts: u32,
    pub first_failure_at: Option<DateTime<Utc>>,
    pub last_failure_at: Option<DateTime<Utc>>,
    pub learner_id: Option<String>,
}

/// Which dead letters a `dlq replay`/`purge` (or the console's selection) applies to.
#[derive(Clone, Debug, Default)]
pub struct DlqFilter {
    pub id: Option<String>,
    /// Any of these event ids (empty: no restriction).
    pub ids: Vec<String>,
    pub reason: Option<String>,
    pub event_type: Option<String>,
    pub learner: Option<String>,
    /// Last failure at or after / before these times.
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl DlqFilter {
    pub fn matches(&self, d: &DeadLetter) -> bool {
        let at = d.last_failure_at.or(d.first_failure_at);
        self.id
            .as_deref()
            .is_none_or(|id| d.message.webhook_id == id)
            && (self.ids.is_empty() || self.ids.contains(&d.message.webhook_id))
            && self.reason.as_deref().is_none_or(|r| d.reason_kind == r)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| d.message.event_type() == Some(t))
            && self
                .learner
                .as_deref()
                .is_none_or(|l| d.learner_id.as_deref() == Some(l))
            && self.since.is_none_or(|s| at.is_some_and(|a| a >= s))
            && self.until.is_none_or(|u| at.is_some_and(|a| a < u))
    }

    /// No restriction at all (every dead letter matches).
    pub fn is_everything(&self) -> bool {
        self.id.is_none()
            && self.ids.is_empty()
            && self.reason.is_none()
            && self.event_type.is_none()
            && self.learner.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// How far a DLQ-wide call (`dlq_list`, `dlq_purge`) has got, reported after each dead
/// letter it went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DlqProgress {
    /// Dead letters gone through so far.
    pub seen: u64,
    /// How many the call goes through, where the backend knows it (the DLQ's depth when
    /// the call started).
    pub total: Option<u64>,
    /// Of those seen, how many were removed from the DLQ (purged); 0 for a listing.
    pub removed: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Depths {
    /// Ready messages in the main queue.
    pub main: u64,
    /// Messages waiting in delayed-retry queues.
    pub retrying: u64,
    pub dead: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Broker unreachable / connection lost / publish nacked: the caller answers 503 or retries.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The message could not be encoded/decoded.
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("queue error: {0}")]
    Other(String),
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Publish durably: returns only once the broker confirmed (publisher confirm).
    async fn publish(&self, msg: &Message) -> Result<(), QueueError>;
    /// [`Queue::publish`] when the caller already holds `msg.envelope` as JSON bytes
    /// (the receiver: the body exactly as signed and validated), so a backend that stores
    /// bytes need not encode it again. `encoded` must be `msg.envelope` as JSON.
    async fn publish_encoded(&self, msg: &Message, encoded: &[u8]) -> Result<(), QueueError> {
        let _ = encoded;
        self.publish(msg).await
    }
    /// Start consuming with at most `prefetch` unsettled deliveries.
    async fn subscribe(&self, prefetch: u16) -> Result<Box<dyn Subscription>, QueueError>;
    /// Is the broker reachable (`/readyz`)?
    async fn ping(&self) -> Result<(), QueueError>;
    async fn depths(&self) -> Result<Depths, QueueError>;
    /// Every dead letter, in queue order; never loses or reorders one.
    async fn dlq_list(&self) -> Result<Vec<DeadLetter>, QueueError> {
        self.dlq_list_with_progress(&|_| {}).await
    }
    /// The dead letter of event `id`, if it is in the DLQ (browsing, nothing moves).
    async fn dlq_find(&self, id: &str) -> Result<Option<DeadLetter>, QueueError> {
        Ok(self
            .dlq_list()
            .await?
            .into_iter()
            .find(|d| d.message.webhook_id == id))
    }
    /// [`Queue::dlq_list`], calling `progress` after each dead letter read.
    async fn dlq_list_with_progress(
        &self,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<Vec<DeadLetter>, QueueError>;
    /// Republish matching dead letters to the work queue (confirmed) with attempts reset,
    /// then remove them from the DLQ. `progress` is called after each one. Returns the count.
    async fn dlq_replay(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, QueueError>;
    /// Remove matching dead letters. `progress` is called after each dead letter examined
    /// (or once, when the whole DLQ is emptied in one step). Returns the count removed.
    async fn dlq_purge(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<u64, QueueError>;
    /// Close connections cleanly (end of a command, shutdown).
    async fn close(&self) {}
}

#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` once the subscription is closed. Reconnects transparently.
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>, QueueError>>;
    /// Up to `max` deliveries (docs/rules.md "Flow": micro-batches). Waits for the first
    /// one; then takes what has already arrived without waiting, and only when more than one
    /// was waiting — a backlog — waits up to `linger` for the batch to fill. An idle queue
    /// so delivers a single event at once: trickle latency does not grow. `None` once the
    /// subscription is closed.
    async fn next_batch(
        &mut self,
        max: usize,
        linger: Duration,
    ) -> Option<Result<Vec<Box<dyn Delivery>>, QueueError>> {
        use futures::FutureExt;
        let first = match self.next().await? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        let mut batch = vec![first];
        // `next` is cancel-safe: a poll that finds nothing ready is dropped without loss.
        while batch.len() < max {
            match self.next().now_or_never() {
                Some(Some(Ok(d))) => batch.push(d),
                _ => break,
            }
        }
        if batch.len() > 1 && !linger.is_zero() {
            let deadline = tokio::time::Instant::now() + linger;
            while batch.len() < max {
                match tokio::time::timeout_at(deadline, self.next()).await {
                    Ok(Some(Ok(d))) => batch.push(d),
                    _ => break,
                }
            }
        }
        Some(Ok(batch))
    }
    /// Stop receiving new deliveries (graceful shutdown); in-flight ones can still be settled.
    async fn cancel(&mut self) -> Result<(), QueueError>;
    /// Close the subscription's connection once every delivery is settled; unsettled
    /// deliveries go back to the queue.
    async fn close(&mut self) {}
}

#[async_trait]
pub trait Delivery: Send + Sync {
    fn message(&self) -> &Message;
    fn meta(&self) -> &DeliveryMeta;
    /// Done (applied or visibly skipped).
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Transient failure: requeue after `delay` (rounded up to the next delay step) with
    /// `attempts + 1`, keeping `first_failure_at`.
    async fn retry_later(
        self: Box<Self>,
        delay: Duration,
        failure: &Failure,
    ) -> Result<(), QueueError>;
    /// Permanent failure or attempts exhausted: to the DLQ with reason headers.
    async fn dead_letter(self: Box<Self>, failure: &Failure) -> Result<(), QueueError>;
    /// Give the message back untouched (shutdown before processing).
    async fn release(self: Box<Self>) -> Result<(), QueueError>;
}

/// Open the configured backend (`queue.backend`): RabbitMQ (topology declared) or memory.
pub async fn connect(
    settings: &crate::config::QueueSettings,
) -> Result<std::sync::Arc<dyn Queue>, QueueError> {
    Ok(match settings.backend {
        crate::config::QueueBackend::Rabbitmq => {
            std::sync::Arc::new(rabbitmq::RabbitQueue::connect(settings).await?)
        }
        crate::config::QueueBackend::Memory => std::sync::Arc::new(memory::MemoryQueue::new()),
    })
}

/// The configured backend without connecting yet: RabbitMQ connects on first use and
/// reconnects by itself, so a process can start while the broker is down.
pub fn open(settings: &crate::config::QueueSettings) -> std::sync::Arc<dyn Queue> {
    match settings.backend {
        crate::config::QueueBackend::Rabbitmq => {
            std::sync::Arc::new(rabbitmq::RabbitQueue::lazy(settings))
        }
        crate::config::QueueBackend::Memory => std::sync::Arc::new(memory::MemoryQueue::new()),
    }
}
