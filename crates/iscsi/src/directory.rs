//! What the connection engines ask of the world: which targets exist, who may reach
//! them, and how. The member service implements [`Directory`] over its view of the
//! control plane; tests implement it over a table.

/// CHAP secrets of a target (one-way, or mutual when `target` is set).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ChapSecrets {
    pub user: String,
    pub secret: Vec<u8>,
    /// Mutual CHAP: the name and secret the target answers with.
    pub target: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChapSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecrets")
            .field("user", &self.user)
            .field("mutual", &self.target.is_some())
            .finish_non_exhaustive()
    }
}

/// Where a login for a target should go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// This portal serves the target.
    Serve {
        /// CHAP required when set.
        auth: Option<ChapSecrets>,
    },
    /// Answer "target moved temporarily" to this `address:port`.
    Redirect { address: String },
    /// No such target.
    NotFound,
    /// The initiator is not in the target's ACL.
    Denied,
}

/// One SendTargets entry: a target name and the addresses (`host:port,tpgt`) to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecord {
    pub name: String,
    pub addresses: Vec<String>,
}

/// The portal's view of the targets it fronts.
pub trait Directory: Send + Sync {
    /// Where a Normal session from `initiator` to `target` should go.
    fn lookup(&self, target: &str, initiator: &str) -> Lookup;
    /// Targets `initiator` may discover here. `only` narrows to one target name.
    fn send_targets(&self, initiator: &str, only: Option<&str>) -> Vec<TargetRecord>;
    /// The target portal group tag of this portal.
    fn portal_group_tag(&self) -> u16;
}
