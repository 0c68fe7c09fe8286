//! Queue and exchange names derived from `queue.prefix`, and their idempotent declaration
//! (docs/rules.md "Flow", R13). Mirrored in `deploy/rabbitmq/definitions.json`.

use std::time::Duration;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::codec::string;
use crate::config::QueueSettings;

pub(super) const ROUTING_KEY: &str = "event";
pub(super) const DEAD_KEY: &str = "dead";

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
    /// `x-quorum-initial-group-size` of every quorum queue (`queue.quorum_initial_group_size`).
    pub group_size: Option<u32>,
    /// Cluster mode: the retry queues and the DLQ are quorum queues too, so that they
    /// survive the loss of the node that declared them (a classic queue whose home node
    /// is down cannot even be re-declared: `404 NOT_FOUND - home node … is down`).
    pub replicated: bool,
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
            group_size: settings.group_size(),
            replicated: settings.replicated(),
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

    /// `x-queue-type = quorum` plus the initial group size when one is configured.
    fn quorum_args(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("quorum"));
        if let Some(n) = self.group_size {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongInt(n as i32),
            );
        }
        args
    }

    /// Declare everything; safe to repeat (same arguments every time).
    pub(super) async fn declare(&self, ch: &Channel) -> Result<(), lapin::Error> {
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
        let mut args = self.quorum_args();
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
            let mut args = if self.replicated {
                // Expiry dead-letters back to the work queue at least once.
                let mut a = self.quorum_args();
                a.insert("x-dead-letter-strategy".into(), string("at-least-once"));
                a.insert("x-overflow".into(), string("reject-publish"));
                a
            } else {
                FieldTable::default()
            };
            args.insert(
                "x-message-ttl".into(),
                AMQPValue::LongLongInt(*delay as i64 * 1000),
            );
            args.insert("x-dead-letter-exchange".into(), string(&self.work_exchange));
            args.insert("x-dead-letter-routing-key".into(), string(ROUTING_KEY));
            ch.queue_declare(name, q, args).await?;
        }
        let dlq_args = if self.replicated {
            self.quorum_args()
        } else {
            FieldTable::default()
        };
        ch.queue_declare(&self.dlq, q, dlq_args).await?;
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
