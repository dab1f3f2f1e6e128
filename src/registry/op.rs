//! The registry's unit of work: one single-key Redis command, which both backends run (Redis
//! in [`super::conn`], the in-process map in [`super::memory`]).

use redis::{Cmd, ToRedisArgs};

/// The error code of a command on a key that holds another Redis type.
pub const WRONGTYPE: &str = "WRONGTYPE";

/// One single-key command and the key that decides its cluster slot.
#[derive(Debug, Clone)]
pub struct Op {
    name: &'static str,
    key: String,
    cmd: Cmd,
}

impl Op {
    /// `<name> <key>`; add the other arguments with [`Op::arg`].
    pub fn new(name: &'static str, key: &str) -> Op {
        let mut cmd = redis::cmd(name);
        cmd.arg(key);
        Op { name, key: key.to_owned(), cmd }
    }

    /// `PING`, the one command without a key (it goes to any node).
    pub fn ping() -> Op {
        Op { name: "PING", key: String::new(), cmd: redis::cmd("PING") }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn cmd(&self) -> &Cmd {
        &self.cmd
    }

    pub fn arg<T: ToRedisArgs>(mut self, arg: T) -> Op {
        self.cmd.arg(arg);
        self
    }
}
