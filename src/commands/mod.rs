//! Subcommands other than running a role: `topics apply`, `app put`, `publish` (CONTRACT
//! section 1), `dead-letter replay` (operators re-feeding fixed messages), `index rebuild` (the channel
//! index of objects stored before it existed) and `token` (development socket tokens).

pub mod app;
pub mod dead_letter;
pub mod index;
pub mod publish;
pub mod token;
