//! Reading files in folders a step can write.
//!
//! A step is untrusted code. It may replace any file it can write with a symbolic link (to
//! `/proc/self/environ`, `/etc/shadow`), a FIFO (an open that never returns, a read that blocks
//! past every timeout) or a device (`/dev/zero`: a read that never ends). Everything Sluice reads
//! from an attempt's folder goes through here: below a folder Sluice made, every component is
//! opened without following links, the last one without blocking, only a regular file is
//! accepted, and a read stops at a cap decided before it starts.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

/// Why a file in a step's folder was not read.
#[derive(Debug, thiserror::Error)]
pub enum UnsafeFile {
    /// A component is a symbolic link.
    #[error("is a symbolic link, and Sluice does not follow links in a step's folder")]
    Link,
    /// The file is a FIFO, socket or device, or a folder on the way is not a folder.
    #[error("is not a regular file (a FIFO, socket, device or folder)")]
    NotRegular,
    /// Larger than the caller allows.
    #[error("is {size} bytes, over the limit of {cap}")]
    TooLarge {
        /// Its size (or the bytes read before giving up, for a file that grows).
        size: u64,
        /// The limit.
        cap: u64,
    },
    /// The relative path leaves the folder (`..`, an absolute path).
    #[error("leaves its folder")]
    Escapes,
    /// Anything else the file system said.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What kind of entry a path beneath a folder is, looked at without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Link,
    /// A FIFO, socket or device.
    Special,
}

/// Opens the regular file at `relative` beneath the trusted folder `root` for reading, or
/// `None` when it does not exist. Never follows a link below `root`, never blocks on a FIFO.
pub fn open_beneath(root: &Path, relative: &Path) -> Result<Option<File>, UnsafeFile> {
    let Some((parent, name)) = walk_to_parent(root, relative)? else {
        return Ok(None);
    };
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let fd = match openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => return Err(UnsafeFile::Link),
        Err(errno) => return Err(io::Error::from(errno).into()),
    };
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(UnsafeFile::NotRegular);
    }
    Ok(Some(file))
}

/// Reads the regular file at `relative` beneath `root`, at most `cap` bytes; `None` when it
/// does not exist.
pub fn read_beneath(root: &Path, relative: &Path, cap: u64) -> Result<Option<Vec<u8>>, UnsafeFile> {
    let Some(file) = open_beneath(root, relative)? else {
        return Ok(None);
    };
    read_capped(file, cap).map(Some)
}

/// Reads the regular file at `path`, whose folder Sluice made, at most `cap` bytes.
pub fn read_regular(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, UnsafeFile> {
    let (Some(root), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(UnsafeFile::Escapes);
    };
    read_beneath(root, Path::new(name), cap)
}

/// Opens the regular file at `path`, whose folder Sluice made, without following a link.
pub fn open_regular(path: &Path) -> Result<Option<File>, UnsafeFile> {
    let (Some(root), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(UnsafeFile::Escapes);
    };
    open_beneath(root, Path::new(name))
}

/// What `relative` beneath `root` is, without following links; `None` when it does not exist.
pub fn entry_kind(root: &Path, relative: &Path) -> Result<Option<EntryKind>, UnsafeFile> {
    let Some((parent, name)) = walk_to_parent(root, relative)? else {
        return Ok(None);
    };
    let flags = OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = match openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(io::Error::from(errno).into()),
    };
    let kind = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?.st_mode & libc::S_IFMT;
    Ok(Some(match kind {
        libc::S_IFREG => EntryKind::File,
        libc::S_IFDIR => EntryKind::Dir,
        libc::S_IFLNK => EntryKind::Link,
        _ => EntryKind::Special,
    }))
}

/// Opens the folder at `relative` beneath `root` without following a link; `None` when it does
/// not exist.
pub fn open_dir_beneath(root: &Path, relative: &Path) -> Result<Option<OwnedFd>, UnsafeFile> {
    let Some((parent, name)) = walk_to_parent(root, relative)? else {
        return Ok(None);
    };
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(&parent, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP | Errno::ENOTDIR) => Err(UnsafeFile::Link),
        Err(errno) => Err(io::Error::from(errno).into()),
    }
}

fn read_capped(file: File, cap: u64) -> Result<Vec<u8>, UnsafeFile> {
    let size = file.metadata()?.len();
    if size > cap {
        return Err(UnsafeFile::TooLarge { size, cap });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte over the cap tells a file that grew since the look at its size.
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(UnsafeFile::TooLarge {
            size: bytes.len() as u64,
            cap,
        });
    }
    Ok(bytes)
}

/// Opens every folder from `root` down to the parent of `relative`'s last component, none of
/// them through a link. `None` when one of them does not exist.
fn walk_to_parent<'a>(
    root: &Path,
    relative: &'a Path,
) -> Result<Option<(OwnedFd, &'a std::ffi::OsStr)>, UnsafeFile> {
    let mut names = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(name) => names.push(name),
            Component::CurDir => {}
            _ => return Err(UnsafeFile::Escapes),
        }
    }
    let Some(last) = names.pop() else {
        return Err(UnsafeFile::Escapes);
    };
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir = match nix::fcntl::open(root, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(errno) => return Err(io::Error::from(errno).into()),
    };
    for name in names {
        dir = match openat(&dir, name, dir_flags | OFlag::O_NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            // Linux says ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW: tell a link
            // from a file that is not a folder.
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let stat = fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW);
                return Err(match stat {
                    Ok(stat) if stat.st_mode & libc::S_IFMT == libc::S_IFLNK => UnsafeFile::Link,
                    _ => UnsafeFile::NotRegular,
                });
            }
            Err(errno) => return Err(io::Error::from(errno).into()),
        };
    }
    Ok(Some((dir, last)))
}

/// Removes `path` if it exists, whatever it is (a link is removed, not followed), so that a
/// file Sluice creates there next is its own.
pub fn remove_entry(path: &Path) -> io::Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(err) => Err(err),
    };
    match removed {
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Creates a new file at `path` for writing, never through a link or into a file that is
/// already there (which a step could have put there).
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Writes `bytes` to a new file at `path`, as [`create_new`] makes it.
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    create_new(path, mode)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn regular_files_are_read_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("step")).unwrap();
        std::fs::write(dir.path().join("step/a"), b"12345").unwrap();
        let read = |cap| read_beneath(dir.path(), Path::new("step/a"), cap);
        assert_eq!(read(5).unwrap().unwrap(), b"12345");
        assert!(matches!(
            read(4),
            Err(UnsafeFile::TooLarge { size: 5, cap: 4 })
        ));
        assert!(read_beneath(dir.path(), Path::new("step/none"), 9)
            .unwrap()
            .is_none());
    }

    #[test]
    fn links_are_refused_at_the_end_and_on_the_way() {
        let dir = tempfile::tempdir().unwrap();
        symlink("/etc/passwd", dir.path().join("leaf")).unwrap();
        symlink("/etc", dir.path().join("folder")).unwrap();
        assert!(matches!(
            read_beneath(dir.path(), Path::new("leaf"), 1 << 20),
            Err(UnsafeFile::Link)
        ));
        assert!(matches!(
            read_beneath(dir.path(), Path::new("folder/passwd"), 1 << 20),
            Err(UnsafeFile::Link)
        ));
        assert!(matches!(
            read_beneath(dir.path(), Path::new("../x"), 1),
            Err(UnsafeFile::Escapes)
        ));
        assert_eq!(
            entry_kind(dir.path(), Path::new("leaf")).unwrap(),
            Some(EntryKind::Link)
        );
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("outputs.env");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        // With nobody writing, a blocking open would never return.
        assert!(matches!(
            read_regular(&fifo, 1 << 20),
            Err(UnsafeFile::NotRegular)
        ));
        assert_eq!(
            entry_kind(dir.path(), Path::new("outputs.env")).unwrap(),
            Some(EntryKind::Special)
        );
    }

    #[test]
    fn removing_a_link_leaves_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        let link = dir.path().join("stdout.log");
        symlink(&target, &link).unwrap();
        remove_entry(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        remove_entry(&link).unwrap();
    }
}
