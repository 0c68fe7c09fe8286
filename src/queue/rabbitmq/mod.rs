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
//! The receiver publishes straight to `P.events` (default exchange); retries and replays
//! come back through `P.work`. Messages are persistent, published with `mandatory` and a
//! publisher confirm. The body is the envelope JSON exactly as received; the webhook id is the AMQP `message_id`,
//! the receipt time the `timestamp` (+ `x-syncback-received-at` in RFC 3339), and the
//! retry/DLQ bookkeeping travels in `x-syncback-*` headers.

use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::sync::Mutex;
use tracing::warn;

use super::{DeadLetter, Depths, DlqFilter, DlqProgress, Message, Queue, QueueError, Subscription};
use crate::config::QueueSettings;

mod codec;
mod connection;
mod consumer;
mod dlq;
mod publisher;
mod topology;

pub use codec::{
    H_ATTEMPTS, H_FIRST_FAILURE, H_LAST_FAILURE, H_LEARNER, H_REASON_KIND, H_REASON_MESSAGE,
    H_RECEIVED_AT,
};
pub use topology::Topology;

use connection::{open_link, unavailable, Link};
use consumer::RabbitSubscription;

/// The production queue. Cheap to clone; reconnects (to the next node of a cluster)
/// when its connection dies, so it outlives broker restarts and node losses.
#[derive(Clone)]
pub struct RabbitQueue {
    urls: Arc<Vec<String>>,
    topology: Arc<Topology>,
    /// Serialises (re)connecting and channel reopening.
    link: Arc<Mutex<LinkState>>,
    /// The live link for the publish path: read without queueing on `link` (hundreds of
    /// concurrent publishes would otherwise take turns on one async mutex).
    current: Arc<std::sync::RwLock<Option<Arc<Link>>>>,
}

#[derive(Default)]
struct LinkState {
    link: Option<Arc<Link>>,
    /// The node to try first on the next connect.
    next: usize,
}

impl RabbitQueue {
    /// A queue that connects on first use (so a process can start while the broker is
    /// down, answer 503 and report not-ready until it appears).
    pub fn lazy(settings: &QueueSettings) -> Self {
        RabbitQueue {
            urls: Arc::new(settings.node_urls()),
            topology: Arc::new(Topology::new(settings)),
            link: Arc::new(Mutex::new(LinkState::default())),
            current: Arc::new(std::sync::RwLock::new(None)),
        }
    }

    /// Make `link` the one the fast path hands out (`None`: reconnect on next use).
    fn set_current(&self, st: &mut LinkState, link: Option<Arc<Link>>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = link.clone();
        st.link = link;
    }

    /// Connect and declare the topology.
    pub async fn connect(settings: &QueueSettings) -> Result<Self, QueueError> {
        let q = Self::lazy(settings);
        q.link().await?;
        Ok(q)
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The node URL (password redacted) of the current connection, if any.
    pub async fn connected_node(&self) -> Option<usize> {
        let st = self.link.lock().await;
        st.link.as_ref().filter(|l| l.is_alive()).map(|l| l.node)
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

    /// The live link, reconnecting (from the node after a dead one) if it died.
    async fn link(&self) -> Result<Arc<Link>, QueueError> {
        if let Some(l) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|l| l.is_alive())
        {
            return Ok(l.clone());
        }
        let mut st = self.link.lock().await;
        if let Some(l) = st.link.as_ref() {
            if l.is_alive() {
                return Ok(l.clone());
            }
            warn!("RabbitMQ connection lost; reconnecting");
            st.next = l.node + 1;
            self.set_current(&mut st, None);
        }
        let l = Arc::new(open_link(&self.urls, st.next, &self.topology, "syncback").await?);
        st.next = l.node;
        self.set_current(&mut st, Some(l.clone()));
        Ok(l)
    }

    /// Forget `dead` (if still current); the next use reconnects, from the next node.
    async fn discard(&self, dead: &Arc<Link>) {
        let mut st = self.link.lock().await;
        if st.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, dead)) {
            st.next = dead.node + 1;
            self.set_current(&mut st, None);
            let _ = dead.conn.close(200, "reconnecting").await;
        }
    }

    /// Replace `nacked`'s publish channel by a fresh one on the same connection.
    async fn reopen_channel(&self, nacked: &Arc<Link>) {
        let mut st = self.link.lock().await;
        if st.link.as_ref().is_some_and(|l| Arc::ptr_eq(l, nacked)) {
            match nacked.reopened().await {
                Ok(l) => self.set_current(&mut st, Some(Arc::new(l))),
                Err(e) => {
                    warn!(error = %e, "could not reopen the publish channel; reconnecting");
                    st.next = nacked.node + 1;
                    self.set_current(&mut st, None);
                }
            }
        }
    }
}

#[async_trait]
impl Queue for RabbitQueue {
    async fn publish(&self, msg: &Message) -> Result<(), QueueError> {
        let body =
            serde_json::to_vec(&msg.envelope).map_err(|e| QueueError::BadMessage(e.to_string()))?;
        self.publish_fresh(msg, &body).await
    }

    async fn publish_encoded(&self, msg: &Message, encoded: &[u8]) -> Result<(), QueueError> {
        self.publish_fresh(msg, encoded).await
    }

    async fn subscribe(&self, prefetch: u16) -> Result<Box<dyn Subscription>, QueueError> {
        let mut sub = RabbitSubscription {
            urls: self.urls.clone(),
            next_node: self.link.lock().await.next,
            topology: self.topology.clone(),
            prefetch,
            state: None,
            cancelled: false,
        };
        // Broker down at start: the subscription connects (with backoff) on first `next`.
        if let Err(e) = sub.connect().await {
            warn!(error = %e, "RabbitMQ unavailable; the consumer will keep trying");
        }
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

    async fn dlq_list_with_progress(
        &self,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<Vec<DeadLetter>, QueueError> {
        self.list_dead(progress).await
    }

    async fn dlq_replay(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, QueueError> {
        self.replay_dead(filter, progress).await
    }

    async fn close(&self) {
        let mut st = self.link.lock().await;
        if let Some(link) = st.link.take() {
            self.set_current(&mut st, None);
            let _ = link.conn.close(200, "bye").await;
        }
    }

    async fn dlq_purge(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<u64, QueueError> {
        self.purge_dead(filter, progress).await
    }
}
