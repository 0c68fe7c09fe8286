//! `syncback send`: sign a sample event (or your own envelope) with a webhook secret and
//! post it to a receiver, as SkillSync would (docs/rules.md "Webhook contract"). For
//! trying `demo --keep-running`, a local `run`, or a staging receiver.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::Args;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::sync::rules::sf_datetime;
use crate::webhook::signature::decode_secret;

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Event type of the sample event: learner.created|updated|deactivated|reactivated,
    /// enrollment.created|updated|completed|deleted, certification.issued|revoked|expired.
    #[arg(long = "type", default_value = "learner.created")]
    pub event_type: String,
    /// Learner id of the sample event.
    #[arg(long, default_value = "L100")]
    pub learner: String,
    /// Department id of the sample learner.
    #[arg(long, default_value = "43")]
    pub department: String,
    /// Department name of the sample learner (default: the sandbox's name for the id).
    #[arg(long)]
    pub department_name: Option<String>,
    /// Username (R5 matches it) of the sample learner (default: <learner>@acme.example).
    #[arg(long)]
    pub username: Option<String>,
    /// Send this envelope (a JSON file, or - for stdin) instead of a sample event.
    #[arg(long, conflicts_with_all = ["event_type", "learner", "department", "department_name", "username"])]
    pub file: Option<PathBuf>,
    /// Receiver URL (default: http://<server.listen>/webhooks/skillsync).
    #[arg(long)]
    pub url: Option<String>,
    /// Signing secret, `whsec_…` (default: the first of webhooks.secrets).
    #[arg(long, env = "SYNCBACK_SEND_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Print the signed request as a curl command instead of sending it.
    #[arg(long)]
    pub curl: bool,
}

/// The sample envelope for `args`.
fn sample(args: &SendArgs) -> anyhow::Result<Value> {
    let now = sf_datetime(Utc::now());
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let l = &args.learner;
    let dept_name = args.department_name.clone().unwrap_or_else(|| {
        crate::sandbox::skillsync::SAMPLE_DEPARTMENTS
            .iter()
            .find(|d| d.0 == args.department)
            .map_or_else(|| args.department.clone(), |d| d.1.to_string())
    });
    let user = args
        .username
        .clone()
        .unwrap_or_else(|| format!("{}@acme.example", l.to_lowercase()));
    let ty = args.event_type.as_str();
    let data = match ty.split('.').next() {
        Some("learner") => {
            let status = if ty == "learner.deactivated" { "inactive" } else { "active" };
            json!({"learner": {"id": l, "username": user, "email": user, "first_name": "Sample",
                "last_name": l, "department_id": args.department, "department_name": dept_name,
                "status": status, "fields": {}, "updated_at": now}})
        }
        Some("enrollment") => {
            let status = match ty {
                "enrollment.completed" => "completed",
                "enrollment.deleted" => "cancelled",
                _ => "enrolled",
            };
            let done = status == "completed";
            json!({"enrollment": {"id": format!("E-{l}-1"), "learner_id": l, "course_id": "C-101",
                "course_name": "Salesforce Basics", "status": status, "enrolled_at": now,
                "completed_at": if done { json!(now) } else { Value::Null },
                "score": if done { json!(90.0) } else { Value::Null }, "updated_at": now}})
        }
        Some("certification") => {
            let status = match ty {
                "certification.revoked" => "revoked",
                "certification.expired" => "expired",
                _ => "active",
            };
            json!({"certification": {"id": format!("CERT-{l}"), "learner_id": l, "name": "Admin Certified",
                "issued_at": now, "expires_at": Value::Null, "status": status, "updated_at": now}})
        }
        _ => anyhow::bail!(
            "--type {ty}: not an event type (learner.*, enrollment.*, certification.*; see `syncback send --help`)"
        ),
    };
    Ok(json!({"id": id, "type": ty, "occurred_at": now, "data": data}))
}

/// The signed headers of `body` for envelope id `id`: (timestamp, signature).
fn sign(secret: &str, id: &str, body: &[u8]) -> anyhow::Result<(i64, String)> {
    let key = decode_secret(secret).map_err(|e| anyhow::anyhow!("webhook secret: {e}"))?;
    let ts = Utc::now().timestamp();
    Ok((ts, key.sign(id, ts, body)))
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A ready-to-paste `curl` posting `env`, signed now with `secret`.
pub fn curl(url: &str, secret: &str, env: &Value) -> anyhow::Result<String> {
    let id = env["id"].as_str().unwrap_or_default();
    let body = serde_json::to_string(env)?;
    let (ts, sig) = sign(secret, id, body.as_bytes())?;
    Ok(format!(
        "curl -i -X POST {} -H 'content-type: application/json' -H 'webhook-id: {id}' -H 'webhook-timestamp: {ts}' -H 'webhook-signature: {sig}' --data {}",
        quote(url),
        quote(&body)
    ))
}

pub async fn run(settings: &Settings, args: &SendArgs) -> anyhow::Result<ExitCode> {
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => settings
            .webhooks
            .secrets
            .first()
            .map(|s| s.expose().to_string())
            .context("no signing secret: pass --secret or configure webhooks.secrets")?,
    };
    let url = match &args.url {
        Some(u) => u.clone(),
        None => format!("http://{}/webhooks/skillsync", settings.server.listen),
    };
    let env: Value = match &args.file {
        Some(p) => {
            let raw = if p.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(p).with_context(|| format!("--file {}", p.display()))?
            };
            serde_json::from_str(&raw)
                .with_context(|| format!("--file {}: not JSON", p.display()))?
        }
        None => sample(args)?,
    };
    let id = env["id"]
        .as_str()
        .context("the envelope has no string `id` (it is also the webhook-id)")?
        .to_string();
    if args.curl {
        println!("{}", curl(&url, &secret, &env)?);
        return Ok(ExitCode::SUCCESS);
    }
    let body = serde_json::to_vec(&env)?;
    let (ts, sig) = sign(&secret, &id, &body)?;
    println!(
        "→ POST {url}  {id} {}",
        env["type"].as_str().unwrap_or("(no type)")
    );
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .with_context(|| format!("posting to {url} (--url, or server.listen)"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    println!("← {status} {text}");
    if !status.is_success() {
        return Ok(ExitCode::FAILURE);
    }
    let learner = env["data"]
        .as_object()
        .and_then(|d| d.values().next())
        .and_then(|v| v.get("learner_id").or_else(|| v.get("id")))
        .and_then(Value::as_str)
        .unwrap_or("<learner id>");
    let learner = if env["data"].get("learner").is_some() {
        env["data"]["learner"]["id"].as_str().unwrap_or(learner)
    } else {
        learner
    };
    println!("queued; see the outcome with `syncback learner status {learner}` (same --config)");
    Ok(ExitCode::SUCCESS)
}
