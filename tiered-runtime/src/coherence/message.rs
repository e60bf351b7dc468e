//! The invalidation bus's wire format: channel names and messages.
//!
//! * **Channel** `{namespace}:tiered:invalidate:db{N}:v{BUS_VERSION}`: Pub/Sub is not scoped by
//!   database, so the database index is part of the name, and so is the bus version.
//! * **Message**: MessagePack with field names: `v` (the sender's bus version), `origin` (a
//!   random id per runtime), `seq` (the origin's number for an invalidation, see
//!   [`sequence`](super::sequence)) and the action. Never a value.
//!
//! **Compatibility rule.** Within one bus version, a newer sender may add fields (ignored by
//! older receivers) and actions: a receiver that cannot read the action of a message whose
//! header it can read takes it as a lost invalidation (a new L1 epoch), never as nothing. A
//! change that older receivers could misread gets a new bus version, and during a rolling
//! deploy the newer version publishes on both channels.

use serde::{Deserialize, Serialize};

/// Version of the bus (part of the channel name).
pub(crate) const BUS_VERSION: u8 = 2;

/// Messages larger than this are not ours (a key invalidation carries one key of at most
/// about 1 KiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The channel of a namespace on a database.
pub(crate) fn channel(namespace: &str, db: i64) -> String {
    format!("{namespace}:tiered:invalidate:db{db}:v{BUS_VERSION}")
}

/// What a message asks receivers to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Action {
    /// Evict these keys of the function named `site` (numbered).
    Keys {
        /// The function's name.
        site: String,
        /// Rendered keys.
        keys: Vec<String>,
    },
    /// The function named `site` moved to generation `generation` (numbered).
    Site {
        /// The function's name.
        site: String,
        /// Its new generation.
        generation: u64,
    },
    /// The tag `tag` moved to generation `generation` (numbered): every entry carrying it
    /// goes.
    Tag {
        /// The rendered tag.
        tag: String,
        /// Its new generation.
        generation: u64,
    },
    /// The namespace moved to generation `generation` (numbered).
    All {
        /// The namespace's new generation.
        generation: u64,
    },
    /// The origin has assigned every number up to `last` (not numbered itself).
    Beacon {
        /// The origin's last assigned number.
        last: u64,
    },
    /// The origin ends after `last` (not numbered itself).
    Bye {
        /// The origin's last assigned number.
        last: u64,
    },
}

impl Action {
    /// Whether the action is an invalidation (and so carries a sequence number).
    pub(crate) fn is_numbered(&self) -> bool {
        matches!(
            self,
            Action::Keys { .. } | Action::Site { .. } | Action::Tag { .. } | Action::All { .. }
        )
    }
}

/// One message on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Message {
    /// The sender's bus version.
    pub(crate) v: u8,
    /// The sending runtime.
    pub(crate) origin: u64,
    /// The origin's number for a numbered action, 0 otherwise.
    pub(crate) seq: u64,
    /// What to do.
    pub(crate) action: Action,
}

/// What a message's header says when its action cannot be read.
#[derive(Debug, Deserialize)]
struct Header {
    v: u8,
    origin: u64,
    seq: u64,
}

/// A received payload, as far as it could be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received {
    /// A whole message.
    Message(Message),
    /// A message of this bus whose action is unknown (a newer sender): origin and number.
    UnknownAction {
        /// The sending runtime.
        origin: u64,
        /// Its number.
        seq: u64,
    },
    /// Not a message of this bus.
    Foreign,
}

impl Message {
    /// The encoded message.
    pub(crate) fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }
}

/// Reads a payload from the channel; never panics, whatever the bytes.
pub(crate) fn decode(payload: &[u8]) -> Received {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Received::Foreign;
    }
    match rmp_serde::from_slice::<Message>(payload) {
        Ok(m) if m.v >= BUS_VERSION => Received::Message(m),
        Ok(_) => Received::Foreign,
        Err(_) => match rmp_serde::from_slice::<Header>(payload) {
            Ok(h) if h.v >= BUS_VERSION => Received::UnknownAction {
                origin: h.origin,
                seq: h.seq,
            },
            _ => Received::Foreign,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(action: Action) -> Message {
        Message {
            v: BUS_VERSION,
            origin: 7,
            seq: 3,
            action,
        }
    }

    #[test]
    fn round_trips_every_action() {
        for a in [
            Action::Keys {
                site: "s".into(),
                keys: vec!["k".into()],
            },
            Action::Site {
                site: "s".into(),
                generation: 2,
            },
            Action::All { generation: 9 },
            Action::Beacon { last: 4 },
            Action::Bye { last: 4 },
        ] {
            let m = msg(a);
            assert_eq!(decode(&m.encode()), Received::Message(m));
        }
    }

    #[derive(Serialize)]
    struct Newer {
        v: u8,
        origin: u64,
        seq: u64,
        action: &'static str,
        extra: u32,
    }

    #[test]
    fn a_newer_senders_unknown_action_is_recognised_and_extra_fields_are_ignored() {
        let unknown = Newer {
            v: BUS_VERSION + 1,
            origin: 5,
            seq: 8,
            action: "Tags",
            extra: 1,
        };
        let bytes = rmp_serde::to_vec_named(&unknown).unwrap_or_default();
        assert_eq!(
            decode(&bytes),
            Received::UnknownAction { origin: 5, seq: 8 }
        );
        #[derive(Serialize)]
        struct WithExtra {
            v: u8,
            origin: u64,
            seq: u64,
            action: Action,
            extra: u32,
        }
        let bytes = rmp_serde::to_vec_named(&WithExtra {
            v: BUS_VERSION + 1,
            origin: 5,
            seq: 8,
            action: Action::All { generation: 1 },
            extra: 3,
        })
        .unwrap_or_default();
        assert!(matches!(decode(&bytes), Received::Message(m) if m.seq == 8));
    }

    #[test]
    fn wire_1_messages_and_junk_are_foreign() {
        assert_eq!(decode(b""), Received::Foreign);
        assert_eq!(decode(b"hello"), Received::Foreign);
        assert_eq!(decode(&vec![0x91; 100_000]), Received::Foreign);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn extreme_numbers_round_trip(origin in any::<u64>(), seq in any::<u64>(), last in any::<u64>()) {
            let m = Message { v: BUS_VERSION, origin, seq, action: Action::Beacon { last } };
            prop_assert_eq!(decode(&m.encode()), Received::Message(m));
        }
    }
}
