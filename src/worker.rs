//! The worker pool (`syncback work`): consumes the queue with manual acks and applies each
//! event through the [`Engine`]. A delivery is settled only after its outcome is committed
//! to the store: ack (applied/skipped), dead-letter (permanent failure, or attempts
//! exhausted), or delayed retry (transient failure after in-process retries) — R13.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use chrono::Utc;
use tokio::sync::{watch, Semaphore};
use tracing::{error, info, info_span, warn, Instrument};

use crate::config::WorkerSettings;
use crate::model::Envelope;
use crate::queue::{Delivery, Failure, Queue};
use crate::store::OutcomeClass;
use crate::sync::{Engine, Item, Outcome, SyncError};
use crate::telemetry;

/// How one delivery was settled (returned for tests and metrics).
#[derive(Clone, Debug, PartialEq)]
pub enum Settled {
    Acked(Outcome),
    DeadLettered(Failure),
    RetryLater(Failure),
}

pub struct Worker {
    engine: Arc<Engine>,
    queue: Arc<dyn Queue>,
    settings: WorkerSettings,
    /// Base delay of the delayed requeue; doubles with each attempt (with jitter).
    retry_base: Duration,
}

impl Worker {
    pub fn new(engine: Arc<Engine>, queue: Arc<dyn Queue>, settings: WorkerSettings) -> Self {
        Self {
            engine,
            queue,
            settings,
            retry_base: Duration::from_secs(1),
        }
    }

    /// Consume until `shutdown` turns true, then stop consuming, finish in-flight events
    /// (up to `shutdown_grace_secs`) and return. Each of `worker.concurrency` tasks takes a
    /// micro-batch (up to `worker.batch_max`, see [`crate::queue::Subscription::next_batch`])
    /// and applies it through one [`Engine::apply`].
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let concurrency = self.settings.concurrency.max(1);
        let batch_max = self.settings.batch_max.max(1);
        let linger = Duration::from_millis(self.settings.batch_linger_ms);
        // Prefetch: every task busy, and room for up to four full batches in flight (their
        // Salesforce round trips overlap).
        let prefetch = (concurrency * 2)
            .max(batch_max * concurrency.min(4))
            .min(u16::MAX as usize) as u16;
        let mut sub = self.queue.subscribe(prefetch).await?;
        let permits = Arc::new(Semaphore::new(concurrency));
        info!(concurrency, prefetch, batch_max, "worker consuming");
        loop {
            let permit = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let next = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                n = sub.next_batch(batch_max, linger) => n,
            };
            match next {
                None => {
                    warn!("subscription closed");
                    break;
                }
                Some(Err(e)) => {
                    warn!(error = %e, "queue error; the subscription reconnects");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(Ok(batch)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.process_batch(batch).await;
                        drop(permit);
                    });
                }
            }
        }
        info!("stopping: no new deliveries; finishing in-flight events");
        if let Err(e) = sub.cancel().await {
            warn!(error = %e, "cancel subscription");
        }
        let grace = Duration::from_secs(self.settings.shutdown_grace_secs);
        let all = permits.acquire_many(concurrency as u32);
        match tokio::time::timeout(grace, all).await {
            Ok(_) => info!("all in-flight events settled"),
            Err(_) => warn!(
                "shutdown grace of {grace:?} elapsed; unsettled deliveries will be redelivered"
            ),
        }
        sub.close().await;
        Ok(())
    }

    /// Apply one delivery and settle it (a batch of one).
    pub async fn process(&self, delivery: Box<dyn Delivery>) -> Option<Settled> {
        self.process_batch(vec![delivery]).await.pop().flatten()
    }

    /// Apply a batch of deliveries together and settle each from its own outcome: ack,
    /// delayed retry, or the dead-letter queue with its own reason (R13). Never panics on
    /// bad input. Results in delivery order.
    pub async fn process_batch(&self, deliveries: Vec<Box<dyn Delivery>>) -> Vec<Option<Settled>> {
        let started = Instant::now();
        let n = deliveries.len();
        let mut settled: Vec<Option<Settled>> = (0..n).map(|_| None).collect();
        let mut envs: Vec<(usize, Envelope)> = Vec::with_capacity(n);
        let mut slots: Vec<Option<Box<dyn Delivery>>> = Vec::with_capacity(n);
        for (i, delivery) in deliveries.into_iter().enumerate() {
            let msg = delivery.message();
            let age = (Utc::now() - msg.received_at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::gauge!(telemetry::QUEUE_AGE_SECONDS).set(age);
            match serde_json::from_value::<Envelope>(msg.envelope.clone()) {
                Ok(e) => {
                    envs.push((i, e));
                    slots.push(Some(delivery));
                }
                Err(e) => {
                    let event_type = msg.event_type().unwrap_or("unknown").to_string();
                    let f = Failure {
                        kind: "bad_event".into(),
                        message: format!("envelope does not deserialize: {e}"),
                        learner_id: None,
                    };
                    let span = self.span(delivery.as_ref(), None);
                    settled[i] = self
                        .settle_dead(delivery, f, &event_type)
                        .instrument(span)
                        .await;
                    slots.push(None);
                }
            }
        }
        let results = self.apply_with_retries(&envs).await;
        if envs.len() > 1 {
            tracing::debug!(
                events = envs.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "batch applied"
            );
        }
        for ((i, env), result) in envs.into_iter().zip(results) {
            let delivery = slots[i].take().expect("one delivery per envelope");
            let span = self.span(delivery.as_ref(), env.learner_id());
            settled[i] = self
                .settle(delivery, &env, result, started)
                .instrument(span)
                .await;
        }
        settled
    }

    fn span(&self, d: &dyn Delivery, learner_id: Option<&str>) -> tracing::Span {
        let msg = d.message();
        info_span!("event", event_id = %msg.webhook_id, event_type = msg.event_type().unwrap_or("unknown"), learner_id = learner_id.unwrap_or(""), attempt = d.meta().attempts + 1)
    }

    /// Settle one delivery from its outcome.
    async fn settle(
        &self,
        delivery: Box<dyn Delivery>,
        env: &Envelope,
        result: Result<Outcome, SyncError>,
        started: Instant,
    ) -> Option<Settled> {
        let msg = delivery.message().clone();
        let meta = delivery.meta().clone();
        let event_type = env.event_type.as_str().to_string();
        metrics::histogram!(telemetry::PROCESSING_SECONDS, "type" => event_type.clone())
            .record(started.elapsed().as_secs_f64());
        let lag = (Utc::now() - msg.received_at).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!(telemetry::EVENT_LAG_SECONDS, "type" => event_type.clone()).record(lag);
        match result {
            Ok(outcome) if outcome.class == OutcomeClass::Failed => {
                warn!(code = %outcome.code, detail = %outcome.detail, "event failed permanently; to the dead-letter queue");
                let f = Failure {
                    kind: outcome.code.as_str().to_string(),
                    message: outcome.detail.clone(),
                    learner_id: Some(outcome.learner_id.clone()),
                };
                self.settle_dead(delivery, f, &event_type).await
            }
            Ok(outcome) => {
                info!(outcome = outcome.class.as_str(), code = %outcome.code, detail = %outcome.detail, "event settled");
                metrics::counter!(telemetry::EVENTS, "type" => event_type.clone(), "outcome" => outcome.class.as_str(), "code" => outcome.code.as_str()).increment(1);
                match delivery.ack().await {
                    Ok(()) => Some(Settled::Acked(outcome)),
                    Err(e) => {
                        // Committed but not acked: the redelivery is a duplicate and is skipped (R12).
                        warn!(error = %e, "ack failed; the broker will redeliver (skipped as duplicate)");
                        None
                    }
                }
            }
            Err(SyncError::BadEvent(m)) => {
                let f = Failure {
                    kind: "bad_event".into(),
                    message: m,
                    learner_id: env.learner_id().map(String::from),
                };
                self.settle_dead(delivery, f, &event_type).await
            }
            Err(e) => {
                let attempts = meta.attempts + 1;
                let f = Failure {
                    kind: e.kind().to_string(),
                    message: e.to_string(),
                    learner_id: env.learner_id().map(String::from),
                };
                if attempts >= self.settings.max_attempts {
                    warn!(attempts, error = %e, "attempts exhausted; to the dead-letter queue");
                    let f = Failure {
                        kind: "max_attempts".into(),
                        message: format!("{attempts} attempts; last error: {e}"),
                        ..f
                    };
                    return self.settle_dead(delivery, f, &event_type).await;
                }
                let delay = self.retry_delay(meta.attempts);
                warn!(attempts, ?delay, error = %e, "transient failure; delayed retry");
                metrics::counter!(telemetry::RETRIES, "stage" => "delayed").increment(1);
                metrics::counter!(telemetry::EVENTS, "type" => event_type.clone(), "outcome" => "retried", "code" => e.kind()).increment(1);
                match delivery.retry_later(delay, &f).await {
                    Ok(()) => Some(Settled::RetryLater(f)),
                    Err(qe) => {
                        error!(error = %qe, "could not requeue for retry; the broker will redeliver");
                        None
                    }
                }
            }
        }
    }

    /// R13: the items of a batch that failed transiently are applied again in-process, with
    /// exponential backoff and jitter, a bounded number of times; the rest keep their results.
    async fn apply_with_retries(
        &self,
        envs: &[(usize, Envelope)],
    ) -> Vec<Result<Outcome, SyncError>> {
        let mut backoff = ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(100))
            .with_multiplier(2.0)
            .with_randomization_factor(0.5)
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(None)
            .build();
        let items: Vec<Item> = envs.iter().map(|(_, e)| Item::Event(e.clone())).collect();
        let mut results = self.engine.apply(items).await;
        let mut tries = 0;
        loop {
            let again: Vec<usize> = (0..results.len())
                .filter(|&k| matches!(&results[k], Err(e) if e.is_transient()))
                .collect();
            if again.is_empty() || tries >= self.settings.inprocess_retries {
                return results;
            }
            tries += 1;
            metrics::counter!(telemetry::RETRIES, "stage" => "inprocess")
                .increment(again.len() as u64);
            let wait = backoff.next_backoff().unwrap_or(Duration::from_secs(2));
            tracing::debug!(tries, ?wait, items = again.len(), "retrying in-process");
            tokio::time::sleep(wait).await;
            let items: Vec<Item> = again
                .iter()
                .map(|&k| Item::Event(envs[k].1.clone()))
                .collect();
            for (k, r) in again.into_iter().zip(self.engine.apply(items).await) {
                results[k] = r;
            }
        }
    }

    /// Delay before the next delayed retry: base × 2^attempts with ±25 % jitter.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let exp = self.retry_base.saturating_mul(1u32 << attempts.min(10));
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        exp.mul_f64(jitter)
    }

    async fn settle_dead(
        &self,
        delivery: Box<dyn Delivery>,
        f: Failure,
        event_type: &str,
    ) -> Option<Settled> {
        metrics::counter!(telemetry::EVENTS, "type" => event_type.to_string(), "outcome" => "dead_lettered", "code" => f.kind.clone()).increment(1);
        match delivery.dead_letter(&f).await {
            Ok(()) => Some(Settled::DeadLettered(f)),
            Err(e) => {
                error!(error = %e, "could not dead-letter; the broker will redeliver");
                None
            }
        }
    }
}

/// Forget processed event ids older than `retention` (R12 duplicate detection) and outcome
/// history older than `history_retention`, at start and then hourly, until `shutdown`. Stale-event protection does not depend on them:
/// entity versions are kept, so a duplicate older than the retention is still skipped
/// as stale.
pub fn spawn_retention(
    store: Arc<dyn crate::store::Store>,
    retention: Duration,
    history_retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            let before = Utc::now()
                - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(30));
            match store.prune_processed(before).await {
                Ok(0) => {}
                Ok(n) => info!(pruned = n, "forgot processed event ids past the retention"),
                Err(e) => warn!(error = %e, "pruning processed event ids failed; will retry"),
            }
            let before = Utc::now()
                - chrono::Duration::from_std(history_retention)
                    .unwrap_or(chrono::Duration::days(90));
            match store.prune_history(before).await {
                Ok(0) => {}
                Ok(n) => info!(pruned = n, "forgot outcome history past the retention"),
                Err(e) => warn!(error = %e, "pruning outcome history failed; will retry"),
            }
        }
    })
}

/// The R2 check (see [`crate::app::validate_source`]).
pub async fn validate_source(
    settings: &crate::config::Settings,
) -> Result<crate::model::Department, crate::skillsync::scope::SourceCheckError> {
    crate::app::validate_source(settings).await
}

/// The engine for live events, built by the composition root ([`crate::app::build`]).
pub async fn engine_from_settings(
    settings: &crate::config::Settings,
    store: Arc<dyn crate::store::Store>,
) -> anyhow::Result<Arc<Engine>> {
    Ok(
        crate::app::build(settings, store, crate::app::Options::default())
            .await?
            .engine,
    )
}
