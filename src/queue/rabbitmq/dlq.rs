//! Dead-letter queue browsing: list, replay and purge without losing or reordering a
//! dead letter (docs/rules.md R13).

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tracing::{info, warn};

use super::codec::{dead_letter_of, decode, properties};
use super::connection::unavailable;
use super::publisher::publish_confirmed;
use super::topology::ROUTING_KEY;
use super::RabbitQueue;
use crate::queue::{DeadLetter, DlqFilter, QueueError};

pub(super) enum DlqAction {
    Keep,
    Remove,
    Replay,
}

impl RabbitQueue {
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

    pub(super) async fn list_dead(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let (listed, _) = self.dlq_scan(|_| DlqAction::Keep, None, &|_| {}).await?;
        Ok(listed)
    }

    pub(super) async fn replay_dead(
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

    pub(super) async fn purge_dead(&self, filter: &DlqFilter) -> Result<u64, QueueError> {
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
