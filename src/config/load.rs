//! Loading: defaults, then the TOML file, then `SYNCBACK_*` environment variables.
//!
//! A file that cannot be read is reported one line per problem, each naming where it is
//! (`file:line` or the environment variable) and the key, with a "did you mean" for a
//! misspelt one.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use super::{ConfigError, Settings};

impl Settings {
    /// Load defaults, then the TOML file (if it exists, or is required), then `SYNCBACK_*` env.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        if required && !path.exists() {
            return Err(ConfigError::Invalid(vec![format!(
                "config file {} does not exist",
                path.display()
            )]));
        }
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Every unknown key at once (deserialising stops at the first problem).
        let mut found: Vec<(Option<usize>, String)> = unknown_keys(&text)
            .into_iter()
            .map(|(section, key)| {
                let line = find_line(
                    &text,
                    &section.iter().map(String::as_str).collect::<Vec<_>>(),
                    &key,
                );
                let place = match line {
                    Some(n) => format!("{}:{n}: ", path.display()),
                    None => format!("{}: ", path.display()),
                };
                (
                    line,
                    format!("{place}{}", unknown_key_message(&section, &key)),
                )
            })
            .collect();
        found.sort();
        let mut problems: Vec<String> = found.into_iter().map(|(_, p)| p).collect();
        match Self::figment(path).extract() {
            Ok(s) if problems.is_empty() => Ok(s),
            Ok(_) => Err(ConfigError::Read(problems)),
            Err(e) => {
                for line in describe(e, Some((path, &text))) {
                    if !problems.contains(&line) {
                        problems.push(line);
                    }
                }
                Err(ConfigError::Read(problems))
            }
        }
    }

    pub fn figment(path: &Path) -> Figment {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(path))
            // SYNCBACK_CONFIG names the file (the CLI's --config), it is not a key.
            .merge(
                Env::prefixed("SYNCBACK_")
                    .filter(|k| k != "config")
                    .split("__"),
            )
    }

    /// Parse settings from a TOML string (tests, demo).
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(s))
            .extract()
            .map_err(|e| ConfigError::Read(describe(e, Some((Path::new("<toml>"), s)))))
    }
}

/// One line per problem of a figment error (figment chains them, sometimes twice).
fn describe(err: figment::Error, file: Option<(&Path, &str)>) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for e in err {
        let line = one(&e, file);
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines
}

fn one(e: &figment::Error, file: Option<(&Path, &str)>) -> String {
    use figment::error::Kind;
    // The path sometimes carries the profile ("default.webhooks.x"): not a key.
    let path: Vec<&str> = e
        .path
        .iter()
        .map(String::as_str)
        .skip_while(|p| *p == "default" || *p == "global")
        .collect();
    let key = path.join(".");
    let (section, field) = match path.as_slice() {
        [] => (&[][..], ""),
        [rest @ .., last] => (rest, *last),
    };
    let source = e.metadata.as_ref().and_then(|m| m.source.as_ref());
    let from_file = matches!(source, Some(figment::Source::File(_)));
    let from_env = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let place = match (from_file, file) {
        (true, Some((p, text))) => match find_line(text, section, field) {
            Some(n) => format!("{}:{n}: ", p.display()),
            None => format!("{}: ", p.display()),
        },
        (true, None) => String::new(),
        _ if from_env => format!(
            "environment SYNCBACK_{}: ",
            path.iter()
                .map(|p| p.to_uppercase())
                .collect::<Vec<_>>()
                .join("__")
        ),
        _ => match file {
            // A TOML syntax error carries its own line and column.
            Some((p, _)) if key.is_empty() => format!("{}: ", p.display()),
            _ => String::new(),
        },
    };
    let what = match &e.kind {
        Kind::UnknownField(found, _) => unknown_key_message(
            &section.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            found,
        ),
        Kind::UnknownVariant(found, expected) => {
            let hint = did_you_mean(found, expected)
                .map(|s| format!(" — did you mean \"{s}\"?"))
                .unwrap_or_default();
            format!(
                "{key}: \"{found}\" is not one of {}{hint}",
                expected
                    .iter()
                    .map(|v| format!("\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Kind::InvalidType(actual, expected) => {
            format!("{key}: expected {expected}, found {actual}")
        }
        Kind::InvalidValue(actual, expected) => {
            format!("{key}: expected {expected}, found {actual}")
        }
        other if key.is_empty() => other.to_string(),
        other => format!("{key}: {other}"),
    };
    format!("{place}{what}")
}

/// The keys the configuration knows, by section path (from the defaults, serialised).
fn known_keys(section: &[String]) -> Option<Vec<String>> {
    let mut v = serde_json::to_value(Settings::default()).ok()?;
    for s in section {
        v = v.get(s)?.clone();
    }
    let mut keys: Vec<String> = v.as_object()?.keys().cloned().collect();
    // Optional keys the defaults leave out.
    if section == ["salesforce"] {
        keys.push("api_usage_threshold".into());
    }
    Some(keys)
}

fn unknown_key_message(section: &[String], found: &str) -> String {
    let parent = section.join(".");
    let at = if parent.is_empty() {
        "at the top level".to_string()
    } else {
        format!("in [{parent}]")
    };
    let known = known_keys(section).unwrap_or_default();
    let known: Vec<&str> = known.iter().map(String::as_str).collect();
    match did_you_mean(found, &known) {
        Some(s) => format!("unknown key `{found}` {at} — did you mean `{s}`?"),
        None if known.is_empty() => format!("unknown key `{found}` {at}"),
        None => format!("unknown key `{found}` {at} (known: {})", known.join(", ")),
    }
}

/// Every (section path, key) of a TOML text that names no configuration key. Free-form
/// tables (`sync.field_map`) and arrays of tables (`admin.users`) are left to serde.
fn unknown_keys(text: &str) -> Vec<(Vec<String>, String)> {
    use figment::value::Value;
    use figment::Provider;
    let Ok(data) = Toml::string(text).data() else {
        return Vec::new(); // a syntax error: reported by the extraction
    };
    fn walk(
        section: &mut Vec<String>,
        dict: &figment::value::Dict,
        out: &mut Vec<(Vec<String>, String)>,
    ) {
        let Some(known) = known_keys(section) else {
            return;
        };
        for (k, v) in dict {
            if !known.contains(k) {
                out.push((section.clone(), k.clone()));
                continue;
            }
            if let Value::Dict(_, inner) = v {
                // sync.field_map's keys are Contact fields, not configuration keys.
                if section.is_empty() || !(section[0] == "sync" && k == "field_map") {
                    section.push(k.clone());
                    walk(section, inner, out);
                    section.pop();
                }
            }
        }
    }
    let mut out = Vec::new();
    for dict in data.values() {
        walk(&mut Vec::new(), dict, &mut out);
    }
    out
}

/// The 1-based line of `field` inside `[section]` of a TOML text (a simple scan: table
/// headers and `key =` lines; dotted and inline tables fall back to the section header).
fn find_line(text: &str, section: &[&str], field: &str) -> Option<usize> {
    let want = section.join(".");
    let mut current = String::new();
    let mut header_line = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(h) = line.strip_prefix('[') {
            let h = h.trim_start_matches('[');
            current = h
                .split(']')
                .next()
                .unwrap_or_default()
                .trim()
                .replace(['"', ' '], "");
            if current == want && header_line.is_none() {
                header_line = Some(i + 1);
            }
            continue;
        }
        if current != want {
            continue;
        }
        if let Some((k, _)) = line.split_once('=') {
            let k = k.trim().trim_matches('"');
            if k == field {
                return Some(i + 1);
            }
        }
    }
    header_line
}

/// The closest known name, when it is plausibly a typo.
pub fn did_you_mean<'a>(found: &str, known: &[&'a str]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (edit_distance(&found.to_lowercase(), k), *k))
        .filter(|(d, k)| *d <= 3.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}
