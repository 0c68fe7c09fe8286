//! `syncback demo` (README "Two commands"): the whole flow in one process with no outside
//! services — in-memory queue, SQLite store, the Salesforce and SkillSync sandboxes served
//! over loopback HTTP (so the real clients and wire formats are used), the real receiver
//! and workers — walking through every rule of docs/rules.md with signed sample events,
//! then printing the resulting Salesforce records. `--keep-running` leaves it all up and
//! prints how to send your own events. Everything lives in one temporary directory,
//! removed on exit (also after Ctrl-C).

mod report;
mod script;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use serde_json::Value;
use tokio::sync::watch;

use crate::config::{QueueBackend, Settings};
use crate::queue::{memory::MemoryQueue, Queue};
use crate::salesforce::Record;
use crate::sandbox::salesforce::Org;
use crate::sandbox::skillsync::Lms;
use crate::store::{EventRecord, Store};
use crate::webhook::signature::decode_secret;
use crate::worker::Worker;

pub use script::RULES;
use script::{Step, World};

pub const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the receiver and sandboxes running after the walkthrough and print how to send
    /// your own events (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
    /// Where the receiver listens (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Log level of the demo's own logs.
    #[arg(long, default_value = "error")]
    pub log_level: String,
    /// SQLite file for the demo's state, kept after the demo (default: in the demo's
    /// temporary directory, removed on exit).
    #[arg(long)]
    pub db: Option<PathBuf>,
}

/// What the demo produced (also used by tests).
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Event id → what the store recorded for it, in sending order.
    pub outcomes: Vec<(String, EventRecord)>,
    /// Events whose outcome code differed from the script's expectation.
    pub surprises: Vec<String>,
    pub contacts: Vec<Record>,
    pub accounts: BTreeMap<String, String>,
    pub dead_letters: Vec<crate::queue::DeadLetter>,
}

pub fn demo_settings(
    sf_url: &str,
    ss_url: &str,
    store_url: &str,
    listen: &str,
) -> anyhow::Result<Settings> {
    Ok(Settings::from_toml(&demo_toml(
        sf_url, ss_url, store_url, listen,
    ))?)
}

/// The demo's configuration file (also written for `--keep-running`).
fn demo_toml(sf_url: &str, ss_url: &str, store_url: &str, listen: &str) -> String {
    format!(
        r#"# syncback demo settings (written by `syncback demo --keep-running`; removed on exit)
[server]
listen = "{listen}"
[webhooks]
secrets = ["{DEMO_SECRET}"]
[queue]
backend = "memory"
retry_delays_secs = [1, 2]
[store]
url = "{store_url}"
[salesforce]
login_url = "{sf_url}"
client_id = "{sf_id}"
client_secret = "{sf_secret}"
[skillsync]
base_url = "{ss_url}"
client_id = "{ss_id}"
client_secret = "{ss_secret}"
[sync]
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
match_field = "Email"
account_rule = "department"
[worker]
concurrency = 4
max_attempts = 3
"#,
        sf_id = Org::CLIENT_ID,
        sf_secret = Org::CLIENT_SECRET,
        ss_id = Lms::CLIENT_ID,
        ss_secret = Lms::CLIENT_SECRET,
    )
}

/// The worker pool, restarted whenever the demo puts another mapping in force.
struct Workers {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Workers {
    async fn start(
        settings: &Settings,
        store: &Arc<dyn Store>,
        queue: &Arc<dyn Queue>,
    ) -> anyhow::Result<Workers> {
        let engine = crate::worker::engine_from_settings(settings, store.clone()).await?;
        let worker = Arc::new(Worker::new(engine, queue.clone(), settings.worker.clone()));
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(worker.run(rx));
        Ok(Workers { stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Everything the walkthrough drives.
struct Demo {
    world: World,
    settings: Settings,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    workers: Option<Workers>,
    receiver: SocketAddr,
    http: reqwest::Client,
    sent: Vec<(String, String)>,
    outcomes: Vec<(String, EventRecord)>,
    surprises: Vec<String>,
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    // Removed when dropped: on return, on error, and after Ctrl-C with --keep-running.
    let tmp = tempfile::Builder::new()
        .prefix("syncback-demo-")
        .tempdir()
        .context("creating the demo's temporary directory")?;
    let world = script::seed()?;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("static address");
    let (sf_addr, sf_task) = world
        .org
        .serve(any)
        .await
        .context("serving the Salesforce sandbox")?;
    let (ss_addr, ss_task) = world
        .lms
        .serve(any)
        .await
        .context("serving the SkillSync sandbox")?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| tmp.path().join("syncback-demo.db"));
    let store_url = format!("sqlite://{}", db.display());
    let (sf_url, ss_url) = (format!("http://{sf_addr}"), format!("http://{ss_addr}"));
    let settings = demo_settings(&sf_url, &ss_url, &store_url, &args.listen)?;
    assert_eq!(settings.queue.backend, QueueBackend::Memory);
    settings.validate_for(crate::config::Role::Run)?;

    let store: Arc<dyn Store> = crate::store::open(&store_url, 4).await?;
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    let workers = Workers::start(&settings, &store, &queue).await?;
    let state = crate::http::AppState::new(&settings, queue.clone(), Some(store.clone()))?;
    let listener = tokio::net::TcpListener::bind(&settings.server.listen)
        .await
        .with_context(|| format!("--listen {}", settings.server.listen))?;
    let receiver = listener.local_addr()?;
    let (http_stop, mut http_rx) = watch::channel(false);
    let server = tokio::spawn(crate::http::serve(
        listener,
        crate::http::router(state),
        async move {
            let _ = http_rx.wait_for(|v| *v).await;
        },
    ));
    println!("syncback demo: receiver on http://{receiver}/webhooks/skillsync, Salesforce sandbox on {sf_url}, SkillSync sandbox on {ss_url}, store {store_url}");
    println!("Each section names a rule of docs/rules.md and what it means; each event shows what syncback did with it.");

    let mut demo = Demo {
        world,
        settings,
        store,
        queue,
        workers: Some(workers),
        receiver,
        http: reqwest::Client::new(),
        sent: Vec::new(),
        outcomes: Vec::new(),
        surprises: Vec::new(),
    };
    // Ctrl-C at any point stops the demo cleanly (and removes its temporary directory).
    let mut stop = super::commands::shutdown_signal();
    let walkthrough = async {
        for step in script::script(Utc::now() - chrono::Duration::minutes(5)) {
            demo.step(step).await?;
        }
        anyhow::Ok(())
    };
    let interrupted = tokio::select! {
        r = walkthrough => { r?; false }
        _ = stop.wait_for(|v| *v) => true,
    };
    let contacts = demo.world.org.records("Contact");
    let dead_letters = demo.queue.dlq_list().await?;
    report::tables(&demo.world, &contacts, &dead_letters);
    report::rules_shown(&demo.outcomes, &demo.surprises);
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    if args.keep_running && !interrupted {
        let config = tmp.path().join("syncback.toml");
        std::fs::write(
            &config,
            demo_toml(&sf_url, &ss_url, &store_url, &receiver.to_string()),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let hook = format!("http://{receiver}/webhooks/skillsync");
        demo.world
            .lms
            .send_webhooks_to(&hook, DEMO_SECRET)
            .map_err(|e| anyhow::anyhow!(e))?;
        let console = super::console::serve_demo_console(
            &demo.settings,
            demo.store.clone(),
            demo.queue.clone(),
            stop.clone(),
        )
        .await?;
        report::keep_running(&report::Running {
            world: &demo.world,
            receiver: &hook,
            salesforce: &sf_url,
            skillsync: &ss_url,
            skillsync_token: &demo.world.lms.issue_token(),
            config: &config,
            tmp: tmp.path(),
            settings: &demo.settings,
            console: &console,
        })?;
        let _ = stop.wait_for(|v| *v).await;
        println!("stopping; removing {}", tmp.path().display());
    }
    let _ = http_stop.send(true);
    let _ = server.await;
    if let Some(w) = demo.workers.take() {
        w.stop().await;
    }
    sf_task.abort();
    ss_task.abort();
    drop(tmp);
    Ok(DemoReport {
        outcomes: demo.outcomes,
        surprises: demo.surprises,
        contacts,
        accounts: demo.world.accounts,
        dead_letters,
    })
}

impl Demo {
    async fn step(&mut self, step: Step) -> anyhow::Result<()> {
        match step {
            Step::Rule(id) => report::rule_header(id),
            Step::ValidateSource => self.validate_source().await,
            Step::Configure(note, change) => {
                println!("  ⚙ mapping: {note}");
                if let Some(w) = self.workers.take() {
                    w.stop().await;
                }
                change(&mut self.settings.sync, &self.world);
                self.workers =
                    Some(Workers::start(&self.settings, &self.store, &self.queue).await?);
            }
            Step::Meanwhile(note, act) => {
                println!("  ⋯ meanwhile {note}");
                act(&self.world);
            }
            Step::Send {
                label,
                expect,
                envelope,
            } => self.send(label, expect, &envelope).await?,
        }
        Ok(())
    }

    /// R2: the configured department, and one SkillSync does not know.
    async fn validate_source(&self) {
        match crate::worker::validate_source(&self.settings).await {
            Ok(d) => println!(
                "  ✓ sync.source_department_id = \"{}\": SkillSync knows department {} {} — sync can be enabled",
                self.settings.sync.source_department_id, d.id, d.name
            ),
            Err(e) => println!("  ✗ source department: {e}"),
        }
        let mut unknown = self.settings.clone();
        unknown.sync.source_department_id = "77".into();
        match crate::worker::validate_source(&unknown).await {
            Ok(_) => println!("  ? department 77 unexpectedly exists"),
            Err(e) => println!(
                "  ✗ with sync.source_department_id = \"77\": {e} — `run` and `work` would refuse to start"
            ),
        }
    }

    async fn send(&mut self, label: &str, expect: &str, env: &Value) -> anyhow::Result<()> {
        let id = env["id"].as_str().unwrap_or_default().to_string();
        let ty = env["type"].as_str().unwrap_or_default();
        let learner = learner_of(env);
        let key = decode_secret(DEMO_SECRET).map_err(|e| anyhow::anyhow!(e))?;
        let body = serde_json::to_vec(env)?;
        let ts = Utc::now().timestamp();
        let resp = self
            .http
            .post(format!("http://{}/webhooks/skillsync", self.receiver))
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(&id, ts, &body))
            .body(body)
            .send()
            .await?;
        println!("  → {id} {ty} (learner {learner}): {label}");
        anyhow::ensure!(
            resp.status().as_u16() == 202,
            "receiver answered {} to {id}",
            resp.status()
        );
        // One event at a time so the walkthrough reads in order.
        let times = self.sent.iter().filter(|(i, _)| *i == id).count() + 1;
        let record = wait_for_outcome(&self.store, &learner, &id, times).await?;
        let record = record.with_context(|| format!("event {id} was not settled in time"))?;
        if record.code != expect {
            self.surprises
                .push(format!("{id}: expected {expect}, got {}", record.code));
        }
        report::outcome(&record, &self.world);
        self.sent.push((id.clone(), learner));
        self.outcomes.push((id, record));
        Ok(())
    }
}

fn learner_of(env: &Value) -> String {
    let d = &env["data"];
    d["learner"]["id"]
        .as_str()
        .or(d["enrollment"]["learner_id"].as_str())
        .or(d["certification"]["learner_id"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// The `times`-th record of event `id` (a redelivered id is recorded again as a duplicate).
async fn wait_for_outcome(
    store: &Arc<dyn Store>,
    learner: &str,
    id: &str,
    times: usize,
) -> anyhow::Result<Option<EventRecord>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let mut h = store.history(learner, 200).await?;
        h.reverse(); // oldest first
        if let Some(r) = h.into_iter().filter(|r| r.event_id == id).nth(times - 1) {
            return Ok(Some(r));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(None)
}
