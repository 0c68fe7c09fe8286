use axum::http::Method;
use serde_json::{json, Value};

use super::http::endpoint_name;
use super::schema::{canonical_id, id_suffix};
use super::Org;
use crate::salesforce::{Record, SalesforceApi, SfError};

fn rec(v: Value) -> Record {
    v.as_object().unwrap().clone()
}

#[test]
fn ids_are_18_chars_with_a_valid_checksum() {
    let org = Org::new();
    let id = org.insert("Account", rec(json!({"Name": "Acme"}))).unwrap();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("001"));
    assert_eq!(canonical_id(&id[..15]).unwrap(), id);
    assert!(
        org.record("Account", &id[..15]).is_some(),
        "15-char ids resolve"
    );
    // The documented example: 001A0000006Vm9r → IAC
    assert_eq!(id_suffix("001A0000006Vm9r"), "IAC");
}

#[tokio::test]
async fn validation_and_soql_subset() {
    let org = Org::new();
    let acct = org.insert("Account", rec(json!({"Name": "Acme"}))).unwrap();
    let e = org
        .insert("Contact", rec(json!({"FirstName": "x"})))
        .unwrap_err();
    assert_eq!(e.code(), "REQUIRED_FIELD_MISSING");
    let e = org
        .insert(
            "Contact",
            rec(json!({"LastName": "x", "AccountId": "001000000000000AAA"})),
        )
        .unwrap_err();
    assert_eq!(e.code(), "INVALID_CROSS_REFERENCE_KEY");
    let e = org
        .insert("Contact", rec(json!({"LastName": "x", "Bogus__c": 1})))
        .unwrap_err();
    assert_eq!(e.code(), "INVALID_FIELD");
    org.insert("Contact", rec(json!({"LastName": "A", "Email": "Ada@X.example", "AccountId": acct, "SkillSync_User_Id__c": "L1"}))).unwrap();
    org.insert(
        "Contact",
        rec(json!({"LastName": "B", "Email": "b@x.example"})),
    )
    .unwrap();
    let e = org
        .insert(
            "Contact",
            rec(json!({"LastName": "C", "SkillSync_User_Id__c": "L1"})),
        )
        .unwrap_err();
    assert_eq!(e.code(), "DUPLICATE_VALUE");
    let q = |s: &str| org.state.lock().unwrap().query(s).map(|(rows, _)| rows);
    let count = |s: &str| org.state.lock().unwrap().query(s).unwrap().1;
    assert_eq!(
        q("SELECT Id, LastName FROM Contact WHERE Email = 'ada@x.example'")
            .unwrap()
            .len(),
        1,
        "case-insensitive"
    );
    assert_eq!(
        q("SELECT Id FROM Contact WHERE Email = 'nobody' OR SkillSync_User_Id__c = 'L1' LIMIT 10")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        q("SELECT Id FROM Contact WHERE LastName IN ('A', 'B') AND NOT Email = 'b@x.example'")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        q("SELECT Id FROM Contact WHERE Email LIKE '%x.example' ORDER BY LastName DESC").unwrap()
            [0]["Id"],
        q("SELECT Id FROM Contact WHERE LastName = 'B'").unwrap()[0]["Id"]
    );
    assert_eq!(
        q(&format!(
            "SELECT Id FROM Contact WHERE AccountId = '{}'",
            &acct[..15]
        ))
        .unwrap()
        .len(),
        1
    );
    assert_eq!(
        q("SELECT Id FROM Contact WHERE Email = 'x\\' OR Email != \\''")
            .unwrap()
            .len(),
        0,
        "escaped literal stays a literal"
    );
    assert_eq!(count("SELECT COUNT() FROM Contact WHERE Email != null"), 2);
    assert_eq!(
        q("SELECT Id FROM Contact WHERE LastName LIKE '\\_'")
            .unwrap()
            .len(),
        0,
        "escaped wildcard matches itself only"
    );
    assert_eq!(
            q("SELECT Id FROM Contact WHERE (LastName = 'A' OR LastName = 'B') AND Email NOT IN ('b@x.example')")
                .unwrap()
                .len(),
            1
        );
    assert_eq!(
        q("SELECT Id FROM Contact WHERE").unwrap_err().code(),
        "MALFORMED_QUERY"
    );
    assert_eq!(
        q("SELECT Nope FROM Contact").unwrap_err().code(),
        "INVALID_FIELD"
    );
}

#[tokio::test]
async fn upsert_and_collections_all_or_none() {
    let org = Org::new();
    let u = org
        .upsert(
            "Contact",
            "SkillSync_User_Id__c",
            "L9",
            &rec(json!({"LastName": "N"})),
        )
        .await
        .unwrap();
    assert!(u.created);
    let u2 = org
        .upsert(
            "Contact",
            "SkillSync_User_Id__c",
            "L9",
            &rec(json!({"LastName": "M"})),
        )
        .await
        .unwrap();
    assert_eq!((u2.created, &u2.id), (false, &u.id));
    org.insert_unchecked(
        "Contact",
        rec(json!({"LastName": "dup", "SkillSync_User_Id__c": "L9"})),
    );
    assert!(matches!(
        org.upsert("Contact", "SkillSync_User_Id__c", "L9", &Record::new())
            .await,
        Err(SfError::MultipleMatches { .. })
    ));
    let good = rec(json!({"attributes": {"type": "Contact"}, "LastName": "ok"}));
    let bad = rec(json!({"attributes": {"type": "Contact"}, "FirstName": "no last name"}));
    let res = org
        .create_many(&[good.clone(), bad.clone()], true)
        .await
        .unwrap();
    assert_eq!(
        res[0].errors[0].error_code,
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(res[1].errors[0].error_code, "REQUIRED_FIELD_MISSING");
    assert_eq!(org.records("Contact").len(), 2, "rolled back");
    let res = org.create_many(&[good, bad], false).await.unwrap();
    assert!(res[0].success && !res[1].success);
    assert_eq!(org.records("Contact").len(), 3);
}

/// External ids are looked up through an index: it follows updates, deletes, unique
/// checks and an allOrNone rollback exactly as a scan of every record would.
#[tokio::test]
async fn external_id_index_follows_every_change() {
    let org = Org::new();
    let f = "SkillSync_User_Id__c";
    let a = org
        .upsert("Contact", f, "A", &rec(json!({"LastName": "a"})))
        .await
        .unwrap();
    // Renamed external id: the old value no longer matches, the new one does.
    org.update("Contact", &a.id, &rec(json!({f: "B"})))
        .await
        .unwrap();
    let again = org
        .upsert("Contact", f, "A", &rec(json!({"LastName": "new"})))
        .await
        .unwrap();
    assert!(again.created && again.id != a.id);
    let b = org.upsert("Contact", f, "B", &Record::new()).await.unwrap();
    assert_eq!((b.created, &b.id), (false, &a.id));
    // Uniqueness: taking another record's value is refused; keeping one's own is fine.
    match org
        .update("Contact", &again.id, &rec(json!({f: "B"})))
        .await
    {
        Err(SfError::Permanent { errors, .. }) => {
            assert_eq!(errors[0].error_code, "DUPLICATE_VALUE")
        }
        other => panic!("expected DUPLICATE_VALUE, got {other:?}"),
    }
    org.update("Contact", &a.id, &rec(json!({f: "B", "LastName": "b"})))
        .await
        .unwrap();
    // Deleted: its value is free again.
    org.delete("Contact", &a.id).await.unwrap();
    let b2 = org
        .upsert("Contact", f, "B", &rec(json!({"LastName": "b2"})))
        .await
        .unwrap();
    assert!(b2.created);
    // A rolled-back allOrNone create leaves no index entry behind.
    let c = rec(json!({"attributes": {"type": "Contact"}, "LastName": "c", f: "C"}));
    let bad = rec(json!({"attributes": {"type": "Contact"}, "FirstName": "no last name"}));
    let res = org.create_many(&[c, bad], true).await.unwrap();
    assert!(!res[0].success);
    let c = org
        .upsert("Contact", f, "C", &rec(json!({"LastName": "c"})))
        .await
        .unwrap();
    assert!(c.created, "the rolled-back record must not match");
    // Upsert by Id is not an external-id lookup but still finds the record.
    let by_id = org
        .upsert("Contact", "Id", &c.id, &rec(json!({"LastName": "c2"})))
        .await
        .unwrap();
    assert_eq!((by_id.created, &by_id.id), (false, &c.id));
}

#[test]
fn endpoint_names_have_no_ids() {
    assert_eq!(
        endpoint_name(&Method::GET, "/services/data/v61.0/query"),
        "GET query"
    );
    assert_eq!(
        endpoint_name(
            &Method::PATCH,
            "/services/data/v61.0/sobjects/Contact/SkillSync_User_Id__c/L1"
        ),
        "PATCH sobjects/Contact/SkillSync_User_Id__c"
    );
    assert_eq!(
        endpoint_name(
            &Method::PATCH,
            &format!(
                "/services/data/v61.0/sobjects/Contact/{}",
                canonical_id("0035g00000ABCDE").unwrap()
            )
        ),
        "PATCH sobjects/Contact/{id}"
    );
}
