//! Connects to a sockets transport, optionally sends one frame (a subscribe), and prints every
//! frame received until the connection closes or Ctrl-C.
//!
//!     cargo run --release --example ws_tail -- "ws://127.0.0.1:3000/?token=$TOKEN" \
//!       '{"event":"subscribe","data":{"channel":{"model":"task","context":"c1"}}}'

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().ok_or_else(|| anyhow::anyhow!("usage: ws_tail <ws-url> [frame]"))?;
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await?;
    if let Some(frame) = args.next() {
        ws.send(Message::Text(frame.into())).await?;
    }
    while let Some(msg) = ws.next().await {
        match msg? {
            Message::Text(t) => println!("{t}"),
            Message::Close(frame) => {
                println!("closed: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
