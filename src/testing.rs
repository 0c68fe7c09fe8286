//! Helpers for tests that need the real RabbitMQ / PostgreSQL servers.
//!
//! Outside CI an unreachable server makes the test skip with a loud message; with
//! `CI=true` it is a failure (the servers must be there).

use std::time::Duration;

pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

fn reachable(addr: &str) -> bool {
    std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_ok()
}

fn require(name: &str, addr: &str) -> bool {
    if reachable(addr) {
        return true;
    }
    if in_ci() {
        panic!("{name} is not reachable on {addr} and CI=true: integration tests must run");
    }
    eprintln!(
        "\n!!!!! SKIPPING: {name} is not reachable on {addr}; start it to run this test !!!!!\n"
    );
    false
}

/// `Some(url)` of the local RabbitMQ, `None` (test skips) when down outside CI.
pub fn rabbitmq() -> Option<String> {
    let url = std::env::var("SYNCBACK_TEST_AMQP_URL").unwrap_or_else(|_| RABBITMQ_URL.into());
    require("RabbitMQ", "127.0.0.1:5672").then_some(url)
}

/// `Some(admin url)` of the local PostgreSQL, `None` (test skips) when down outside CI.
pub fn postgres() -> Option<String> {
    let url = std::env::var("SYNCBACK_TEST_PG_URL").unwrap_or_else(|_| POSTGRES_ADMIN_URL.into());
    require("PostgreSQL", "127.0.0.1:5432").then_some(url)
}

/// A fresh, uniquely named PostgreSQL database for one test; returns its URL.
///
/// Names carry the creating process id; the first call in a process drops the test
/// databases of processes that are gone, so repeated runs do not pile them up.
pub async fn fresh_postgres_db() -> Option<String> {
    use sqlx::Connection;
    static CLEANED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let admin = postgres()?;
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    if !CLEANED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        let names: Vec<(String,)> =
            sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'syncback_test_%'")
                .fetch_all(&mut conn)
                .await
                .unwrap_or_default();
        for (name,) in names {
            let owner_alive = name
                .strip_prefix("syncback_test_p")
                .and_then(|rest| rest.split('_').next())
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
            if !owner_alive {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
    let name = format!(
        "syncback_test_p{}_{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    Some(format!("{base}/{name}"))
}

/// A unique queue prefix so concurrent tests never share RabbitMQ queues.
pub fn unique_prefix(test: &str) -> String {
    format!(
        "sbtest.{test}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Remove a test's RabbitMQ queues and exchanges (quorum queues are not free; tests
/// must not leave them behind on the shared broker).
pub async fn delete_rabbit_topology(settings: &crate::config::QueueSettings) {
    if settings.backend != crate::config::QueueBackend::Rabbitmq {
        return;
    }
    match crate::queue::rabbitmq::RabbitQueue::connect(settings).await {
        Ok(q) => {
            if let Err(e) = q.delete_topology().await {
                eprintln!("could not delete test queues {}: {e}", settings.prefix);
            }
        }
        Err(e) => eprintln!("could not delete test queues {}: {e}", settings.prefix),
    }
}
