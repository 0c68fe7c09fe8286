//! The HTTP/1.1 server under the receiver, hardened for the open internet (README
//! "Operations"; `[server]` keys): a cap on concurrent connections, a deadline for the
//! request head, an idle timeout for kept-alive connections, and generous parser limits
//! so that oversized headers reach the router and get the one JSON error shape.
//! (The body deadline is enforced where the body is read, so it can answer `408`.)

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::config::ServerSettings;

/// Parser limit on the request head's bytes: above the router's own (64 KiB of header
/// bytes, a JSON `431` with the count), so that a large head reaches it. The header count
/// (`MAX_HEADERS`, 100) is enforced by the parser itself, whose answer is rewritten into
/// the JSON shape below — a limit above hyper's inline 100 would make it allocate arrays
/// of that many entries for every request it parses.
const PARSER_MAX_BUF: usize = 1024 * 1024 + 64 * 1024;

/// How long in-flight requests get to finish after shutdown was asked for.
const DRAIN: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
struct Limits {
    header: Duration,
    idle: Duration,
}

/// What the watchdog of one connection needs to know.
struct Activity {
    in_flight: AtomicUsize,
    /// When the first byte of a request head arrived (no request in flight).
    head_started: Mutex<Option<Instant>>,
    /// When the connection last became idle.
    idle_since: Mutex<Instant>,
}

impl Activity {
    /// A fresh connection owes its first request head within the head deadline, counted
    /// from accept: connecting and sending nothing must not hold a slot for the (longer)
    /// keep-alive idle timeout.
    fn new() -> Self {
        let now = Instant::now();
        Activity {
            in_flight: AtomicUsize::new(0),
            head_started: Mutex::new(Some(now)),
            idle_since: Mutex::new(now),
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        *self.head_started.lock().unwrap() = None;
    }

    fn end(&self) {
        *self.idle_since.lock().unwrap() = Instant::now();
        *self.head_started.lock().unwrap() = None;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    fn bytes_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let mut h = self.head_started.lock().unwrap();
            if h.is_none() {
                *h = Some(Instant::now());
            }
        }
    }

    /// When this connection is to be cut off (None while a request is being served).
    fn deadline(&self, l: Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(match *self.head_started.lock().unwrap() {
            Some(t) => t + l.header,
            None => *self.idle_since.lock().unwrap() + l.idle,
        })
    }
}

/// A socket that tells its [`Activity`] when request bytes arrive, and gives the answers
/// hyper writes by itself (a request it cannot parse: `400`, `414`, `431`, bodiless) the
/// one JSON error shape of every other answer.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    /// Our answer in place of hyper's: (bytes, how many are written, the length hyper
    /// handed over, reported as written once ours is out).
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl Watched {
    /// hyper's own error head (no request being served, a bodiless `4xx`) → our JSON one.
    fn replacement(&self, head: &[u8]) -> Option<Vec<u8>> {
        if head.len() < 16
            || !head.starts_with(b"HTTP/1.")
            || head[9] != b'4'
            || self.activity.in_flight.load(Ordering::SeqCst) > 0
        {
            return None;
        }
        let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
        let text = std::str::from_utf8(&head[..end]).ok()?;
        let code: u16 = text.get(9..12)?.parse().ok()?;
        let bodiless = text
            .lines()
            .any(|l| l.eq_ignore_ascii_case("content-length: 0"));
        if !(400..500).contains(&code) || !bodiless || head.len() != end + 4 {
            return None;
        }
        let (status, body) = super::parser_rejection(code);
        Some(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                body.len(),
                body
            )
            .into_bytes(),
        )
    }

    /// Write our replacement; `Ready(claimed)` once all of it is out.
    fn poll_rewrite(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        loop {
            let (bytes, written, claimed) = self.rewrite.as_mut().expect("rewriting");
            if *written == bytes.len() {
                return Poll::Ready(Ok(*claimed));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            match self.replacement(buf) {
                Some(ours) => self.rewrite = Some((ours, 0, buf.len())),
                None => return Pin::new(&mut self.inner).poll_write(cx, buf),
            }
        }
        self.poll_rewrite(cx)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewrite.is_none() {
            // hyper's error head is one buffer; anything else passes through untouched.
            let mut written = bufs.iter().filter(|b| !b.is_empty());
            if let (Some(head), None) = (written.next(), written.next()) {
                if let Some(ours) = self.replacement(head) {
                    self.rewrite = Some((ours, 0, head.len()));
                }
            }
            if self.rewrite.is_none() {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
        }
        self.poll_rewrite(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Serve `router` on `listener` until `shutdown` resolves, then let in-flight requests
/// finish (up to 30 s). At most `server.max_connections` connections are served at once;
/// further clients wait in the accept backlog.
pub fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    settings: &ServerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    let limits = Limits {
        header: Duration::from_secs(settings.header_read_timeout_secs.max(1)),
        idle: Duration::from_secs(settings.idle_timeout_secs.max(1)),
    };
    let cap = settings.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    accept_loop(listener, router, limits, cap, shutdown)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    cap: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(cap));
    let (close_tx, close_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let close = close_rx.clone();
        tokio::spawn(async move {
            serve_connection(stream, router, limits, close).await;
            drop(permit);
        });
    }
    drop(listener);
    let _ = close_tx.send(true);
    // Every connection holds a permit: having them all back means all are done.
    let _ = tokio::time::timeout(DRAIN, slots.acquire_many(cap as u32)).await;
    Ok(())
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    mut close: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
        rewrite: None,
    });
    let act = activity.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        act.begin();
        let act = act.clone();
        // Too many or too large headers: the JSON 431, whatever the route.
        let routed = match super::header_limits(req.headers()) {
            Some(refused) => Err(refused),
            None => Ok(router.clone().oneshot(req.map(Body::new))),
        };
        async move {
            let r = match routed {
                Err(refused) => Ok(refused),
                Ok(fut) => fut.await,
            };
            act.end();
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // The head deadline is ours (below): hyper's would also cut idle keep-alives.
        .header_read_timeout(None)
        .max_headers(super::MAX_HEADERS)
        .max_buf_size(PARSER_MAX_BUF)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        let deadline = activity
            .deadline(limits)
            .unwrap_or_else(|| Instant::now() + limits.idle);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(deadline) => {
                if activity.deadline(limits).is_some_and(|d| d <= Instant::now()) {
                    debug!("connection cut off: request head or idle deadline passed");
                    return;
                }
            }
            r = close.changed(), if !closing => {
                closing = true;
                if r.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
