//! The abstention marker: a member whose log lost entries to a corruption does not
//! vote or campaign until it has caught up, across restarts.

use std::path::Path;

use super::Shard;
use crate::engine::Term;

/// The file in a shard's WAL directory that says the member abstains (holds the
/// term in which its log lost entries), so that a crash before it catches up does
/// not make it forget.
pub const ABSTAIN_MARKER_FILE: &str = "abstain-until-after-term";

/// What the marker holds before the WAL is opened with `truncate_corrupt_tail`: the
/// cut may happen during the open, before the term is known, so the marker goes
/// first and means "the term recovered at the next start".
const ABSTAIN_PENDING: &str = "pending";

/// Before a WAL open that may cut the log: makes sure a marker exists, durably.
pub(super) fn mark_abstention_pending(marker: &Path) -> std::io::Result<()> {
    if marker.exists() {
        return Ok(());
    }
    write_durably(marker, ABSTAIN_PENDING)
}

/// The term after which the member may vote again, if it must abstain: from the
/// marker (a pending one, or a cut in this start's recovery, means the recovered
/// term), which is then rewritten to hold that term.
pub(super) fn abstention(
    marker: &Path,
    truncated: bool,
    term: Term,
) -> std::io::Result<Option<Term>> {
    let text = match std::fs::read_to_string(marker) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let recorded = match text.as_deref() {
        None => None,
        Some(ABSTAIN_PENDING) => Some(term),
        Some(number) => Some(number.parse::<Term>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold a term: {e}", marker.display()),
            )
        })?),
    };
    let abstain = match (recorded, truncated) {
        (None, false) => return Ok(None),
        (None, true) => term,
        (Some(r), _) => r.max(if truncated { term } else { 0 }),
    };
    if text.as_deref() != Some(abstain.to_string().as_str()) {
        write_durably(marker, &abstain.to_string())?;
    }
    Ok(Some(abstain))
}

/// Replaces `path` with `text`: temporary file, fsync, rename, directory fsync.
fn write_durably(path: &Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("new");
    let mut file = std::fs::File::create(&temporary)?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    // A bare relative name has an empty parent: its directory is the current one.
    crate::wal::dir::sync_dir(crate::wal::dir::parent_dir(path))
}

impl Shard {
    /// Once the engine votes again, the marker that made it abstain goes.
    pub(super) fn end_abstention_if_caught_up(&mut self) {
        if self.engine.is_abstaining() {
            return;
        }
        if let Some(marker) = self.abstain_marker.take()
            && marker.exists()
        {
            match std::fs::remove_file(&marker) {
                Ok(()) => log::info!(
                    "shard {}: caught up after the lost tail; votes and campaigns again",
                    self.id
                ),
                Err(e) => log::warn!("shard {}: cannot remove {}: {e}", self.id, marker.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstention_marker_survives_restarts_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join(ABSTAIN_MARKER_FILE);
        assert_eq!(abstention(&marker, false, 7).unwrap(), None);
        assert!(!marker.exists());
        // A cut in this recovery: abstain until after the recovered term.
        assert_eq!(abstention(&marker, true, 7).unwrap(), Some(7));
        // Restarts before catching up keep abstaining, at the recorded term.
        assert_eq!(abstention(&marker, false, 9).unwrap(), Some(7));
        std::fs::remove_file(&marker).unwrap();
        // Pending (the cut may have happened in an open that then crashed): the
        // term recovered at this start.
        mark_abstention_pending(&marker).unwrap();
        assert_eq!(abstention(&marker, false, 11).unwrap(), Some(11));
        assert_eq!(std::fs::read_to_string(&marker).unwrap(), "11\n");
        std::fs::write(&marker, "garbage").unwrap();
        assert!(abstention(&marker, false, 11).is_err());
    }
}
