#!/usr/bin/env python3
"""Wire-fidelity check of the sandbox Salesforce org (docs/rules.md "Salesforce") with a real client.

Usage: sf_fidelity.py <base_url>   (e.g. http://127.0.0.1:40123)

Drives the sandbox with the `simple-salesforce` package -- a third-party client written
against the real Salesforce REST API -- and prints one JSON object with what it saw.
`tests/salesforce.rs` (`simple_salesforce_talks_to_the_sandbox`) asserts on it and on
the sandbox state. Exits 3 when simple-salesforce is not installed.
"""

import json
import sys

import requests

try:
    from simple_salesforce import Salesforce
    from simple_salesforce.exceptions import SalesforceError
except ImportError:  # the Rust test decides whether that is a skip or a failure
    print("simple-salesforce is not installed", file=sys.stderr)
    sys.exit(3)

CLIENT_ID = "sandbox-client"
CLIENT_SECRET = "sandbox-secret"


class PlainHttp(requests.Session):
    """simple-salesforce hard-codes https://{instance}; the sandbox speaks plain HTTP."""

    def request(self, method, url, *args, **kwargs):
        return super().request(method, url.replace("https://", "http://", 1), *args, **kwargs)


def main(base):
    out = {}

    # OAuth 2.0 client credentials (and a refused secret).
    bad = requests.post(
        base + "/services/oauth2/token",
        data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "nope"},
        timeout=10,
    )
    out["bad_token"] = {"status": bad.status_code, "body": bad.json()}
    tok = requests.post(
        base + "/services/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        },
        timeout=10,
    )
    tok.raise_for_status()
    t = tok.json()
    out["token_keys"] = sorted(t.keys())
    out["token_type"] = t["token_type"]

    sf = Salesforce(
        instance_url=t["instance_url"],
        session_id=t["access_token"],
        version="61.0",
        session=PlainHttp(),
    )

    # Query (the Rust side seeded Account "Acme" and Contact ada@example.com).
    q = sf.query("SELECT Id, Name FROM Account WHERE Name = 'Acme'")
    out["query"] = {"totalSize": q["totalSize"], "done": q["done"], "records": q["records"]}
    acct = q["records"][0]["Id"]

    # sObject create / update / get / delete.
    created = sf.Contact.create({"LastName": "Lovelace", "FirstName": "Ada", "AccountId": acct})
    out["create"] = created
    cid = created["id"]
    out["update_status"] = sf.Contact.update(cid, {"Email": "ada.l@example.com"})
    got = sf.Contact.get(cid)
    out["get"] = {k: got.get(k) for k in ("attributes", "Id", "Email", "LastName", "AccountId")}
    out["get_has_dates"] = bool(got.get("CreatedDate")) and bool(got.get("LastModifiedDate"))

    # Upsert by external id: created (201) then updated (200).
    r1 = sf.Contact.upsert(
        "SkillSync_User_Id__c/L1", {"LastName": "Hopper", "Email": "grace@example.com"},
        raw_response=True,
    )
    r2 = sf.Contact.upsert("SkillSync_User_Id__c/L1", {"FirstName": "Grace"}, raw_response=True)
    out["upsert"] = [
        {"status": r1.status_code, "body": r1.json()},
        {"status": r2.status_code, "body": r2.json()},
    ]

    # A validation error surfaces as Salesforce's error list.
    try:
        sf.Contact.create({"FirstName": "No last name"})
        out["required_error"] = None
    except SalesforceError as e:
        out["required_error"] = {"status": e.status, "content": e.content}

    out["delete_status"] = sf.Contact.delete(cid)
    try:
        sf.Contact.get(cid)
        out["get_deleted"] = None
    except SalesforceError as e:
        out["get_deleted"] = {"status": e.status, "content": e.content}

    # sObject Collections.
    coll = sf.restful(
        "composite/sobjects",
        method="POST",
        json={
            "allOrNone": False,
            "records": [
                {"attributes": {"type": "Contact"}, "LastName": "C1"},
                {"attributes": {"type": "Contact"}, "FirstName": "missing last name"},
            ],
        },
    )
    out["collection"] = coll

    # query_all follows nextRecordsUrl (the Rust side set a small page size).
    allq = sf.query_all("SELECT Id, LastName FROM Contact ORDER BY LastName")
    out["query_all"] = {"totalSize": allq["totalSize"], "n": len(allq["records"])}

    out["api_usage"] = {k: [v.used, v.total] for k, v in (sf.api_usage or {}).items()}
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1].rstrip("/"))
