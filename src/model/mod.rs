//! The core model: everything the workers decide about a change, with no I/O.
//!
//! ```text
//! aggregation bytes ─ message::decode_aggregation ─▶ AggregatorMessage
//!      │                                               │ event::WriteRecord::from_message
//!      │                                               ▼   (ids: id::object_id_from_position)
//!      │                                          WriteRecord ──(topic `write`)──▶ writer
//!      │   writer: object::StoredObject::{create, apply} (patch::apply_patch),
//!      │           acl::validate_author, channel::affected_channels_for_change
//!      ▼                                               ▼
//! track bytes ─ track::decode_track ─▶ TrackCommand   ChangeEvent ──(topic `transport_manager`)──▶ TM
//!   (Channel + Filter → channel::ChannelKey)           │ filter::Filter::transition / delivery::transition_for
//!                                                      ▼ delivery::plan_deliveries, Delta::narrowed
//!                                              DeliveryBatch ─▶ EncodedBatch (once per delivery) / split_push()
//! ```
//!
//! | module     | what it owns |
//! |------------|--------------|
//! | `error`    | [`ModelError`], one variant per way an input is wrong; its text is the dead-letter reason |
//! | `message`  | `aggregation` messages: create / update / delete, [`Patch`], size bound |
//! | `track`    | `track` commands, the [`Device`] record, device strings `<transport>\|<id>\|<token>\|<app>` |
//! | `patch`    | `replace` / `increment` / `append` / `remove` on an object's fields |
//! | `object`   | [`StoredObject`]: fields + `version` + last applied log position |
//! | `id`       | identifier rules, deterministic ids for creates |
//! | `channel`  | [`Channel`], [`ChannelKey`] for every Telepat mask, affected channels |
//! | `filter`   | Telepat's filter language, canonical key suffix, evaluation, transitions |
//! | `schema`   | [`Application`], model schemas, push credentials |
//! | `acl`      | the author check (`validateAuthor`) |
//! | `event`    | our topics' records: [`WriteRecord`] (`write`), [`ChangeEvent`] (`transport_manager`) |
//! | `delivery` | [`Delta`], `{new,updated,deleted}` grouping, push payload splitting |
//! | `snapshot` | snapshots and resumes: the channels an object is indexed under, cursors, what an index entry is to a subscription |
//! | `broadcast` | ephemeral objects: requests, their `transport_manager` event, what a device receives |
//! | `retry`    | [`retry::Backoff`]: the waits between attempts, and the named policy of every place that retries |
//! | `clock`    | the wall clock (seconds, ms, µs, ns since the epoch), read in one place |
//! | `key`      | partition keys: one object's records share its id, a track command its device's |
//! | `transport_message` | the transport topics' records: [`TransportMessage`] decoded, encoded around a delivery serialised once, or read with the delivery left raw |
//! | `members`  | [`members::MembersDigest`]: a channel's members on one sockets transport, for messages addressed by channel |
//!
//! Nothing here panics on input: decoders return [`ModelError`], evaluation returns `false`.

pub mod acl;
pub mod broadcast;
pub mod channel;
pub mod clock;
pub mod delivery;
pub mod error;
pub mod event;
pub mod filter;
pub mod id;
pub mod json;
pub mod key;
pub mod members;
pub mod message;
pub mod object;
pub mod patch;
pub mod retry;
pub mod schema;
pub mod snapshot;
pub mod track;
pub mod transport_message;

pub use acl::{validate_author, AclKind};
pub use broadcast::{
    broadcast_channels, broadcast_id, check_broadcast, decode_broadcast_object, Audience, BroadcastDelivery,
    BroadcastRequest,
};
pub use channel::{affected_channels, affected_channels_for_change, Channel, ChannelKey, ParentRef, ParsedChannelKey};
pub use delivery::{
    plan_deliveries, split_push, transition_for, DeliveryBatch, Delta, DeltaOp, PushPayload, DEFAULT_PUSH_LIMIT,
};
pub use error::ModelError;
pub use event::{Change, ChangeEvent, ChangeOp, WriteRecord};
pub use filter::{Filter, Transition};
pub use id::object_id_from_position;
pub use message::{
    decode_aggregation, decode_aggregation_object, AggregatorMessage, CreateMessage, DeleteMessage, ObjectRef, Patch,
    PatchOp, PatchPath, UpdateMessage, DEFAULT_MAX_MESSAGE_BYTES,
};
pub use object::{micros_to_secs, SourcePosition, StoredObject};
pub use schema::{AppSchema, Application, ModelSchema};
pub use track::{
    channel_and_filter, check_track_command, decode_track, decode_track_object, Device, DeviceAddress, TrackCommand,
    Transport, Volatile,
};
pub use transport_message::{
    encode_transport_message, EncodedBatch, RawTransportMessage, Recipient, TransportHeader, TransportMessage,
};
