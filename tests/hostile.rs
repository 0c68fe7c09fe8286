//! The receiver under hostile traffic (docs/rules.md "Webhook contract"; README
//! "Operations"): every error in the one JSON shape, 415 for other content types, strict
//! date-times and bounded ids at the door, and connections that dribble, stall or idle
//! cut off by the `[server]` timeouts while valid webhooks keep getting 202.
//! The in-memory queue is enough here: nothing in these tests is about the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use syncback::config::Settings;
use syncback::queue::Queue;
use syncback::webhook::signature::decode_secret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn settings(server: &str) -> Settings {
    Settings::from_toml(&format!(
        r#"
[server]
{server}
[webhooks]
secrets = ["{SECRET}"]
[queue]
backend = "memory"
"#
    ))
    .unwrap()
}

struct Receiver {
    addr: std::net::SocketAddr,
    queue: Arc<dyn Queue>,
    http: reqwest::Client,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn spawn(s: &Settings) -> Receiver {
    let queue = syncback::queue::open(&s.queue);
    let state = syncback::http::AppState::new(s, queue.clone(), None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(syncback::http::serve_with(
        listener,
        syncback::http::router(state),
        &s.server,
        async move {
            let _ = rx.await;
        },
    ));
    Receiver {
        addr,
        queue,
        http: reqwest::Client::new(),
        _stop: tx,
    }
}

fn event(id: &str, learner_id: Value, occurred_at: &str) -> Value {
    json!({"id": id, "type": "learner.updated", "occurred_at": occurred_at,
        "data": {"learner": {"id": learner_id, "username": "ada@acme.example",
            "status": "active", "updated_at": "2026-11-24T10:00:00Z"}}})
}

impl Receiver {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn post(&self, ev: &Value, content_type: Option<&str>) -> (u16, Value) {
        let body = serde_json::to_vec(ev).unwrap();
        let id = ev["id"].as_str().unwrap();
        let ts = chrono::Utc::now().timestamp();
        let sig = decode_secret(SECRET).unwrap().sign(id, ts, &body);
        let mut req = self
            .http
            .post(self.url("/webhooks/skillsync"))
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        shape(req.send().await.unwrap()).await
    }
}

/// Status and body, asserting the one error shape for every non-2xx answer.
async fn shape(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(ct.as_deref(), Some("application/json"), "{status}: {body}");
        assert!(body["error"].is_string(), "{status}: {body}");
        assert!(body["message"].is_string(), "{status}: {body}");
        assert!(body["violations"].is_array(), "{status}: {body}");
    }
    (status, body)
}

#[tokio::test]
async fn every_error_answer_has_the_one_json_shape() {
    let r = spawn(&settings("")).await;
    let c = &r.http;

    let (st, b) = shape(c.get(r.url("/nope")).send().await.unwrap()).await;
    assert_eq!((st, b["error"].as_str()), (404, Some("not_found")));
    assert_eq!(b["violations"], json!([]));

    let resp = c.get(r.url("/webhooks/skillsync")).send().await.unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    let (st, b) = shape(resp).await;
    assert_eq!((st, b["error"].as_str()), (405, Some("method_not_allowed")));
    let (st, _) = shape(c.delete(r.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(st, 405);

    // More than 100 headers, and a ~0.5 MB header block.
    let mut req = c.post(r.url("/webhooks/skillsync"));
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let (st, b) = shape(req.send().await.unwrap()).await;
    assert_eq!((st, b["error"].as_str()), (431, Some("headers_too_large")));
    let big = "a".repeat(512 * 1024);
    let (st, _) = shape(
        c.get(r.url("/healthz"))
            .header("x-big", big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st, 431);

    // 415 for anything but application/json (parameters allowed).
    let ev = event("evt_ct", json!("1001"), "2026-11-25T16:41:16.958Z");
    for ct in [Some("text/plain"), Some("application/jsonx"), None] {
        let (st, b) = r.post(&ev, ct).await;
        assert_eq!(st, 415, "{ct:?}: {b}");
        assert_eq!(b["error"], "unsupported_media_type");
    }
    let (st, b) = r.post(&ev, Some("Application/JSON; charset=utf-8")).await;
    assert_eq!(st, 202, "{b}");
}

#[tokio::test]
async fn malformed_date_times_and_unbounded_ids_are_refused_at_the_door() {
    let r = spawn(&settings("")).await;
    let json_ct = Some("application/json");
    for (i, bad) in ["2026-11-25T1::41:16Z", "20:6-11-25T16:41:16.958Z"]
        .iter()
        .enumerate()
    {
        let (st, b) = r
            .post(&event(&format!("evt_dt{i}"), json!("1001"), bad), json_ct)
            .await;
        assert_eq!(st, 422, "{bad}: {b}");
        assert!(
            b["violations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["path"] == "/occurred_at"),
            "{b}"
        );
    }
    for (i, bad) in [json!("a\u{0}b"), json!("x".repeat(8000))]
        .iter()
        .enumerate()
    {
        let (st, b) = r
            .post(
                &event(&format!("evt_id{i}"), bad.clone(), "2026-11-25T16:41:16Z"),
                json_ct,
            )
            .await;
        assert_eq!(st, 422, "{b}");
        assert!(
            b["violations"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["path"] == "/data/learner/id"),
            "{b}"
        );
    }
    // Real SkillSync ids still pass.
    for (i, ok) in [
        json!("1001"),
        json!(1001),
        json!("0f8fad5b-d9cb-469f-a165-70867728950e"),
    ]
    .iter()
    .enumerate()
    {
        let (st, b) = r
            .post(
                &event(
                    &format!("evt_01JD7X3K2N8Q4R5S6T7U8V9W0{i}"),
                    ok.clone(),
                    "2026-11-25T16:41:16.958+01:00",
                ),
                json_ct,
            )
            .await;
        assert_eq!(st, 202, "{ok}: {b}");
    }
    assert_eq!(r.queue.depths().await.unwrap().main, 3);
}

/// Is the server's side of this connection closed (EOF or reset) within `within`?
/// Whatever the server answered before closing is returned.
async fn closed_within(s: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_connections_are_cut_off_while_valid_webhooks_get_202() {
    let r = spawn(&settings(
        "header_read_timeout_secs = 1\nbody_read_timeout_secs = 1\nidle_timeout_secs = 2\nmax_connections = 400",
    ))
    .await;

    // 300 slow-loris clients: a request head sent one byte at a time, never finished.
    let head =
        b"POST /webhooks/skillsync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n";
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(TcpStream::connect(r.addr).await.unwrap());
    }
    let dribble = tokio::spawn(async move {
        for i in 0..head.len() {
            for s in slow.iter_mut() {
                if s.write_all(&head[i..i + 1]).await.is_err() {
                    continue;
                }
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        slow
    });
    // A client that sends its head and stalls in the body; one that sits idle.
    let mut stalled = TcpStream::connect(r.addr).await.unwrap();
    stalled
        .write_all(b"POST /webhooks/skillsync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"id\":")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(r.addr).await.unwrap();

    // Meanwhile, valid webhooks are accepted promptly.
    let started = Instant::now();
    for i in 0..20 {
        let (st, b) = r
            .post(
                &event(&format!("evt_ok{i}"), json!("1001"), "2026-11-25T16:41:16Z"),
                Some("application/json"),
            )
            .await;
        assert_eq!(st, 202, "{b}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "valid webhooks were slowed down: {:?}",
        started.elapsed()
    );

    let answer = closed_within(&mut stalled, Duration::from_secs(4))
        .await
        .expect("a stalled body is cut off");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle connection is closed"
    );
    // The slow-loris clients were cut off about header_read_timeout after their first
    // byte, long before they could finish (head.len() × 40 ms ≈ 3 s).
    let mut slow = dribble.await.unwrap();
    let mut cut = 0;
    for s in slow.iter_mut() {
        if closed_within(s, Duration::from_millis(200)).await.is_some() {
            cut += 1;
        }
    }
    assert_eq!(cut, slow.len(), "every slow connection is closed");
    assert_eq!(r.queue.depths().await.unwrap().main, 20);
}

#[tokio::test]
async fn the_connection_cap_holds_extra_clients_back_until_a_slot_frees() {
    let r = spawn(&settings(
        "header_read_timeout_secs = 1\nidle_timeout_secs = 1\nmax_connections = 2",
    ))
    .await;
    // Two idle connections take both slots…
    let _a = TcpStream::connect(r.addr).await.unwrap();
    let _b = TcpStream::connect(r.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // …so a third client waits in the backlog until they are cut off (idle timeout).
    let started = Instant::now();
    let (st, b) = r
        .post(
            &event("evt_cap", json!("1001"), "2026-11-25T16:41:16Z"),
            Some("application/json"),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700) && waited < Duration::from_secs(4),
        "waited {waited:?}"
    );
}

#[tokio::test]
async fn connections_that_never_send_a_request_are_cut_at_the_head_deadline() {
    // The idle timeout is long; a client that connects and sends nothing must still go
    // after header_read_timeout, or silent sockets would hold every slot for a minute.
    let r = spawn(&settings(
        "header_read_timeout_secs = 1\nidle_timeout_secs = 60\nmax_connections = 50",
    ))
    .await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(r.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Every slot is taken by a silent client: a valid webhook waits for them to be cut.
    let started = Instant::now();
    let (st, b) = r
        .post(
            &event("evt_silent", json!("1001"), "2026-11-25T16:41:16Z"),
            Some("application/json"),
        )
        .await;
    assert_eq!(st, 202, "{b}");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "a valid client waited {waited:?} behind silent ones"
    );
    for s in silent.iter_mut() {
        assert!(
            closed_within(s, Duration::from_millis(500)).await.is_some(),
            "a silent connection is closed"
        );
    }
    // A kept-alive connection that already served a request gets the idle timeout, not
    // the head deadline: a second request after 1.5 s reuses it.
    let mut kept = TcpStream::connect(r.addr).await.unwrap();
    let req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    kept.write_all(req).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    kept.write_all(req).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "kept-alive connection closed before idle_timeout_secs"
    );
}

/// Status and JSON body of the one answer on a connection the server then closes.
fn answer(raw: &str) -> (u16, Value) {
    let status = raw.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{raw}"
    );
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{raw}"
    );
    assert_eq!(body["violations"], json!([]), "{raw}");
    (status, body)
}

/// Requests the HTTP parser itself refuses — not HTTP at all, more than 100 or even 1,000
/// headers, a URI too long — get the same JSON shape as every other error, not hyper's
/// bodiless answer; so does garbage after a good request on a kept-alive connection.
#[tokio::test]
async fn requests_the_parser_refuses_get_the_json_shape_too() {
    let r = spawn(&settings("")).await;
    let send = |bytes: Vec<u8>| async move {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        closed_within(&mut s, Duration::from_secs(5))
            .await
            .expect("the server closes after refusing")
    };
    let (st, b) = answer(&send(b"THIS IS NOT HTTP\r\n\r\n".to_vec()).await);
    assert_eq!((st, b["error"].as_str()), (400, Some("bad_request")), "{b}");

    for n in [101, 1_500] {
        let mut head = String::from("GET /healthz HTTP/1.1\r\nhost: x\r\n");
        for i in 0..n {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("\r\n");
        let (st, b) = answer(&send(head.into_bytes()).await);
        assert_eq!(
            (st, b["error"].as_str()),
            (431, Some("headers_too_large")),
            "{n}: {b}"
        );
    }

    let long = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let (st, b) = answer(&send(long.into_bytes()).await);
    assert!(matches!(st, 414 | 431 | 400), "{st}: {b}");

    // A good request, then garbage on the same connection.
    let mut s = TcpStream::connect(r.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = vec![0u8; 4096];
    let n = s.read(&mut first).await.unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    s.write_all(b"\x01\x02 garbage\r\n\r\n").await.unwrap();
    let raw = closed_within(&mut s, Duration::from_secs(5)).await.unwrap();
    let (st, b) = answer(&raw);
    assert_eq!((st, b["error"].as_str()), (400, Some("bad_request")), "{b}");
}
