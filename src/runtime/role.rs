//! The roles of CONTRACT section 1 and what each consumes. `-t all` is a value of the same enum
//! (the command line's `-t`), never a role a worker runs: [`Role::WORKERS`] lists those.

use crate::queue::topic;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Role {
    #[value(name = "aggregation")]
    Aggregation,
    #[value(name = "write")]
    Write,
    #[value(name = "transport_manager")]
    TransportManager,
    #[value(name = "track")]
    Track,
    #[value(name = "android_transport")]
    AndroidTransport,
    #[value(name = "ios_transport")]
    IosTransport,
    #[value(name = "sockets_transport")]
    SocketsTransport,
    #[value(name = "all")]
    All,
}

/// One input of a role: the topic (before the prefix) and the consumer group reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    pub topic: String,
    pub group: String,
}

impl Role {
    pub const WORKERS: [Role; 7] = [
        Role::Aggregation,
        Role::Write,
        Role::TransportManager,
        Role::Track,
        Role::AndroidTransport,
        Role::IosTransport,
        Role::SocketsTransport,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Aggregation => "aggregation",
            Role::Write => "write",
            Role::TransportManager => "transport_manager",
            Role::Track => "track",
            Role::AndroidTransport => "android_transport",
            Role::IosTransport => "ios_transport",
            Role::SocketsTransport => "sockets_transport",
            Role::All => "all",
        }
    }

    /// What the role consumes (CONTRACT section 3). Groups are named after the topic; the
    /// sockets broadcast topic and `system` are read by every instance, each in its own group.
    pub fn inputs(self, index: u32) -> Vec<Input> {
        let shared = |t: &str| Input { topic: t.to_string(), group: t.to_string() };
        let mut inputs = match self {
            Role::Aggregation => vec![shared(topic::AGGREGATION)],
            Role::Write => vec![shared(topic::WRITE)],
            Role::TransportManager => vec![shared(topic::TRANSPORT_MANAGER)],
            Role::Track => vec![shared(topic::TRACK)],
            Role::AndroidTransport => vec![shared(topic::ANDROID_TRANSPORT)],
            Role::IosTransport => vec![shared(topic::IOS_TRANSPORT)],
            Role::SocketsTransport => vec![
                shared(&topic::sockets(index)),
                Input {
                    topic: topic::SOCKETS_BROADCAST.to_string(),
                    group: format!("{}-{index}", topic::SOCKETS_BROADCAST),
                },
            ],
            Role::All => Role::WORKERS.iter().flat_map(|r| r.inputs(index)).collect(),
        };
        if self != Role::All {
            inputs.push(Input {
                topic: topic::SYSTEM.to_string(),
                group: format!("{}-{}-{index}", topic::SYSTEM, self.as_str()),
            });
        }
        inputs
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_follow_the_contract() {
        let s = Role::SocketsTransport.inputs(3);
        assert_eq!(s[0], Input { topic: "sockets_transport-3".into(), group: "sockets_transport-3".into() });
        assert_eq!(s[1], Input { topic: "sockets_transport".into(), group: "sockets_transport-3".into() });
        assert_eq!(Role::Write.inputs(0)[0], Input { topic: "write".into(), group: "write".into() });
        assert_eq!(Role::Track.inputs(1)[1].group, "system-track-1");
    }
}
