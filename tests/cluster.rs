//! The ingest path on a real three-node RabbitMQ cluster (README "Running against a
//! RabbitMQ cluster"): a flood of signed events through a receiver and two workers, and
//! the node they are all connected to is killed with SIGKILL mid-flood.
//!
//! Pass: every event answered 202 is applied, no duplicate Contacts, the receiver
//! answers 503 (never 202 for an unconfirmed event) only while it reconnects, and both
//! the receiver's and the workers' throughput return within 10 s.
//!
//! The nodes run beside the machine's own broker (their own names, ports, cookie and
//! directories; see `cluster/nodes.rs`), so this runs in a plain `cargo test`. It needs
//! the `rabbitmq-server` package (and PostgreSQL for the workers' store); without them
//! it fails, or skips with `SYNCBACK_ALLOW_SKIP=1`, never with `CI=true`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use syncback::config::Secret;
use syncback::queue::rabbitmq::RabbitQueue;
use syncback::queue::Queue;
use syncback::worker::Worker;

mod common;
use common::*;

#[path = "cluster/nodes.rs"]
mod nodes;
use nodes::Cluster;

/// Events per second the flood offers, how long it lasts and when the node dies.
const RATE: f64 = 150.0;
const FLOOD: Duration = Duration::from_secs(14);
const KILL_AT: Duration = Duration::from_secs(4);
const SENDERS: usize = 24;
const LEARNERS: usize = 100;
const RECOVERY: Duration = Duration::from_secs(10);

/// One answer the flood got: when (since the flood began), which event, what status.
#[derive(Clone, Debug)]
struct Answer {
    at: Duration,
    status: u16,
}

fn event(i: usize, t0: chrono::DateTime<Utc>) -> (String, serde_json::Value) {
    let l = format!("CL{:03}", i % LEARNERS);
    let round = i / LEARNERS;
    let at = t0 + chrono::Duration::seconds(round as i64);
    let id = format!("evt_cluster_{l}_{round:03}");
    let env = envelope(
        &id,
        "learner.updated",
        at,
        json!({"learner": learner_json(&l, &format!("{l}@cluster.example"),
            &format!("Round{round}"), ("43", "Sales"), "active", at)}),
    );
    (id, env)
}

/// Rate in a window: answers with `status` in [from, from + len).
fn count_in(answers: &[Answer], status: u16, from: Duration, len: Duration) -> usize {
    answers
        .iter()
        .filter(|a| a.status == status && a.at >= from && a.at < from + len)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_connected_node_mid_flood_loses_nothing() {
    let Some(sbin) = nodes::sbin_dir() else {
        syncback::testing::unavailable(
            "RabbitMQ's server scripts (/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin) are not installed",
            "install the rabbitmq-server package, or point SYNCBACK_RABBITMQ_SBIN at its sbin directory",
        );
        return;
    };
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let booted = Instant::now();
    let mut cluster = tokio::task::spawn_blocking(move || Cluster::start(&sbin, 3))
        .await
        .unwrap();
    eprintln!("three-node cluster up in {:.1?}", booted.elapsed());

    let w = world().await;
    let mut s = settings(&w, "rabbitmq", "amqp://unused", "sbcluster", &db);
    s.queue.urls = cluster.nodes.iter().map(|n| Secret::new(n.url())).collect();
    s.worker.concurrency = 8;
    s.worker.max_attempts = 20;

    // Receiver and two workers, each with its own connections, all starting on node 0.
    let store = syncback::store::open(&db, 10).await.unwrap();
    let receiver_q = Arc::new(RabbitQueue::connect(&s.queue).await.unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut worker_qs = Vec::new();
    for _ in 0..2 {
        let q = Arc::new(RabbitQueue::lazy(&s.queue));
        let engine = syncback::worker::engine_from_settings(&s, store.clone())
            .await
            .unwrap();
        let worker = Arc::new(Worker::new(engine, q.clone(), s.worker.clone()));
        tokio::spawn(worker.run(rx.clone()));
        worker_qs.push(q);
    }
    let state =
        syncback::http::AppState::new(&s, receiver_q.clone() as Arc<dyn Queue>, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx2 = rx.clone();
    tokio::spawn(syncback::http::serve(
        listener,
        syncback::http::router(state),
        async move {
            let _ = rx2.wait_for(|v| *v).await;
        },
    ));
    let url = format!("http://{addr}/webhooks/skillsync");
    let readyz = format!("http://{addr}/readyz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // The workers consume from node 0 as well: wait until all three clients are there.
    let c = &cluster;
    eventually(
        20,
        "receiver and both workers connected to node 0",
        || async { tokio::task::block_in_place(|| c.connections(0)) >= 3 },
    )
    .await;
    assert_eq!(receiver_q.connected_node().await, Some(0));

    // Applied-event count over time, straight from the store's table.
    let pg = sqlx::PgPool::connect(&db).await.unwrap();
    let applied_at = Arc::new(Mutex::new(Vec::<(Duration, i64)>::new()));
    let ready_at = Arc::new(Mutex::new(Vec::<(Duration, u16)>::new()));

    let t0 = Utc::now();
    let n = (RATE * FLOOD.as_secs_f64()) as usize;
    let answers = Arc::new(Mutex::new(Vec::<Answer>::with_capacity(n * 2)));
    let accepted = Arc::new(Mutex::new(Vec::<String>::with_capacity(n)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();

    let sampler = {
        let (pg, applied_at, ready_at, http, readyz) = (
            pg.clone(),
            applied_at.clone(),
            ready_at.clone(),
            http.clone(),
            readyz.clone(),
        );
        tokio::spawn(async move {
            loop {
                let c: (i64,) = sqlx::query_as("SELECT count(*) FROM processed_events")
                    .fetch_one(&pg)
                    .await
                    .unwrap_or((0,));
                applied_at.lock().unwrap().push((start.elapsed(), c.0));
                let r = http
                    .get(&readyz)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await;
                let code = r.map(|r| r.status().as_u16()).unwrap_or(0);
                ready_at.lock().unwrap().push((start.elapsed(), code));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let (http, url, next, answers, accepted) = (
            http.clone(),
            url.clone(),
            next.clone(),
            answers.clone(),
            accepted.clone(),
        );
        senders.push(tokio::spawn(async move {
            let key = syncback::webhook::signature::decode_secret(SECRET).unwrap();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let due = start + Duration::from_secs_f64(i as f64 / RATE);
                tokio::time::sleep_until(due.into()).await;
                let (id, env) = event(i, t0);
                let body = serde_json::to_vec(&env).unwrap();
                // SkillSync's retries: a 503 is sent again until it is accepted.
                let give_up = Instant::now() + Duration::from_secs(30);
                loop {
                    let ts = Utc::now().timestamp();
                    let status = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("webhook-id", &id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", key.sign(&id, ts, &body))
                        .body(body.clone())
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0);
                    answers.lock().unwrap().push(Answer {
                        at: start.elapsed(),
                        status,
                    });
                    match status {
                        202 => break,
                        503 if Instant::now() < give_up => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        503 => panic!("{id}: still 503 after 30 s: the receiver never recovered"),
                        other => panic!("{id}: unexpected answer {other}"),
                    }
                }
                accepted.lock().unwrap().push(id);
            }
        }));
    }

    // Mid-flood: SIGKILL the node the receiver and both workers are connected to.
    tokio::time::sleep_until((start + KILL_AT).into()).await;
    let killed = receiver_q.connected_node().await.expect("connected");
    let kill = start.elapsed();
    tokio::task::block_in_place(|| cluster.kill(killed));
    eprintln!("killed node {killed} at {kill:.2?}");

    for t in senders {
        t.await.expect("sender");
    }
    let flood_end = start.elapsed();
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), n, "every event was accepted in the end");

    // Every event answered 202 is applied (the workers drain the backlog).
    let pg2 = pg.clone();
    eventually(60, "every accepted event applied", || {
        let pg = pg2.clone();
        async move {
            let c: (i64,) = sqlx::query_as("SELECT count(*) FROM processed_events")
                .fetch_one(&pg)
                .await
                .unwrap();
            c.0 as usize >= n
        }
    })
    .await;
    sampler.abort();
    for id in &accepted {
        assert!(
            store.is_processed(id).await.unwrap(),
            "{id} was never applied"
        );
    }
    // No duplicate Contacts: exactly one per learner, at its newest round.
    let rounds = n.div_ceil(LEARNERS);
    for l in 0..LEARNERS {
        let l = format!("CL{l:03}");
        let last = (0..rounds)
            .rev()
            .find(|r| r * LEARNERS + l[2..].parse::<usize>().unwrap() < n);
        let c = contacts_with(&w.org, "Email", &format!("{l}@cluster.example"));
        assert_eq!(c.len(), 1, "{l}: exactly one Contact, got {}", c.len());
        assert_eq!(
            c[0]["LastName"],
            json!(format!("Round{}", last.unwrap())),
            "{l}"
        );
    }
    assert!(
        receiver_q.dlq_list().await.unwrap().is_empty(),
        "nothing dead-lettered"
    );

    // 503 only while reconnecting: none before the kill, none later than 10 s after it.
    let answers = answers.lock().unwrap().clone();
    let unavailable: Vec<&Answer> = answers.iter().filter(|a| a.status == 503).collect();
    if let (Some(first), Some(last)) = (unavailable.first(), unavailable.last()) {
        assert!(first.at >= kill, "503 before the kill at {:?}", first.at);
        assert!(
            last.at <= kill + RECOVERY,
            "503 still at {:?}, {:?} after the kill",
            last.at,
            last.at - kill
        );
    }
    // Receiver throughput returns: some 1-s window starting within 10 s of the kill
    // accepts at least half the offered rate.
    let win = Duration::from_secs(1);
    let step = Duration::from_millis(100);
    let recovered = (0..100)
        .map(|k| kill + step * k)
        .find(|&from| count_in(&answers, 202, from, win) as f64 >= RATE * 0.5)
        .map(|from| from + win - kill);
    // Workers' throughput returns: applied events grow by half the rate per second.
    let applied = applied_at.lock().unwrap().clone();
    let worker_recovered = applied
        .iter()
        .filter(|(t, _)| *t >= kill)
        .find(|(t, c)| {
            applied
                .iter()
                .find(|(t2, _)| *t2 >= *t + win)
                .is_some_and(|(_, c2)| (c2 - c) as f64 >= RATE * 0.5)
        })
        .map(|(t, _)| *t + win - kill);
    let ready = ready_at.lock().unwrap().clone();
    let not_ready: Vec<_> = ready.iter().filter(|(_, c)| *c != 200).collect();
    eprintln!(
        "flood: {n} events in {flood_end:.1?}; {} answers 503 between {:?} and {:?} after the kill; \
         receiver back to ≥ half rate {recovered:?} after the kill, workers {worker_recovered:?}; \
         /readyz not ready {} times; receiver now on node {:?}",
        unavailable.len(),
        unavailable.first().map(|a| a.at.saturating_sub(kill)),
        unavailable.last().map(|a| a.at.saturating_sub(kill)),
        not_ready.len(),
        receiver_q.connected_node().await,
    );
    assert!(
        recovered.is_some_and(|d| d <= RECOVERY),
        "receiver throughput did not return within 10 s: {recovered:?}"
    );
    assert!(
        worker_recovered.is_some_and(|d| d <= RECOVERY),
        "worker throughput did not return within 10 s: {worker_recovered:?}"
    );
    assert!(
        not_ready
            .iter()
            .all(|(t, _)| *t >= kill && *t <= kill + RECOVERY),
        "/readyz not ready outside the reconnect window: {not_ready:?}"
    );
    assert_ne!(receiver_q.connected_node().await, Some(killed));

    // A process starting now (first URL: the dead node) skips it and declares the
    // topology on a survivor: every queue is replicated, none has its home on the dead node.
    let late = RabbitQueue::connect(&s.queue)
        .await
        .expect("start with a node down");
    assert!(late.connected_node().await.is_some_and(|n| n != killed));
    late.ping().await.unwrap();
    late.close().await;

    let _ = stop.send(true);
    for q in &worker_qs {
        q.close().await;
    }
    receiver_q.close().await;
    drop(cluster); // the nodes go (the guard also stops them when a check above panics)
}

fn deploy_yaml(rel: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// Load settings from environment overrides only, as a container would.
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn settings_from_env(
    env: &serde_json::Map<String, serde_json::Value>,
) -> syncback::config::Settings {
    let mut out = None;
    figment::Jail::expect_with(|jail| {
        // serde_yaml does not apply YAML merge keys (`<<: *env`): merge them here.
        let merged = env
            .get("<<")
            .and_then(|m| m.as_object())
            .into_iter()
            .flatten();
        for (k, v) in merged.chain(env.iter().filter(|(k, _)| *k != "<<")) {
            jail.set_env(k, v.as_str().unwrap_or_else(|| panic!("{k}: not a string")));
        }
        out = Some(
            syncback::config::Settings::load(std::path::Path::new("/nonexistent.toml"), false)
                .map_err(|e| e.to_string())?,
        );
        Ok(())
    });
    out.unwrap()
}

/// The hosts of `queue.urls`, checked to be a three-node replicated setup.
fn cluster_hosts(s: &syncback::config::Settings) -> Vec<String> {
    assert!(s.queue.replicated(), "every queue replicated");
    assert_eq!(s.queue.group_size(), Some(3));
    s.queue
        .node_urls()
        .iter()
        .map(|u| {
            let u = url::Url::parse(u).unwrap();
            assert_eq!(u.scheme(), "amqp");
            u.host_str().unwrap().to_string()
        })
        .collect()
}

#[test]
fn deploy_cluster_examples_list_every_node_in_queue_urls() {
    // Compose: three clustered nodes, and every syncback service lists all three.
    let compose = &deploy_yaml("deploy/cluster/docker-compose.yml")[0];
    let services = compose["services"].as_object().unwrap();
    let rabbits: Vec<&String> = services
        .keys()
        .filter(|k| k.starts_with("rabbit-"))
        .collect();
    assert_eq!(rabbits.len(), 3);
    let peers = compose["configs"]["rabbitmq-cluster"]["content"]
        .as_str()
        .unwrap();
    for r in &rabbits {
        assert_eq!(services[r.as_str()]["hostname"], json!(r));
        assert!(peers.contains(&format!("rabbit@{r}")), "{r} is a peer");
    }
    for name in ["receiver", "worker"] {
        let env = services[name]["environment"].as_object().unwrap();
        let s = settings_from_env(env);
        let mut hosts = cluster_hosts(&s);
        hosts.sort();
        assert_eq!(hosts, ["rabbit-0", "rabbit-1", "rabbit-2"], "{name}");
    }
    // Kubernetes: a three-replica RabbitmqCluster and a Secret listing its three pods.
    let docs = deploy_yaml("deploy/cluster/k8s-rabbitmq.yaml");
    let rc = docs
        .iter()
        .find(|d| d["kind"] == "RabbitmqCluster")
        .unwrap();
    assert_eq!(rc["spec"]["replicas"], json!(3));
    let name = rc["metadata"]["name"].as_str().unwrap();
    let secret = docs.iter().find(|d| d["kind"] == "Secret").unwrap();
    assert_eq!(secret["metadata"]["name"], json!("syncback-secrets"));
    let s = settings_from_env(secret["stringData"].as_object().unwrap());
    let hosts = cluster_hosts(&s);
    assert_eq!(
        hosts,
        (0..3)
            .map(|i| format!("{name}-server-{i}.{name}-nodes"))
            .collect::<Vec<_>>()
    );
    // The Secret replaces deploy/k8s's: it carries every key that one does.
    let base = deploy_yaml("deploy/k8s/syncback.yaml");
    let base = base.iter().find(|d| d["kind"] == "Secret").unwrap();
    for k in base["stringData"].as_object().unwrap().keys() {
        if k != "SYNCBACK_QUEUE__URL" {
            assert!(secret["stringData"].get(k).is_some(), "{k} missing");
        }
    }
}
