//! A minimal HTTP/1.1 reading helper for the test servers (fault proxies, the OTLP
//! receiver).

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Reads from `conn` into `buf` until `buf` holds a whole request head: the position
/// right after its blank line, or `None` at EOF.
pub async fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads one HTTP/1.1 request (headers, then a `Content-Length` body); `None` at EOF.
pub async fn read_request(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = read_head(client, &mut buf).await?;
    let head = String::from_utf8_lossy(&buf[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    while buf.len() < header_end + length {
        let n = client.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    // One request per connection: ask the upstream to close after answering, so its
    // response can be read to EOF and tells the client to reconnect.
    let text = String::from_utf8_lossy(&buf[..header_end]).into_owned();
    let mut rewritten: Vec<u8> = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .trim_end()
        .as_bytes()
        .to_vec();
    rewritten.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    rewritten.extend_from_slice(&buf[header_end..]);
    Some(rewritten)
}
