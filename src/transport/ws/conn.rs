//! One client connection: the opening ([`super::handshake`]), then a single loop that reads
//! frames, writes queued deliveries, pings, and closes when asked.
//!
//! Every write of the loop is bounded: raced against the connection's close signal (its
//! mailbox's, which process shutdown also uses: [`super::hub::Hub::close_all`]) and given at
//! most one ping interval. A client that stops reading is therefore closed (4008) within its
//! queue bound (the hub's signal) or a ping interval (the write timeout), whichever comes
//! first, and shutdown reaches every connection at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use futures::{Sink, SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::handshake::{close_with, open, CLOSE_WRITE};
use super::head::{self, Rewind};
use super::hub::{Handle, Slot};
use super::limit::{FrameBudget, Verdict};
use super::mailbox::{Mailbox, Next};
use super::protocol::{self as p, ClientFrame, ErrorCode, Subscription, Sync};
use super::shared::Shared;
use super::sse;
use super::sync::{self, SyncJob};
use super::watch::Watch;
use crate::model::snapshot::Cursor;
use crate::model::{Channel, ChannelKey, DeviceAddress, Filter, Transport};
use crate::registry::RegistryError;
use crate::transport::auth;
use crate::transport::jwt::Claims;

/// Deliveries written per flush when a queue has several waiting.
const WRITE_BATCH: usize = 64;

type Ws<S> = WebSocketStream<S>;

/// Serves one accepted stream until it closes. `slot` is `None` when the connection limit is
/// reached: the upgrade is then refused with 503. The opening must end by `deadline`; the
/// handshake `permit` is released as soon as it does.
///
/// A plain function returning an `async move` block, not an `async fn`: an `async fn` keeps its
/// arguments twice in its state (as captured and as moved into locals), and this state lives as
/// long as the connection (memory per idle connection bounds a transport's capacity).
#[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
pub fn serve<S>(
    stream: S,
    shared: Arc<Shared>,
    slot: Option<Slot>,
    shutdown: CancellationToken,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        // The opening's state is freed before the connection's life starts, and so is its
        // result: the block ends before the loop is awaited.
        let run = {
            let mut stream = stream;
            let (head, bytes) = match Box::pin(head::read(&mut stream, deadline)).await {
                Some(Ok(read)) => read,
                Some(Err(e)) => return head::refuse(&mut stream, &e).await,
                None => return crate::telemetry::sockets_handshake_timeout(),
            };
            if head.sse {
                // An event stream has no use for the bytes of its head.
                drop(bytes);
                return Box::pin(sse::serve(stream, head, shared, slot, deadline, permit)).await;
            }
            let stream = Rewind::new(bytes, stream);
            let opened = Box::pin(open(stream, &shared, slot.is_none(), deadline, &shutdown)).await;
            drop(permit);
            match opened {
                Some((ws, claims)) => Box::pin(Session { shared, claims }.run(ws, slot)),
                None => return,
            }
        };
        run.await;
    }
}

/// An authenticated connection's side of the hub and the registry: a WebSocket's or an event
/// stream's ([`super::sse`]).
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) claims: Claims,
}

/// Why the loop stopped a write or a registry step.
pub(super) enum Stop {
    /// Asked to close, with this code (the hub: 4008; shutdown: 1001).
    Closed(u16),
    /// The write did not finish within a ping interval: the peer is not reading (4008).
    Stuck,
    /// The peer is gone.
    Gone,
}

/// Runs `step` unless the connection is asked to close first: a `Result<_, Stop>`. Macros, not
/// async fns, so each call builds its futures inside the loop's own state, once: as async fns,
/// each level also kept its argument a second time, and the loop's largest state (a write) was
/// 928 bytes that every idle connection holds (`-Zprint-type-sizes`).
macro_rules! raced {
    ($mailbox:expr, $step:expr) => {
        tokio::select! {
            biased;
            code = $mailbox.closed() => Err(Stop::Closed(code)),
            r = $step => Ok(r),
        }
    };
}

/// A write, raced as [`raced!`] does and bounded by `limit`: a `Result<(), Stop>`.
macro_rules! bounded {
    ($mailbox:expr, $limit:expr, $write:expr) => {
        match raced!($mailbox, tokio::time::timeout($limit, $write)) {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(_))) => Err(Stop::Gone),
            Ok(Err(_)) => Err(Stop::Stuck),
            Err(stop) => Err(stop),
        }
    };
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

    /// The connection's life after its opening. Returns an `async move` block rather than being
    /// an `async fn`, so its arguments are held once (see [`serve`]). Entering and leaving are
    /// boxed futures of their own: what they keep across their awaits (the registry steps, the
    /// device lock, an error to report) would otherwise be laid out beside the loop's state for
    /// the connection's whole life (209 bytes of padding per connection, `-Zprint-type-sizes`).
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold its arguments twice")]
    fn run<S: AsyncRead + AsyncWrite + Unpin>(self, mut ws: Ws<S>, slot: Option<Slot>) -> impl Future<Output = ()> {
        async move {
            let Some(inbox) = Box::pin(self.enter(&mut ws)).await else { return };
            crate::telemetry::socket_opened();
            let code = self.serve(&mut ws, &inbox).await;
            // Until it leaves the hub (after the registry steps), nothing more is queued for it.
            inbox.mailbox.close(code.unwrap_or(p::CLOSE_GOING_AWAY));
            if let Some(code) = code {
                Box::pin(close_with(&mut ws, code)).await;
            }
            // The socket goes now, not after the registry steps: a peer that stopped reading
            // should not keep its buffers.
            drop(ws);
            crate::telemetry::socket_closed();
            Box::pin(self.leave(inbox.id)).await;
            drop(slot);
        }
    }

    /// Joins the hub and, for the device's first connection here, attaches it in the registry
    /// (under the device's lock, so a connect racing its last disconnect loses no entries).
    /// `None`, after telling the client, when the registry cannot record it.
    async fn enter<S: AsyncRead + AsyncWrite + Unpin>(&self, ws: &mut Ws<S>) -> Option<Handle> {
        match self.join().await {
            Ok(inbox) => Some(inbox),
            Err(e) => {
                let frame = Message::Text(p::error(ErrorCode::Unavailable, &e.to_string()));
                let _ = tokio::time::timeout(CLOSE_WRITE, ws.send(frame)).await;
                close_with(ws, p::CLOSE_UNAVAILABLE).await;
                None
            }
        }
    }

    /// [`Session::enter`]'s hub and registry steps: the registry's error when it cannot record
    /// the connection (it is then not in the hub either).
    pub(super) async fn join(&self) -> Result<Handle, RegistryError> {
        let (app, dev, hub) = (&self.claims.application_id, &self.claims.device_id, &self.shared.hub);
        let _device = hub.stripe(app, dev).lock().await;
        let (inbox, first) = hub.join(app, dev);
        if first {
            if let Err(e) = self.shared.registry.attach_socket(&self.address()).await {
                hub.leave(app, dev, inbox.id);
                tracing::warn!(message = "socket not attached: registry unavailable", error = %e);
                return Err(e);
            }
        }
        Ok(inbox)
    }

    /// Leaves the hub; the device's last connection here detaches it from the registry.
    pub(super) async fn leave(&self, id: u64) {
        let (app, dev, hub) = (&self.claims.application_id, &self.claims.device_id, &self.shared.hub);
        let _device = hub.stripe(app, dev).lock().await;
        if hub.leave(app, dev, id) {
            let address = self.address();
            match self.shared.registry.detach_socket(&address).await {
                Ok(()) => self.shared.views.detached(&address),
                // The next start of this index purges it.
                Err(e) => {
                    tracing::warn!(message = "socket entries left behind: registry unavailable", device = dev, error = %e)
                }
            }
        }
    }

    /// The connection's loop; returns the close code to send, `None` if the peer is gone.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(&self, ws: &mut Ws<S>, inbox: &Handle) -> Option<u16> {
        let interval = self.shared.ping_interval;
        let mailbox = &*inbox.mailbox;
        let close_code = |stop: Stop| match stop {
            Stop::Closed(code) => Some(code),
            Stop::Stuck => {
                crate::telemetry::sockets_write_timeout();
                Some(p::CLOSE_TOO_SLOW)
            }
            Stop::Gone => None,
        };
        let ready = p::ready(&self.claims.device_id, &self.shared.hub.server);
        if let Err(stop) = bounded!(mailbox, interval, ws.send(Message::Text(ready))) {
            return close_code(stop);
        }
        let mut ping = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_heard = Instant::now();
        // Whether a snapshot or a resume completed on this connection (then it gets cursors).
        let mut resumable = false;
        // Snapshots whose settle catch-up is yet to come see what the connection writes.
        let mut watches: Watches = None;
        let mut budget =
            FrameBudget::new(self.shared.budgets.clone(), &self.claims.application_id, &self.claims.device_id);
        loop {
            let step = tokio::select! {
                next = mailbox.next() => match next {
                    Next::Frame(frame) => bounded!(mailbox, interval, write_batch(ws, frame, mailbox, &mut watches)),
                    Next::Close(code) => Err(Stop::Closed(code)),
                },
                incoming = ws.next() => {
                    last_heard = Instant::now();
                    let reply = match incoming {
                        Some(Ok(Message::Text(text))) => match budget.frame() {
                            Verdict::Allow => match raced!(mailbox, Box::pin(self.on_text(&text))) {
                                Ok(Answer::Reply(reply, false)) => Ok(Some(reply)),
                                Ok(Answer::Reply(reply, true)) => match budget.refused() {
                                    Verdict::Close => return self.policy_close(ws).await,
                                    _ => Ok(Some(reply)),
                                },
                                Ok(Answer::Sync(job)) => match Box::pin(sync::run(&self.shared, &self.claims.application_id, ws, &inbox.mailbox, *job)).await {
                                    Ok(synced) => {
                                        resumable |= synced.resumable;
                                        if let Some(watch) = synced.watch {
                                            watches.get_or_insert_with(Default::default).push(watch);
                                        }
                                        Ok(None)
                                    }
                                    Err(stop) => Err(stop),
                                },
                                Err(stop) => Err(stop),
                            },
                            Verdict::Refuse => Ok(Some(over_rate(self.shared.budgets.frames_per_sec()))),
                            Verdict::Close => return self.policy_close(ws).await,
                        },
                        Some(Ok(Message::Binary(_))) => Ok(Some(p::error(ErrorCode::BadRequest, "text frames only"))),
                        Some(Ok(Message::Close(_))) | None => return None,
                        Some(Ok(_)) => Ok(None),
                        Some(Err(WsError::Capacity(e))) => {
                            tracing::debug!(message = "oversize frame", error = %e);
                            return Some(1009);
                        }
                        Some(Err(_)) => return None,
                    };
                    match reply {
                        Ok(Some(reply)) => {
                            bounded!(mailbox, interval, ws.send(Message::Text(reply)))
                        }
                        Ok(None) => Ok(()),
                        Err(stop) => Err(stop),
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > interval * 2 {
                        crate::telemetry::sockets_dead_peer();
                        return Some(p::CLOSE_DEAD_PEER);
                    }
                    match bounded!(mailbox, interval, ws.send(Message::Ping(Default::default()))) {
                        // A newer resume point for the subscriptions taken with a snapshot or a resume.
                        Ok(()) if resumable => {
                            let cursor = p::cursor(&Cursor(now_ms()).encode());
                            bounded!(mailbox, interval, ws.send(Message::Text(cursor)))
                        }
                        other => other,
                    }
                }
            };
            if let Err(stop) = step {
                return close_code(stop);
            }
        }
    }

    /// The last `LIMIT_EXCEEDED` (best effort), then close 1008.
    async fn policy_close<S: AsyncRead + AsyncWrite + Unpin>(&self, ws: &mut Ws<S>) -> Option<u16> {
        crate::telemetry::sockets_policy_close();
        tracing::debug!(message = "socket closed for exceeding its limits", device = self.claims.device_id);
        let last = p::error(ErrorCode::LimitExceeded, "limits exceeded repeatedly: closing (1008)");
        let _ = tokio::time::timeout(CLOSE_WRITE, ws.send(Message::Text(last))).await;
        Some(p::CLOSE_POLICY)
    }

    /// The answer to a text frame.
    async fn on_text(&self, text: &str) -> Answer {
        match p::parse(text) {
            Err(e) => Answer::Reply(p::error(ErrorCode::BadRequest, &e), false),
            Ok(ClientFrame::BindDevice { .. }) => {
                Answer::Reply(p::error(ErrorCode::BadRequest, "already bound"), false)
            }
            Ok(ClientFrame::Subscribe(s)) => self.subscribe(s).await,
            Ok(ClientFrame::Unsubscribe(s)) => {
                let (reply, refused) = self.change(s, false).await;
                Answer::Reply(reply, refused)
            }
        }
    }

    /// A subscribe: the reply, or the subscription made whose snapshot or catch-up is to follow.
    pub(super) async fn subscribe(&self, s: Subscription) -> Answer {
        if s.sync == Sync::Live {
            let (reply, refused) = self.change(s, true).await;
            return Answer::Reply(reply, refused);
        }
        // Before the subscription exists: every change after it is in the snapshot, the live
        // stream, or the catch-up from this cursor.
        let issued = Cursor(now_ms());
        let (channel, filter, sync) = (s.channel.clone(), s.filter.clone(), s.sync.clone());
        match self.change(s, true).await {
            (reply, false) if reply.as_str().starts_with(SUBSCRIBED) => {
                let key = self.key_of(&channel, filter.as_ref());
                Answer::Sync(Box::new(SyncJob { key, channel, filter, sync, issued }))
            }
            (reply, refused) => Answer::Reply(reply, refused),
        }
    }

    fn key_of(&self, channel: &Channel, filter: Option<&Filter>) -> String {
        channel.key(&self.claims.application_id, filter).map(ChannelKey::into_string).unwrap_or_default()
    }

    /// A subscribe or unsubscribe: authorized, then applied with every address of the device
    /// (its push token too, as the track role would); the reply, and whether it was a limit
    /// refusal.
    async fn change(&self, s: Subscription, subscribe: bool) -> (Utf8Bytes, bool) {
        let app = &self.claims.application_id;
        match auth::authorize_channel(&self.claims, &self.shared.apps, &s.channel, s.application_id.as_deref()) {
            Ok(()) => {}
            Err(e @ auth::Refusal::Forbidden(_)) => return (p::error(ErrorCode::Forbidden, &e.to_string()), false),
            Err(e @ auth::Refusal::UnknownModel(_)) => return (p::error(ErrorCode::BadRequest, &e.to_string()), false),
        }
        let key = match s.channel.key(app, s.filter.as_ref()) {
            Ok(k) => k,
            Err(e) => return (p::error(ErrorCode::BadRequest, &e.to_string()), false),
        };
        let (registry, dev, ours) = (&self.shared.registry, &self.claims.device_id, self.address());
        let result = if subscribe {
            let done = registry.subscribe_device(app, dev, &key, Some(&ours)).await.map(drop);
            done.inspect(|()| self.shared.views.subscribed(key.as_str(), &ours))
        } else {
            let done = registry.unsubscribe_device(app, dev, &key, Some(&ours)).await;
            done.inspect(|()| self.shared.views.unsubscribed(key.as_str(), &ours))
        };
        match result {
            Ok(()) => (p::subscribed(if subscribe { "subscribed" } else { "unsubscribed" }, key.as_str()), false),
            Err(RegistryError::LimitExceeded(why)) => (p::error(ErrorCode::LimitExceeded, &why), true),
            Err(e) => (p::error(ErrorCode::Unavailable, &e.to_string()), false),
        }
    }
}

/// What a text frame gets back.
pub(super) enum Answer {
    /// One frame, and whether it was a limit refusal.
    Reply(Utf8Bytes, bool),
    /// A subscription made, whose snapshot or catch-up is to be sent ([`Session::sync`]).
    Sync(Box<SyncJob>),
}

/// The start of every `subscribed` reply.
const SUBSCRIBED: &str = r#"{"event":"subscribed""#;

pub(super) fn now_ms() -> u64 {
    u64::try_from(crate::model::clock::now_millis()).unwrap_or_default()
}

fn over_rate(frames_per_sec: u32) -> Utf8Bytes {
    let why = format!(
        "over {frames_per_sec} frames a second (bursts of {}): frame ignored",
        frames_per_sec.saturating_mul(2)
    );
    p::error(ErrorCode::LimitExceeded, &why)
}

/// The open [`Watch`]es of a connection: none almost always, so one pointer in its state.
pub(super) type Watches = Option<Box<Vec<Arc<Watch>>>>;

/// Shows `frame` to the open watches, forgetting the closed ones.
pub(super) fn show(watches: &mut Watches, frame: &Utf8Bytes) {
    let Some(open) = watches else { return };
    open.retain(|w| !w.is_closed());
    for watch in open.iter() {
        watch.saw(frame.as_str());
    }
    if open.is_empty() {
        *watches = None;
    }
}

/// Writes `first` and whatever else is already queued (up to a batch), then flushes once.
/// Poll-based, so its state is a frame and a count rather than nested `feed` and `flush` futures.
fn write_batch<'a, S: AsyncRead + AsyncWrite + Unpin>(
    ws: &'a mut Ws<S>,
    first: Utf8Bytes,
    mailbox: &'a Mailbox,
    watches: &'a mut Watches,
) -> impl Future<Output = Result<(), WsError>> + 'a {
    let mut next = Some(first);
    let mut fed = 0usize;
    std::future::poll_fn(move |cx| loop {
        if next.is_none() && fed < WRITE_BATCH {
            next = mailbox.try_pop();
        }
        let Some(frame) = next.take() else {
            return Pin::new(&mut *ws).poll_flush(cx);
        };
        show(watches, &frame);
        match Pin::new(&mut *ws).poll_ready(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                next = Some(frame);
                return Poll::Pending;
            }
        }
        Pin::new(&mut *ws).start_send(Message::Text(frame))?;
        fed += 1;
    })
}
