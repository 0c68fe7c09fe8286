//! `syncback sandbox salesforce|skillsync`: the built-in emulators over HTTP (no
//! configuration needed).

use std::process::ExitCode;

use super::commands::{shutdown_signal, wait_true};
use super::SandboxCmd;

pub async fn sandbox(cmd: SandboxCmd) -> anyhow::Result<ExitCode> {
    let (handle, seeded) = match cmd {
        SandboxCmd::Salesforce {
            listen,
            empty,
            latency_ms,
            api_limit,
        } => {
            let org = crate::sandbox::salesforce::Org::new();
            org.set_latency(std::time::Duration::from_millis(latency_ms));
            org.set_api_limit(api_limit);
            let mut seeded = String::new();
            if !empty {
                for name in ["Engineering", "Sales", "Prospects"] {
                    let mut r = crate::salesforce::Record::new();
                    r.insert("Name".into(), serde_json::json!(name));
                    let id = org
                        .insert("Account", r)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    seeded.push_str(&format!("\n  Account {id} {name}"));
                }
            }
            let (b, h) = org.serve(listen.parse()?).await?;
            println!("Salesforce sandbox on http://{b} (client id sandbox-client, secret sandbox-secret); Ctrl-C to stop");
            println!("  {latency_ms} ms per REST call; daily API limit {api_limit} (GET /services/data/v61.0/limits)");
            (h, seeded)
        }
        SandboxCmd::Skillsync {
            listen,
            empty,
            webhook_url,
            webhook_secret,
        } => {
            let lms = crate::sandbox::skillsync::Lms::new();
            let mut seeded = String::new();
            if !empty {
                for line in lms.seed_sample() {
                    seeded.push_str(&format!("\n  {line}"));
                }
            }
            if let Some(url) = &webhook_url {
                let secret = webhook_secret.as_deref().unwrap_or_default();
                lms.send_webhooks_to(url, secret)
                    .map_err(|e| anyhow::anyhow!("--webhook-secret: {e}"))?;
            }
            let (b, h) = lms.serve(listen.parse()?).await?;
            let token = lms.issue_token();
            println!("SkillSync sandbox on http://{b} (client id sandbox-client, secret sandbox-secret); Ctrl-C to stop");
            println!("  API token (no OAuth exchange needed): {token}");
            println!("  add a learner:  curl -s -X POST http://{b}/api/v1/learners -H 'authorization: Bearer {token}' -H 'content-type: application/json' -d '{{\"username\": \"new@acme.example\", \"last_name\": \"New\", \"department_id\": \"43\"}}'");
            println!("  list them:      curl -s 'http://{b}/api/v1/learners?department_id=43' -H 'authorization: Bearer {token}'");
            match &webhook_url {
                Some(url) => println!("  every write is also sent as a signed webhook to {url}"),
                None => println!("  (--webhook-url URL --webhook-secret whsec_… also sends each write as a signed webhook)"),
            }
            (h, seeded)
        }
    };
    if !seeded.is_empty() {
        println!("seeded (--empty to start without):{seeded}");
    }
    wait_true(shutdown_signal()).await;
    handle.abort();
    Ok(ExitCode::SUCCESS)
}
