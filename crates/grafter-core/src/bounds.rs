//! Sizes that jobs and schedules are held to, apart from the types: their
//! validation and the OpenAPI schemas that state it (`openapi`) both read
//! them, and neither imports the other for them.

/// Longest queue name, kind, tag or unique key, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Most tags on one job: every list answer carries them whole.
pub const MAX_TAGS: usize = 64;
/// A schedule's shortest interval, in ms.
pub const MIN_EVERY_MS: u64 = 1_000;
