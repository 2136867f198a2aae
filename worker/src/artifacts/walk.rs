//! Reading a declared output from the folder a step wrote, as untrusted input: no link is
//! followed anywhere below the attempt's folder, only regular files and folders are accepted,
//! and every name must be UTF-8 (a manifest holds paths as text).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, Mode};

use super::manifest::MAX_FILES;
use super::ArtifactError;
use crate::safe_fs::{self, EntryKind, UnsafeFile};

/// Deepest folder nesting an output folder may have.
const MAX_DEPTH: usize = 64;

/// A regular file found in an output folder. It is opened later, again without following a
/// link, so a folder of many files never holds many descriptors.
pub struct FoundFile {
    /// Its path relative to the output folder, `/`-separated.
    pub path: String,
    /// Its permission bits.
    pub mode: u32,
    /// What `stat` said of it during the walk: enough for the hash cache to answer without
    /// opening it.
    pub stamp: super::hash::FileStamp,
}

/// What a declared output turned out to be.
pub enum Output {
    /// A file, opened.
    File(File),
    /// A folder's files, in no particular order.
    Dir(Vec<FoundFile>),
}

fn bad(output: &str, why: impl Into<String>) -> ArtifactError {
    ArtifactError::BadOutput {
        output: output.to_string(),
        why: why.into(),
    }
}

/// Opens file `path` of a folder output found by [`open_output`], refusing what it became
/// since (a link, a FIFO, nothing).
pub fn open_found(
    root: &Path,
    relative: &Path,
    name: &str,
    path: &str,
) -> Result<File, ArtifactError> {
    match safe_fs::open_beneath(root, &relative.join(path)) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(bad(name, format!("`{path}` vanished while it was stored"))),
        Err(err) => Err(bad(name, format!("`{path}` {err}"))),
    }
}

/// Opens declared output `name` (a folder when it ends in `/`) at `relative` beneath `root`.
pub fn open_output(root: &Path, relative: &Path, name: &str) -> Result<Output, ArtifactError> {
    let unsafe_file = |err: UnsafeFile| bad(name, err.to_string());
    if !name.ends_with('/') {
        return match safe_fs::open_beneath(root, relative).map_err(unsafe_file)? {
            Some(file) => Ok(Output::File(file)),
            None => Err(bad(name, "was not written to $SLUICE_OUT")),
        };
    }
    match safe_fs::entry_kind(root, relative).map_err(unsafe_file)? {
        Some(EntryKind::Dir) => {}
        Some(EntryKind::File) => return Err(bad(name, "is a file, not a folder")),
        Some(EntryKind::Link) => return Err(bad(name, "is a symbolic link")),
        Some(EntryKind::Special) => return Err(bad(name, "is a FIFO, socket or device")),
        None => return Err(bad(name, "was not written to $SLUICE_OUT")),
    }
    let folder = safe_fs::open_dir_beneath(root, relative)
        .map_err(unsafe_file)?
        .ok_or_else(|| bad(name, "was not written to $SLUICE_OUT"))?;
    let mut found = Vec::new();
    walk(folder, String::new(), 0, name, &mut found)?;
    Ok(Output::Dir(found))
}

fn walk(
    folder: OwnedFd,
    prefix: String,
    depth: usize,
    output: &str,
    found: &mut Vec<FoundFile>,
) -> Result<(), ArtifactError> {
    if depth > MAX_DEPTH {
        return Err(bad(
            output,
            format!("`{prefix}` is nested over {MAX_DEPTH} folders deep"),
        ));
    }
    let io = |what: &str| {
        let what = format!("reading output `{output}{prefix}` ({what})");
        move |errno: Errno| ArtifactError::Io {
            what,
            source: errno.into(),
        }
    };
    let listing = folder
        .try_clone()
        .map_err(ArtifactError::io("reading an output"))?;
    let names: Vec<Vec<u8>> = nix::dir::Dir::from_fd(listing)
        .map_err(io("listing"))?
        .into_iter()
        .map(|entry| entry.map(|e| e.file_name().to_bytes().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(io("listing"))?;
    for raw in names {
        if raw == b"." || raw == b".." {
            continue;
        }
        let name = OsStr::from_bytes(&raw);
        let Some(text) = name.to_str() else {
            return Err(bad(
                output,
                format!("`{prefix}{}` is not a UTF-8 name", name.to_string_lossy()),
            ));
        };
        let path = format!("{prefix}{text}");
        let stat = fstatat(&folder, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io("stat"))?;
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let flags =
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let child = openat(&folder, name, flags, Mode::empty()).map_err(io("open"))?;
                walk(child, format!("{path}/"), depth + 1, output, found)?;
            }
            libc::S_IFREG => {
                if found.len() >= MAX_FILES {
                    return Err(bad(output, format!("holds more than {MAX_FILES} files")));
                }
                found.push(FoundFile {
                    path,
                    mode: stat.st_mode & 0o7777,
                    stamp: super::hash::FileStamp {
                        dev: stat.st_dev,
                        ino: stat.st_ino,
                        size: stat.st_size as u64,
                        mtime_ns: stat.st_mtime * 1_000_000_000 + stat.st_mtime_nsec,
                    },
                });
            }
            libc::S_IFLNK => {
                return Err(bad(
                    output,
                    format!("`{path}` is a symbolic link; outputs hold only files and folders"),
                ));
            }
            _ => {
                return Err(bad(
                    output,
                    format!(
                        "`{path}` is a FIFO, socket or device; outputs hold only files and folders"
                    ),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn names(output: Output) -> Vec<String> {
        let Output::Dir(mut files) = output else {
            panic!("a folder")
        };
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.into_iter().map(|f| f.path).collect()
    }

    #[test]
    fn a_folder_output_lists_its_files_and_refuses_links_and_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out/model");
        std::fs::create_dir_all(out.join("sub/deeper")).unwrap();
        std::fs::write(out.join("a"), b"1").unwrap();
        std::fs::write(out.join("sub/deeper/b"), b"2").unwrap();
        let open = || open_output(dir.path(), Path::new("out/model"), "model/");
        assert_eq!(names(open().unwrap()), ["a", "sub/deeper/b"]);
        symlink("/etc/passwd", out.join("sub/leak")).unwrap();
        let err = open().err().unwrap().to_string();
        assert!(err.contains("`sub/leak` is a symbolic link"), "{err}");
        std::fs::remove_file(out.join("sub/leak")).unwrap();
        nix::unistd::mkfifo(&out.join("pipe"), Mode::S_IRWXU).unwrap();
        let err = open().err().unwrap().to_string();
        assert!(err.contains("`pipe` is a FIFO"), "{err}");
        std::fs::remove_file(out.join("pipe")).unwrap();
        // The output folder itself swapped for a link to somewhere else.
        std::fs::rename(&out, dir.path().join("elsewhere")).unwrap();
        symlink(dir.path().join("elsewhere"), &out).unwrap();
        assert!(open().err().unwrap().to_string().contains("symbolic link"));
    }
}
