//! Why a placement could not be computed.

/// Inputs that cannot be placed. Every variant is a caller's configuration problem, never a
/// transient one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// "replica count … is outside 1..=3"
    #[error("replica count {replicas} is outside 1..={max}")]
    InvalidReplicas { replicas: usize, max: usize },
    /// "a pool needs at least one placement group"
    #[error("a pool needs at least one placement group")]
    NoPlacementGroups,
    /// "… placement groups exceed the limit of …"
    #[error("{pg_count} placement groups exceed the limit of {max}")]
    TooManyPlacementGroups { pg_count: u32, max: u32 },
    /// "no member is up with capacity to place on"
    #[error("no member is up with capacity to place on")]
    NoEligibleMembers,
    /// "member … is listed twice"
    #[error("member {member} is listed twice")]
    DuplicateMember { member: u64 },
    /// "the previous map has … placement groups, not …"
    #[error("the previous map has {previous} placement groups, not {requested}")]
    PgCountChanged { previous: u32, requested: u32 },
    /// "chunk size must be positive"
    #[error("chunk size must be positive")]
    ZeroChunk,
}
