use std::os::unix::fs::PermissionsExt;

use super::folder::mkdir_group_shared;

/// Under the unit (UMask=0077, RestrictSUIDSGID=yes) the agent's chmod to 02770 was refused
/// and the integration folders were left drwx--S---, closed to the group for good. The
/// folders must come out 02770 with no chmod at all, whatever the process umask.
#[test]
fn spool_folders_are_group_shared_under_a_strict_umask_without_chmod() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let made = spool.join("db-prod").join("failed");
    std::thread::spawn({
        let made = made.clone();
        move || {
            // The unit's umask, on this test's thread only (see mkdir_group_shared).
            assert_eq!(unsafe { libc::unshare(libc::CLONE_FS) }, 0);
            unsafe { libc::umask(0o077) };
            mkdir_group_shared(made.parent().unwrap()).unwrap();
            mkdir_group_shared(&made).unwrap();
        }
    })
    .join()
    .unwrap();
    for d in [spool.join("db-prod"), made] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o2770, "{} is {mode:o}", d.display());
    }
}
