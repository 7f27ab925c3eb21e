//! Creating directories durably. A file's fsync makes its data durable, not the
//! directory entry that names it: after a power loss a directory whose creation was
//! never synced into its parent can vanish with every file in it, however often
//! those files were synced. Every directory the node relies on is created here.

use std::io;
use std::path::Path;

/// Makes one directory's entries durable; injectable so that tests can record the
/// directories synced.
pub type DirSyncer<'a> = &'a mut dyn FnMut(&Path) -> io::Result<()>;

/// Makes the entries of directory `dir` (creations, renames, removals) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The directory holding `path`: `.` for a bare relative name, whose parent is empty.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors, durably: see [`create_dir_durably_with`].
pub fn create_dir_durably(dir: &Path) -> io::Result<()> {
    create_dir_durably_with(dir, &mut sync_dir)
}

/// Creates each missing component of `dir` from the top down, syncing the parent of
/// each one after creating it, then syncs the parent of `dir` and `dir` itself even
/// when nothing was missing: a directory left by a run that stopped before its
/// parent was synced is made durable now, before anything is stored in it.
pub fn create_dir_durably_with(dir: &Path, sync: DirSyncer) -> io::Result<()> {
    for component in missing_components(dir)?.iter().rev() {
        match std::fs::create_dir(component) {
            Ok(()) => {}
            // Another process created it meanwhile; it is synced below all the same.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && component.is_dir() => {}
            Err(e) => return Err(e),
        }
        if *component != dir {
            sync(parent_dir(component))?;
        }
    }
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    sync(parent_dir(dir))?;
    sync(dir)
}

/// `dir` and those of its ancestors that do not exist, deepest first.
fn missing_components(dir: &Path) -> io::Result<Vec<&Path>> {
    let mut missing = Vec::new();
    let mut current = dir;
    loop {
        match std::fs::symlink_metadata(current) {
            Ok(_) => return Ok(missing),
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(current),
            Err(e) => return Err(e),
        }
        match current.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => current = parent,
            _ => return Ok(missing),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A syncer that records the directories it was asked to sync, and syncs them.
    pub(crate) fn recording(synced: &mut Vec<PathBuf>) -> impl FnMut(&Path) -> io::Result<()> {
        move |dir: &Path| {
            synced.push(dir.to_path_buf());
            sync_dir(dir)
        }
    }

    #[test]
    fn every_created_component_is_synced_into_its_parent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b, c) = (
            tmp.path().join("a"),
            tmp.path().join("a/b"),
            tmp.path().join("a/b/c"),
        );
        let mut synced = Vec::new();
        create_dir_durably_with(&c, &mut recording(&mut synced)).expect("create");
        assert!(c.is_dir());
        let expected = [tmp.path(), &a, &b, &c].map(Path::to_path_buf);
        assert_eq!(synced, expected);
    }

    #[test]
    fn an_existing_directory_is_synced_again_into_its_parent() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("d");
        std::fs::create_dir(&dir).expect("create");
        let mut synced = Vec::new();
        create_dir_durably_with(&dir, &mut recording(&mut synced)).expect("create");
        assert_eq!(synced, [tmp.path().to_path_buf(), dir]);
    }

    #[test]
    fn a_file_in_the_way_is_an_error() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        assert!(create_dir_durably(&file).is_err());
        assert!(create_dir_durably(&file.join("below")).is_err());
    }

    #[test]
    fn a_bare_name_has_the_current_directory_as_parent() {
        assert_eq!(parent_dir(Path::new("name")), Path::new("."));
        assert_eq!(parent_dir(Path::new("a/name")), Path::new("a"));
    }
}
