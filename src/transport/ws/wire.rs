//! Where a connection's frames go: a WebSocket (a text message each) or a server-sent event
//! stream (an event each, [`super::sse`]). Snapshots and catch-ups ([`super::sync`]) are written
//! through it, so both kinds of connection get the same frames in the same order.

use std::future::Future;

use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// The peer is gone (the write failed).
#[derive(Debug)]
pub struct Gone;

/// A connection frames are written to, one at a time, each flushed.
pub trait Wire {
    fn send_text(&mut self, frame: Utf8Bytes) -> impl Future<Output = Result<(), Gone>>;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Wire for WebSocketStream<S> {
    async fn send_text(&mut self, frame: Utf8Bytes) -> Result<(), Gone> {
        self.send(Message::Text(frame)).await.map_err(|_| Gone)
    }
}
