//! What both stores' migration runners share: which recorded schema
//! versions a build may open.

use crate::{Result, StoreError};

/// Fails (`Invalid`) if `recorded` (the versions in a store's
/// `grafter_migrations`) holds one this build does not know, its migrations
/// being versions 1 to `latest`: one a later release applied, or one no
/// release has. Running on a newer schema would read and write it as if it
/// were this build's, half honouring a later release's tables, triggers and
/// functions, and leave the database as no release wrote it.
pub fn refuse_unknown_versions(recorded: impl IntoIterator<Item = i64>, latest: i64) -> Result<()> {
    let recorded: Vec<i64> = recorded.into_iter().collect();
    if let Some(&newest) = recorded.iter().max().filter(|&&v| v > latest) {
        return Err(StoreError::Invalid(format!(
            "the database's schema is at version {newest}, newer than this grafter's \
             {latest} (a later release migrated it): upgrade grafter to open it"
        )));
    }
    if let Some(&unknown) = recorded.iter().find(|&&v| v < 1) {
        return Err(StoreError::Invalid(format!(
            "the database records schema version {unknown}, which no grafter release has \
             (this one knows 1 to {latest}): refusing to open it"
        )));
    }
    Ok(())
}
