//! One client connection: handshake, authentication, then a single loop that reads frames,
//! writes queued deliveries, pings, and closes when asked.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::hub::{Hub, Inbox, Slot};
use super::protocol::{self as p, ClientFrame, ErrorCode, Subscription};
use crate::model::{DeviceAddress, Transport};
use crate::registry::Registry;
use crate::transport::auth;
use crate::transport::jwt::{Claims, JwtError};
use crate::workers::apps::Apps;

/// How long a client has to complete the TLS and WebSocket handshakes, and then to bind.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries written per flush when a queue has several waiting.
const WRITE_BATCH: usize = 64;

/// What every connection of a transport shares.
pub struct Shared {
    pub hub: Arc<Hub>,
    pub registry: Registry,
    pub apps: Apps,
    pub index: u32,
    pub fallback_secret: Option<String>,
    pub ws_config: WebSocketConfig,
    pub ping_interval: Duration,
}

type Ws<S> = WebSocketStream<S>;

/// Serves one accepted stream until it closes. `slot` is `None` when the connection limit is
/// reached: the upgrade is then refused with 503.
pub async fn serve<S>(stream: S, shared: Arc<Shared>, slot: Option<Slot>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // The handshake's state is freed before the connection's life starts: an idle connection
    // holds only its loop (memory per connection is what bounds a transport's capacity).
    if let Some(life) = Box::pin(open(stream, shared, slot, shutdown)).await {
        life.await;
    }
}

/// Handshake and authentication; returns the connection's life, boxed, or `None` if refused.
async fn open<S>(
    stream: S,
    shared: Arc<Shared>,
    slot: Option<Slot>,
    shutdown: CancellationToken,
) -> Option<std::pin::Pin<Box<impl std::future::Future<Output = ()>>>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut query_token = None;
    let full = slot.is_none();
    // The error type is tungstenite's handshake callback contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if full {
            let mut refusal = ErrorResponse::new(Some("connection limit reached, try another server".into()));
            *refusal.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return Err(refusal);
        }
        query_token = req.uri().query().and_then(token_param);
        Ok(resp)
    };
    let accepted = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.ws_config)),
    )
    .await;
    let Ok(Ok(mut ws)) = accepted else {
        if full {
            metrics::counter!("nexxus_sockets_refused_total").increment(1);
        }
        return None;
    };
    let claims = match authenticate(&mut ws, &shared, query_token, &shutdown).await {
        Ok(c) => c,
        Err((code, close, why)) => {
            metrics::counter!("nexxus_sockets_auth_failures_total", "reason" => code.as_str()).increment(1);
            tracing::debug!(message = "socket refused", reason = %why);
            let _ = ws.send(Message::Text(p::error(code, &why))).await;
            close_with(&mut ws, close).await;
            return None;
        }
    };
    let session = Session { shared: shared.clone(), claims };
    Some(Box::pin(session.run(ws, shutdown, slot)))
}

/// The `token` parameter of a query string (percent-decoding is not needed: a JWT is base64url
/// and dots).
fn token_param(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_owned)
}

type Refusal = (ErrorCode, u16, String);

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    shared: &Shared,
    query_token: Option<String>,
    shutdown: &CancellationToken,
) -> Result<Claims, Refusal> {
    let unauthorized = |why: String| (ErrorCode::Unauthorized, p::CLOSE_UNAUTHORIZED, why);
    let token = match query_token {
        Some(t) => t,
        None => {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Err(unauthorized("server shutting down".into())),
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, next_text(ws)) => r,
            };
            match first {
                Err(_) => return Err(unauthorized("no bind_device within 10 s".into())),
                Ok(None) => return Err(unauthorized("closed before bind_device".into())),
                Ok(Some(text)) => match p::parse(&text) {
                    Ok(ClientFrame::BindDevice { token }) => token,
                    Ok(_) => return Err(unauthorized("bind_device (or ?token=) must come first".into())),
                    Err(e) => return Err(unauthorized(format!("bind_device expected: {e}"))),
                },
            }
        }
    };
    auth::verify_device(&token, &shared.apps, shared.fallback_secret.as_deref()).map_err(|e| match e {
        JwtError::Expired { .. } => (ErrorCode::TokenExpired, p::CLOSE_TOKEN_EXPIRED, e.to_string()),
        other => unauthorized(other.to_string()),
    })
}

/// The next text frame, answering nothing else; `None` when the stream ends.
async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>) -> Option<String> {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, code: u16) {
    let frame = CloseFrame { code: p::close_code(code), reason: Utf8Bytes::from_static("") };
    // A client that stopped reading cannot take a close frame either: do not wait for it.
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(Some(frame))).await;
}

struct Session {
    shared: Arc<Shared>,
    claims: Claims,
}

impl Session {
    fn address(&self) -> DeviceAddress {
        DeviceAddress {
            transport: Transport::Sockets(self.shared.index),
            device_id: self.claims.device_id.clone(),
            token: self.shared.hub.token.clone(),
            application_id: self.claims.application_id.clone(),
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut ws: Ws<S>,
        shutdown: CancellationToken,
        slot: Option<Slot>,
    ) {
        let (app, dev) = (self.claims.application_id.clone(), self.claims.device_id.clone());
        let hub = self.shared.hub.clone();
        let mut inbox = {
            let _device = hub.stripe(&app, &dev).lock().await;
            let (inbox, first) = hub.join(&app, &dev);
            if first {
                let address = self.address();
                if let Err(e) = Box::pin(self.shared.registry.attach_socket(&address)).await {
                    hub.leave(&app, &dev, inbox.id);
                    tracing::warn!(message = "socket not attached: registry unavailable", error = %e);
                    let _ = ws.send(Message::Text(p::error(ErrorCode::Unavailable, &e.to_string()))).await;
                    close_with(&mut ws, p::CLOSE_UNAVAILABLE).await;
                    return;
                }
            }
            inbox
        };
        metrics::gauge!("nexxus_sockets_connections").increment(1.0);
        let code = self.serve(&mut ws, &mut inbox, &shutdown).await;
        if let Some(code) = code {
            Box::pin(close_with(&mut ws, code)).await;
        }
        metrics::gauge!("nexxus_sockets_connections").decrement(1.0);
        let _device = hub.stripe(&app, &dev).lock().await;
        if hub.leave(&app, &dev, inbox.id) {
            let address = self.address();
            if let Err(e) = Box::pin(self.shared.registry.detach_socket(&address)).await {
                // The next start of this index purges it.
                tracing::warn!(message = "socket entries left behind: registry unavailable", device = dev, error = %e);
            }
        }
        drop(slot);
    }

    /// The connection's loop; returns the close code to send, `None` if the peer is gone.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        ws: &mut Ws<S>,
        inbox: &mut Inbox,
        shutdown: &CancellationToken,
    ) -> Option<u16> {
        let ready = p::ready(&self.claims.device_id, &self.shared.hub.server);
        if ws.send(Message::Text(ready)).await.is_err() {
            return None;
        }
        let interval = self.shared.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_heard = Instant::now();
        // Registered once, not per loop turn: a `cancelled()` made anew on every wake-up takes
        // the token's lock each time, and the shutdown token is shared by every connection.
        let closed = inbox.close.token.clone().cancelled_owned();
        let stopping = shutdown.clone().cancelled_owned();
        tokio::pin!(closed, stopping);
        loop {
            tokio::select! {
                () = &mut closed => return Some(inbox.close.code()),
                () = &mut stopping => return Some(p::CLOSE_GOING_AWAY),
                frame = inbox.rx.recv() => {
                    let Some(frame) = frame else { return Some(p::CLOSE_GOING_AWAY) };
                    let written = tokio::select! {
                        r = write_batch(ws, frame, &mut inbox.rx) => r,
                        () = &mut closed => return Some(inbox.close.code()),
                    };
                    if written.is_err() {
                        return None;
                    }
                }
                incoming = ws.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        Some(Ok(Message::Text(text))) => {
                            let reply = Box::pin(self.on_text(&text)).await;
                            if ws.send(Message::Text(reply)).await.is_err() {
                                return None;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let reply = p::error(ErrorCode::BadRequest, "text frames only");
                            if ws.send(Message::Text(reply)).await.is_err() {
                                return None;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => return None,
                        Some(Ok(_)) => {}
                        Some(Err(WsError::Capacity(e))) => {
                            tracing::debug!(message = "oversize frame", error = %e);
                            return Some(1009);
                        }
                        Some(Err(_)) => return None,
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        metrics::counter!("nexxus_sockets_dead_peers_total").increment(1);
                        return Some(p::CLOSE_DEAD_PEER);
                    }
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    async fn on_text(&self, text: &str) -> Utf8Bytes {
        match p::parse(text) {
            Err(e) => p::error(ErrorCode::BadRequest, &e),
            Ok(ClientFrame::BindDevice { .. }) => p::error(ErrorCode::BadRequest, "already bound"),
            Ok(ClientFrame::Subscribe(s)) => self.change(s, true).await,
            Ok(ClientFrame::Unsubscribe(s)) => self.change(s, false).await,
        }
    }

    /// A subscribe or unsubscribe: authorized, then applied with every address of the device
    /// (its push token too, as the track role would).
    async fn change(&self, s: Subscription, subscribe: bool) -> Utf8Bytes {
        let app = &self.claims.application_id;
        match auth::authorize_channel(&self.claims, &self.shared.apps, &s.channel, s.application_id.as_deref()) {
            Ok(()) => {}
            Err(e @ auth::Refusal::Forbidden(_)) => return p::error(ErrorCode::Forbidden, &e.to_string()),
            Err(e @ auth::Refusal::UnknownModel(_)) => return p::error(ErrorCode::BadRequest, &e.to_string()),
        }
        let key = match s.channel.key(app, s.filter.as_ref()) {
            Ok(k) => k,
            Err(e) => return p::error(ErrorCode::BadRequest, &e.to_string()),
        };
        let registry = &self.shared.registry;
        let dev = &self.claims.device_id;
        let result = async {
            let mut addresses = registry.get_device(app, dev).await?.map(|d| d.addresses()).unwrap_or_default();
            let ours = self.address();
            if !addresses.contains(&ours) {
                addresses.push(ours);
            }
            if subscribe {
                registry.subscribe(app, dev, &key, &addresses).await
            } else {
                registry.unsubscribe(app, dev, &key, &addresses).await
            }
        }
        .await;
        match result {
            Ok(()) => p::subscribed(if subscribe { "subscribed" } else { "unsubscribed" }, key.as_str()),
            Err(e) => p::error(ErrorCode::Unavailable, &e.to_string()),
        }
    }
}

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
async fn write_batch<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    first: Utf8Bytes,
    rx: &mut tokio::sync::mpsc::Receiver<Utf8Bytes>,
) -> Result<(), WsError> {
    ws.feed(Message::Text(first)).await?;
    for _ in 1..WRITE_BATCH {
        match rx.try_recv() {
            Ok(frame) => ws.feed(Message::Text(frame)).await?,
            Err(_) => break,
        }
    }
    ws.flush().await
}
