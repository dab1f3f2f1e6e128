//! Server-sent events (`GET /sse`) on the sockets transport's port, for clients that only read:
//! the same token, subscriptions, authorisation, hub, deliveries and limits as a WebSocket
//! (`docs/sse.md`). Each event's `data` is one frame exactly as a WebSocket would get it.
//!
//! Resuming is the browser's own: once a subscription of the stream is whole (its snapshot or
//! catch-up sent), every event carries `id: <cursor>`, and heartbeats carry the newest one, so
//! `EventSource` reconnects with `Last-Event-ID` and each subscription of the URL resumes from
//! it. A resume the server cannot honour answers `RESYNC_REQUIRED` and is followed by a snapshot
//! of that subscription: an event stream cannot be asked again.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::conn::{now_ms, show, Answer, Session, Watches};
use super::head::{respond, Head};
use super::hub::{Handle, Slot};
use super::mailbox::Next;
use super::protocol::{self as p, ClientFrame, Sync};
use super::shared::Shared;
use super::sync::{self, SyncJob};
use super::wire::{Gone, Wire};
use crate::model::snapshot::Cursor;
use crate::transport::auth;
use crate::transport::jwt::JwtError;

/// Subscriptions one request may name (each also counts against the device's limits).
pub const MAX_SUBSCRIPTIONS: usize = 32;
/// Deliveries written per chunk when several are queued.
const WRITE_BATCH: usize = 64;
/// What `EventSource` waits before reconnecting (the `retry:` field), milliseconds.
const RETRY_MS: u64 = 2_000;

/// What a request asks for, once checked.
struct Request {
    token: String,
    subscriptions: Vec<p::Subscription>,
    /// Applied to every subscription that names no `resume` of its own.
    resume: Option<String>,
}

/// Serves one event stream: answers 401/400/503 with a reason, or streams until the client
/// goes, the transport shuts down, or the client is too slow (as a WebSocket's 4008).
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: Head,
    shared: Arc<Shared>,
    slot: Option<Slot>,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
) {
    if slot.is_none() {
        crate::telemetry::sockets_refused();
        return Box::pin(respond(
            &mut stream,
            "503 Service Unavailable",
            &[],
            "connection limit reached, try another server",
        ))
        .await;
    }
    let request = match parse(&head) {
        Ok(r) => r,
        Err(why) if why.starts_with("UNAUTHORIZED") => {
            crate::telemetry::sockets_auth_failure("no_token");
            return Box::pin(respond(&mut stream, "401 Unauthorized", &CORS, &why)).await;
        }
        Err(why) => return Box::pin(respond(&mut stream, "400 Bad Request", &CORS, &why)).await,
    };
    // Not kept for the stream's life.
    drop(head);
    let claims = match auth::verify_device(
        &request.token,
        &shared.apps,
        shared.fallback_secret.as_deref(),
        shared.jwt_max_lifetime,
    ) {
        Ok(c) => c,
        Err(e) => {
            crate::telemetry::sockets_auth_failure(e.reason());
            let why = if matches!(e, JwtError::Expired { .. }) {
                "TOKEN_EXPIRED: token expired"
            } else {
                "UNAUTHORIZED: invalid token"
            };
            return Box::pin(respond(&mut stream, "401 Unauthorized", &CORS, why)).await;
        }
    };
    let session = Session { shared, claims };
    // Boxed, as are the answers below: what they hold across their awaits would otherwise be
    // laid out in this function's state for the stream's whole life.
    let inbox = match Box::pin(session.join()).await {
        Ok(inbox) => inbox,
        Err(e) => {
            return Box::pin(respond(&mut stream, "503 Service Unavailable", &CORS, &format!("UNAVAILABLE: {e}"))).await
        }
    };
    crate::telemetry::socket_opened();
    crate::telemetry::event_stream_opened();
    let (reader, writer) = tokio::io::split(stream);
    let mut out = Events { writer, resumable: false, limit: session.shared.ping_interval, watches: None };
    Box::pin(run(&session, &inbox, &mut out, reader, request, (deadline, permit))).await;
    // Until it leaves the hub (after the registry steps), nothing more is queued for it.
    inbox.mailbox.close(p::CLOSE_GOING_AWAY);
    let _ = Box::pin(tokio::time::timeout(Duration::from_secs(1), out.writer.write_all(b"0\r\n\r\n"))).await;
    drop(out);
    crate::telemetry::socket_closed();
    crate::telemetry::event_stream_closed();
    Box::pin(session.leave(inbox.id)).await;
    drop(slot);
}

const CORS: [(&str, &str); 1] = [("Access-Control-Allow-Origin", "*")];

/// The stream's life after the request was accepted: its opening (answer, `ready`, every
/// subscription with its snapshot or catch-up), then the loop until it ends. The opening is a
/// boxed future of its own: its registry and store steps would otherwise be laid out in the
/// loop's state, which every idle stream holds for its whole life (17.7 KiB a stream before).
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    session: &Session,
    inbox: &Handle,
    out: &mut Events<WriteHalf<S>>,
    mut reader: ReadHalf<S>,
    request: Request,
    opening: (Instant, OwnedSemaphorePermit),
) {
    if !Box::pin(open(session, inbox, out, request, opening)).await {
        return;
    }
    let (interval, mailbox) = (session.shared.ping_interval, &*inbox.mailbox);
    let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut scratch = [0u8; 256];
    loop {
        let step = tokio::select! {
            next = mailbox.next() => match next {
                Next::Frame(first) => {
                    let mut frames = vec![first];
                    while frames.len() < WRITE_BATCH {
                        let Some(more) = mailbox.try_pop() else { break };
                        frames.push(more);
                    }
                    out.bounded(mailbox, frames).await
                }
                Next::Close(_) => return,
            },
            // The client sends nothing after its request: anything read is dropped, the end of
            // the stream (or an error) means it is gone.
            read = reader.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => Ok(()),
            },
            _ = ping.tick() => out.bounded(mailbox, Vec::new()).await,
        };
        if step.is_err() {
            crate::telemetry::sockets_write_timeout();
            return;
        }
    }
}

/// The answer's head, `ready`, then each subscription of the request in order; `false` when
/// the stream is over already.
async fn open<W: AsyncWrite + Unpin>(
    session: &Session,
    inbox: &Handle,
    out: &mut Events<W>,
    request: Request,
    (deadline, permit): (Instant, OwnedSemaphorePermit),
) -> bool {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                Cache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\n\
                Access-Control-Allow-Origin: *\r\nTransfer-Encoding: chunked\r\n\r\n";
    let ready = p::ready(&session.claims.device_id, &session.shared.hub.server);
    let opening = format!("retry: {RETRY_MS}\n\n");
    let opening = format!("{head}{:x}\r\n{opening}\r\n", opening.len());
    let written = async {
        out.writer.write_all(opening.as_bytes()).await.map_err(|_| Gone)?;
        out.send_text(ready).await
    };
    // The opening's deadline (`TP_SCKT_HANDSHAKE_TIMEOUT_MS` after the accept), as for a
    // WebSocket: a client that does not read cannot hold its handshake permit longer.
    if !matches!(tokio::time::timeout_at(deadline, written).await, Ok(Ok(()))) {
        crate::telemetry::sockets_handshake_timeout();
        return false;
    }
    drop(permit);
    let app = session.claims.application_id.clone();
    for s in request.subscriptions {
        let wanted = s.sync.clone();
        let s = match (&request.resume, s.sync) {
            (Some(cursor), Sync::Live | Sync::Snapshot) => p::Subscription { sync: Sync::Resume(cursor.clone()), ..s },
            (_, sync) => p::Subscription { sync, ..s },
        };
        let (channel, filter) = (s.channel.clone(), s.filter.clone());
        let resuming = matches!(s.sync, Sync::Resume(_));
        let job = match session.subscribe(s).await {
            Answer::Reply(reply, _) => {
                if out.send_text(reply).await.is_err() {
                    return false;
                }
                continue;
            }
            Answer::Sync(job) => job,
        };
        let Some(synced) = sync_one(session, &app, out, inbox, *job).await else { return false };
        if resuming && !synced {
            // Refused (RESYNC_REQUIRED, or the store is down): the state from scratch instead,
            // unless it asked only for live deltas and named its own cursor.
            if wanted == Sync::Live && request.resume.is_none() {
                continue;
            }
            let key = channel.key(&app, filter.as_ref()).map(|k| k.into_string()).unwrap_or_default();
            let issued = Cursor(now_ms());
            let job = SyncJob { key, channel, filter, sync: Sync::Snapshot, issued };
            if sync_one(session, &app, out, inbox, job).await.is_none() {
                return false;
            }
        }
    }
    true
}

/// One subscription's snapshot or catch-up: `Some(whether it completed)`, `None` when the
/// stream is over.
async fn sync_one<W: AsyncWrite + Unpin>(
    session: &Session,
    app: &str,
    out: &mut Events<W>,
    inbox: &Handle,
    job: SyncJob,
) -> Option<bool> {
    match sync::run(&session.shared, app, out, &inbox.mailbox, job).await {
        Ok(synced) => {
            out.resumable |= synced.resumable;
            if let Some(watch) = synced.watch {
                out.watches.get_or_insert_with(Default::default).push(watch);
            }
            Some(synced.resumable)
        }
        Err(_) => None,
    }
}

/// The request's token (`?token=` or `Authorization: Bearer`), subscriptions (`subscribe=`,
/// each the `data` of a WebSocket `subscribe` frame, URL-encoded) and resume point
/// (`Last-Event-ID`, or `?lastEventId=` for clients that cannot set headers).
fn parse(head: &Head) -> Result<Request, String> {
    let (mut token, mut subscriptions, mut resume) = (head.bearer.clone(), Vec::new(), head.last_event_id.clone());
    for (name, value) in form_urlencoded::parse(head.query.as_deref().unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "token" => token = Some(value.into_owned()),
            "lastEventId" if resume.is_none() && !value.is_empty() => resume = Some(value.into_owned()),
            "subscribe" => {
                if subscriptions.len() == MAX_SUBSCRIPTIONS {
                    return Err(format!("BAD_REQUEST: at most {MAX_SUBSCRIPTIONS} subscribe parameters"));
                }
                let frame = format!(r#"{{"event":"subscribe","data":{value}}}"#);
                match p::parse(&frame) {
                    Ok(ClientFrame::Subscribe(s)) => subscriptions.push(s),
                    Ok(_) => return Err("BAD_REQUEST: subscribe must be a subscription".into()),
                    Err(e) => return Err(format!("BAD_REQUEST: subscribe {}: {e}", subscriptions.len() + 1)),
                }
            }
            _ => {}
        }
    }
    let token = token.ok_or("UNAUTHORIZED: a token is required (?token= or Authorization: Bearer)")?;
    Ok(Request { token, subscriptions, resume })
}

/// The writing side of an event stream: chunked HTTP/1.1, one event per frame.
struct Events<W> {
    writer: W,
    /// A subscription of the stream is whole: events carry cursors.
    resumable: bool,
    limit: Duration,
    watches: Watches,
}

impl<W: AsyncWrite + Unpin> Events<W> {
    /// Writes `frames` as events in one chunk (none: a heartbeat), each with an `id` when
    /// `with_ids` and the stream is resumable, then flushes.
    async fn chunk(&mut self, frames: &[Utf8Bytes], with_ids: bool) -> Result<(), Gone> {
        let id = (with_ids && self.resumable).then(|| Cursor(now_ms()).encode());
        let mut body = String::with_capacity(frames.iter().map(|f| f.len() + 40).sum::<usize>() + 16);
        if frames.is_empty() {
            body.push_str(":\n");
            if let Some(id) = &id {
                // An event with an id and no data moves the client's resume point, unseen.
                body.push_str(&format!("id: {id}\n"));
            }
            body.push('\n');
        }
        for frame in frames {
            show(&mut self.watches, frame);
            if let Some(id) = &id {
                body.push_str(&format!("id: {id}\n"));
            }
            // Frames are compact JSON, one line; a line break would end a `data` field.
            for line in frame.as_str().split('\n') {
                body.push_str("data: ");
                body.push_str(line);
                body.push('\n');
            }
            body.push('\n');
        }
        let chunk = format!("{:x}\r\n{body}\r\n", body.len());
        self.writer.write_all(chunk.as_bytes()).await.map_err(|_| Gone)?;
        self.writer.flush().await.map_err(|_| Gone)
    }

    /// Deliveries (none: a heartbeat) as [`Events::chunk`] writes them with ids, raced against
    /// the close signal and bounded by a ping interval.
    async fn bounded(&mut self, mailbox: &super::mailbox::Mailbox, frames: Vec<Utf8Bytes>) -> Result<(), Gone> {
        let limit = self.limit;
        tokio::select! {
            biased;
            _ = mailbox.closed() => Err(Gone),
            r = tokio::time::timeout(limit, self.chunk(&frames, true)) => r.unwrap_or(Err(Gone)),
        }
    }
}

impl<W: AsyncWrite + Unpin> Wire for Events<W> {
    /// A frame of a snapshot or catch-up, or an answer: no id (the sync's end frame carries its
    /// cursor; the events after it carry newer ones).
    async fn send_text(&mut self, frame: Utf8Bytes) -> Result<(), Gone> {
        self.chunk(&[frame], false).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(query: &str) -> Head {
        Head { sse: true, query: Some(query.into()), ..Head::default() }
    }

    #[test]
    fn a_request_names_its_token_subscriptions_and_resume_point() {
        let sub = form_urlencoded::byte_serialize(br#"{"channel":{"model":"task","context":"c1"},"snapshot":true}"#)
            .collect::<String>();
        let r = parse(&head(&format!("token=t&subscribe={sub}&lastEventId=1.5"))).expect("valid");
        assert_eq!((r.token.as_str(), r.subscriptions.len(), r.resume.as_deref()), ("t", 1, Some("1.5")));
        assert_eq!(r.subscriptions[0].sync, Sync::Snapshot);
        let with_header =
            Head { last_event_id: Some("1.9".into()), bearer: Some("b".into()), ..head("lastEventId=1.5") };
        let r = parse(&with_header).expect("valid");
        assert_eq!((r.token.as_str(), r.resume.as_deref()), ("b", Some("1.9")), "the header wins");
        assert!(parse(&head(&format!("subscribe={sub}"))).is_err_and(|e| e.starts_with("UNAUTHORIZED")));
        assert!(parse(&head("token=t&subscribe=nope")).is_err_and(|e| e.contains("subscribe 1")));
        let many = format!("token=t{}", format!("&subscribe={sub}").repeat(MAX_SUBSCRIPTIONS + 1));
        assert!(parse(&head(&many)).is_err_and(|e| e.contains("at most 32")));
    }

    #[tokio::test]
    async fn events_are_chunks_with_ids_once_resumable() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut events = Events { writer: server, resumable: false, limit: Duration::from_secs(1), watches: None };
        events.chunk(&[Utf8Bytes::from_static(r#"{"event":"ready"}"#)], true).await.expect("written");
        events.resumable = true;
        events.chunk(&[], true).await.expect("heartbeat");
        drop(events);
        let mut text = String::new();
        let mut client = client;
        client.read_to_string(&mut text).await.expect("read");
        assert!(text.starts_with("19\r\ndata: {\"event\":\"ready\"}\n\n\r\n"), "{text:?}");
        assert!(text.contains(":\nid: 1."), "a heartbeat moves the resume point: {text:?}");
    }
}
