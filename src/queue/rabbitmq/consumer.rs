//! Consumers and deliveries: a subscription that reconnects on connection loss, and
//! deliveries settled exactly once (ack, delayed retry, dead letter, release).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use tracing::{info, warn};

use super::codec::*;
use super::connection::{open_link, unavailable, Link};
use super::publisher::publish_confirmed;
use super::topology::{Topology, DEAD_KEY};
use crate::queue::{Delivery, DeliveryMeta, Failure, Message, QueueError, Subscription};

pub(super) struct SubState {
    link: Arc<Link>,
    consume: Channel,
    consumer: lapin::Consumer,
    tag: String,
}

/// A consumer that reconnects (with backoff) when the broker goes away. Deliveries of
/// the dead connection cannot be settled any more; the broker redelivers them.
pub(super) struct RabbitSubscription {
    pub(super) urls: Arc<Vec<String>>,
    /// The node to try first on the next connect.
    pub(super) next_node: usize,
    pub(super) topology: Arc<Topology>,
    pub(super) prefetch: u16,
    pub(super) state: Option<SubState>,
    pub(super) cancelled: bool,
}

impl RabbitSubscription {
    pub(super) async fn connect(&mut self) -> Result<(), QueueError> {
        let link = Arc::new(
            open_link(
                &self.urls,
                self.next_node,
                &self.topology,
                "syncback-worker",
            )
            .await?,
        );
        self.next_node = link.node;
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
                // Resume on the next node of a cluster (the dead one is tried last).
                self.next_node = st.link.node + 1;
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
