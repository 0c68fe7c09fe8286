//! Ingestion benchmark (issue: webhook ingestion; issue: receiver overhead): signed
//! webhooks posted over loopback to the real receiver, measured end to end (HTTP +
//! signature + JSON + schema + metrics + publish with publisher confirm).
//!
//! `cargo bench --bench ingest` — runs, in one go:
//!
//! 1. memory queue, full speed (everything but the broker),
//! 2. the **baseline**: a bare axum + lapin receiver that only publishes each body with a
//!    publisher confirm to a quorum queue — and syncback's receiver on RabbitMQ with
//!    confirms, both at full speed, over `INGEST_ROUNDS` rounds, each run from empty
//!    queues after a pause, taking turns going first (the machine is shared: alternating
//!    spreads its noise over both); the ratio syncback / bare of the medians is the
//!    receiver's overhead (goal: ≥ 0.8). Twice: both receivers in this process, sharing the
//!    load generator's runtime; then each in a process of its own — the `syncback receive`
//!    binary as shipped, and the bare receiver re-run from this executable — which is how a
//!    user measures them from outside, and gives each receiver's own CPU per request,
//! 3. RabbitMQ with confirms, paced at 2,000 webhooks/s (latency under a realistic load),
//! 4. the CPU cost of each stage of the request path, measured alone on one thread
//!    (signature, JSON parse, schema validation, metrics, message encoding).
//!
//! Each run reports accepted/s, p50/p99 latency, and the CPU time per request spent in this
//! process (receiver + load generator) and in the broker (`beam.smp`), read from `/proc` —
//! on a machine where all three share the cores, throughput is total CPU per request.
//! Environment: `INGEST_N` (default 20000), `INGEST_CONCURRENCY` (default 256 senders),
//! `INGEST_ROUNDS` (default 3), `INGEST_ONLY` (`bare` or `syncback`: one receiver only, for
//! profiling it with `perf record`). The whole benchmark runs on the allocator of the
//! `syncback` binary (mimalloc), so both receivers are compared on the same one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncback::config::Settings;
use syncback::queue::Queue;
use syncback::webhook::signature::decode_secret;

/// The allocator of the `syncback` binary (src/main.rs), for both receivers and the
/// load generator alike: the comparison is of request paths, not of allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Report {
    accepted: usize,
    rejected: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time per accepted request of this process (receiver + load generator) and of
    /// the broker (every `beam.smp` on the machine), from `/proc` — where the time goes.
    cpu_us: Option<(f64, f64)>,
    /// CPU time per accepted request of a receiver running in a process of its own.
    receiver_cpu_us: Option<f64>,
}

/// User + system CPU time (clock ticks) of a process, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) closed by ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// (this process, the broker) CPU ticks so far; the broker is every `beam.smp`.
fn cpu_now() -> Option<(u64, u64)> {
    let me = cpu_ticks("self")?;
    let mut broker = 0;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let pid = name.to_string_lossy();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "beam.smp" {
            broker += cpu_ticks(&pid).unwrap_or(0);
        }
    }
    Some((me, broker))
}

async fn spawn(settings: &Settings, queue: Arc<dyn Queue>) -> String {
    let state = syncback::http::AppState::new(settings, queue, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(syncback::http::serve(
        listener,
        syncback::http::router(state),
        std::future::pending(),
    ));
    format!("http://{addr}/webhooks/skillsync")
}

fn body(i: usize) -> (String, Vec<u8>) {
    let id = format!("evt_bench_{i:08}_{}", uuid::Uuid::new_v4().simple());
    let b = serde_json::json!({"id": id, "type": "learner.updated", "occurred_at": "2026-11-24T10:00:00.123Z",
        "data": {"learner": {"id": format!("{}", i % 5000), "username": format!("u{i}@acme.example"),
            "email": format!("u{i}@acme.example"), "first_name": "Ada", "last_name": "Lovelace",
            "department_id": "43", "department_name": "Sales", "status": "active",
            "fields": {"company": "Acme"}, "updated_at": "2026-11-24T10:00:00Z"}}});
    (id, serde_json::to_vec(&b).unwrap())
}

/// Post `n` webhooks with `concurrency` in flight; `rate` (per second) paces them.
async fn run(url: &str, n: usize, concurrency: usize, rate: Option<f64>) -> Report {
    run_against(url, None, n, concurrency, rate).await
}

/// [`run`] against a receiver in process `receiver` (its CPU time is reported apart).
async fn run_against(
    url: &str,
    receiver: Option<u32>,
    n: usize,
    concurrency: usize,
    rate: Option<f64>,
) -> Report {
    let receiver_ticks = || receiver.and_then(|pid| cpu_ticks(&pid.to_string()));
    let key = decode_secret(SECRET).unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    // Pre-build signed requests so the generator measures the receiver, not JSON encoding.
    let ts = chrono::Utc::now().timestamp();
    let reqs: Arc<Vec<(String, String, Vec<u8>)>> = Arc::new(
        (0..n)
            .map(|i| {
                let (id, b) = body(i);
                let sig = key.sign(&id, ts, &b);
                (id, sig, b)
            })
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu_before = cpu_now();
    let receiver_before = receiver_ticks();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, reqs, next, url) = (http.clone(), reqs.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rejected = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= reqs.len() {
                    break;
                }
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let (id, sig, b) = &reqs[i];
                let t = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(b.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => lat.push(t.elapsed()),
                    _ => rejected += 1,
                }
            }
            (lat, rejected)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut rejected = 0;
    for t in tasks {
        let (l, r) = t.await.unwrap();
        lat.extend(l);
        rejected += r;
    }
    let secs = start.elapsed().as_secs_f64();
    let tick_us = 1e6 / 100.0; // USER_HZ is 100 on Linux
    let per = |ticks: u64| ticks as f64 * tick_us / lat.len().max(1) as f64;
    let cpu_us = cpu_before
        .zip(cpu_now())
        .map(|((m0, b0), (m1, b1))| (per(m1 - m0), per(b1 - b0)));
    let receiver_cpu_us = receiver_before
        .zip(receiver_ticks())
        .map(|(r0, r1)| per(r1 - r0));
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    Report {
        accepted: lat.len(),
        rejected,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        cpu_us,
        receiver_cpu_us,
    }
}

fn print(name: &str, r: &Report) {
    println!(
        "{name:<34} {:>7} accepted {:>4} failed in {:>6.2}s = {:>8.0} webhooks/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        r.accepted,
        r.rejected,
        r.secs,
        r.accepted as f64 / r.secs,
        r.p50_ms,
        r.p99_ms
    );
    match (r.cpu_us, r.receiver_cpu_us) {
        (Some((me, broker)), Some(receiver)) => println!(
            "{:<34} CPU per request: receiver {receiver:>6.1} µs, senders {me:>6.1} µs, broker {broker:>6.1} µs",
            ""
        ),
        (Some((me, broker)), None) => println!(
            "{:<34} CPU per request: receiver + senders {me:>6.1} µs, broker {broker:>6.1} µs",
            ""
        ),
        _ => {}
    }
}

fn settings(backend: &str, prefix: &str) -> Settings {
    Settings::from_toml(&format!(
        "[webhooks]\nsecrets = [\"{SECRET}\"]\n[queue]\nbackend = \"{backend}\"\nprefix = \"{prefix}\"\n"
    ))
    .unwrap()
}

/// The baseline: a bare axum + lapin receiver. One connection, one confirm channel, a
/// quorum queue; each request's body is published (persistent) and answered 202 once
/// the broker confirmed it — no signature, no parsing, no validation, no metrics.
async fn spawn_bare(amqp: &str, queue: &str) -> Result<(String, lapin::Connection), String> {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let props = ConnectionProperties::default()
        .with_executor(tokio_executor_trait::Tokio::current())
        .with_reactor(tokio_reactor_trait::Tokio);
    let conn = Connection::connect(amqp, props)
        .await
        .map_err(|e| e.to_string())?;
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        queue,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .map_err(|e| e.to_string())?;
    let queue: Arc<str> = queue.into();
    let app = axum::Router::new().route(
        "/webhooks/skillsync",
        axum::routing::post(move |body: Bytes| {
            let (ch, queue) = (ch.clone(), queue.clone());
            async move {
                let confirm = match ch
                    .basic_publish(
                        "",
                        &queue,
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                {
                    Ok(c) => c.await,
                    Err(e) => Err(e),
                };
                match confirm {
                    Ok(c) if c.is_ack() => StatusCode::ACCEPTED,
                    _ => StatusCode::SERVICE_UNAVAILABLE,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((format!("http://{addr}/webhooks/skillsync"), conn))
}

/// `rounds` alternated runs of the bare receiver (`receivers[0]`) and syncback's
/// (`receivers[1]`), each from empty queues; prints the ratio of the medians.
async fn compare<F: std::future::Future<Output = ()>>(
    label: &str,
    receivers: &[(Option<u32>, String); 2],
    rounds: usize,
    n: usize,
    c: usize,
    only: Option<&str>,
    settle: &impl Fn() -> F,
) {
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for bare_turn in [round % 2 == 1, round % 2 == 0] {
            match only {
                Some("bare") if !bare_turn => continue,
                Some("syncback") if bare_turn => continue,
                _ => {}
            }
            settle().await;
            let (pid, url) = &receivers[usize::from(!bare_turn)];
            let r = run_against(url, *pid, n, c, None).await;
            let name = if bare_turn {
                "bare axum + lapin"
            } else {
                "syncback receiver"
            };
            print(&format!("{name}, round {round}"), &r);
            if bare_turn { &mut bare } else { &mut ours }.push(rate(&r));
        }
    }
    settle().await;
    if bare.is_empty() || ours.is_empty() {
        return;
    }
    let (b, s) = (median(bare), median(ours));
    println!(
        "{label}: quorum queue + confirms, {c} senders: bare {b:.0}/s, syncback {s:.0}/s \
         = {:.2} of the bare receiver (medians of {rounds} rounds)\n",
        s / b
    );
}

fn rate(r: &Report) -> f64 {
    r.accepted as f64 / r.secs
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// CPU cost of each stage of the request path, alone on one thread, per request.
fn stage_profile(settings: &Settings, n: usize) {
    use std::hint::black_box;
    let key = decode_secret(SECRET).unwrap();
    let ts = chrono::Utc::now().timestamp();
    let reqs: Vec<(String, String, Vec<u8>)> = (0..n)
        .map(|i| {
            let (id, b) = body(i);
            let sig = key.sign(&id, ts, &b);
            (id, sig, b)
        })
        .collect();
    let secrets: Vec<&str> = settings
        .webhooks
        .secrets
        .iter()
        .map(|s| s.expose())
        .collect();
    let verifier = syncback::webhook::signature::Verifier::new(&secrets, 300).unwrap();
    let schema = syncback::webhook::schema::SchemaValidator::new().unwrap();
    let ts_s = ts.to_string();
    let time = |name: &str, f: &mut dyn FnMut(usize)| {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("  {name:<44} {us:>8.2} µs/request");
    };
    println!("request path, CPU per stage on one thread ({n} requests):");
    time("signature (HMAC-SHA256, constant-time)", &mut |i| {
        let (id, sig, b) = &reqs[i];
        let ok = verifier.verify(Some(id), Some(&ts_s), Some(sig), b, ts);
        assert!(black_box(ok).is_ok());
    });
    let parsed: Vec<serde_json::Value> = reqs
        .iter()
        .map(|(_, _, b)| serde_json::from_slice(b).unwrap())
        .collect();
    time("JSON parse (serde_json::Value)", &mut |i| {
        black_box(serde_json::from_slice::<serde_json::Value>(&reqs[i].2).unwrap());
    });
    time("schema validation (jsonschema)", &mut |i| {
        assert!(black_box(schema.validate(&parsed[i])).is_ok());
    });
    time(
        "envelope re-encoding (avoided: the body is queued as received)",
        &mut |i| {
            black_box(serde_json::to_vec(&parsed[i]).unwrap());
        },
    );
    time("metrics (counter with label + histogram)", &mut |i| {
        let ty = parsed[i]["type"].as_str().unwrap().to_string();
        metrics::counter!(syncback::telemetry::RECEIVED, "type" => ty).increment(1);
        metrics::histogram!(syncback::telemetry::PUBLISH_SECONDS).record(0.001);
    });
}

/// A receiver in a process of its own (as the issue measured it, from outside): its pid
/// for CPU accounting, its webhook URL, and the child, killed on drop.
struct Process {
    child: std::process::Child,
    url: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare receiver, alone in this executable re-run with `--bare-receiver AMQP QUEUE`:
/// prints its URL on the first line of stdout, then serves until killed.
fn bare_receiver_main(amqp: &str, queue: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (url, _conn) = spawn_bare(amqp, queue).await.expect("bare receiver");
        println!("{url}");
        std::future::pending::<()>().await;
    });
}

fn spawn_bare_process(amqp: &str, queue: &str) -> Process {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--bare-receiver", amqp, queue])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("re-running the benchmark as the bare receiver");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    Process {
        child,
        url: line.trim().to_string(),
    }
}

/// The `syncback` binary itself: `syncback receive` with a config of its own.
async fn spawn_syncback_process(dir: &std::path::Path, prefix: &str, amqp: &str) -> Process {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("syncback.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[webhooks]\nsecrets = [\"{SECRET}\"]\n\
             [queue]\nbackend = \"rabbitmq\"\nurl = \"{amqp}\"\nprefix = \"{prefix}\"\n"
        ),
    )
    .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .arg("receive")
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .env_remove("SYNCBACK_CONFIG")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("starting syncback receive");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await {
            if r.status() == 200 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Process {
        child,
        url: format!("{base}/webhooks/skillsync"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return; // `cargo test --benches` probes harness=false targets with --list
    }
    if args.get(1).map(String::as_str) == Some("--bare-receiver") {
        return bare_receiver_main(&args[2], &args[3]);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("INGEST_N", 20_000);
        let c = env_usize("INGEST_CONCURRENCY", 256);
        let rounds = env_usize("INGEST_ROUNDS", 3).max(1);
        println!("ingest benchmark: {n} signed webhooks per run, {c} in flight, loopback");

        let mem = settings("memory", "bench");
        let url = spawn(&mem, Arc::new(syncback::queue::memory::MemoryQueue::new())).await;
        let _warm = run(&url, 1000, c, None).await;
        print("memory queue (no broker)", &run(&url, n, c, None).await);

        let prefix = format!(
            "bench.ingest.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let rmq = settings("rabbitmq", &prefix);
        let queue = match syncback::queue::connect(&rmq.queue).await {
            Ok(q) => q,
            Err(e) => {
                println!("RabbitMQ runs skipped: {e}");
                return;
            }
        };
        let bare_queue = format!("{prefix}.bare");
        let (bare_url, bare_conn) = match spawn_bare(rmq.queue.url.expose(), &bare_queue).await {
            Ok(b) => b,
            Err(e) => {
                println!("RabbitMQ runs skipped: {e}");
                return;
            }
        };
        let url = spawn(&rmq, queue.clone()).await;
        let _warm = run(&bare_url, 2000, c, None).await;
        let _warm = run(&url, 2000, c, None).await;
        // Every run starts from empty queues and a broker at rest (a quorum queue keeps
        // writing its log for a while after a burst), and the two receivers take turns
        // going first, so neither inherits the other's backlog.
        let settle = || async {
            use lapin::options::QueuePurgeOptions;
            if let Ok(ch) = bare_conn.create_channel().await {
                for q in [bare_queue.clone(), format!("{prefix}.events")] {
                    let _ = ch.queue_purge(&q, QueuePurgeOptions::default()).await;
                }
                let _ = ch.close(200, "purged").await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        // In this process (the same runtime as the load generator), then each receiver in a
        // process of its own — the `syncback` binary as shipped against the bare receiver
        // re-run from this executable — as a user measures them from outside.
        let only = std::env::var("INGEST_ONLY").ok();
        let in_process = [(None, bare_url.clone()), (None, url.clone())];
        compare(
            "in this process",
            &in_process,
            rounds,
            n,
            c,
            only.as_deref(),
            &settle,
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let bare_proc = spawn_bare_process(rmq.queue.url.expose(), &bare_queue);
        let ours_proc = spawn_syncback_process(dir.path(), &prefix, rmq.queue.url.expose()).await;
        let apart = [
            (Some(bare_proc.child.id()), bare_proc.url.clone()),
            (Some(ours_proc.child.id()), ours_proc.url.clone()),
        ];
        let _warm = run(&apart[0].1, 2000, c, None).await;
        let _warm = run(&apart[1].1, 2000, c, None).await;
        compare(
            "processes of their own",
            &apart,
            rounds,
            n,
            c,
            only.as_deref(),
            &settle,
        )
        .await;
        drop((bare_proc, ours_proc));
        let paced = (n / 2).max(2000);
        print(
            "syncback, paced at 2,000/s",
            &run(&url, paced, c.min(64), Some(2000.0)).await,
        );
        let depth = queue.depths().await.map(|d| d.main).unwrap_or(0);
        println!(
            "messages on {prefix}.events: {depth} (every webhook of the paced run, none lost)"
        );
        {
            use lapin::options::QueueDeleteOptions;
            if let Ok(ch) = bare_conn.create_channel().await {
                let _ = ch
                    .queue_delete(&bare_queue, QueueDeleteOptions::default())
                    .await;
            }
            let _ = bare_conn.close(200, "bench done").await;
        }
        syncback::testing::delete_rabbit_topology(&rmq.queue).await;
        stage_profile(&rmq, n.min(20_000));
    });
}
