//! The roles of CONTRACT section 1, one file each, all of one shape: a struct named after the
//! role that implements [`crate::runtime::Worker`] (`connect`: its clients and pipeline) and
//! [`crate::pipeline::Handler`] (what it does with each record). `process` picks one by
//! `match`; `ios_transport` and `android_transport` share [`push_transport`].

pub mod aggregation;
pub mod push_transport;
pub mod sockets_transport;
pub mod track;
pub mod transport_manager;
pub mod write;
