//! The spool's folders, shared with the users of `send` through their group, and
//! [`write_spool`], the one way a file is dropped in.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Creates `dir` (and its missing parents) readable and writable by its group whatever the
/// umask: the agent and the users of `send` share the spool through the group. A setgid bit
/// inherited from the parent stays, so the group passes on.
///
/// The folder is made with its final mode by [`mkdir_group_shared`], so the agent never needs
/// a chmod: under its unit, `RestrictSUIDSGID=yes` refuses any chmod that carries the setgid
/// bit, and a chmod without it would clear the bit the folder inherited. The chmod below is
/// only for when that could not be done (it is what a `send` run by a user does otherwise).
pub(super) fn make_shared_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        make_shared_dir(parent)?;
    }
    match mkdir_group_shared(dir) {
        Ok(()) => {}
        // Made by someone else meanwhile (a `send`, the agent): theirs to set up.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o770 == 0o770 {
        return Ok(());
    }
    std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode((mode & 0o7000) | 0o770),
    )
}

/// `mkdir(dir, 0770)` with a umask of 007, so the folder gets its group's access (and the
/// parent's setgid bit, from the kernel) without a chmod. The umask is process-wide and other
/// threads create files meanwhile (the queue), so this is done on a thread of its own that
/// first stops sharing its umask with the process (`unshare(CLONE_FS)`, which needs no
/// privilege and is no namespace); the thread, and its umask, end with the call. If unshare
/// is refused, the process umask applies and the caller's chmod makes up for it.
pub(super) fn mkdir_group_shared(dir: &Path) -> std::io::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(CLONE_FS) only gives this thread its own copy of the umask, the
            // current and the root folder; umask touches nothing but that copy.
            if unsafe { libc::unshare(libc::CLONE_FS) } == 0 {
                unsafe { libc::umask(0o007) };
            }
            std::fs::DirBuilder::new().mode(0o770).create(dir)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the mkdir thread panicked")))
    })
}

/// Writes one alert into the spool folder the way a dropped file must be: a hidden temporary
/// file, fsync, rename to its final name, fsync of the folder. Returns the final path.
pub fn write_spool(spool: &Path, integration: &str, body: &[u8]) -> std::io::Result<PathBuf> {
    let dir = spool.join(integration);
    make_shared_dir(&dir)?;
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let name = format!(
        "{nanos:020}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let tmp = dir.join(format!(".{name}.tmp"));
    let done = dir.join(format!("{name}.json"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o660)
            .open(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &done)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(done)
}
