//! Publishing with publisher confirms: a message counts as queued only once the broker
//! confirmed it (docs/rules.md "Flow").

use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use tracing::warn;

use super::codec::properties;
use super::connection::unavailable;
use super::topology::ROUTING_KEY;
use super::RabbitQueue;
use crate::queue::{Message, QueueError};

/// Publish on a confirm channel and wait for the broker's confirm.
pub(super) async fn publish_confirmed(
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

impl RabbitQueue {
    /// Publish to the work exchange with fresh bookkeeping (new events and replays).
    pub(super) async fn publish_fresh(&self, msg: &Message) -> Result<(), QueueError> {
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
}
