//! A Lambda Runtime API emulator on 127.0.0.1: the endpoints a provided.al2023 function
//! talks to (`next`, `response`, `error`), HTTP/1.1 with keep-alive. The integration
//! tests start the real `bootstrap` against it (tests/all/runtime_api.rs), and so does
//! the Lambda benchmark (`lambda_bench`), which reads when each event was handed out and
//! answered.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the emulator saw: the answers per request id, errors, when the first answer
/// arrived, and when each event was handed out and answered (in order).
#[derive(Default)]
pub struct Seen {
    pub responses: Vec<(String, serde_json::Value)>,
    pub errors: Vec<(String, String)>,
    pub first_answer: Option<Instant>,
    pub handed_out: Vec<Instant>,
    pub answered: Vec<Instant>,
}

/// The Runtime API emulator: hands out `events` in order (each with a deadline 60 s
/// away), then holds `next` open.
pub struct RuntimeApi {
    pub addr: String,
    pub seen: Arc<Mutex<Seen>>,
}

impl RuntimeApi {
    pub async fn start(events: Vec<serde_json::Value>) -> RuntimeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let queue = Arc::new(Mutex::new(VecDeque::from(events)));
        let s = seen.clone();
        tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                n += 1;
                tokio::spawn(serve(conn, queue.clone(), s.clone(), n));
            }
        });
        RuntimeApi { addr, seen }
    }

    /// Waits until `n` answers (responses or errors) arrived.
    pub async fn answers(&self, n: usize, within: Duration) {
        let started = Instant::now();
        loop {
            let got = {
                let s = self.seen.lock().unwrap();
                s.responses.len() + s.errors.len()
            };
            if got >= n {
                return;
            }
            assert!(
                started.elapsed() < within,
                "only {got} of {n} answers in {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One HTTP/1.1 request: method, path, body (Content-Length or chunked).
async fn read_request(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Option<(String, String, Vec<u8>)> {
    let header_end = crate::http::read_head(conn, buf).await?;
    let mut chunk = [0u8; 16 * 1024];
    let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let lower = head.to_ascii_lowercase();
    let length: Option<usize> = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    buf.drain(..header_end);
    let mut body = Vec::new();
    if chunked {
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let size =
                usize::from_str_radix(String::from_utf8_lossy(&buf[..line_end]).trim(), 16).ok()?;
            while buf.len() < line_end + 2 + size + 2 {
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
            buf.drain(..line_end + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        let length = length.unwrap_or(0);
        while buf.len() < length {
            let n = conn.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        body = buf.drain(..length).collect();
    }
    Some((method, path, body))
}

async fn serve(
    mut conn: TcpStream,
    queue: Arc<Mutex<VecDeque<serde_json::Value>>>,
    seen: Arc<Mutex<Seen>>,
    conn_no: u32,
) {
    let mut buf = Vec::new();
    let mut served = 0u32;
    while let Some((method, path, body)) = read_request(&mut conn, &mut buf).await {
        let answer = |status: &str, headers: &str, body: &[u8]| {
            let mut out = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{headers}\r\n",
                body.len()
            )
            .into_bytes();
            out.extend_from_slice(body);
            out
        };
        let out = if method == "GET" && path.ends_with("/runtime/invocation/next") {
            let next = queue.lock().unwrap().pop_front();
            let Some(event) = next else {
                // No more events: hold the long poll until the test ends.
                std::future::pending::<()>().await;
                return;
            };
            served += 1;
            seen.lock().unwrap().handed_out.push(Instant::now());
            let id = format!("req-{conn_no}-{served}");
            let deadline = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            let body = serde_json::to_vec(&event).unwrap();
            answer(
                "200 OK",
                &format!(
                    "Content-Type: application/json\r\nLambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {deadline}\r\nLambda-Runtime-Invoked-Function-Arn: arn:aws:lambda:us-east-1:123456789012:function:floe\r\nLambda-Runtime-Trace-Id: Root=1-00000000-000000000000000000000000\r\n"
                ),
                &body,
            )
        } else if method == "POST" && path.ends_with("/response") {
            let id = path.split('/').rev().nth(1).unwrap_or_default().to_string();
            let mut s = seen.lock().unwrap();
            s.first_answer.get_or_insert_with(Instant::now);
            s.answered.push(Instant::now());
            s.responses.push((
                id,
                serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
            ));
            answer("202 Accepted", "", b"{}")
        } else if method == "POST" && path.ends_with("/error") {
            let id = path.split('/').rev().nth(1).unwrap_or_default().to_string();
            let mut s = seen.lock().unwrap();
            s.first_answer.get_or_insert_with(Instant::now);
            s.answered.push(Instant::now());
            s.errors
                .push((id, String::from_utf8_lossy(&body).into_owned()));
            answer("202 Accepted", "", b"{}")
        } else {
            answer("404 Not Found", "", b"")
        };
        if conn.write_all(&out).await.is_err() {
            return;
        }
    }
}
