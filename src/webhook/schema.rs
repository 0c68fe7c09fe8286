//! The JSON Schema contract of docs/rules.md "Webhook contract", enforced at run time.
//!
//! The files in `schemas/` are the source of truth; they are compiled into the binary
//! (so a deployed `syncback` cannot drift from its schemas) and validated with the
//! `jsonschema` crate (draft 2020-12, `format` assertions on).

use serde::Serialize;
use serde_json::Value;

/// The schema files, by name, as shipped in `schemas/`.
pub const SCHEMAS: &[(&str, &str)] = &[
    ("envelope.json", include_str!("../../schemas/envelope.json")),
    ("learner.json", include_str!("../../schemas/learner.json")),
    (
        "enrollment.json",
        include_str!("../../schemas/enrollment.json"),
    ),
    (
        "certification.json",
        include_str!("../../schemas/certification.json"),
    ),
];

const BASE: &str = "https://syncback.dev/schemas/";

/// One schema violation: where (JSON pointer into the body) and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub path: String,
    pub message: String,
}

/// A strict RFC 3339 `date-time` (section 5.6): `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`,
/// digits where digits belong and a real calendar date and time (leap second allowed).
/// The schema crate's own check lets `2026-11-25T1::41:16Z` through.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let offset_ok = match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit())
                && (h1 - b'0') * 10 + (h2 - b'0') <= 23
                && (m1 - b'0') * 10 + (m2 - b'0') <= 59
        }
        _ => false,
    };
    // Ranges (month 1-12, day of that month, 23:59:60 at most) via chrono; its parser
    // accepts a space for the `T`, which the checks above already refused.
    offset_ok && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// Compiled envelope schema (with the payload schemas it references).
pub struct SchemaValidator {
    envelope: jsonschema::Validator,
}

impl std::fmt::Debug for SchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchemaValidator")
    }
}

impl SchemaValidator {
    pub fn new() -> Result<Self, String> {
        let mut options = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_format("date-time", is_rfc3339)
            // Every `pattern` of the schemas is a plain regular expression: the `regex`
            // crate matches it without backtracking or a per-match allocation.
            .with_pattern_options(jsonschema::PatternOptions::regex());
        let mut envelope = None;
        for (name, text) in SCHEMAS {
            let value: Value =
                serde_json::from_str(text).map_err(|e| format!("schemas/{name}: {e}"))?;
            if *name == "envelope.json" {
                envelope = Some(value.clone());
            }
            let resource = jsonschema::Resource::from_contents(value)
                .map_err(|e| format!("schemas/{name}: {e}"))?;
            options = options.with_resource(format!("{BASE}{name}"), resource);
        }
        let envelope = options
            .build(&envelope.ok_or("schemas/envelope.json missing")?)
            .map_err(|e| format!("schemas/envelope.json: {e}"))?;
        Ok(Self { envelope })
    }

    /// Every violation of the envelope schema (empty = valid), capped at 50.
    pub fn validate(&self, body: &Value) -> Result<(), Vec<Violation>> {
        // Valid envelopes (nearly all) take the short-circuiting check; only invalid ones
        // pay for collecting every violation with its path and message.
        if self.envelope.is_valid(body) {
            return Ok(());
        }
        let violations: Vec<Violation> = self
            .envelope
            .iter_errors(body)
            .take(50)
            .map(|e| Violation {
                path: {
                    let p = e.instance_path.to_string();
                    if p.is_empty() {
                        "/".to_string()
                    } else {
                        p
                    }
                },
                message: e.to_string(),
            })
            .collect();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(violations)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_times_are_strict_rfc3339() {
        for ok in [
            "2026-11-25T16:41:16Z",
            "2026-11-25T16:41:16.958Z",
            "2026-11-25t16:41:16.958z",
            "2026-11-25T16:41:16+01:00",
            "2026-11-25T16:41:16.1-05:30",
            "2024-02-29T00:00:00Z",
        ] {
            assert!(is_rfc3339(ok), "{ok} should pass");
        }
        for bad in [
            "2026-11-25T1::41:16Z",
            "20:6-11-25T16:41:16.958Z",
            "2026-11-25 16:41:16Z",
            "2026-11-25T16:41:16",
            "2026-11-25T16:41:16.Z",
            "2026-13-25T16:41:16Z",
            "2025-02-29T16:41:16Z",
            "2026-11-25T24:41:16Z",
            "2026-11-25T16:41:16+1:00",
            "2026-11-25T16:41:16+01:60",
            "2026-11-25T16:41:16Z ",
            "２026-11-25T16:41:16Z",
            "",
        ] {
            assert!(!is_rfc3339(bad), "{bad:?} should fail");
        }
    }

    #[test]
    fn ids_are_bounded_in_length_and_characters() {
        let v = SchemaValidator::new().unwrap();
        let env = |learner_id: Value| {
            serde_json::json!({
                "id": "evt_01JD7X3K2N8Q4R5S6T7U8V9W0X",
                "type": "learner.updated",
                "occurred_at": "2026-11-25T16:41:16.958Z",
                "data": {"learner": {
                    "id": learner_id, "username": "u", "status": "active",
                    "updated_at": "2026-11-25T16:41:16Z"
                }}
            })
        };
        for ok in [
            serde_json::json!("1001"),
            serde_json::json!(1001),
            serde_json::json!("0f8fad5b-d9cb-469f-a165-70867728950e"),
            serde_json::json!("L_01JD7X3K2N8Q4R5S6T7U8V9W0X"),
            serde_json::json!("x".repeat(128)),
        ] {
            v.validate(&env(ok.clone()))
                .unwrap_or_else(|e| panic!("{ok} should pass: {e:?}"));
        }
        for bad in [
            serde_json::json!("a\u{0}b"),
            serde_json::json!("x".repeat(8000)),
            serde_json::json!("x".repeat(129)),
            serde_json::json!("with space"),
            serde_json::json!("é"),
            serde_json::json!(""),
        ] {
            let errs = v.validate(&env(bad.clone())).expect_err("must fail");
            assert!(
                errs.iter().any(|e| e.path == "/data/learner/id"),
                "{bad}: {errs:?}"
            );
        }
        let mut e = env(serde_json::json!("1"));
        e["id"] = serde_json::json!("evt 1");
        assert!(v.validate(&e).is_err());
    }

    fn examples(kind: &str) -> Vec<(String, Value)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas/examples")
            .join(kind);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                (p.file_name().unwrap().to_string_lossy().into_owned(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!out.is_empty(), "no examples in {}", dir.display());
        out
    }

    #[test]
    fn valid_examples_pass_and_parse_into_the_model() {
        let v = SchemaValidator::new().unwrap();
        for (name, body) in examples("valid") {
            v.validate(&body)
                .unwrap_or_else(|e| panic!("{name} should be valid: {e:?}"));
            // What the schema accepts, the typed model must read (and vice versa below).
            serde_json::from_value::<crate::model::Envelope>(body)
                .unwrap_or_else(|e| panic!("{name} does not parse into Envelope: {e}"));
        }
    }

    #[test]
    fn invalid_examples_fail_with_a_pointer_to_the_problem() {
        let v = SchemaValidator::new().unwrap();
        let expected = [
            ("bad-occurred-at.json", "/occurred_at"),
            ("certification-bad-fields.json", "/data/certification/"),
            ("enrollment-wrong-payload.json", "/data"),
            ("learner-bad-status.json", "/data/learner/status"),
            (
                "learner-field-not-string.json",
                "/data/learner/fields/company",
            ),
            ("learner-missing-username.json", "/data/learner"),
            ("unknown-type.json", "/type"),
        ];
        let all = examples("invalid");
        assert_eq!(
            all.len(),
            expected.len(),
            "every invalid example has an expectation"
        );
        for ((name, body), (exp_name, exp_path)) in all.into_iter().zip(expected) {
            assert_eq!(name, exp_name);
            let errs = v.validate(&body).expect_err(&name);
            assert!(
                errs.iter().any(|e| e.path.starts_with(exp_path)),
                "{name}: expected a violation at {exp_path}, got {errs:?}"
            );
        }
    }

    #[test]
    fn schema_files_on_disk_are_the_compiled_ones() {
        for (name, text) in SCHEMAS {
            let on_disk = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("schemas")
                    .join(name),
            )
            .unwrap();
            assert_eq!(&on_disk, text);
        }
    }
}
