//! Making directory changes durable: a new, renamed or removed entry reaches
//! stable storage only when its folder is fsynced, not its file.

use crate::error::{Result, VectorError};
use std::path::Path;

/// Fsyncs a folder, so the entries created, renamed or removed in it
/// survive a power cut.
#[cfg(unix)]
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let io = |e| VectorError::io(dir, e);
    #[cfg(test)]
    if FAIL_SYNC_DIR.with(std::cell::Cell::get) {
        return Err(io(std::io::Error::other("failpoint: folder fsync fails")));
    }
    std::fs::File::open(dir).map_err(io)?.sync_all().map_err(io)
}

/// Other platforms (Windows) cannot open a folder with `File::open` to sync
/// it: nothing to do there.
#[cfg(not(unix))]
pub(crate) fn sync_dir(_dir: &Path) -> Result<()> {
    Ok(())
}

/// The folder holding `path` (`.` for a bare relative name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
thread_local! {
    /// Failpoint: every [`sync_dir`] on this thread fails (a disk returning
    /// EIO). Per thread, so tests running alongside are not affected.
    static FAIL_SYNC_DIR: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Failpoint: from now on every [`sync_dir`] on this thread fails (or
/// succeeds again).
#[cfg(test)]
pub(crate) fn fail_sync_dir(fail: bool) {
    FAIL_SYNC_DIR.with(|f| f.set(fail));
}
