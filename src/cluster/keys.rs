//! The names of the cluster's Redis keys and channels, all under one prefix.
//!
//! Every registry key carries the hash tag `{PREFIX}`, so all of them live in
//! one slot and the Lua scripts stay valid on a Redis Cluster. Channels carry
//! no tag: PUB/SUB traffic does not have to stay in one slot.

/// Key and channel names for one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

/// What a channel a message arrived on is about.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Channel<'a> {
    /// `PREFIX:to:NAME`: private messages and operator actions for a name.
    To(&'a str),
    /// `PREFIX:room:ROOM`: room messages.
    Room(&'a str),
    /// `PREFIX:all`: broadcasts, joins and leaves.
    All,
    /// `PREFIX:node:ID`: to one node (replacements, errors for senders).
    Node,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// HASH name → `node|session|row`: who holds each name, cluster-wide.
    pub(crate) fn names(&self) -> String {
        format!("{{{}}}:names", self.prefix)
    }

    /// ZSET node → lease deadline (ms, Redis clock).
    pub(crate) fn nodes(&self) -> String {
        format!("{{{}}}:nodes", self.prefix)
    }

    /// The start of a node's own keys (`...:names`, `...:rooms`).
    pub(crate) fn node_prefix(&self) -> String {
        format!("{{{}}}:node:", self.prefix)
    }

    /// SET of the names a node holds (for reaping it).
    pub(crate) fn node_names(&self, node: &str) -> String {
        format!("{}{node}:names", self.node_prefix())
    }

    /// HASH session id → `/clients` row (JSON) of every session on a node,
    /// claimed names or not: the other nodes' `/clients`, `list` and presence.
    pub(crate) fn node_clients(&self, node: &str) -> String {
        format!("{}{node}:clients", self.node_prefix())
    }

    /// SET of `ROOM\nNAME` memberships a node holds (for reaping it).
    pub(crate) fn node_rooms(&self, node: &str) -> String {
        format!("{}{node}:rooms", self.node_prefix())
    }

    /// The start of the room member sets.
    pub(crate) fn room_prefix(&self) -> String {
        format!("{{{}}}:room:", self.prefix)
    }

    /// SET of a room's member names, cluster-wide.
    pub(crate) fn room_members(&self, room: &str) -> String {
        format!("{}{room}", self.room_prefix())
    }

    /// Channel of a name's private messages.
    pub(crate) fn to(&self, name: &str) -> String {
        // Once per private message: without the formatting machinery.
        let mut channel = String::with_capacity(self.prefix.len() + 4 + name.len());
        channel.push_str(&self.prefix);
        channel.push_str(":to:");
        channel.push_str(name);
        channel
    }

    /// Channel of a room's messages.
    pub(crate) fn room(&self, room: &str) -> String {
        format!("{}:room:{room}", self.prefix)
    }

    /// Channel every node listens to.
    pub(crate) fn all(&self) -> String {
        format!("{}:all", self.prefix)
    }

    /// Channel of one node.
    pub(crate) fn node(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    /// What `channel` is about; `None` for a channel of another prefix.
    pub(crate) fn classify<'a>(&self, channel: &'a str) -> Option<Channel<'a>> {
        let rest = channel.strip_prefix(&self.prefix)?.strip_prefix(':')?;
        if let Some(name) = rest.strip_prefix("to:") {
            Some(Channel::To(name))
        } else if let Some(room) = rest.strip_prefix("room:") {
            Some(Channel::Room(room))
        } else if rest == "all" {
            Some(Channel::All)
        } else if rest.starts_with("node:") {
            Some(Channel::Node)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag_and_channels_classify() {
        let k = Keys::new("wsg");
        for key in [
            k.names(),
            k.nodes(),
            k.node_names("n1"),
            k.room_members("#r"),
        ] {
            assert!(key.starts_with("{wsg}:"), "{key}");
        }
        assert_eq!(k.classify(&k.to("a:b")), Some(Channel::To("a:b")));
        assert_eq!(k.classify(&k.room("#lobby")), Some(Channel::Room("#lobby")));
        assert_eq!(k.classify(&k.all()), Some(Channel::All));
        assert_eq!(k.classify(&k.node("n1")), Some(Channel::Node));
        assert_eq!(k.classify("other:all"), None);
        assert_eq!(k.classify("wsgx:all"), None);
    }
}
