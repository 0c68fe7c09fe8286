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
            .should_validate_formats(true);
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
