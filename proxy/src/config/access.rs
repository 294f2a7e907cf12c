//! The files a configuration makes the process open, and whether a given user may open
//! them: `tandem check` runs as the service user (ExecStartPre) or is told the user
//! (`--user tandem`), so a key only root can read, or an access-log directory the
//! service cannot write, is refused before `run` fails on it.

use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::error::ConfigIssue;

/// How the process uses a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Opened for reading (certificates, keys, filters, scripts).
    Read,
    /// A file appended to, created when missing (the access log).
    Append,
    /// A directory written into, created when missing (Raft data).
    Directory,
}

/// One path the configuration names, with where it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUse {
    /// The path as the process will open it.
    pub path: PathBuf,
    /// How it is used.
    pub access: Access,
    /// The key naming it, e.g. `listener[0].tls.certificates[0].key`.
    pub key: String,
    /// 1-based line of the value.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
}

/// Who is checked: a uid with its groups.
#[derive(Debug, Clone)]
pub struct User {
    /// Name, for messages.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary and supplementary group ids.
    pub gids: Vec<u32>,
}

/// Why a user could not be looked up.
#[derive(Debug, thiserror::Error)]
#[error("no such user: {0}")]
pub struct NoSuchUser(pub String);

impl User {
    /// The process's effective user.
    pub fn current() -> User {
        // SAFETY: these calls have no preconditions; getgroups is given a buffer of the
        // size it reported.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let mut gids = vec![gid];
        unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            if n > 0 {
                let mut buf = vec![0 as libc::gid_t; n as usize];
                let n = libc::getgroups(n, buf.as_mut_ptr());
                if n > 0 {
                    gids.extend_from_slice(&buf[..n as usize]);
                }
            }
        }
        User {
            name: name_of(uid).unwrap_or_else(|| uid.to_string()),
            uid,
            gids,
        }
    }

    /// Looks `name` up in the user database, with its supplementary groups.
    pub fn lookup(name: &str) -> Result<User, NoSuchUser> {
        let c = CString::new(name).map_err(|_| NoSuchUser(name.into()))?;
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: getpwnam_r writes into `pw` and `buf`, which outlive the call; `out`
        // is only read after it.
        let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc != 0 || out.is_null() {
            return Err(NoSuchUser(name.into()));
        }
        let mut n: libc::c_int = 64;
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: `groups` has room for `n` entries; getgrouplist says how many it wrote
        // (or needs, when it returns -1).
        unsafe {
            if libc::getgrouplist(c.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) < 0 {
                groups.resize(n.max(0) as usize, 0);
                libc::getgrouplist(c.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n);
            }
        }
        groups.truncate(n.max(0) as usize);
        let mut gids = vec![pw.pw_gid];
        gids.extend(groups);
        Ok(User {
            name: name.into(),
            uid: pw.pw_uid,
            gids,
        })
    }

    /// Whether the mode bits of `m` give this user `want` (4 read, 2 write, 1 execute).
    fn may(&self, m: &std::fs::Metadata, want: u32) -> bool {
        if self.uid == 0 {
            // root: everything but executing a file nobody may execute.
            return want != 1 || m.mode() & 0o111 != 0 || m.is_dir();
        }
        let mode = m.mode();
        let bits = if m.uid() == self.uid {
            mode >> 6
        } else if self.gids.contains(&m.gid()) {
            mode >> 3
        } else {
            mode
        };
        bits & want == want
    }
}

fn name_of(uid: u32) -> Option<String> {
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: as in `User::lookup`.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated.
    Some(
        unsafe { std::ffi::CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// Every file use `user` could not perform, as problems at the key that names it.
pub fn check(files: &[FileUse], user: &User) -> Vec<ConfigIssue> {
    files.iter().filter_map(|f| problem(f, user)).collect()
}

fn problem(f: &FileUse, user: &User) -> Option<ConfigIssue> {
    let message = why_not(&f.path, f.access, user)?;
    let hint = match f.access {
        Access::Read => format!(
            "give {0} read access, e.g. chgrp {0} {1} && chmod g+r {1}",
            user.name,
            f.path.display()
        ),
        Access::Append | Access::Directory => {
            let dir = if f.access == Access::Append {
                f.path.parent().unwrap_or(Path::new("/"))
            } else {
                &f.path
            };
            format!(
                "create it for {0}: install -d -o {0} {1} (the packaged unit's LogsDirectory=/StateDirectory= do this)",
                user.name,
                dir.display()
            )
        }
    };
    Some(ConfigIssue {
        line: f.line,
        col: f.col,
        key: f.key.clone(),
        message,
        hint: Some(hint),
    })
}

/// Why `user` cannot use `path` as `access`, or `None` when it can.
fn why_not(path: &Path, access: Access, user: &User) -> Option<String> {
    let who = &user.name;
    // Every directory on the way must be searchable.
    let mut missing_from: Option<&Path> = None;
    for dir in path.ancestors().skip(1).collect::<Vec<_>>().into_iter().rev() {
        if dir.as_os_str().is_empty() {
            continue;
        }
        match std::fs::metadata(dir) {
            Ok(m) if !user.may(&m, 1) => {
                return Some(format!(
                    "{who} cannot enter {} (needed for {})",
                    dir.display(),
                    path.display()
                ))
            }
            Ok(_) => {}
            Err(_) => {
                missing_from = Some(dir);
                break;
            }
        }
    }
    let meta = if missing_from.is_some() {
        None
    } else {
        std::fs::metadata(path).ok()
    };
    match (access, meta) {
        (Access::Read, Some(m)) => (!user.may(&m, 4)).then(|| format!("{who} cannot read {}", path.display())),
        (Access::Read, None) => Some(format!("{} does not exist", path.display())),
        (Access::Append, Some(m)) => (!user.may(&m, 2)).then(|| format!("{who} cannot write {}", path.display())),
        (Access::Append, None) => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            match std::fs::metadata(dir) {
                Ok(d) if user.may(&d, 3) => None,
                Ok(_) => Some(format!("{who} cannot create {} in {}", path.display(), dir.display())),
                Err(_) => Some(format!("directory {} does not exist", dir.display())),
            }
        }
        (Access::Directory, Some(m)) => {
            (!m.is_dir() || !user.may(&m, 3)).then(|| format!("{who} cannot write into {}", path.display()))
        }
        (Access::Directory, None) => {
            // Created with its missing parents: the deepest existing ancestor must be writable.
            let existing = path.ancestors().skip(1).find(|d| std::fs::metadata(d).is_ok());
            match existing.and_then(|d| std::fs::metadata(d).ok().map(|m| (d, m))) {
                Some((_, m)) if user.may(&m, 3) => None,
                Some((d, _)) => Some(format!("{who} cannot create {} (in {})", path.display(), d.display())),
                None => Some(format!("{} cannot be created", path.display())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn nobody() -> User {
        User {
            name: "nobody".into(),
            uid: 65534,
            gids: vec![65534],
        }
    }

    fn use_of(path: &Path, access: Access) -> FileUse {
        FileUse {
            path: path.into(),
            access,
            key: "k".into(),
            line: 3,
            col: 1,
        }
    }

    #[test]
    fn another_users_private_key_and_missing_directories_are_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.path().join("k.key");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let open = dir.path().join("open.pem");
        std::fs::write(&open, "x").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        let files = [
            use_of(&key, Access::Read),
            use_of(&open, Access::Read),
            use_of(&dir.path().join("logs/access.log"), Access::Append),
            use_of(&dir.path().join("data"), Access::Directory),
        ];
        let me = User::current();
        let mine = check(&files, &me);
        let as_nobody = check(&files, &nobody());
        if me.uid == 0 || me.uid == std::fs::metadata(&key).unwrap().uid() {
            // The owner reads its key; the log's directory is missing for everyone.
            assert_eq!(mine.len(), 1, "{mine:?}");
            assert!(mine[0].message.contains("does not exist"), "{mine:?}");
        }
        let text: Vec<String> = as_nobody.iter().map(|i| i.message.clone()).collect();
        assert_eq!(as_nobody.len(), 3, "{text:?}");
        assert!(text[0].contains("nobody cannot read"), "{text:?}");
        assert!(text[1].contains("does not exist"), "{text:?}");
        assert!(text[2].contains("nobody cannot create"), "{text:?}");
        assert!(as_nobody[0].hint.as_deref().unwrap().contains("chgrp nobody"));
    }

    #[test]
    fn root_is_looked_up_with_its_groups() {
        let root = User::lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert!(root.gids.contains(&0));
        assert!(User::lookup("no-such-user-here").is_err());
    }
}
