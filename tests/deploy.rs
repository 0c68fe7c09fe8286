//! `deploy/` cannot be run here (no container engine), so these tests parse every file
//! and check that names, ports, env keys and metric names agree with the code.

use std::path::Path;

use clap::Parser;
use serde_json::Value;
use syncback::config::{QueueSettings, Role, Settings};
use syncback::queue::rabbitmq::Topology;

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|d| {
            let mut v = serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
            // `<<: *anchor` merge keys, as compose applies them.
            v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// `SYNCBACK_SECTION__KEY` must name a real configuration key.
fn assert_config_env_key(key: &str) {
    let path = key
        .strip_prefix("SYNCBACK_")
        .unwrap_or_else(|| panic!("{key} is not a SYNCBACK_ key"));
    let (section, field) = path
        .split_once("__")
        .unwrap_or_else(|| panic!("{key}: no __"));
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    assert!(
        defaults[section.to_lowercase()]
            .get(field.to_lowercase())
            .is_some(),
        "{key} does not name a configuration key"
    );
}

/// `${VAR:-default}` → default, as compose does with VAR unset (and `${VAR:?msg}` → "").
fn interpolate(v: &str) -> String {
    let mut out = String::new();
    let mut rest = v;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let end = i + rest[i..].find('}').expect("closing }");
        let inner = &rest[i + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn env_overrides_parse(pairs: &[(String, String)]) {
    figment::Jail::expect_with(|jail| {
        for (k, v) in pairs {
            jail.set_env(k, v);
        }
        Settings::load(Path::new("/nonexistent/syncback.toml"), false)
            .map_err(|e| e.to_string())?;
        Ok(())
    });
}

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

/// The Dockerfile's dependency-cache stage stubs every target Cargo.toml names (cargo
/// refuses a manifest whose [[bench]] files are missing), hides no failure, and the
/// runtime stage runs as a user that owns its working directory, with a real health probe.
#[test]
fn dockerfile_cache_stage_stubs_every_target_and_the_runtime_is_sound() {
    let dockerfile = read("deploy/Dockerfile");
    let manifest = read("Cargo.toml");
    let mut in_bench = false;
    let mut benches = Vec::new();
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_bench = line.trim() == "[[bench]]";
        } else if in_bench {
            if let Some(n) = line.strip_prefix("name = ") {
                benches.push(n.trim_matches('"').to_string());
            }
        }
    }
    assert!(benches.len() >= 5, "{benches:?}");
    let stub_loop = dockerfile
        .lines()
        .find(|l| l.contains("benches/$b.rs"))
        .expect("the bench stub loop");
    for b in &benches {
        assert!(
            stub_loop.contains(&format!(" {b}")),
            "the cache stage does not stub benches/{b}.rs"
        );
    }
    assert!(dockerfile.contains("src/main.rs") && dockerfile.contains("src/lib.rs"));
    assert!(!dockerfile.contains("|| true"), "no hidden failure");
    // The working directory is created and owned by the runtime user before USER.
    let user_at = dockerfile.find("\nUSER syncback").expect("USER syncback");
    let chown = dockerfile
        .find("chown syncback:syncback /var/lib/syncback")
        .expect("chown of the working directory");
    assert!(chown < user_at);
    assert!(dockerfile.contains("WORKDIR /var/lib/syncback"));
    // HEALTHCHECK runs `syncback health`, a subcommand that exists and probes /healthz.
    let hc = dockerfile
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .unwrap();
    assert!(hc.contains(r#"CMD ["syncback", "health"]"#), "{hc}");
    syncback::cli::Cli::try_parse_from(["syncback", "health"]).unwrap();
    assert!(dockerfile.contains("ENV SYNCBACK_CONFIG=/etc/syncback/syncback.toml"));
    // The build context excludes target/ and .git.
    let ignore = read(".dockerignore");
    for p in ["target/", ".git/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            ".dockerignore lacks {p}"
        );
    }
}

/// A fresh RabbitMQ node that imports definitions.json has the user compose connects
/// with, with its password and every permission on the vhost.
#[test]
fn rabbitmq_definitions_define_the_user_compose_connects_with() {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let defs: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json")).unwrap();
    let compose = &yaml_docs("deploy/docker-compose.yml")[0];
    let url = interpolate(
        compose["services"]["worker"]["environment"]["SYNCBACK_QUEUE__URL"]
            .as_str()
            .unwrap(),
    );
    let url = url::Url::parse(&url).unwrap();
    let (user, password) = (url.username(), url.password().unwrap());
    let u = defs["users"]
        .as_array()
        .expect("users")
        .iter()
        .find(|u| u["name"] == user)
        .unwrap_or_else(|| panic!("no user {user} in definitions.json"));
    assert_eq!(u["hashing_algorithm"], "rabbit_password_hashing_sha256");
    let hash = base64::engine::general_purpose::STANDARD
        .decode(u["password_hash"].as_str().unwrap())
        .unwrap();
    let (salt, digest) = hash.split_at(4);
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    assert_eq!(
        digest,
        h.finalize().as_slice(),
        "password_hash is {user}'s password"
    );
    let p = defs["permissions"]
        .as_array()
        .expect("permissions")
        .iter()
        .find(|p| p["user"] == user && p["vhost"] == "/")
        .expect("permissions on /");
    for k in ["configure", "write", "read"] {
        assert_eq!(p[k], ".*");
    }
}

/// `docker compose up` (deploy/.env turns the sandbox profile on) comes up working: the
/// image's config plus the worker's environment is valid for `work`, and points at the
/// sandbox services on the ports they listen on, with their credentials; the SkillSync
/// sandbox signs its webhooks with the receiver's secret. The real-systems override
/// requires every outside value.
#[test]
fn compose_comes_up_with_the_sandboxes_and_real_systems_are_an_override() {
    let c = &yaml_docs("deploy/docker-compose.yml")[0];
    assert!(read("deploy/.env")
        .lines()
        .any(|l| l.trim() == "COMPOSE_PROFILES=sandbox"));
    let svc = |n: &str| c["services"][n].clone();
    for n in ["salesforce", "skillsync"] {
        assert_eq!(svc(n)["profiles"][0], "sandbox", "{n}");
        assert_eq!(svc(n)["command"][0], "sandbox");
        assert_eq!(svc(n)["command"][1], n);
        assert_eq!(
            svc("worker")["depends_on"][n]["required"],
            false,
            "worker waits for {n} when the profile is on"
        );
    }
    let listen = |n: &str| -> u16 {
        let cmd: Vec<String> = svc(n)["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| interpolate(v.as_str().unwrap()))
            .collect();
        let i = cmd.iter().position(|a| a == "--listen").unwrap();
        cmd[i + 1].rsplit(':').next().unwrap().parse().unwrap()
    };
    let env: Vec<(String, String)> = svc("worker")["environment"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), interpolate(v.as_str().unwrap())))
        .collect();
    let image_config = read("deploy/syncback.example.toml");
    let mut settings = None;
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    figment::Jail::expect_with(|jail| {
        jail.create_file("syncback.toml", &image_config)?;
        for (k, v) in &env {
            jail.set_env(k, v);
        }
        let s = Settings::load(Path::new("syncback.toml"), true).map_err(|e| e.to_string())?;
        settings = Some(s);
        Ok(())
    });
    let s = settings.unwrap();
    s.validate_for(Role::Work)
        .expect("the worker's settings are valid");
    s.validate_for(Role::Receive).expect("the receiver's too");
    let sf = url::Url::parse(&s.salesforce.login_url).unwrap();
    assert_eq!(sf.host_str(), Some("salesforce"));
    assert_eq!(sf.port(), Some(listen("salesforce")));
    let ss = url::Url::parse(&s.skillsync.base_url).unwrap();
    assert_eq!(ss.host_str(), Some("skillsync"));
    assert_eq!(ss.port(), Some(listen("skillsync")));
    for (id, secret) in [
        (&s.salesforce.client_id, s.salesforce.client_secret.expose()),
        (&s.skillsync.client_id, s.skillsync.client_secret.expose()),
    ] {
        assert_eq!((id.as_str(), secret), ("sandbox-client", "sandbox-secret"));
    }
    assert!(s.sync.enabled);
    // The SkillSync sandbox's seeded departments include the source department.
    let lms = syncback::sandbox::skillsync::Lms::new();
    let seeded = lms.seed_sample().join("\n");
    assert!(
        seeded.contains(&s.sync.source_department_id),
        "{}: {seeded}",
        s.sync.source_department_id
    );
    // Its webhooks reach the receiver, signed with a secret the receiver accepts.
    let cmd: Vec<String> = svc("skillsync")["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| interpolate(v.as_str().unwrap()))
        .collect();
    let at = |flag: &str| cmd[cmd.iter().position(|a| a == flag).unwrap() + 1].clone();
    assert_eq!(
        at("--webhook-url"),
        "http://receiver:8080/webhooks/skillsync"
    );
    assert_eq!(at("--webhook-secret"), s.webhooks.secrets[0].expose());
    syncback::cli::Cli::try_parse_from(std::iter::once("syncback".to_string()).chain(cmd)).unwrap();
    // The real-systems override names every outside value as required (`${VAR:?…}`).
    let real = &yaml_docs("deploy/docker-compose.real.yml")[0];
    for n in ["receiver", "worker"] {
        let env = real["services"][n]["environment"].as_object().unwrap();
        for key in [
            "SYNCBACK_WEBHOOKS__SECRETS",
            "SYNCBACK_SALESFORCE__LOGIN_URL",
            "SYNCBACK_SALESFORCE__CLIENT_ID",
            "SYNCBACK_SALESFORCE__CLIENT_SECRET",
            "SYNCBACK_SKILLSYNC__BASE_URL",
            "SYNCBACK_SKILLSYNC__CLIENT_ID",
            "SYNCBACK_SKILLSYNC__CLIENT_SECRET",
            "SYNCBACK_SYNC__SOURCE_DEPARTMENT_ID",
        ] {
            assert_config_env_key(key);
            assert!(
                env[key].as_str().unwrap().contains(":?"),
                "{n}: {key} is required in the override"
            );
        }
    }
    // Every syncback service can build the image and probes its health with it.
    for n in ["receiver", "worker", "salesforce", "skillsync"] {
        assert!(svc(n)["build"].is_object(), "{n} builds the image");
        let test: Vec<String> = svc(n)["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(&test[..3], ["CMD", "syncback", "health"], "{n}");
        syncback::cli::Cli::try_parse_from(test[1..].iter().cloned())
            .unwrap_or_else(|e| panic!("{n}: {e}"));
    }
}
