//! The load client: one task per keep-alive connection, each sending one request at a time
//! (no pipelining) from pre-formatted bytes and parsing the response with `httparse`. It shares
//! the machine with the servers and Redis, so it does as little as it can per request.

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Largest response head the client accepts.
const MAX_HEAD: usize = 16 * 1024;
/// Pause before reconnecting after a transport error, so a dead server is not hammered.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// Highest latency the histogram tracks (longer ones are clamped), in microseconds.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A request's bytes: `GET <path>` with an optional `Cookie` header (a whole `name=value`).
pub(crate) fn request(addr: SocketAddr, path: &str, cookie: Option<&str>) -> Vec<u8> {
    let mut out = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    if let Some(cookie) = cookie {
        out.push_str("Cookie: ");
        out.push_str(cookie);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// One parsed response.
struct Answer {
    status: u16,
    /// The `name=value` part of the first `Set-Cookie`, when asked for.
    set_cookie: Option<String>,
    /// The body, kept only for error messages (non-200 answers).
    body: Option<String>,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends `req` and reads one whole response.
    async fn exchange(&mut self, req: &[u8], want_cookie: bool) -> io::Result<Answer> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let (head_len, status, body_len, set_cookie) = loop {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            if let Some(head) = parse_head(&self.buf, want_cookie)? {
                break head;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("response head over 16 KiB"));
            }
        };
        let total = head_len + body_len;
        while self.buf.len() < total {
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection inside a body",
                ));
            }
        }
        if self.buf.len() > total {
            return Err(invalid("bytes after the response (nothing was pipelined)"));
        }
        let body = (status != 200)
            .then(|| String::from_utf8_lossy(&self.buf[head_len..total]).into_owned());
        Ok(Answer {
            status,
            set_cookie,
            body,
        })
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

type Head = (usize, u16, usize, Option<String>);

/// The head's length, the status, the body length (`Content-Length`) and optionally the first
/// `Set-Cookie`'s `name=value`; `None` while the head is incomplete.
fn parse_head(buf: &[u8], want_cookie: bool) -> io::Result<Option<Head>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(invalid(&format!("malformed response: {err}"))),
    };
    let status = response.code.unwrap_or(0);
    let mut body_len = None;
    let mut set_cookie = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid(
                "chunked responses are not supported by the load client",
            ));
        } else if want_cookie
            && set_cookie.is_none()
            && header.name.eq_ignore_ascii_case("set-cookie")
        {
            let value = String::from_utf8_lossy(header.value);
            set_cookie = value.split(';').next().map(|v| v.trim().to_owned());
        }
    }
    let body_len = body_len.ok_or_else(|| invalid("response without Content-Length"))?;
    Ok(Some((head_len, status, body_len, set_cookie)))
}

/// Creates `count` sessions with `GET /` (no cookie) over `connections` connections and returns
/// their cookies as `name=value`.
pub(crate) async fn prime(
    addr: SocketAddr,
    count: usize,
    connections: usize,
) -> Result<Vec<String>, String> {
    let connections = connections.clamp(1, count.max(1));
    let req = Arc::new(request(addr, "/", None));
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let share = count / connections + usize::from(i < count % connections);
            let req = req.clone();
            tokio::spawn(async move {
                let mut conn = Conn::open(addr)
                    .await
                    .map_err(|err| format!("cannot connect to {addr}: {err}"))?;
                let mut cookies = Vec::with_capacity(share);
                for _ in 0..share {
                    let answer = conn
                        .exchange(&req, true)
                        .await
                        .map_err(|err| format!("GET / failed: {err}"))?;
                    if answer.status != 200 {
                        return Err(format!(
                            "GET / answered {}: {}",
                            answer.status,
                            answer.body.unwrap_or_default().trim()
                        ));
                    }
                    cookies.push(
                        answer
                            .set_cookie
                            .ok_or("GET / without a cookie set no session cookie")?,
                    );
                }
                Ok::<_, String>(cookies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(count);
    for task in tasks {
        all.extend(task.await.map_err(|err| err.to_string())??);
    }
    Ok(all)
}

/// What one worker does.
pub(crate) struct Plan {
    pub(crate) addr: SocketAddr,
    /// The requests to rotate over; worker `i` sends `i`, `i + workers`, `i + 2 * workers`, …
    pub(crate) requests: Arc<Vec<Vec<u8>>>,
    pub(crate) worker: usize,
    pub(crate) workers: usize,
    /// Requests started before this are warm-up and not recorded.
    pub(crate) warm_end: Instant,
    /// The worker stops here; requests finishing later are not recorded.
    pub(crate) end: Instant,
    /// Recorded requests of all workers, for the progress bar.
    pub(crate) completed: Arc<AtomicU64>,
}

/// One worker's (or the merged) results.
pub(crate) struct WorkerResult {
    /// Latency of the recorded successful requests, in microseconds.
    pub(crate) latency_us: Histogram<u64>,
    /// Successful (200) requests inside the measured window.
    pub(crate) ok: u64,
    /// Failed requests (status other than 200 or a transport error), warm-up included.
    pub(crate) errors: u64,
    /// Failed requests inside the measured window.
    pub(crate) window_errors: u64,
    /// The first failure, for the report.
    pub(crate) first_error: Option<String>,
}

impl WorkerResult {
    pub(crate) fn new() -> Self {
        WorkerResult {
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            errors: 0,
            window_errors: 0,
            first_error: None,
        }
    }

    pub(crate) fn merge(&mut self, other: WorkerResult) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds merge");
        self.ok += other.ok;
        self.errors += other.errors;
        self.window_errors += other.window_errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn fail(&mut self, in_window: bool, message: impl FnOnce() -> String) {
        self.errors += 1;
        if in_window {
            self.window_errors += 1;
        }
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }
}

/// Sends requests over one keep-alive connection until `plan.end`, reconnecting after transport
/// errors.
pub(crate) async fn worker(plan: Plan) -> WorkerResult {
    let mut result = WorkerResult::new();
    let n = plan.requests.len();
    let first = plan.worker % n.max(1);
    let mut next = first;
    let mut conn: Option<Conn> = None;
    loop {
        let started = Instant::now();
        if started >= plan.end {
            break;
        }
        let in_window = started >= plan.warm_end;
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::open(plan.addr).await {
                Ok(c) => conn.insert(c),
                Err(err) => {
                    result.fail(in_window, || format!("connect to {}: {err}", plan.addr));
                    tokio::time::sleep(RECONNECT_PAUSE).await;
                    continue;
                }
            },
        };
        let req = &plan.requests[next];
        next = if next + plan.workers < n {
            next + plan.workers
        } else {
            first
        };
        match c.exchange(req, false).await {
            Ok(answer) if answer.status == 200 => {
                let done = Instant::now();
                if in_window && done <= plan.end {
                    let us = (done - started).as_micros().clamp(1, MAX_LATENCY_US.into()) as u64;
                    result.latency_us.saturating_record(us);
                    result.ok += 1;
                    plan.completed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(answer) => result.fail(in_window, || {
                format!(
                    "HTTP {}: {}",
                    answer.status,
                    answer.body.unwrap_or_default().trim()
                )
            }),
            Err(err) => {
                result.fail(in_window, || format!("transport: {err}"));
                conn = None;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\nset-cookie: a=b; Path=/\r\n\r\n1 views";
        let (head, status, body, cookie) = parse_head(raw, true).unwrap().unwrap();
        assert_eq!((status, body), (200, 7));
        assert_eq!(&raw[head..], b"1 views");
        assert_eq!(cookie.as_deref(), Some("a=b"));
        assert!(parse_head(&raw[..20], true).unwrap().is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n", false).is_err());
    }
}
