//! Shared by tests/deploy.rs and tests/deploy_containers.rs: reading deploy/ files.
#![allow(dead_code)] // each test crate uses a part

use std::path::Path;

use serde_json::Value;
use syncback::config::Settings;

pub fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

pub fn yaml_docs(rel: &str) -> Vec<Value> {
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
pub fn assert_config_env_key(key: &str) {
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
pub fn interpolate(v: &str) -> String {
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
pub fn env_overrides_parse(pairs: &[(String, String)]) {
    figment::Jail::expect_with(|jail| {
        for (k, v) in pairs {
            jail.set_env(k, v);
        }
        Settings::load(Path::new("/nonexistent/syncback.toml"), false)
            .map_err(|e| e.to_string())?;
        Ok(())
    });
}
