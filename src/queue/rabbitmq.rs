//! RabbitMQ [`Queue`] over `lapin` (docs/rules.md "Flow", "RabbitMQ", R13).
//!
//! Topology (declared idempotently on every (re)connect, mirrored in
//! `deploy/rabbitmq/definitions.json`), with `P` = `queue.prefix`:
//!
//! ```text
//! P.work  (direct) --"event"--> P.events   quorum; x-delivery-limit; DLX P.dead;
//!                                          dead-letter-strategy at-least-once; overflow reject-publish
//! P.retry.{N}s  (one queue per delay step; x-message-ttl = N s; DLX P.work / "event")
//! P.dead  (direct) --"dead"---> P.dlq      classic durable: requeue keeps order, so
//!                                          `dlq list` can browse without reordering
//! ```
//!
//! Messages are persistent, published with `mandatory` and a publisher confirm. The body
//! is the envelope JSON exactly as received; the webhook id is the AMQP `message_id`,
//! the receipt time the `timestamp` (+ `x-syncback-received-at` in RFC 3339), and the
//! retry/DLQ bookkeeping travels in `x-syncback-*` headers.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;
use tracing::{info, warn};

use super::{
    DeadLetter, Delivery, DeliveryMeta, Depths, DlqFilter, Failure, Message, Queue, QueueError,
    Subscription,
};
use crate::config::QueueSettings;

pub const H_ATTEMPTS: &str = "x-syncback-attempts";
pub const H_FIRST_FAILURE: &str = "x-syncback-first-failure-at";
pub const H_LAST_FAILURE: &str = "x-syncback-last-failure-at";
pub const H_REASON_KIND: &str = "x-syncback-reason-kind";
pub const H_REASON_MESSAGE: &str = "x-syncback-reason-message";
pub const H_LEARNER: &str = "x-syncback-learner-id";
pub const H_RECEIVED_AT: &str = "x-syncback-received-at";

const ROUTING_KEY: &str = "event";
const DEAD_KEY: &str = "dead";

/// Names derived from `queue.prefix`.
#[derive(Clone, Debug)]
pub struct Topology {
    pub work_exchange: String,
    pub events: String,
    pub dead_exchange: String,
    pub dlq: String,
    /// (delay seconds, queue name), ascending.
    pub retries: Vec<(u64, String)>,
    pub delivery_limit: u32,
}

impl Topology {
    pub fn new(settings: &QueueSettings) -> Self {
        let p = &settings.prefix;
        let mut delays = settings.retry_delays_secs.clone();
        delays.sort_unstable();
        delays.dedup();
        if delays.is_empty() {
            delays.push(5);
        }
        Topology {
            work_exchange: format!("{p}.work"),
            events: format!("{p}.events"),
            dead_exchange: format!("{p}.dead"),
            dlq: format!("{p}.dlq"),
            retries: delays
                .into_iter()
                .map(|d| (d, format!("{p}.retry.{d}s")))
                .collect(),
            delivery_limit: settings.delivery_limit,
        }
    }

    /// The retry queue whose delay is the smallest one ≥ `delay` (else the longest).
    pub fn retry_queue(&self, delay: Duration) -> &str {
        let secs = delay.as_secs_f64().ceil() as u64;
        self.retries
            .iter()
            .find(|(d, _)| *d >= secs)
            .or(self.retries.last())
            .map(|(_, q)| q.as_str())
            .expect("at least one retry step")
    }

    /// Declare everything; safe to repeat (same arguments every time).
    async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.exchange_declare(
            &self.work_exchange,
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        ch.exchange_declare(
            &self.dead_exchange,
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        )
        .await?;
        let q = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(self.delivery_limit as i32),
        );
        args.insert("x-dead-letter-exchange".into(), string(&self.dead_exchange));
        args.insert("x-dead-letter-routing-key".into(), string(DEAD_KEY));
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
        ch.queue_declare(&self.events, q, args).await?;
        ch.queue_bind(
            &self.events,
            &self.work_exchange,
            ROUTING_KEY,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        for (delay, name) in &self.retries {
            // Messages expire only at the head of a queue: one queue per delay step.
            let mut args = FieldTable::default();
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(*delay as i64 * 1000),
            );
            args.insert("x-dead-letter-exchange".into(), string(&self.work_exchange));
            args.insert("x-dead-letter-routing-key".into(), string(ROUTING_KEY));
            ch.queue_declare(name, q, args).await?;
        }
        ch.queue_declare(&self.dlq, q, FieldTable::default())
            .await?;
        ch.queue_bind(
            &self.dlq,
            &self.dead_exchange,
            DEAD_KEY,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(())
    }
}

fn string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

fn header_str(h: &FieldTable, key: &str) -> Option<String> {
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header_u32(h: &FieldTable, key: &str) -> Option<u32> {
    match h.inner().get(key)? {
        AMQPValue::LongInt(v) => Some(*v as u32),
        AMQPValue::LongLongInt(v) => Some(*v as u32),
        AMQPValue::ShortInt(v) => Some(*v as u32),
        AMQPValue::LongUInt(v) => Some(*v),
        AMQPValue::ShortUInt(v) => Some(*v as u32),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}

fn header_time(h: &FieldTable, key: &str) -> Option<DateTime<Utc>> {
    header_str(h, key).and_then(|s| {
        DateTime::parse_from_rfc3339(&s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

/// AMQP properties for a message with its bookkeeping headers.
fn properties(msg: &Message, headers: FieldTable) -> BasicProperties {
    let mut headers = headers;
    headers.insert(
        H_RECEIVED_AT.into(),
        string(
            &msg.received_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from("application/json"))
        .with_message_id(ShortString::from(msg.webhook_id.as_str()))
        .with_timestamp(msg.received_at.timestamp().max(0) as u64)
        .with_headers(headers)
}

/// Rebuild a [`Message`] from a delivery.
fn decode(d: &lapin::message::Delivery) -> Result<Message, QueueError> {
    let envelope: serde_json::Value = serde_json::from_slice(&d.data)
        .map_err(|e| QueueError::BadMessage(format!("body is not JSON: {e}")))?;
    let empty = FieldTable::default();
    let headers = d.properties.headers().as_ref().unwrap_or(&empty);
    let webhook_id = d
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_string())
        .or_else(|| {
            envelope
                .get("id")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .unwrap_or_default();
    let received_at = header_time(headers, H_RECEIVED_AT)
        .or_else(|| {
            d.properties
                .timestamp()
                .and_then(|t| DateTime::from_timestamp(t as i64, 0))
        })
        .unwrap_or_else(Utc::now);
    Ok(Message {
        webhook_id,
        received_at,
        envelope,
    })
}

fn meta_of(d: &lapin::message::Delivery) -> DeliveryMeta {
    let empty = FieldTable::default();
    let h = d.properties.headers().as_ref().unwrap_or(&empty);
    DeliveryMeta {
        attempts: header_u32(h, H_ATTEMPTS).unwrap_or(0),
        first_failure_at: header_time(h, H_FIRST_FAILURE),
        redelivered: d.redelivered || header_u32(h, "x-delivery-count").unwrap_or(0) > 0,
    }
}

fn dead_letter_of(d: &lapin::message::Delivery) -> Result<DeadLetter, QueueError> {
    let message = decode(d)?;
    let empty = FieldTable::default();
    let h = d.properties.headers().as_ref().unwrap_or(&empty);
    // Dead-lettered by the broker itself (x-delivery-limit): no syncback headers.
    let broker_reason = header_str(h, "x-first-death-reason");
    Ok(DeadLetter {
        reason_kind: header_str(h, H_REASON_KIND)
            .or_else(|| broker_reason.as_ref().map(|r| format!("broker_{r}")))
            .unwrap_or_else(|| "unknown".into()),
        reason_message: header_str(h, H_REASON_MESSAGE).unwrap_or_else(|| {
            broker_reason
                .map(|r| format!("dead-lettered by RabbitMQ ({r}): the quorum queue's x-delivery-limit was reached"))
                .unwrap_or_default()
        }),
        attempts: header_u32(h, H_ATTEMPTS)
            .unwrap_or_else(|| header_u32(h, "x-delivery-count").unwrap_or(0)),
        first_failure_at: header_time(h, H_FIRST_FAILURE),
        last_failure_at: header_time(h, H_LAST_FAILURE),
        learner_id: header_str(h, H_LEARNER),
        message,
    })
}

/// One AMQP connection and a confirm-mode channel for publishing.
struct Link {
    conn: Connection,
    publish: Channel,
}

async fn open_link(url: &str, topology: &Topology, name: &str) -> Result<Link, QueueError> {
    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio)
        .with_connection_name(name.into());
    let conn = tokio::time::timeout(Duration::from_secs(10), Connection::connect(url, props))
        .await
        .map_err(|_| unavailable("connecting to RabbitMQ timed out"))?
        .map_err(unavailable)?;
    let publish = conn.create_channel().await.map_err(unavailable)?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(unavailable)?;
    topology.declare(&publish).await.map_err(|e| {
        QueueError::Other(format!(
            "declaring the topology failed (an existing queue with other arguments?): {e}"
        ))
    })?;
    Ok(Link { conn, publish })
}

/// Publish on a confirm channel and wait for the broker's confirm.
async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), QueueError> {
    let confirm = ch
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            props,
        )
        .await
        .map_err(unavailable)?
        .await
        .map_err(unavailable)?;
    if !confirm.is_ack() {
        return Err(unavailable("the broker nacked the publish"));
    }
    if confirm.take_message().is_some() {
        return Err(unavailable(format!(
            "message unroutable ({exchange}/{routing_key}): topology missing"
        )));
    }
    Ok(())
}

/// The production queue. Cheap to clone; reconnects after a broker restart.
#[derive(Clone)]
pub struct RabbitQueue {
    url: String,
    topology: Arc<Topology>,
    link: Arc<Mutex<Option<Arc<Link>>>>,
}

impl RabbitQueue {
    /// Connect and declare the topology.
    pub async fn connect(settings: &QueueSettings) -> Result<Self, QueueError> {
        let q = RabbitQueue {
            url: settings.url.expose().to_string(),
            topology: Arc::new(Topology::new(settings)),
            link: Arc::new(Mutex::new(None)),
        };
        q.link().await?;
        Ok(q)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Delete every queue and exchange of this prefix (tests and benchmarks clean up
    /// after themselves; never used by the service).
    pub async fn delete_topology(&self) -> Result<(), QueueError> {
        use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
        let link = self.link().await?;
        let ch = link.conn.create_channel().await.map_err(unavailable)?;
        let t = &self.topology;
        let queues = [t.events.clone(), t.dlq.clone()]
            .into_iter()
            .chain(t.retries.iter().map(|(_, q)| q.clone()));
        for q in queues {
            ch.queue_delete(&q, QueueDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        for e in [&t.work_exchange, &t.dead_exchange] {
            ch.exchange_delete(e, ExchangeDeleteOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// The live link, reconnecting if the previous one died.
    async fn link(&self) -> Result<Arc<Link>, QueueError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref() {
            if l.conn.status().connected() && l.publish.status().connected() {
                return Ok(l.clone());
            }
            warn!("RabbitMQ connection lost; reconnecting");
        }
        let l = Arc::new(open_link(&self.url, &self.topology, "syncback").await?);
        *guard = Some(l.clone());
        Ok(l)
    }

    async fn drop_link(&self) {
        *self.link.lock().await = None;
    }

    /// Publish to the work exchange with fresh bookkeeping (new events and replays).
    async fn publish_fresh(&self, msg: &Message) -> Result<(), QueueError> {
        let body =
            serde_json::to_vec(&msg.envelope).map_err(|e| QueueError::BadMessage(e.to_string()))?;
        // One reconnect attempt: a receiver that outlived a broker restart recovers on
        // the next request instead of answering 503 forever.
        for attempt in 0..2 {
            let link = self.link().await?;
            match publish_confirmed(
                &link.publish,
                &self.topology.work_exchange,
                ROUTING_KEY,
                &body,
                properties(msg, FieldTable::default()),
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 && !link.publish.status().connected() => {
                    warn!(error = %e, "publish failed on a dead channel; reconnecting");
                    self.drop_link().await;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    /// Browse the DLQ on a fresh channel: take every message without acking, let `f`
    /// decide (`true` = settle it), ack the settled ones and close the channel, which
    /// returns the rest to the queue in their original order.
    async fn dlq_scan(
        &self,
        mut f: impl FnMut(&lapin::message::Delivery) -> DlqAction,
        channel_for_publish: Option<&Channel>,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(Vec<DeadLetter>, u64), QueueError> {
        let link = self.link().await?;
        let ch = link.conn.create_channel().await.map_err(unavailable)?;
        let total = ch
            .queue_declare(
                &self.topology.dlq,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?
            .message_count();
        let mut listed = Vec::new();
        let mut settled = 0u64;
        let mut result = Ok(());
        for _ in 0..total {
            let Some(got) = ch
                .basic_get(&self.topology.dlq, BasicGetOptions { no_ack: false })
                .await
                .map_err(unavailable)?
            else {
                break;
            };
            let d = &got.delivery;
            match f(d) {
                DlqAction::Keep => {
                    if let Ok(dl) = dead_letter_of(d) {
                        listed.push(dl);
                    }
                }
                DlqAction::Remove => {
                    d.acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(unavailable)?;
                    settled += 1;
                    progress(settled);
                }
                DlqAction::Replay => {
                    let pubch = channel_for_publish.expect("replay needs a publish channel");
                    let msg = match decode(d) {
                        Ok(m) => m,
                        Err(e) => {
                            warn!(error = %e, "undecodable dead letter left in place");
                            continue;
                        }
                    };
                    // Confirm the republish before removing the original: a crash in
                    // between duplicates (harmless, R12) but never loses.
                    if let Err(e) = publish_confirmed(
                        pubch,
                        &self.topology.work_exchange,
                        ROUTING_KEY,
                        &d.data,
                        properties(&msg, FieldTable::default()),
                    )
                    .await
                    {
                        result = Err(e);
                        break;
                    }
                    d.acker
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(unavailable)?;
                    settled += 1;
                    progress(settled);
                }
            }
        }
        // Unsettled messages go back, in order.
        let _ = ch.close(200, "browse done").await;
        result.map(|()| (listed, settled))
    }
}

enum DlqAction {
    Keep,
    Remove,
    Replay,
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn publish(&self, msg: &Message) -> Result<(), QueueError> {
        self.publish_fresh(msg).await
    }

    async fn subscribe(&self, prefetch: u16) -> Result<Box<dyn Subscription>, QueueError> {
        let mut sub = RabbitSubscription {
            url: self.url.clone(),
            topology: self.topology.clone(),
            prefetch,
            state: None,
            cancelled: false,
        };
        sub.connect().await?;
        Ok(Box::new(sub))
    }

    async fn ping(&self) -> Result<(), QueueError> {
        let link = self.link().await?;
        link.publish
            .queue_declare(
                &self.topology.events,
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|_| ())
            .map_err(unavailable)
    }

    async fn depths(&self) -> Result<Depths, QueueError> {
        let link = self.link().await?;
        let ch = link.conn.create_channel().await.map_err(unavailable)?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let count = |name: String| {
            let ch = ch.clone();
            async move {
                ch.queue_declare(&name, passive, FieldTable::default())
                    .await
                    .map(|q| q.message_count() as u64)
                    .map_err(unavailable)
            }
        };
        let main = count(self.topology.events.clone()).await?;
        let mut retrying = 0;
        for (_, q) in &self.topology.retries {
            retrying += count(q.clone()).await?;
        }
        let dead = count(self.topology.dlq.clone()).await?;
        let _ = ch.close(200, "depths").await;
        Ok(Depths {
            main,
            retrying,
            dead,
        })
    }

    async fn dlq_list(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let (listed, _) = self.dlq_scan(|_| DlqAction::Keep, None, &|_| {}).await?;
        Ok(listed)
    }

    async fn dlq_replay(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, QueueError> {
        let link = self.link().await?;
        let (_, n) = self
            .dlq_scan(
                |d| match dead_letter_of(d) {
                    Ok(dl) if filter.matches(&dl) => DlqAction::Replay,
                    _ => DlqAction::Keep,
                },
                Some(&link.publish),
                progress,
            )
            .await?;
        info!(replayed = n, "dead letters replayed");
        Ok(n)
    }

    async fn close(&self) {
        if let Some(link) = self.link.lock().await.take() {
            let _ = link.conn.close(200, "bye").await;
        }
    }

    async fn dlq_purge(&self, filter: &DlqFilter) -> Result<u64, QueueError> {
        if filter.is_everything() {
            let link = self.link().await?;
            let n = link
                .publish
                .queue_purge(&self.topology.dlq, QueuePurgeOptions::default())
                .await
                .map_err(unavailable)?;
            return Ok(n as u64);
        }
        let (_, n) = self
            .dlq_scan(
                |d| match dead_letter_of(d) {
                    Ok(dl) if filter.matches(&dl) => DlqAction::Remove,
                    _ => DlqAction::Keep,
                },
                None,
                &|_| {},
            )
            .await?;
        Ok(n)
    }
}

struct SubState {
    link: Arc<Link>,
    consume: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

/// A consumer that reconnects (with backoff) when the broker goes away. Deliveries of
/// the dead connection cannot be settled any more; the broker redelivers them.
struct RabbitSubscription {
    url: String,
    topology: Arc<Topology>,
    prefetch: u16,
    state: Option<SubState>,
    cancelled: bool,
}

impl RabbitSubscription {
    async fn connect(&mut self) -> Result<(), QueueError> {
        let link = Arc::new(open_link(&self.url, &self.topology, "syncback-worker").await?);
        let consume = link.conn.create_channel().await.map_err(unavailable)?;
        consume
            .basic_qos(self.prefetch.max(1), BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let tag = format!("syncback-{}", uuid::Uuid::new_v4().simple());
        let consumer = consume
            .basic_consume(
                &self.topology.events,
                &tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(unavailable)?;
        self.state = Some(SubState {
            link,
            consume,
            consumer,
            tag,
        });
        Ok(())
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Option<Result<Box<dyn Delivery>, QueueError>> {
        let mut backoff = Duration::from_millis(200);
        loop {
            if self.cancelled {
                return None;
            }
            if let Some(st) = self.state.as_mut() {
                match st.consumer.next().await {
                    Some(Ok(d)) => {
                        let meta = meta_of(&d);
                        let publish = st.link.publish.clone();
                        let topology = self.topology.clone();
                        return Some(match decode(&d) {
                            Ok(message) => Ok(Box::new(RabbitDelivery {
                                delivery: d,
                                message,
                                meta,
                                publish,
                                topology,
                            }) as Box<dyn Delivery>),
                            Err(e) => {
                                // Unreadable body: straight to the DLQ, never lost.
                                let failure = Failure {
                                    kind: "bad_message".into(),
                                    message: e.to_string(),
                                    learner_id: None,
                                };
                                let raw = RawDeadLetter {
                                    delivery: d,
                                    publish,
                                    topology,
                                };
                                if let Err(e) = raw.send(&failure).await {
                                    warn!(error = %e, "could not dead-letter an unreadable message");
                                }
                                continue;
                            }
                        });
                    }
                    Some(Err(e)) => warn!(error = %e, "consumer failed; reconnecting"),
                    None if self.cancelled => return None,
                    None => warn!("consumer stream ended; reconnecting"),
                }
                self.state = None;
            }
            if self.cancelled {
                return None;
            }
            match self.connect().await {
                Ok(()) => {
                    info!("consumer (re)connected to RabbitMQ");
                    backoff = Duration::from_millis(200);
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "RabbitMQ unavailable");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    async fn close(&mut self) {
        self.cancelled = true;
        if let Some(st) = self.state.take() {
            let _ = st.link.conn.close(200, "worker stopping").await;
        }
    }

    async fn cancel(&mut self) -> Result<(), QueueError> {
        self.cancelled = true;
        if let Some(st) = &self.state {
            st.consume
                .basic_cancel(&st.tag, BasicCancelOptions::default())
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

struct RabbitDelivery {
    delivery: lapin::message::Delivery,
    message: Message,
    meta: DeliveryMeta,
    publish: Channel,
    topology: Arc<Topology>,
}

impl RabbitDelivery {
    fn failure_headers(&self, failure: &Failure, attempts: u32) -> FieldTable {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let first = self
            .meta
            .first_failure_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| now.clone());
        let mut h = FieldTable::default();
        h.insert(H_ATTEMPTS.into(), AMQPValue::LongInt(attempts as i32));
        h.insert(H_FIRST_FAILURE.into(), string(&first));
        h.insert(H_LAST_FAILURE.into(), string(&now));
        h.insert(H_REASON_KIND.into(), string(&failure.kind));
        h.insert(H_REASON_MESSAGE.into(), string(&failure.message));
        if let Some(l) = &failure.learner_id {
            h.insert(H_LEARNER.into(), string(l));
        }
        h
    }

    async fn ack_original(&self) -> Result<(), QueueError> {
        self.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(unavailable)
    }
}

#[async_trait]
impl Delivery for RabbitDelivery {
    fn message(&self) -> &Message {
        &self.message
    }
    fn meta(&self) -> &DeliveryMeta {
        &self.meta
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.ack_original().await
    }

    async fn retry_later(
        self: Box<Self>,
        delay: Duration,
        failure: &Failure,
    ) -> Result<(), QueueError> {
        let headers = self.failure_headers(failure, self.meta.attempts + 1);
        let queue = self.topology.retry_queue(delay).to_string();
        // Confirmed copy in the retry queue first, then ack: never lost.
        publish_confirmed(
            &self.publish,
            "",
            &queue,
            &self.delivery.data,
            properties(&self.message, headers),
        )
        .await?;
        self.ack_original().await
    }

    async fn dead_letter(self: Box<Self>, failure: &Failure) -> Result<(), QueueError> {
        let headers = self.failure_headers(failure, self.meta.attempts + 1);
        publish_confirmed(
            &self.publish,
            &self.topology.dead_exchange,
            DEAD_KEY,
            &self.delivery.data,
            properties(&self.message, headers),
        )
        .await?;
        self.ack_original().await
    }

    async fn release(self: Box<Self>) -> Result<(), QueueError> {
        self.delivery
            .acker
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .map_err(unavailable)
    }
}

/// A delivery whose body could not be decoded, dead-lettered as is.
struct RawDeadLetter {
    delivery: lapin::message::Delivery,
    publish: Channel,
    topology: Arc<Topology>,
}

impl RawDeadLetter {
    async fn send(self, failure: &Failure) -> Result<(), QueueError> {
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut h = self
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        h.insert(H_ATTEMPTS.into(), AMQPValue::LongInt(1));
        h.insert(H_FIRST_FAILURE.into(), string(&now));
        h.insert(H_LAST_FAILURE.into(), string(&now));
        h.insert(H_REASON_KIND.into(), string(&failure.kind));
        h.insert(H_REASON_MESSAGE.into(), string(&failure.message));
        let props = self.delivery.properties.clone().with_headers(h);
        publish_confirmed(
            &self.publish,
            &self.topology.dead_exchange,
            DEAD_KEY,
            &self.delivery.data,
            props,
        )
        .await?;
        self.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_queue_rounds_up_to_the_next_step() {
        let t = Topology::new(&QueueSettings {
            prefix: "p".into(),
            retry_delays_secs: vec![30, 1, 5],
            ..Default::default()
        });
        assert_eq!(t.retry_queue(Duration::from_millis(10)), "p.retry.1s");
        assert_eq!(t.retry_queue(Duration::from_secs(2)), "p.retry.5s");
        assert_eq!(t.retry_queue(Duration::from_secs(3600)), "p.retry.30s");
        assert_eq!(t.events, "p.events");
        assert_eq!(t.dlq, "p.dlq");
    }
}
