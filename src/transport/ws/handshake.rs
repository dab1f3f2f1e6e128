//! A connection's opening: the WebSocket upgrade (refused with 503 over the connection limit),
//! then a device token, from `?token=` or a first `bind_device` frame. All of it, TLS
//! included, must finish by one deadline (`TP_SCKT_HANDSHAKE_TIMEOUT_MS` after the accept),
//! and it holds one of the `TP_SCKT_MAX_HANDSHAKES` permits (see the accept loop).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::protocol::{self as p, ClientFrame, ErrorCode};
use super::shared::Shared;
use crate::transport::auth;
use crate::transport::jwt::{Claims, JwtError};

/// The longest a refusal or close frame may take to write: a client that does not read
/// cannot hold its connection open by it.
pub const CLOSE_WRITE: Duration = Duration::from_secs(1);

/// Upgrades and authenticates `stream` by `deadline`; `None` if refused or too slow (the
/// refusal, if any, was sent). `full`: over the connection limit, refuse the upgrade.
pub async fn open<S>(
    stream: S,
    shared: &Shared,
    full: bool,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Option<(WebSocketStream<S>, Claims)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut query_token = None;
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
    let accepted = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(shared.ws_config)),
    )
    .await;
    let Ok(Ok(mut ws)) = accepted else {
        if full {
            crate::telemetry::sockets_refused();
        } else if accepted.is_err() {
            crate::telemetry::sockets_handshake_timeout();
        }
        return None;
    };
    match authenticate(&mut ws, shared, query_token, deadline, shutdown).await {
        Ok(claims) => Some((ws, claims)),
        Err((code, close, why)) => {
            crate::telemetry::sockets_auth_failure(why);
            tracing::debug!(message = "socket refused", reason = why);
            let message = match code {
                ErrorCode::TokenExpired => "token expired",
                _ if why == "no_token" => "bind_device (or ?token=) must come first, before the handshake timeout",
                _ => "invalid token",
            };
            let _ = tokio::time::timeout(CLOSE_WRITE, ws.send(Message::Text(p::error(code, message)))).await;
            close_with(&mut ws, close).await;
            None
        }
    }
}

/// The `token` parameter of a query string (percent-decoding is not needed: a JWT is base64url
/// and dots).
fn token_param(query: &str) -> Option<String> {
    query.split('&').find_map(|kv| kv.strip_prefix("token=")).map(str::to_owned)
}

/// The error frame's code, the close code, and the reason for logs and metrics (never sent:
/// every invalid token gets the same answer).
type Refusal = (ErrorCode, u16, &'static str);

async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    query_token: Option<String>,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> Result<Claims, Refusal> {
    let unauthorized = |why| (ErrorCode::Unauthorized, p::CLOSE_UNAUTHORIZED, why);
    let token = match query_token {
        Some(t) => t,
        None => {
            let first = tokio::select! {
                () = shutdown.cancelled() => return Err(unauthorized("shutting_down")),
                r = tokio::time::timeout_at(deadline, next_text(ws)) => r,
            };
            match first {
                Ok(Some(text)) => match p::parse(&text) {
                    Ok(ClientFrame::BindDevice { token }) => token,
                    _ => return Err(unauthorized("no_token")),
                },
                Err(_) | Ok(None) => return Err(unauthorized("no_token")),
            }
        }
    };
    auth::verify_device(&token, &shared.apps, shared.fallback_secret.as_deref(), shared.jwt_max_lifetime).map_err(|e| {
        match e {
            JwtError::Expired { .. } => (ErrorCode::TokenExpired, p::CLOSE_TOKEN_EXPIRED, e.reason()),
            other => unauthorized(other.reason()),
        }
    })
}

/// The next text frame, answering nothing else; `None` when the stream ends.
async fn next_text<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>) -> Option<String> {
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}

/// Sends a close frame with `code` and waits for the peer's, all within [`CLOSE_WRITE`].
///
/// Waiting (and discarding what the peer still sends) matters: a socket dropped with unread
/// input is reset, and a reset makes the peer's kernel discard what it had not read yet, our
/// last error frame and the close frame included. A client that stopped reading cannot take a
/// close frame either: the bound keeps it from holding the connection.
pub async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut WebSocketStream<S>, code: u16) {
    let frame = CloseFrame { code: p::close_code(code), reason: Utf8Bytes::from_static("") };
    let handshake = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_WRITE, handshake).await;
}
