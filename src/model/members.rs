//! The digest of a channel's members on one sockets transport, which a channel-addressed
//! transport message carries (see [`super::transport_message`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::track::Transport;

/// The sockets transport a channel member (`<transport>|<deviceId>|<token>|<appId>`) is on,
/// read from its transport part only: the one rule by which the transport manager and a
/// sockets transport agree on which members a [`MembersDigest`] covers (malformed remainders
/// included, so both sides count the same strings).
pub fn sockets_index(member: &str) -> Option<u32> {
    match member.split_once('|').and_then(|(transport, _)| Transport::parse(transport)) {
        Some(Transport::Sockets(i)) => Some(i),
        _ => None,
    }
}

/// An order-independent digest of a set of channel members (device strings): the wrapping sum
/// of the first 128 bits of each member's SHA-256. A sum, so a holder of the set updates it one
/// member at a time; SHA-256, so it is the same in every process and release (the transport
/// manager computes it, a sockets transport compares), and two sets that differ do not agree
/// by accident. Written as 32 hex digits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MembersDigest(u128);

impl MembersDigest {
    pub fn of<'a>(members: impl IntoIterator<Item = &'a str>) -> Self {
        let mut d = MembersDigest::default();
        members.into_iter().for_each(|m| d.add(m));
        d
    }

    /// Adds a member not already in the set.
    pub fn add(&mut self, member: &str) {
        self.0 = self.0.wrapping_add(member_hash(member));
    }

    /// Removes a member that is in the set.
    pub fn remove(&mut self, member: &str) {
        self.0 = self.0.wrapping_sub(member_hash(member));
    }
}

fn member_hash(member: &str) -> u128 {
    let full = Sha256::digest(member.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&full[..16]);
    u128::from_be_bytes(first)
}

impl Serialize for MembersDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:032x}", self.0))
    }
}

impl schemars::JsonSchema for MembersDigest {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MembersDigest".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{32}$",
            "description": "the order-free digest of a channel's members on one sockets transport"
        })
    }
}

impl<'de> Deserialize<'de> for MembersDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if text.len() != 32 {
            return Err(serde::de::Error::custom("a members digest is 32 hex digits"));
        }
        u128::from_str_radix(&text, 16).map(MembersDigest).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_is_on_the_sockets_transport_its_transport_part_names() {
        assert_eq!(sockets_index("sockets_transport-3|d|t|a"), Some(3));
        assert_eq!(sockets_index("sockets_transport-30|d|t|a"), Some(30));
        assert_eq!(sockets_index("sockets_transport-3|junk"), Some(3));
        for other in ["ios_transport|d|t|a", "sockets_transport-03|d|t|a", "sockets_transport-3", "x"] {
            assert_eq!(sockets_index(other), None, "{other}");
        }
    }

    #[test]
    fn a_members_digest_is_the_set_not_the_order_and_follows_each_change() {
        let (a, b, c) =
            ("sockets_transport-1|d1|t|app", "sockets_transport-1|d2|t|app", "sockets_transport-1|d3|t|app");
        assert_eq!(MembersDigest::of([a, b, c]), MembersDigest::of([c, a, b]));
        assert_ne!(MembersDigest::of([a, b]), MembersDigest::of([a, c]));
        assert_ne!(MembersDigest::of([a]), MembersDigest::default());
        let mut d = MembersDigest::of([a, b]);
        d.add(c);
        d.remove(a);
        assert_eq!(d, MembersDigest::of([b, c]));
        let text = serde_json::to_string(&d).map_err(|e| e.to_string());
        assert!(text.as_ref().is_ok_and(|t| t.len() == 34), "32 hex digits in quotes: {text:?}");
        let back = text.and_then(|t| serde_json::from_str::<MembersDigest>(&t).map_err(|e| e.to_string()));
        assert_eq!(back, Ok(d));
        for bad in ["\"12\"", "12", "\"zz000000000000000000000000000000\""] {
            assert!(serde_json::from_str::<MembersDigest>(bad).is_err(), "{bad}");
        }
    }
}
