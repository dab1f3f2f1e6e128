//! Subcommands other than running a role: `topics apply`, `app put`, `publish` (CONTRACT
//! section 1) and `dead-letter replay` (operators re-feeding fixed messages).

pub mod app;
pub mod dead_letter;
pub mod publish;
