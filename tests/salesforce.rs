//! The Salesforce client (docs/rules.md "Salesforce") against the sandbox org served over HTTP: every
//! operation, every error class, OAuth refresh, paging, hostile SOQL literals,
//! Collections chunking, `Sforce-Limit-Info`, the schema check (R8, R11), and a
//! wire-fidelity run of the third-party `simple-salesforce` client against the sandbox.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use syncback::config::{SalesforceSettings, Secret};
use syncback::salesforce::{soql, Client, Record, SalesforceApi, SfError};
use syncback::sandbox::salesforce::{Fault, Org};

fn rec(v: Value) -> Record {
    v.as_object().expect("a JSON object").clone()
}

/// An org served on 127.0.0.1:0 and a client logged in with the sandbox credentials.
async fn setup() -> (Org, Client, String) {
    setup_with(|_| {}).await
}

async fn setup_with(tweak: impl FnOnce(&mut SalesforceSettings)) -> (Org, Client, String) {
    let org = Org::new();
    let (addr, _task) = org
        .serve(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind the sandbox");
    let base = format!("http://{addr}");
    let mut settings = SalesforceSettings {
        login_url: base.clone(),
        client_id: Org::CLIENT_ID.into(),
        client_secret: Secret::new(Org::CLIENT_SECRET),
        timeout_secs: 5,
        ..Default::default()
    };
    tweak(&mut settings);
    let client = Client::new(&settings).expect("client");
    (org, client, base)
}

fn contacts(n: usize, tag: &str) -> Vec<Record> {
    (0..n)
        .map(|i| {
            rec(json!({
                "attributes": {"type": "Contact"},
                "LastName": format!("{tag}{i}"),
                "SkillSync_User_Id__c": format!("{tag}-{i}"),
            }))
        })
        .collect()
}

fn calls(client: &Client, endpoint: &str) -> u64 {
    client.calls().get(endpoint).copied().unwrap_or(0)
}

#[tokio::test]
async fn token_is_fetched_once_and_refreshed_once_after_expiry() {
    let (org, client, _) = setup().await;
    assert_eq!(client.token_requests(), 0, "no network at construction");
    client.query("SELECT Id FROM Account").await.unwrap();
    client.query("SELECT Id FROM Account").await.unwrap();
    assert_eq!(client.token_requests(), 1, "token cached");

    org.expire_tokens();
    client.query("SELECT Id FROM Account").await.unwrap();
    assert_eq!(client.token_requests(), 2, "refreshed once on 401");
    // 2 calls + the call that got 401 + its retry; the token requests are apart.
    assert_eq!(calls(&client, "GET query"), 4);
    assert_eq!(client.total_calls(), 4);
    assert_eq!(
        org.total_requests(),
        3,
        "the 401 never reached the org's counters"
    );
}

#[tokio::test]
async fn bad_credentials_are_a_permanent_error() {
    let (_org, client, _) = setup_with(|s| s.client_secret = Secret::new("wrong")).await;
    let e = client.query("SELECT Id FROM Account").await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert_eq!(e.code(), "invalid_client");
    assert_eq!(client.total_calls(), 0);
    assert_eq!(client.token_requests(), 1);
}

#[tokio::test]
async fn unreachable_org_is_transient() {
    // Bind then drop a listener: nothing listens on that port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::new(&SalesforceSettings {
        login_url: format!("http://127.0.0.1:{port}"),
        client_id: Org::CLIENT_ID.into(),
        client_secret: Secret::new(Org::CLIENT_SECRET),
        timeout_secs: 2,
        ..Default::default()
    })
    .unwrap();
    let e = client.query("SELECT Id FROM Account").await.unwrap_err();
    assert!(
        matches!(&e, SfError::Transient { status: None, code, .. } if code == "CONNECT"),
        "{e:?}"
    );
}

#[tokio::test]
async fn query_follows_next_records_url() {
    let (org, client, _) = setup().await;
    for i in 0..10 {
        org.insert("Account", rec(json!({"Name": format!("A{i:02}")})))
            .unwrap();
    }
    org.set_page_size(3);
    let rows = client
        .query("SELECT Id, Name FROM Account ORDER BY Name")
        .await
        .unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["Name"].as_str().unwrap()).collect();
    let want: Vec<String> = (0..10).map(|i| format!("A{i:02}")).collect();
    assert_eq!(names, want);
    assert_eq!(rows[0]["attributes"]["type"], "Account");
    assert_eq!(calls(&client, "GET query"), 4, "pages of 3, 3, 3, 1");
    assert_eq!(org.requests_by_endpoint(), vec![("GET query".into(), 4)]);
}

#[tokio::test]
async fn hostile_literals_match_exactly_their_record() {
    let (org, client, _) = setup().await;
    let hostile = [
        "x' OR Email != '",
        "x\\' OR LastName != \\'",
        "back\\slash\\",
        "new\nline\r\ttab",
        "quote\"double",
        "ünïcødé ✓ 名前",
        "50%_off",
        "'",
        "\\",
    ];
    for v in hostile {
        org.insert("Contact", rec(json!({"LastName": v}))).unwrap();
    }
    org.insert("Contact", rec(json!({"LastName": "50XYoff"})))
        .unwrap();
    for v in hostile {
        let q = format!(
            "SELECT Id, LastName FROM Contact WHERE {}",
            soql::eq("LastName", v)
        );
        let rows = client.query(&q).await.unwrap();
        assert_eq!(rows.len(), 1, "{v:?} → {q}");
        assert_eq!(rows[0]["LastName"], v);
    }
    let q = format!(
        "SELECT Id, LastName FROM Contact WHERE LastName LIKE {}",
        soql::like_literal("50%_off")
    );
    let rows = client.query(&q).await.unwrap();
    assert_eq!(rows.len(), 1, "wildcards are escaped");
    let q = format!(
        "SELECT Id FROM Contact WHERE {}",
        soql::in_list("LastName", &hostile[..3])
    );
    assert_eq!(client.query(&q).await.unwrap().len(), 3);
    let q = format!(
        "SELECT Id FROM Contact WHERE {}",
        soql::in_list("LastName", &Vec::<String>::new())
    );
    assert_eq!(client.query(&q).await.unwrap().len(), 0, "empty IN list");
}

#[tokio::test]
async fn create_get_update_delete() {
    let (org, client, _) = setup().await;
    let acct = org.insert("Account", rec(json!({"Name": "Acme"}))).unwrap();
    let id = client
        .create(
            "Contact",
            &rec(json!({"LastName": "Lovelace", "Email": "ada@example.com", "AccountId": acct})),
        )
        .await
        .unwrap();
    assert_eq!(id.len(), 18);
    assert!(id.starts_with("003"));

    let got = client
        .get("Contact", &id, &["LastName", "Email", "AccountId"])
        .await
        .unwrap();
    assert_eq!(got["Email"], "ada@example.com");
    assert_eq!(got["AccountId"], acct.as_str());

    client
        .update("Contact", &id, &rec(json!({"FirstName": "Ada"})))
        .await
        .unwrap();
    let stored = org.record("Contact", &id).unwrap();
    assert_eq!(stored["FirstName"], "Ada");
    assert!(stored.contains_key("CreatedDate") && stored.contains_key("LastModifiedDate"));

    // 15-character ids are accepted too.
    let got = client.get("Contact", &id[..15], &["Id"]).await.unwrap();
    assert_eq!(got["Id"], id.as_str());

    client.delete("Contact", &id).await.unwrap();
    assert!(org.record("Contact", &id).is_none());
    assert!(matches!(
        client.get("Contact", &id, &["Id"]).await,
        Err(SfError::NotFound)
    ));
    assert!(matches!(
        client.delete("Contact", &id).await,
        Err(SfError::NotFound)
    ));

    let want: BTreeMap<String, u64> = [
        ("POST sobjects/Contact", 1),
        ("GET sobjects/Contact/{id}", 3),
        ("PATCH sobjects/Contact/{id}", 1),
        ("DELETE sobjects/Contact/{id}", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(client.calls(), want, "endpoint templates carry no ids");
    assert_eq!(
        org.requests_by_endpoint(),
        want.into_iter().collect::<Vec<_>>(),
        "client and org name endpoints alike"
    );
}

#[tokio::test]
async fn upsert_by_external_id_created_updated_multiple() {
    let (org, client, _) = setup().await;
    let ext = "L/1 ?&#%'\" ü"; // path segments are URL-encoded
    let a = client
        .upsert(
            "Contact",
            "SkillSync_User_Id__c",
            ext,
            &rec(json!({"LastName": "Hopper"})),
        )
        .await
        .unwrap();
    assert!(a.created, "201");
    let b = client
        .upsert(
            "Contact",
            "SkillSync_User_Id__c",
            ext,
            &rec(json!({"FirstName": "Grace"})),
        )
        .await
        .unwrap();
    assert!(!b.created, "200");
    assert_eq!(a.id, b.id);
    let stored = org.record("Contact", &a.id).unwrap();
    assert_eq!(stored["SkillSync_User_Id__c"], ext);
    assert_eq!(stored["FirstName"], "Grace");
    assert_eq!(stored["LastName"], "Hopper");

    // Only an org whose uniqueness was bypassed can answer 300.
    let dup = org.insert_unchecked(
        "Contact",
        rec(json!({"LastName": "Twin", "SkillSync_User_Id__c": ext})),
    );
    match client
        .upsert("Contact", "SkillSync_User_Id__c", ext, &Record::new())
        .await
    {
        Err(SfError::MultipleMatches { mut ids }) => {
            ids.sort();
            let mut want = vec![a.id.clone(), dup.clone()];
            want.sort();
            assert_eq!(ids, want);
        }
        other => panic!("expected 300, got {other:?}"),
    }
    assert!(matches!(
        client
            .delete_by_external_id("Contact", "SkillSync_User_Id__c", ext)
            .await,
        Err(SfError::MultipleMatches { .. })
    ));
    assert!(org.remove("Contact", &dup));
    client
        .delete_by_external_id("Contact", "SkillSync_User_Id__c", ext)
        .await
        .unwrap();
    assert!(org.records("Contact").is_empty());
    assert!(matches!(
        client
            .delete_by_external_id("Contact", "SkillSync_User_Id__c", ext)
            .await,
        Err(SfError::NotFound)
    ));
    assert_eq!(
        calls(&client, "PATCH sobjects/Contact/SkillSync_User_Id__c"),
        3
    );
    assert_eq!(
        calls(&client, "DELETE sobjects/Contact/SkillSync_User_Id__c"),
        3
    );
}

#[tokio::test]
async fn collections_are_chunked_at_200() {
    let (org, client, _) = setup().await;
    let recs = contacts(450, "C");

    let created = client.create_many(&recs, false).await.unwrap();
    assert_eq!(created.len(), 450);
    assert!(created.iter().all(|r| r.success && r.id.is_some()));
    assert_eq!(calls(&client, "POST composite/sobjects"), 3);
    assert_eq!(org.records("Contact").len(), 450);
    // Results come back in request order.
    let first = org
        .record("Contact", created[0].id.as_ref().unwrap())
        .unwrap();
    assert_eq!(first["LastName"], "C0");
    let last = org
        .record("Contact", created[449].id.as_ref().unwrap())
        .unwrap();
    assert_eq!(last["LastName"], "C449");

    let updates: Vec<Record> = created
        .iter()
        .map(|r| rec(json!({"attributes": {"type": "Contact"}, "Id": r.id, "FirstName": "Upd"})))
        .collect();
    let updated = client.update_many(&updates, true).await.unwrap();
    assert!(updated.iter().all(|r| r.success));
    assert_eq!(calls(&client, "PATCH composite/sobjects"), 3);
    assert!(org
        .records("Contact")
        .iter()
        .all(|r| r["FirstName"] == "Upd"));

    // Upsert: 450 existing (by external id) + records without attributes (the client adds them).
    let mut upserts: Vec<Record> = (0..450)
        .map(|i| rec(json!({"SkillSync_User_Id__c": format!("C-{i}"), "Title": "T"})))
        .collect();
    upserts.push(rec(
        json!({"SkillSync_User_Id__c": "new-1", "LastName": "New"}),
    ));
    let upserted = client
        .upsert_many("Contact", "SkillSync_User_Id__c", &upserts, false)
        .await
        .unwrap();
    assert_eq!(upserted.len(), 451);
    assert!(upserted.iter().all(|r| r.success));
    assert!(upserted[..450].iter().all(|r| r.created == Some(false)));
    assert_eq!(upserted[450].created, Some(true));
    assert_eq!(
        calls(
            &client,
            "PATCH composite/sobjects/Contact/SkillSync_User_Id__c"
        ),
        3
    );

    let ids: Vec<String> = upserted.iter().map(|r| r.id.clone().unwrap()).collect();
    let deleted = client.delete_many(&ids[..450], false).await.unwrap();
    assert_eq!(deleted.len(), 450);
    assert!(deleted.iter().all(|r| r.success));
    assert_eq!(calls(&client, "DELETE composite/sobjects"), 3);
    assert_eq!(org.records("Contact").len(), 1);
    assert_eq!(client.total_calls(), 12);
}

#[tokio::test]
async fn collection_errors_are_per_record() {
    let (org, client, _) = setup().await;
    let good = rec(json!({"attributes": {"type": "Contact"}, "LastName": "ok"}));
    let bad = rec(json!({"attributes": {"type": "Contact"}, "FirstName": "no last name"}));
    let unknown = rec(json!({"attributes": {"type": "Contact"}, "LastName": "x", "Nope__c": 1}));

    let res = client
        .create_many(&[good.clone(), bad.clone(), unknown], false)
        .await
        .unwrap();
    assert!(res[0].success);
    assert_eq!(res[1].errors[0].error_code, "REQUIRED_FIELD_MISSING");
    assert_eq!(res[1].errors[0].fields, vec!["LastName"]);
    assert_eq!(res[2].errors[0].error_code, "INVALID_FIELD");
    assert_eq!(org.records("Contact").len(), 1);

    // allOrNone: nothing is kept; the valid record reports the rollback.
    let res = client.create_many(&[good, bad], true).await.unwrap();
    assert!(!res[0].success && !res[1].success);
    assert_eq!(
        res[0].errors[0].error_code,
        "ALL_OR_NONE_OPERATION_ROLLED_BACK"
    );
    assert_eq!(org.records("Contact").len(), 1);

    // Deleting an unknown id fails for that record only.
    let id = org.records("Contact")[0]["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = client
        .delete_many(&[id, "003000000000000AAA".to_string()], false)
        .await
        .unwrap();
    assert!(res[0].success);
    assert!(!res[1].success);
    assert!(org.records("Contact").is_empty());
}

#[tokio::test]
async fn transient_faults_are_classified() {
    let (org, client, _) = setup_with(|s| s.timeout_secs = 1).await;
    let cases = [
        (Fault::Unavailable, "SERVER_UNAVAILABLE", Some(503)),
        (Fault::RequestLimit, "REQUEST_LIMIT_EXCEEDED", Some(403)),
        (Fault::UnableToLock, "UNABLE_TO_LOCK_ROW", Some(400)),
        (Fault::Timeout(Duration::from_millis(2500)), "TIMEOUT", None),
    ];
    for (fault, want_code, want_status) in cases {
        org.fail_next(1, fault);
        let e = client
            .create("Account", &rec(json!({"Name": "A"})))
            .await
            .unwrap_err();
        match &e {
            SfError::Transient { status, code, .. } => {
                assert_eq!((code.as_str(), *status), (want_code, want_status), "{e}")
            }
            other => panic!("{fault:?}: expected transient, got {other:?}"),
        }
    }
    // Faults were one-shot; the token request was never affected.
    client
        .create("Account", &rec(json!({"Name": "B"})))
        .await
        .unwrap();
    assert_eq!(client.token_requests(), 1);
}

#[tokio::test]
async fn permanent_errors_are_classified() {
    let (org, client, _) = setup().await;
    org.insert(
        "Contact",
        rec(json!({"LastName": "L", "SkillSync_User_Id__c": "L1"})),
    )
    .unwrap();
    let code = |e: SfError| {
        assert!(!e.is_transient(), "{e}");
        e.code().to_string()
    };
    let e = client
        .create("Contact", &rec(json!({"FirstName": "x"})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, SfError::Permanent { status: 400, errors } if errors[0].fields == ["LastName"])
    );
    assert_eq!(code(e), "REQUIRED_FIELD_MISSING");
    let e = client
        .create("Contact", &rec(json!({"LastName": "x", "Bogus__c": "1"})))
        .await
        .unwrap_err();
    assert_eq!(code(e), "INVALID_FIELD");
    let e = client
        .create(
            "Contact",
            &rec(json!({"LastName": "x", "SkillSync_User_Id__c": "L1"})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), "DUPLICATE_VALUE");
    let e = client
        .create(
            "Contact",
            &rec(json!({"LastName": "x", "AccountId": "001000000000000AAA"})),
        )
        .await
        .unwrap_err();
    assert_eq!(code(e), "INVALID_CROSS_REFERENCE_KEY");
    let e = client
        .query("SELECT Id FROM Contact WHERE")
        .await
        .unwrap_err();
    assert_eq!(code(e), "MALFORMED_QUERY");
    let e = client.query("SELECT Nope FROM Contact").await.unwrap_err();
    assert_eq!(code(e), "INVALID_FIELD");
    assert!(matches!(
        client
            .update(
                "Contact",
                "003000000000000AAA",
                &rec(json!({"LastName": "x"}))
            )
            .await,
        Err(SfError::NotFound)
    ));
    assert!(matches!(
        client.create("Nope__c", &Record::new()).await,
        Err(SfError::NotFound)
    ));
}

#[tokio::test]
async fn api_usage_is_read_from_every_answer() {
    let (org, client, _) = setup().await;
    assert_eq!(client.api_usage(), None);
    org.set_api_limit(100);
    client.query("SELECT Id FROM Account").await.unwrap();
    assert_eq!(client.api_usage(), Some((1, 100)));
    client.query("SELECT Id FROM Account").await.unwrap();
    assert_eq!(client.api_usage(), Some((2, 100)));
    // Errors carry the header too.
    let _ = client.query("SELECT FROM").await;
    assert_eq!(client.api_usage(), Some((3, 100)));
}

#[tokio::test]
async fn live_calls_slow_down_near_the_budget_ceiling() {
    // max_api_share 0.5 of 100 = ceiling 50; live calls are paced from 45 (90 %).
    let (org, client, _) = setup_with(|s| s.max_api_share = 0.5).await;
    org.set_api_limit(100);
    for _ in 0..47 {
        client.query("SELECT Id FROM Account").await.unwrap();
    }
    // 47/50 = 94 %: the next call waits (94 − 90) / 10 × 2 s ≈ 800 ms.
    let t = std::time::Instant::now();
    client.query("SELECT Id FROM Account").await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );
    let status = client.budget().status();
    assert_eq!(status.used, Some(48));
    assert_eq!(
        status.live.state,
        syncback::salesforce::budget::GateState::Slowed
    );
}

#[tokio::test]
async fn describe_and_check_schema() {
    let (_org, client, _) = setup().await;
    let d = client.describe("Contact").await.unwrap();
    let link = d
        .fields
        .iter()
        .find(|f| f.name == "SkillSync_User_Id__c")
        .unwrap();
    assert!(link.external_id && link.unique);
    assert!(matches!(
        client.describe("Nope__c").await,
        Err(SfError::NotFound)
    ));

    let ok = client
        .check_schema("SkillSync_User_Id__c", "Email")
        .await
        .unwrap();
    assert!(ok.is_empty(), "{ok:?}");

    let bad = client.check_schema("Email", "Email").await.unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("Contact.Email") && bad[0].contains("External ID"));

    let bad = client
        .check_schema("Learner_Id__c", "Username__c")
        .await
        .unwrap();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad.iter().any(|p| p.contains("Contact.Learner_Id__c")));
    assert!(bad.iter().any(|p| p.contains("Contact.Username__c")));
}

/// The same scenario in-process and over HTTP: same results, same endpoint counters.
#[tokio::test]
async fn in_process_org_behaves_like_the_http_one() {
    async fn scenario(api: &dyn SalesforceApi) -> Vec<String> {
        let mut out = Vec::new();
        let u = api
            .upsert(
                "Contact",
                "SkillSync_User_Id__c",
                "L1",
                &rec(json!({"LastName": "A"})),
            )
            .await;
        out.push(format!("{:?}", u.as_ref().map(|u| u.created)));
        let id = u.unwrap().id;
        let e = api
            .create("Contact", &rec(json!({"FirstName": "x"})))
            .await
            .map_err(|e| e.code().to_string());
        out.push(format!("{e:?}"));
        let rows = api
            .query(&format!(
                "SELECT Id, LastName FROM Contact WHERE {}",
                soql::eq("SkillSync_User_Id__c", "l1")
            ))
            .await
            .unwrap();
        out.push(format!("{} {}", rows.len(), rows[0]["LastName"]));
        let res = api
            .create_many(&contacts(3, "X"), false)
            .await
            .unwrap()
            .iter()
            .map(|r| r.success)
            .collect::<Vec<_>>();
        out.push(format!("{res:?}"));
        api.delete("Contact", &id).await.unwrap();
        let e = api.get("Contact", &id, &["Id"]).await.unwrap_err();
        out.push(e.code().to_string());
        out
    }
    let (http_org, client, _) = setup().await;
    let local = Org::new();
    let over_http = scenario(&client).await;
    let in_process = scenario(&local).await;
    assert_eq!(over_http, in_process);
    assert_eq!(
        http_org.requests_by_endpoint(),
        local.requests_by_endpoint()
    );
    assert_eq!(
        client.calls().into_iter().collect::<Vec<_>>(),
        local.requests_by_endpoint()
    );
    local.reset_counts();
    assert_eq!(local.total_requests(), 0);
}

/// `tests/py/sf_fidelity.py` drives the sandbox with `simple-salesforce`.
#[tokio::test]
async fn simple_salesforce_talks_to_the_sandbox() {
    if !syncback::testing::python_module("simple_salesforce", "simple-salesforce") {
        return;
    }
    let (org, _client, base) = setup().await;
    org.insert("Account", rec(json!({"Name": "Acme"}))).unwrap();
    org.insert(
        "Contact",
        rec(json!({"LastName": "Seeded", "Email": "ada@example.com"})),
    )
    .unwrap();
    org.set_page_size(2);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/sf_fidelity.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(&base)
        .output()
        .await
        .expect("run python3");
    assert!(
        out.status.success(),
        "sf_fidelity.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");

    assert_eq!(v["bad_token"]["status"], 400);
    assert_eq!(v["bad_token"]["body"]["error"], "invalid_client");
    for k in ["access_token", "instance_url", "token_type", "issued_at"] {
        assert!(
            v["token_keys"].as_array().unwrap().contains(&json!(k)),
            "{k}"
        );
    }
    assert_eq!(v["token_type"], "Bearer");

    assert_eq!(v["query"]["totalSize"], 1);
    assert_eq!(v["query"]["done"], true);
    assert_eq!(v["query"]["records"][0]["Name"], "Acme");
    assert_eq!(v["query"]["records"][0]["attributes"]["type"], "Account");

    assert_eq!(v["create"]["success"], true);
    assert_eq!(v["create"]["errors"], json!([]));
    assert_eq!(v["update_status"], 204);
    assert_eq!(v["get"]["Email"], "ada.l@example.com");
    assert_eq!(v["get"]["attributes"]["type"], "Contact");
    assert_eq!(v["get_has_dates"], true);

    assert_eq!(v["upsert"][0]["status"], 201);
    assert_eq!(v["upsert"][0]["body"]["created"], true);
    assert_eq!(v["upsert"][1]["status"], 200);
    assert_eq!(v["upsert"][1]["body"]["created"], false);
    assert_eq!(v["upsert"][0]["body"]["id"], v["upsert"][1]["body"]["id"]);

    assert_eq!(v["required_error"]["status"], 400);
    assert_eq!(
        v["required_error"]["content"][0]["errorCode"],
        "REQUIRED_FIELD_MISSING"
    );
    assert_eq!(v["delete_status"], 204);
    assert_eq!(v["get_deleted"]["status"], 404);

    assert_eq!(v["collection"][0]["success"], true);
    assert_eq!(v["collection"][1]["success"], false);
    assert_eq!(
        v["collection"][1]["errors"][0]["errorCode"],
        "REQUIRED_FIELD_MISSING"
    );
    // Seeded + upserted + C1; query_all paged through them (page size 2).
    assert_eq!(v["query_all"]["totalSize"], 3);
    assert_eq!(v["query_all"]["n"], 3);
    assert_eq!(v["api_usage"]["api-usage"][1], 15000);

    // The sandbox state matches what the client saw.
    let contacts = org.records("Contact");
    assert_eq!(contacts.len(), 3);
    let hopper = contacts
        .iter()
        .find(|c| c.get("SkillSync_User_Id__c") == Some(&json!("L1")))
        .expect("upserted contact");
    assert_eq!(hopper["FirstName"], "Grace");
    assert_eq!(hopper["LastName"], "Hopper");
    assert_eq!(hopper["Id"], v["upsert"][0]["body"]["id"]);
    let deleted = v["create"]["id"].as_str().unwrap();
    assert!(org.record("Contact", deleted).is_none());
    assert!(org
        .requests_by_endpoint()
        .iter()
        .any(|(e, n)| e == "PATCH sobjects/Contact/SkillSync_User_Id__c" && *n == 2));
}

/// The sandbox's raw wire format, as Salesforce sends it.
#[tokio::test]
async fn sandbox_wire_format() {
    let (org, _client, base) = setup().await;
    let http = reqwest::Client::new();
    let v: Value = http
        .get(format!("{base}/services/data/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v[0]["version"], "61.0");

    // No token: 401 INVALID_SESSION_ID in Salesforce's error shape.
    let r = http
        .get(format!(
            "{base}/services/data/v61.0/query?q=SELECT+Id+FROM+Account"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["errorCode"], "INVALID_SESSION_ID");

    // Password grant: any username, the sandbox secret as password.
    let t: Value = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[
            ("grant_type", "password"),
            ("username", "someone@example.com"),
            ("password", Org::CLIENT_SECRET),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["access_token"].as_str().unwrap().to_string();
    assert_eq!(t["instance_url"], base.as_str());
    let r = http
        .post(format!("{base}/services/oauth2/token"))
        .form(&[("grant_type", "client_credentials"), ("client_id", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = http
        .get(format!("{base}/services/data/v61.0/"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["sforce-limit-info"], "api-usage=1/15000");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["sobjects"], "/services/data/v61.0/sobjects");

    // 300 Multiple Choices lists record URLs.
    let a = org.insert_unchecked(
        "Contact",
        rec(json!({"LastName": "A", "SkillSync_User_Id__c": "D"})),
    );
    org.insert_unchecked(
        "Contact",
        rec(json!({"LastName": "B", "SkillSync_User_Id__c": "D"})),
    );
    let r = http
        .patch(format!(
            "{base}/services/data/v61.0/sobjects/Contact/SkillSync_User_Id__c/D"
        ))
        .bearer_auth(&token)
        .json(&json!({"FirstName": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 300);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0], format!("/services/data/v61.0/sobjects/Contact/{a}"));

    // COUNT() answers totalSize only.
    let v: Value = http
        .get(format!("{base}/services/data/v61.0/query"))
        .query(&[("q", "SELECT COUNT() FROM Contact")])
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"totalSize": 2, "done": true, "records": []}));

    // More than 200 records in one Collections call is refused.
    let recs = contacts(201, "Z");
    let r = http
        .post(format!("{base}/services/data/v61.0/composite/sobjects"))
        .bearer_auth(&token)
        .json(&json!({"allOrNone": false, "records": recs}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v[0]["errorCode"], "EXCEEDED_ID_LIMIT");
    assert_eq!(
        org.requests_by_endpoint(),
        vec![
            ("GET query".to_string(), 1),
            ("GET resources".to_string(), 1),
            ("PATCH sobjects/Contact/SkillSync_User_Id__c".to_string(), 1),
            ("POST composite/sobjects".to_string(), 1),
        ]
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// JWT bearer flow (the option beside client credentials): an RS256 assertion signed with
/// the connected app's key; a key the org does not trust is refused for good.
#[tokio::test]
async fn jwt_bearer_flow_gets_a_token_and_a_wrong_key_is_refused() {
    let jwt = |key: &str| {
        let key = fixture(key);
        move |s: &mut SalesforceSettings| {
            s.auth = syncback::config::SalesforceAuth::JwtBearer;
            s.client_secret = Secret::default();
            s.username = "integration@acme.example".into();
            s.private_key_path = key;
        }
    };
    let (org, client, _) = setup_with(jwt("jwt-test-key.pem")).await;
    org.trust_jwt_key(&std::fs::read(fixture("jwt-test-key.pub.pem")).unwrap());
    client.query("SELECT Id FROM Account").await.unwrap();
    assert_eq!(client.token_requests(), 1);
    org.expire_tokens();
    client.query("SELECT Id FROM Account").await.unwrap();
    assert_eq!(
        client.token_requests(),
        2,
        "a fresh assertion after INVALID_SESSION_ID"
    );

    let (org, client, _) = setup_with(jwt("jwt-other-key.pem")).await;
    org.trust_jwt_key(&std::fs::read(fixture("jwt-test-key.pub.pem")).unwrap());
    let e = client.query("SELECT Id FROM Account").await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("invalid_grant"), "{e}");

    let missing = Client::new(&SalesforceSettings {
        auth: syncback::config::SalesforceAuth::JwtBearer,
        private_key_path: "/nonexistent.pem".into(),
        ..Default::default()
    });
    assert!(missing.is_err(), "an unreadable key fails at construction");
}

/// Orgs on old API versions answer an upsert that updates with 204 and no body: the client
/// reads the record's id by its external id (one extra call) so callers always get it.
#[tokio::test]
async fn upsert_answered_204_still_yields_the_record_id() {
    let (org, client, _) = setup().await;
    org.set_legacy_upsert(true);
    let created = client
        .upsert(
            "Contact",
            "SkillSync_User_Id__c",
            "L-204",
            &rec(json!({"LastName": "A"})),
        )
        .await
        .unwrap();
    assert!(created.created);
    let updated = client
        .upsert(
            "Contact",
            "SkillSync_User_Id__c",
            "L-204",
            &rec(json!({"LastName": "B"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.created, updated.id.as_str()),
        (false, created.id.as_str())
    );
    assert_eq!(
        calls(&client, "GET sobjects/Contact/SkillSync_User_Id__c"),
        1
    );
}
