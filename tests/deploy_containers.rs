//! The container side of `deploy/`, checked by parsing (no container engine here): the
//! Dockerfile's stages, `docker compose up` with the sandboxes and the real-systems
//! override, the RabbitMQ user a fresh node imports.

mod deploy_support;

use std::path::Path;

use clap::Parser;
use deploy_support::*;
use serde_json::Value;
use syncback::config::{Role, Settings};

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
