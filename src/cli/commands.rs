//! The long-running commands and the small operational ones.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use std::time::Duration;

use super::StartArgs;
use crate::config::{QueueBackend, Role, Settings};
use crate::store::Store;
use crate::worker::Worker;
use crate::{http, queue};

/// A watch channel that turns true on SIGTERM or SIGINT.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
                _ = term.recv() => info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = tx.send(true);
    });
    rx
}

pub(super) async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// `n` days (at least one) as a duration.
fn days(n: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(n.max(1)) * 86_400)
}

async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    super::stores::open(settings).await
}

/// Wait until `probe` succeeds: exponential backoff (0.2 s doubling to 10 s), one log
/// line per failed attempt naming the config key, giving up after `--wait-timeout`.
async fn wait_for<T, F, Fut, E>(
    what: &str,
    key: &str,
    timeout: Option<Duration>,
    mut probe: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let policy = backoff::ExponentialBackoff {
        initial_interval: Duration::from_millis(200),
        multiplier: 2.0,
        randomization_factor: 0.2,
        max_interval: Duration::from_secs(10),
        max_elapsed_time: timeout,
        ..Default::default()
    };
    let mut attempt = 0u32;
    let result = backoff::future::retry_notify(
        policy,
        || {
            let fut = probe();
            async move {
                fut.await
                    .map_err(|e| backoff::Error::transient(e.to_string()))
            }
        },
        |e: String, next: Duration| {
            attempt += 1;
            warn!(
                attempt,
                retry_in_ms = next.as_millis() as u64,
                error = %e,
                "{what} unavailable ({key}); waiting for it"
            );
        },
    )
    .await;
    match result {
        Ok(v) => {
            if attempt > 0 {
                info!("{what} available after {} attempt(s)", attempt + 1);
            }
            Ok(v)
        }
        Err(e) => Err(anyhow::anyhow!(
            "{what} still unavailable after --wait-timeout {}s ({key}): {e}",
            timeout.map(|t| t.as_secs()).unwrap_or_default()
        )),
    }
}

fn wait_timeout(args: StartArgs) -> Option<Duration> {
    args.wait_timeout.map(Duration::from_secs)
}

fn queue_key(settings: &Settings) -> &'static str {
    if settings.queue.urls.is_empty() {
        "queue.url"
    } else {
        "queue.urls"
    }
}

/// Wait for the broker (reported on `/readyz` meanwhile; the receiver answers 503).
async fn wait_for_broker(
    settings: &Settings,
    queue: &Arc<dyn queue::Queue>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    // A TCP probe first: a refused connection is reported with the address and the key.
    wait_for("broker", queue_key(settings), timeout, || async {
        super::stores::probe_broker(settings)
            .await
            .map_err(|e| format!("{e:#}"))?;
        queue.ping().await.map_err(|e| e.to_string())
    })
    .await
}

pub async fn receive(settings: Settings, args: StartArgs) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Receive)?;
    for w in settings.warnings() {
        warn!("{w}");
    }
    if settings.queue.backend == QueueBackend::Memory {
        warn!("queue.backend = \"memory\": events received here are not seen by separate `work` processes (use `run` or rabbitmq)");
    }
    let queue = queue::open(&settings.queue);
    let state = http::AppState::new(&settings, queue.clone(), None)?;
    let listener = bind(&settings.server.listen, "server.listen").await?;
    info!(listen = %settings.server.listen, "receiver listening on POST /webhooks/skillsync");
    let server = http::serve_with(
        listener,
        http::router(state),
        &settings.server,
        wait_true(shutdown_signal()),
    );
    tokio::pin!(server);
    tokio::select! {
        ready = wait_for_broker(&settings, &queue, wait_timeout(args)) => {
            ready?;
            server.await?;
        }
        r = &mut server => r?,
    }
    queue.close().await;
    info!("receiver stopped");
    Ok(ExitCode::SUCCESS)
}

async fn bind(addr: &str, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {key} {addr}"))
}

/// The per-process background duties of a worker process: retention of the store.
fn spawn_housekeeping(
    settings: &Settings,
    store: &Arc<dyn Store>,
    shutdown: &watch::Receiver<bool>,
) {
    crate::worker::spawn_retention(
        store.clone(),
        days(settings.store.processed_retention_days),
        days(settings.store.history_retention_days),
        shutdown.clone(),
    );
}

/// Open the store and wait for the broker, in that order, unless shutdown comes first
/// (`None`). `/readyz` says what is still missing meanwhile.
async fn wait_for_dependencies(
    settings: &Settings,
    queue: &Arc<dyn queue::Queue>,
    slot: &http::StoreSlot,
    args: StartArgs,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    let deps = async {
        let store = wait_for("store", "store.url", wait_timeout(args), || {
            open_store(settings)
        })
        .await?;
        let _ = slot.set(store.clone());
        wait_for_broker(settings, queue, wait_timeout(args)).await?;
        anyhow::Ok(store)
    };
    tokio::select! {
        r = deps => r.map(Some),
        _ = wait_true(shutdown.clone()) => Ok(None),
    }
}

/// What a `work`/`run` process adds for the console: the mapping in force (console mode:
/// the store's newest version, followed by a poller), a heartbeat, and the console itself
/// when `admin.listen` is set. Returns the settings to build the engine from.
async fn console_duties(
    settings: &Settings,
    store: &Arc<dyn Store>,
    queue: &Arc<dyn queue::Queue>,
    role: &str,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<(Settings, crate::sync::SettingsHandle)> {
    use crate::admin::mapping;
    let mut effective = settings.clone();
    let (sync, version) = mapping::for_process(store.as_ref(), &settings.sync)
        .await
        .context("reading the mapping in force (sync.managed_by = \"console\")")?;
    effective.sync = sync.clone();
    let (tx, handle) = crate::sync::SettingsHandle::channel(sync);
    let versions = if settings.sync.managed_by == crate::config::ManagedBy::Console {
        info!(version = ?version, "mapping managed by the console; following new versions");
        mapping::spawn_poller(
            store.clone(),
            tx,
            version,
            std::time::Duration::from_secs(settings.admin.mapping_poll_secs.max(1)),
            shutdown.clone(),
        )
    } else {
        watch::channel(None).1
    };
    spawn_heartbeat(store.clone(), role, versions, shutdown.clone());
    if !settings.admin.listen.is_empty() {
        let console = crate::admin::Console::new(settings, store.clone(), queue.clone()).await?;
        let listener = bind(&settings.admin.listen, "admin.listen").await?;
        info!(listen = %listener.local_addr()?, "admin console listening");
        tokio::spawn(crate::admin::serve(
            listener,
            console,
            wait_true(shutdown.clone()),
        ));
    }
    Ok((effective, handle))
}

/// Report this process every 5 s ("workers seen recently" on the console's Overview).
fn spawn_heartbeat(
    store: Arc<dyn Store>,
    role: &str,
    versions: watch::Receiver<Option<i64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let me = crate::store::WorkerSeen {
        worker_id: uuid::Uuid::new_v4().to_string(),
        host: format!("{host} pid {}", std::process::id()),
        role: role.to_string(),
        mapping_version: None,
        api_used: None,
        api_max: None,
        started_at: chrono::Utc::now(),
        seen_at: chrono::Utc::now(),
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            let seen = crate::store::WorkerSeen {
                mapping_version: *versions.borrow(),
                seen_at: chrono::Utc::now(),
                ..me.clone()
            };
            if let Err(e) = store.heartbeat(&seen).await {
                warn!(error = %e, "heartbeat not recorded");
            }
        }
    });
}

/// The worker of a `work` or `run` process (`role`), once its dependencies answer: the
/// console's duties (mapping in force, heartbeats), the engine from the composition root,
/// and the store's housekeeping.
async fn build_worker(
    settings: &Settings,
    store: &Arc<dyn Store>,
    queue: &Arc<dyn queue::Queue>,
    role: &str,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Arc<Worker>> {
    let (effective, mapping) = console_duties(settings, store, queue, role, shutdown).await?;
    let engine = crate::sync::reconcile::wiring::engine_for_process(
        &effective,
        store.clone(),
        mapping,
        shutdown.clone(),
    )
    .await?;
    spawn_housekeeping(settings, store, shutdown);
    Ok(Arc::new(Worker::new(
        engine,
        queue.clone(),
        settings.worker.clone(),
    )))
}

pub async fn work(settings: Settings, args: StartArgs) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Work)?;
    for w in settings.warnings() {
        warn!("{w}");
    }
    let queue = queue::open(&settings.queue);
    let slot = http::StoreSlot::default();
    let shutdown = shutdown_signal();
    if !settings.worker.listen.is_empty() {
        let listener = bind(&settings.worker.listen, "worker.listen").await?;
        info!(listen = %settings.worker.listen, "worker serving /healthz /readyz /metrics");
        let ops = http::ops_router(queue.clone(), Some(slot.clone()));
        tokio::spawn(http::serve_with(
            listener,
            ops,
            &settings.server,
            wait_true(shutdown.clone()),
        ));
    }
    let Some(store) = wait_for_dependencies(&settings, &queue, &slot, args, &shutdown).await?
    else {
        return Ok(ExitCode::SUCCESS);
    };
    let worker = build_worker(&settings, &store, &queue, "work", &shutdown).await?;
    worker.run(shutdown).await?;
    queue.close().await;
    info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn run_all(settings: Settings, args: StartArgs) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Run)?;
    for w in settings.warnings() {
        warn!("{w}");
    }
    let queue = queue::open(&settings.queue);
    let slot = http::StoreSlot::default();
    let shutdown = shutdown_signal();
    let state = http::AppState::with_store_slot(&settings, queue.clone(), Some(slot.clone()))?;
    let listener = bind(&settings.server.listen, "server.listen").await?;
    info!(listen = %settings.server.listen, "receiver + workers running");
    let server = tokio::spawn(http::serve_with(
        listener,
        http::router(state),
        &settings.server,
        wait_true(shutdown.clone()),
    ));
    let Some(store) = wait_for_dependencies(&settings, &queue, &slot, args, &shutdown).await?
    else {
        server.await??;
        return Ok(ExitCode::SUCCESS);
    };
    let worker = build_worker(&settings, &store, &queue, "run", &shutdown).await?;
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    server.await??;
    worker_task.await??;
    queue.close().await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn learner_status(
    settings: Settings,
    id: &str,
    json: bool,
    limit: u32,
) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Status)?;
    let store = super::stores::open_read_only(&settings).await?;
    let state = store.learner(id).await?;
    let history = store.history(id, limit).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "learner": state, "events": history })
            )?
        );
        return Ok(if state.is_none() && history.is_empty() {
            super::exit::code(super::exit::NOT_FOUND)
        } else {
            ExitCode::SUCCESS
        });
    }
    match &state {
        None => println!("learner {id}: never synced (no state)"),
        Some(s) => {
            println!("learner     {}", s.learner_id);
            println!("link        {}", s.link.as_str());
            println!("contact     {}", s.contact_id.as_deref().unwrap_or("-"));
            println!("account     {}", s.account_id.as_deref().unwrap_or("-"));
            println!("last        {}", s.last_outcome.as_deref().unwrap_or("-"));
            if let Some(e) = &s.last_error {
                println!("last error  {e}");
            }
            println!("updated     {}", s.updated_at.to_rfc3339());
        }
    }
    if history.is_empty() {
        println!("no events recorded");
    } else {
        println!(
            "\n{:<24} {:<22} {:<26} {:<8} {:<20} detail",
            "recorded", "event", "type", "class", "code"
        );
        for r in &history {
            println!(
                "{:<24} {:<22} {:<26} {:<8} {:<20} {}",
                r.recorded_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                r.event_id,
                r.event_type,
                r.class.as_str(),
                r.code,
                r.detail
            );
        }
    }
    Ok(if state.is_none() && history.is_empty() {
        super::exit::code(super::exit::NOT_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn backfill(
    settings: Settings,
    dry_run: bool,
    restart: bool,
) -> anyhow::Result<ExitCode> {
    settings.validate_for(Role::Backfill)?;
    let store = open_store(&settings).await?;
    let bar = super::budget::BackfillBar::new();
    let summary =
        crate::sync::backfill::run_from_settings(&settings, store, dry_run, restart, Some(&bar))
            .await;
    crate::sync::backfill::Progress::finish(&bar);
    let summary = summary?;
    println!("{summary}");
    Ok(if summary.failed() > 0 {
        super::exit::code(super::exit::BACKFILL_FAILURES)
    } else {
        ExitCode::SUCCESS
    })
}
