//! The request head of a connection on the sockets port, read before anything else answers it:
//! `GET /sse` is a server-sent event stream ([`super::sse`]); anything else goes on to the
//! WebSocket handshake, which reads the same bytes again through [`Rewind`].
//!
//! The head is bounded ([`MAX_HEAD`] bytes, [`MAX_HEADERS`] headers) and must arrive by the
//! opening's deadline, like the rest of the opening.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

/// The longest request head read (a browser's, with cookies for the host, fits).
pub const MAX_HEAD: usize = 8 * 1024;
/// Headers parsed, at most.
pub const MAX_HEADERS: usize = 48;
/// The path of the event stream.
pub const SSE_PATH: &str = "/sse";

/// What the connection asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Head {
    /// `GET /sse`: an event stream.
    pub sse: bool,
    /// The query string, if any (without `?`).
    pub query: Option<String>,
    /// `Last-Event-ID`: the cursor an event stream resumes from.
    pub last_event_id: Option<String>,
    /// The token of `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
}

/// Why no head could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than [`MAX_HEAD`] or with more than [`MAX_HEADERS`] headers (431).
    TooLarge,
    /// Not an HTTP/1.1 request (400).
    Malformed(String),
    /// The peer closed or failed before the head was whole.
    Gone,
}

/// Reads the head by `deadline` (`None`: too late). Returns it with every byte read, which the
/// WebSocket handshake reads again.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Instant,
) -> Option<Result<(Head, Vec<u8>), HeadError>> {
    let mut buf = Vec::with_capacity(1024);
    let reading = async {
        loop {
            let mut chunk = [0u8; 1024];
            let room = (MAX_HEAD - buf.len()).min(chunk.len());
            if room == 0 {
                return Err(HeadError::TooLarge);
            }
            let n = stream.read(&mut chunk[..room]).await.map_err(|_| HeadError::Gone)?;
            if n == 0 {
                return Err(HeadError::Gone);
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(head) = parse(&buf)? {
                return Ok(head);
            }
        }
    };
    match tokio::time::timeout_at(deadline, reading).await {
        Ok(Ok(head)) => Some(Ok((head, buf))),
        Ok(Err(e)) => Some(Err(e)),
        Err(_) => None,
    }
}

/// The head in `bytes`, `None` while it is not whole yet.
pub fn parse(bytes: &[u8]) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    }
    let target = req.path.unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let bearer = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|t| t.trim().to_owned());
    Ok(Some(Head {
        sse: req.method == Some("GET") && path == SSE_PATH,
        query,
        last_event_id: header("last-event-id").filter(|v| !v.is_empty()).map(str::to_owned),
        bearer,
    }))
}

/// Answers a head that could not be read (400 or 431), best effort within a second, and closes.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, e: &HeadError) {
    let (status, reason) = match e {
        HeadError::TooLarge => ("431 Request Header Fields Too Large", "request head too large".to_owned()),
        HeadError::Malformed(why) => ("400 Bad Request", format!("not an HTTP/1.1 request: {why}")),
        HeadError::Gone => return,
    };
    respond(stream, status, &[], &reason).await;
}

/// Writes a whole response with a plain-text `body` (the connection closes after it), best
/// effort within a second: a peer that does not read cannot hold the connection by it.
pub async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: &str, headers: &[(&str, &str)], body: &str) {
    let mut text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let write = async {
        stream.write_all(text.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), write).await;
}

/// A stream whose first reads return `prefix` (the bytes already read from it).
pub struct Rewind<S> {
    prefix: Option<Box<[u8]>>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind { prefix: (!prefix.is_empty()).then(|| prefix.into_boxed_slice()), at: 0, inner }
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(prefix) = &this.prefix {
            let rest = &prefix[this.at..];
            let n = rest.len().min(out.remaining());
            out.put_slice(&rest[..n]);
            this.at += n;
            if this.at >= prefix.len() {
                // Freed as soon as it is replayed: a connection does not keep its head.
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stream_request_is_told_from_an_upgrade() {
        let sse = b"GET /sse?token=abc&subscribe=x HTTP/1.1\r\nHost: h\r\nLast-Event-ID: 1.5\r\nAuthorization: Bearer t0k\r\n\r\n";
        let head = parse(sse).ok().flatten().expect("whole");
        assert!(head.sse);
        assert_eq!(head.query.as_deref(), Some("token=abc&subscribe=x"));
        assert_eq!(head.last_event_id.as_deref(), Some("1.5"));
        assert_eq!(head.bearer.as_deref(), Some("t0k"));
        let ws = b"GET /?token=abc HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n";
        assert!(!parse(ws).ok().flatten().expect("whole").sse);
        assert!(!parse(b"POST /sse HTTP/1.1\r\n\r\n").ok().flatten().expect("whole").sse, "GET only");
        assert_eq!(parse(b"GET /sse HTTP/1.1\r\nHost:"), Ok(None), "not whole yet");
        assert!(matches!(parse(b"\x16\x03\x01 not http\r\n\r\n"), Err(HeadError::Malformed(_))));
        let many: String = (0..MAX_HEADERS + 1).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(parse(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()), Err(HeadError::TooLarge));
    }

    #[tokio::test]
    async fn a_head_is_read_within_its_bound_and_replayed_whole() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nafter").await.expect("write");
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let (head, bytes) = read(&mut server, deadline).await.expect("in time").expect("a head");
        assert!(!head.sse);
        let mut again = Rewind::new(bytes, server);
        let mut text = vec![0u8; 32];
        again.read_exact(&mut text).await.expect("replayed");
        assert_eq!(text, b"GET / HTTP/1.1\r\nHost: h\r\n\r\nafter");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&vec![b'a'; MAX_HEAD + 10]).await.expect("write");
        let result = read(&mut server, deadline).await.expect("in time");
        assert!(matches!(result, Err(HeadError::TooLarge) | Err(HeadError::Malformed(_))));
    }
}
