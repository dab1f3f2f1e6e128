//! One WebSocket client connection for the churn and snapshot modes: a token of its own
//! device, the `ready` frame awaited, text frames in and out.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use nexxus_worker::model::clock;
use nexxus_worker::transport::jwt::{self, Claims};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a connect, and then its `ready`, may take.
const CONNECT_WITHIN: Duration = Duration::from_secs(10);

/// Connects to `base` as device `device` of `app` and waits for `ready`.
pub async fn connect(base: &str, app: &str, secret: &str, device: &str) -> anyhow::Result<Ws> {
    let claims = Claims {
        application_id: app.to_string(),
        device_id: device.to_string(),
        exp: clock::now_secs() + 6 * 3600,
        user_id: None,
    };
    let url = format!("{}/?token={}", base.trim_end_matches('/'), jwt::sign(&claims, secret));
    let (mut ws, _) = tokio::time::timeout(CONNECT_WITHIN, tokio_tungstenite::connect_async(url)).await??;
    let ready = tokio::time::timeout(CONNECT_WITHIN, ws.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("closed before ready"))??;
    anyhow::ensure!(ready.to_text()?.contains("\"ready\""), "not ready: {ready:?}");
    Ok(ws)
}

/// Sends one text frame.
pub async fn send(ws: &mut Ws, text: String) -> anyhow::Result<()> {
    Ok(ws.send(Message::Text(text.into())).await?)
}

/// The next text frame; `None` once the connection is closed or failed.
pub async fn next_text(ws: &mut Ws) -> Option<String> {
    next(ws).await.ok()
}

/// The next text frame, or why there is none: the close frame's code and reason, the error, or
/// the end of the stream.
pub async fn next(ws: &mut Ws) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
            Some(Ok(Message::Close(c))) => {
                return Err(c.map_or_else(|| "closed".to_string(), |c| format!("closed {}: {}", c.code, c.reason)))
            }
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err("end of stream".to_string()),
            Some(Ok(_)) => continue,
        }
    }
}
