//! Publishing with publisher confirms: a message counts as queued only once the broker
//! confirmed it (docs/rules.md "Flow").

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tracing::warn;

use super::codec::properties;
use super::connection::unavailable;
use super::RabbitQueue;
use crate::queue::{Message, QueueError};

/// Why a confirmed publish did not succeed.
pub(super) enum PublishError {
    /// The broker answered with a nack (e.g. no quorum leader yet).
    Nacked,
    /// Returned unroutable (`mandatory`): the topology is missing.
    Unroutable(String),
    /// The channel or connection failed.
    Channel(lapin::Error),
}

impl From<PublishError> for QueueError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Nacked => unavailable("the broker nacked the publish"),
            PublishError::Unroutable(m) => unavailable(m),
            PublishError::Channel(e) => unavailable(e),
        }
    }
}

/// Publish on a confirm channel and wait for the broker's confirm.
pub(super) async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), QueueError> {
    Ok(try_publish(ch, exchange, routing_key, body, props).await?)
}

async fn try_publish(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Result<(), PublishError> {
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
        .map_err(PublishError::Channel)?
        .await
        .map_err(PublishError::Channel)?;
    if !confirm.is_ack() {
        return Err(PublishError::Nacked);
    }
    if confirm.take_message().is_some() {
        return Err(PublishError::Unroutable(format!(
            "message unroutable ({exchange}/{routing_key}): topology missing"
        )));
    }
    Ok(())
}

/// Attempts per publish: a nack reopens the channel, a dead connection moves to the
/// next node, an unroutable return (the events queue was deleted) reconnects, which
/// declares the topology again, and the publish is tried again (a duplicate is harmless,
/// R12; a loss is not).
const PUBLISH_ATTEMPTS: usize = 3;

impl RabbitQueue {
    /// Publish a new event to the events queue, with fresh bookkeeping.
    /// Returns only once the broker confirmed; the caller answers 503 otherwise.
    /// `body` is `msg.envelope` encoded as JSON.
    pub(super) async fn publish_fresh(&self, msg: &Message, body: &[u8]) -> Result<(), QueueError> {
        let mut last = None;
        for _ in 0..PUBLISH_ATTEMPTS {
            let link = self.link().await?;
            // Straight to the events queue through the default exchange: the same
            // destination as `{prefix}.work` → "event" (which the retry queues dead-letter
            // into), without the exchange hop the broker pays for on every message
            // (measured: ~4 µs of broker CPU per webhook, `cargo bench --bench ingest`).
            // `mandatory` turns a missing queue into an unroutable return: the topology is
            // declared again (on a fresh connection) and the publish retried, else 503.
            match try_publish(
                &link.publish,
                "",
                &self.topology.events,
                body,
                properties(msg, FieldTable::default()),
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(PublishError::Nacked) => {
                    warn!("publish nacked; reopening the publish channel");
                    self.reopen_channel(&link).await;
                    last = Some(PublishError::Nacked);
                }
                Err(PublishError::Channel(e)) => {
                    warn!(error = %e, "publish failed; reconnecting");
                    if link.is_alive() {
                        self.reopen_channel(&link).await;
                    } else {
                        self.discard(&link).await;
                    }
                    last = Some(PublishError::Channel(e));
                }
                Err(PublishError::Unroutable(m)) => {
                    warn!("publish unroutable (the events queue is missing); declaring the topology again");
                    self.discard(&link).await;
                    last = Some(PublishError::Unroutable(m));
                }
            }
        }
        Err(last.expect("at least one attempt").into())
    }
}
