//! Dead-letter queue browsing: list, replay and purge without losing or reordering a
//! dead letter (docs/rules.md R13).

use std::sync::atomic::{AtomicU64, Ordering};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use tracing::{info, warn};

use super::codec::{dead_letter_of, decode, properties};
use super::connection::unavailable;
use super::publisher::publish_confirmed;
use super::topology::ROUTING_KEY;
use super::RabbitQueue;
use crate::queue::{DeadLetter, DlqFilter, DlqProgress, QueueError};

pub(super) enum DlqAction {
    Keep,
    Remove,
    Replay,
}

impl RabbitQueue {
    /// Browse the DLQ on a fresh channel: take every message without acking, let `f`
    /// decide (`true` = settle it), ack the settled ones and close the channel, which
    /// returns the rest to the queue in their original order. `progress` is called after
    /// each message, with the DLQ's depth (a passive declare) as the total.
    async fn dlq_scan(
        &self,
        mut f: impl FnMut(&lapin::message::Delivery) -> DlqAction,
        channel_for_publish: Option<&Channel>,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
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
        for seen in 1..=u64::from(total) {
            let Some(got) = ch
                .basic_get(&self.topology.dlq, BasicGetOptions { no_ack: false })
                .await
                .map_err(unavailable)?
            else {
                break;
            };
            let d = &got.delivery;
            let remove = match f(d) {
                DlqAction::Keep => {
                    if let Ok(dl) = dead_letter_of(d) {
                        listed.push(dl);
                    }
                    false
                }
                DlqAction::Remove => true,
                DlqAction::Replay => {
                    let pubch = channel_for_publish.expect("replay needs a publish channel");
                    match decode(d) {
                        Err(e) => {
                            warn!(error = %e, "undecodable dead letter left in place");
                            false
                        }
                        // Confirm the republish before removing the original: a crash in
                        // between duplicates (harmless, R12) but never loses.
                        Ok(msg) => match publish_confirmed(
                            pubch,
                            &self.topology.work_exchange,
                            ROUTING_KEY,
                            &d.data,
                            properties(&msg, FieldTable::default()),
                        )
                        .await
                        {
                            Ok(()) => true,
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        },
                    }
                }
            };
            if remove {
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(unavailable)?;
                settled += 1;
            }
            progress(DlqProgress {
                seen,
                total: Some(u64::from(total)),
                removed: settled,
            });
        }
        // Unsettled messages go back, in order.
        let _ = ch.close(200, "browse done").await;
        result.map(|()| (listed, settled))
    }

    pub(super) async fn list_dead(
        &self,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<Vec<DeadLetter>, QueueError> {
        let (listed, _) = self.dlq_scan(|_| DlqAction::Keep, None, progress).await?;
        Ok(listed)
    }

    pub(super) async fn replay_dead(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, QueueError> {
        let link = self.link().await?;
        // `dlq_replay` reports replayed dead letters only, each once.
        let reported = AtomicU64::new(0);
        let replayed = |p: DlqProgress| {
            if p.removed > reported.swap(p.removed, Ordering::Relaxed) {
                progress(p.removed);
            }
        };
        let (_, n) = self
            .dlq_scan(
                |d| match dead_letter_of(d) {
                    Ok(dl) if filter.matches(&dl) => DlqAction::Replay,
                    _ => DlqAction::Keep,
                },
                Some(&link.publish),
                &replayed,
            )
            .await?;
        info!(replayed = n, "dead letters replayed");
        Ok(n)
    }

    pub(super) async fn purge_dead(
        &self,
        filter: &DlqFilter,
        progress: &(dyn Fn(DlqProgress) + Send + Sync),
    ) -> Result<u64, QueueError> {
        if filter.is_everything() {
            // One step on the broker: a single report once it is done.
            let link = self.link().await?;
            let n = u64::from(
                link.publish
                    .queue_purge(&self.topology.dlq, QueuePurgeOptions::default())
                    .await
                    .map_err(unavailable)?,
            );
            progress(DlqProgress {
                seen: n,
                total: Some(n),
                removed: n,
            });
            return Ok(n);
        }
        let (_, n) = self
            .dlq_scan(
                |d| match dead_letter_of(d) {
                    Ok(dl) if filter.matches(&dl) => DlqAction::Remove,
                    _ => DlqAction::Keep,
                },
                None,
                progress,
            )
            .await?;
        Ok(n)
    }
}
