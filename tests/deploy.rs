//! `deploy/` cannot be run here (no container engine), so these tests parse every file
//! and check that names, ports, env keys and metric names agree with the code
//! (the Dockerfile, compose and RabbitMQ's users: tests/deploy_containers.rs).

mod deploy_support;

use clap::Parser;
use deploy_support::*;
use serde_json::Value;
use syncback::config::{QueueSettings, Role, Settings};
use syncback::queue::rabbitmq::Topology;

#[test]
fn rabbitmq_definitions_match_the_declared_topology() {
    let defs: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).unwrap();
    let t = Topology::new(&QueueSettings::default());
    let queue = |name: &str| -> Value {
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("queue {name} missing from definitions.json"))
            .clone()
    };
    let events = queue(&t.events);
    assert_eq!(events["arguments"]["x-queue-type"], "quorum");
    assert_eq!(events["arguments"]["x-delivery-limit"], t.delivery_limit);
    assert_eq!(
        events["arguments"]["x-dead-letter-exchange"],
        t.dead_exchange.as_str()
    );
    assert_eq!(
        events["arguments"]["x-dead-letter-strategy"],
        "at-least-once"
    );
    assert_eq!(events["arguments"]["x-overflow"], "reject-publish");
    for (delay, name) in &t.retries {
        let q = queue(name);
        assert_eq!(q["arguments"]["x-message-ttl"], delay * 1000, "{name}");
        assert_eq!(
            q["arguments"]["x-dead-letter-exchange"],
            t.work_exchange.as_str()
        );
    }
    queue(&t.dlq);
    assert_eq!(
        defs["queues"].as_array().unwrap().len(),
        t.retries.len() + 2
    );
    let bindings = defs["bindings"].as_array().unwrap();
    assert!(bindings
        .iter()
        .any(|b| b["source"] == t.work_exchange.as_str() && b["destination"] == t.events.as_str()));
    assert!(bindings
        .iter()
        .any(|b| b["source"] == t.dead_exchange.as_str() && b["destination"] == t.dlq.as_str()));
}

#[test]
fn example_config_is_complete_and_valid() {
    let s = Settings::from_toml(&read("deploy/syncback.example.toml"))
        .expect("parses with deny_unknown_fields");
    s.validate_for(Role::Run).expect("valid for `run`");
    assert_eq!(s.queue.prefix, "syncback");
}

#[test]
fn compose_services_ports_and_env_agree_with_the_code() {
    let docs = yaml_docs("deploy/docker-compose.yml");
    let c = &docs[0];
    let services = c["services"].as_object().unwrap();
    for name in ["rabbitmq", "postgres", "receiver", "worker"] {
        assert!(services.contains_key(name), "service {name}");
    }
    assert!(c["services"]["rabbitmq"]["image"]
        .as_str()
        .unwrap()
        .contains("management"));
    assert_eq!(c["services"]["receiver"]["command"][0], "receive");
    assert_eq!(c["services"]["worker"]["command"][0], "work");
    assert!(c["services"]["receiver"]["ports"][0]
        .as_str()
        .unwrap()
        .ends_with(":8080"));
    for svc in ["receiver", "worker"] {
        let env = c["services"][svc]["environment"].as_object().unwrap();
        let mut pairs = Vec::new();
        for (k, v) in env {
            if k == "<<" {
                continue;
            }
            assert_config_env_key(k);
            pairs.push((k.clone(), interpolate(v.as_str().unwrap())));
        }
        env_overrides_parse(&pairs);
        let listen = env
            .get("SYNCBACK_SERVER__LISTEN")
            .or_else(|| c["services"]["receiver"]["environment"].get("SYNCBACK_SERVER__LISTEN"))
            .unwrap();
        assert!(listen.as_str().unwrap().ends_with(":8080"));
    }
    // The Dockerfile builds the binary the services run, with the port they expose.
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains("cargo build --release --locked --bin syncback"));
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(
        dockerfile.contains("FROM rust:") && dockerfile.matches("FROM ").count() >= 2,
        "multi-stage"
    );
}

#[test]
fn kubernetes_manifests_agree_with_config_cli_and_probes() {
    let docs = yaml_docs("deploy/k8s/syncback.yaml");
    fn of_kind<'a>(docs: &'a [Value], k: &'a str) -> impl Iterator<Item = &'a Value> {
        docs.iter().filter(move |d| d["kind"] == k)
    }
    let kind = |k: &'static str| of_kind(&docs, k);
    let cm = kind("ConfigMap").next().unwrap();
    let settings =
        Settings::from_toml(cm["data"]["syncback.toml"].as_str().unwrap()).expect("ConfigMap TOML");
    let port: u16 = settings
        .server
        .listen
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let secret = kind("Secret").next().unwrap();
    let mut pairs = Vec::new();
    for (k, v) in secret["stringData"].as_object().unwrap() {
        assert_config_env_key(k);
        pairs.push((k.clone(), v.as_str().unwrap().to_string()));
    }
    env_overrides_parse(&pairs);
    let deployments: Vec<_> = kind("Deployment").collect();
    assert_eq!(deployments.len(), 2);
    for d in deployments {
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["ports"][0]["containerPort"], port);
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        let args: Vec<String> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        let cli = syncback::cli::Cli::try_parse_from(
            std::iter::once("syncback".to_string()).chain(args.clone()),
        )
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let expected = if d["metadata"]["name"] == "syncback-worker" {
            "Work"
        } else {
            "Receive"
        };
        let command = format!("{:?}", cli.command);
        assert!(
            command.starts_with(&format!("{expected}(")),
            "{command} is not {expected}"
        );
        assert_eq!(
            c["envFrom"][0]["secretRef"]["name"],
            secret["metadata"]["name"]
        );
        for e in c["env"].as_array().into_iter().flatten() {
            let key = e["name"].as_str().unwrap();
            assert_config_env_key(key);
            if key == "SYNCBACK_WORKER__LISTEN" {
                assert!(e["value"].as_str().unwrap().ends_with(&format!(":{port}")));
            }
        }
    }
    let svc = kind("Service").next().unwrap();
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "http");
}

#[test]
fn keda_scales_the_worker_deployment_on_the_events_queue() {
    let docs = yaml_docs("deploy/k8s/keda-scaledobject.yaml");
    let so = docs.iter().find(|d| d["kind"] == "ScaledObject").unwrap();
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], "syncback-worker");
    let trig = &so["spec"]["triggers"][0];
    assert_eq!(trig["type"], "rabbitmq");
    assert_eq!(
        trig["metadata"]["queueName"],
        Topology::new(&QueueSettings::default()).events.as_str()
    );
    let auth = docs
        .iter()
        .find(|d| d["kind"] == "TriggerAuthentication")
        .unwrap();
    assert_eq!(trig["authenticationRef"]["name"], auth["metadata"]["name"]);
    assert_config_env_key(auth["spec"]["secretTargetRef"][0]["key"].as_str().unwrap());
}

#[test]
fn grafana_dashboard_charts_every_metric_the_code_exports() {
    let dash: Value =
        serde_json::from_str(&read("deploy/grafana/syncback-dashboard.json")).unwrap();
    let exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| {
            p["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["expr"].as_str().unwrap().to_string())
        })
        .collect();
    let all = syncback::telemetry::ALL;
    let readme = read("README.md");
    for &m in all {
        assert!(exprs.iter().any(|e| e.contains(m)), "no panel for {m}");
        assert!(readme.contains(m), "README does not document {m}");
    }
    // And no panel queries a metric that does not exist.
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("syncback_") {
                let base = word
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    all.contains(&base),
                    "dashboard queries unknown metric {word}"
                );
            }
        }
    }
}

/// Every key of the configuration (from the serialised defaults), as `section.key`; the
/// optional keys the defaults leave out are added by hand.
fn every_config_key() -> Vec<(String, String)> {
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    let mut keys = Vec::new();
    for (section, v) in defaults.as_object().unwrap() {
        for key in v.as_object().unwrap().keys() {
            keys.push((section.clone(), key.clone()));
        }
    }
    keys.push(("salesforce".into(), "api_usage_threshold".into()));
    keys
}

/// deploy/syncback.example.toml lists every key of the configuration structs (set, or
/// commented out for optional ones) in its section, so it cannot drift from the code.
#[test]
fn example_config_lists_every_key_of_the_configuration() {
    let text = read("deploy/syncback.example.toml");
    // section -> the keys written in it, set or commented out
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut section = String::new();
    for raw in text.lines() {
        let line = raw.trim().trim_start_matches('#').trim();
        if let Some(h) = line.strip_prefix('[') {
            let h = h.trim_start_matches('[');
            let name = h.split(']').next().unwrap().trim().to_string();
            // [sync.field_map] and [[admin.users]] are keys of their parent section.
            if let Some((parent, key)) = name.split_once('.') {
                seen.entry(parent.into()).or_default().push(key.into());
                section = name;
            } else {
                section = name;
            }
            continue;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim();
            if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                seen.entry(section.clone()).or_default().push(k.to_string());
            }
        }
    }
    let mut missing = Vec::new();
    for (section, key) in every_config_key() {
        if !seen.get(&section).is_some_and(|keys| keys.contains(&key)) {
            missing.push(format!("{section}.{key}"));
        }
    }
    assert!(
        missing.is_empty(),
        "deploy/syncback.example.toml misses {missing:?}"
    );
    // Every key it sets is a real one (deny_unknown_fields), and the README's table
    // documents every key too.
    Settings::from_toml(&text).unwrap();
    let readme = read("README.md");
    for (section, key) in every_config_key() {
        let full = format!("`{section}.{key}`");
        let in_row = readme
            .lines()
            .any(|l| l.starts_with(&format!("| `{section}.")) && l.contains(&format!("`{key}`")));
        assert!(
            readme.contains(&full) || in_row,
            "README's configuration table does not list {section}.{key}"
        );
    }
}

/// Every file of deploy/ carries the obvious placeholder secret, never a published
/// example one, and `config check` warns about both.
#[test]
fn deploy_files_carry_a_placeholder_webhook_secret_that_is_flagged() {
    use syncback::config::KNOWN_EXAMPLE_SECRETS;
    let placeholder = "whsec_PLACEHOLDERreplaceMEbyYOURsecret";
    assert!(KNOWN_EXAMPLE_SECRETS.contains(&placeholder));
    for f in [
        "deploy/syncback.example.toml",
        "deploy/docker-compose.yml",
        "deploy/k8s/syncback.yaml",
    ] {
        let text = read(f);
        assert!(text.contains(placeholder), "{f} carries the placeholder");
        for s in KNOWN_EXAMPLE_SECRETS.iter().filter(|s| **s != placeholder) {
            assert!(!text.contains(s), "{f} ships the published secret {s}");
        }
    }
    let s = Settings::from_toml(&read("deploy/syncback.example.toml")).unwrap();
    assert!(s
        .warnings()
        .iter()
        .any(|w| w.contains("published example secret")));
}
