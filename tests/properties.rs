//! Property tests (fuzzing) of what an unauthenticated client controls: the Standard
//! Webhooks signature headers and the envelope/schema validation (docs/rules.md
//! "Webhook contract"). Nothing may panic, nothing forged may pass, and whatever the
//! schema accepts the workers must be able to read.

use proptest::prelude::*;
use serde_json::{json, Value};
use syncback::webhook::schema::{is_rfc3339, SchemaValidator};
use syncback::webhook::signature::{decode_secret, SignatureError, Verifier};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: i64 = 1_764_000_000;

fn verifier() -> Verifier {
    Verifier::new(&[SECRET], 300).unwrap()
}

/// Arbitrary JSON, biased towards the envelope's own keys and shapes.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("learner.updated"),
            Just("enrollment.created"),
            Just("certification.issued"),
            Just("active"),
            Just("2026-11-25T16:41:16Z"),
            Just("1001"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let key = prop_oneof![
            Just("id".to_string()),
            Just("type".to_string()),
            Just("occurred_at".to_string()),
            Just("data".to_string()),
            Just("learner".to_string()),
            Just("username".to_string()),
            Just("status".to_string()),
            Just("updated_at".to_string()),
            Just("fields".to_string()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn valid_learner_event() -> Value {
    json!({"id": "evt_1", "type": "learner.updated", "occurred_at": "2026-11-25T16:41:16Z",
        "data": {"learner": {"id": "1001", "username": "ada", "status": "active",
            "updated_at": "2026-11-25T16:41:16Z"}}})
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn signature_headers_never_panic_and_never_verify_without_the_key(
        id in ".{0,64}",
        ts in ".{0,24}",
        sig in ".{0,300}",
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let r = verifier().verify(Some(&id), Some(&ts), Some(&sig), &body, NOW);
        prop_assert!(r.is_err(), "forged headers verified: {id:?} {ts:?} {sig:?}");
    }

    #[test]
    fn any_change_to_a_signed_request_is_rejected(
        id in "[a-z0-9_]{1,32}",
        body in prop::collection::vec(any::<u8>(), 1..256),
        flip in any::<prop::sample::Index>(),
        skew in -300i64..=300,
        extra in "( v1,[A-Za-z0-9+/]{0,44}={0,2}| v2,[a-z]{0,8}){0,3}",
    ) {
        let ts = NOW + skew;
        let sig = decode_secret(SECRET).unwrap().sign(&id, ts, &body);
        let v = verifier();
        // Extra (bogus) signatures beside the good one do not hurt: rotation.
        let header = format!("{sig}{extra}");
        prop_assert!(v.verify(Some(&id), Some(&ts.to_string()), Some(&header), &body, NOW).is_ok());
        let mut tampered = body.clone();
        let i = flip.index(tampered.len());
        tampered[i] ^= 0x01;
        prop_assert_eq!(
            v.verify(Some(&id), Some(&ts.to_string()), Some(&sig), &tampered, NOW),
            Err(SignatureError::Mismatch)
        );
        let other_id = format!("{id}x");
        prop_assert!(v.verify(Some(&other_id), Some(&ts.to_string()), Some(&sig), &body, NOW).is_err());
        prop_assert!(v.verify(Some(&id), Some(&(ts + 1).to_string()), Some(&sig), &body, NOW).is_err());
    }

    #[test]
    fn whatever_the_schema_accepts_the_workers_can_read(v in arb_json()) {
        let schema = SchemaValidator::new().unwrap();
        if schema.validate(&v).is_ok() {
            prop_assert!(
                serde_json::from_value::<syncback::model::Envelope>(v.clone()).is_ok(),
                "schema-valid but unreadable: {v}"
            );
        }
    }

    #[test]
    fn mutated_envelopes_are_validated_without_panicking(
        pointer in prop_oneof![
            Just("/id"), Just("/type"), Just("/occurred_at"), Just("/data"),
            Just("/data/learner"), Just("/data/learner/id"), Just("/data/learner/status"),
            Just("/data/learner/updated_at"), Just("/data/learner/username"),
        ],
        value in arb_json(),
    ) {
        let schema = SchemaValidator::new().unwrap();
        let mut ev = valid_learner_event();
        *ev.pointer_mut(pointer).unwrap() = value;
        match schema.validate(&ev) {
            Ok(()) => prop_assert!(
                serde_json::from_value::<syncback::model::Envelope>(ev.clone()).is_ok(),
                "schema-valid but unreadable: {ev}"
            ),
            Err(violations) => prop_assert!(
                !violations.is_empty() && violations.iter().all(|v| v.path.starts_with('/')),
                "{violations:?}"
            ),
        }
    }

    #[test]
    fn strict_date_times_are_exactly_what_chrono_reads_back(s in "[0-9T:.+Zz -]{0,32}") {
        if is_rfc3339(&s) {
            prop_assert!(chrono::DateTime::parse_from_rfc3339(&s).is_ok());
            prop_assert!(!s.contains(' '));
        }
    }

    #[test]
    fn well_formed_date_times_pass(
        y in 1000u32..9999, mo in 1u32..=12, d in 1u32..=28, h in 0u32..24,
        mi in 0u32..60, se in 0u32..60, frac in prop::option::of("[0-9]{1,9}"),
        off in prop_oneof![Just("Z".to_string()), (0u32..24, 0u32..60).prop_map(|(h, m)| format!("+{h:02}:{m:02}"))],
    ) {
        let f = frac.map(|f| format!(".{f}")).unwrap_or_default();
        let s = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{se:02}{f}{off}");
        prop_assert!(is_rfc3339(&s), "{s}");
    }
}
