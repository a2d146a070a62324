//! The inspected host's file system, seen from `--root` (`/` by default). Every path the
//! inventory handles is a host path (`/home/alice/.ssh/authorized_keys`, as sshd and the
//! report name it) resolved under the root: symlinks are followed only inside the root (an
//! absolute target is taken relative to the root, `..` stops at the root, at most
//! [`MAX_SYMLINKS`] hops), and files are opened without following a final symlink and
//! without waiting on a FIFO or device (`O_NOFOLLOW | O_NONBLOCK`), then read only if they
//! are regular files, up to a bound.
//!
//! It never writes anything, and never hands out a path outside the root.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use zeroize::Zeroizing;

/// Most symlinks followed while resolving one path (Linux's own limit is 40).
pub const MAX_SYMLINKS: usize = 40;

/// The root directory everything is read under.
#[derive(Debug, Clone)]
pub struct Root {
    dir: PathBuf,
}

/// Why a host path could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// A component does not exist (or is not a directory where one is needed).
    NotFound,
    /// More than [`MAX_SYMLINKS`] symlinks.
    TooManySymlinks,
    /// Another error, in words.
    Io(String),
}

/// A host path with every symlink resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The symlink-free host path.
    pub path: PathBuf,
    /// Whether a symlink was followed on the way.
    pub via_symlink: bool,
}

/// Why a file was not read.
#[derive(Debug)]
pub enum OpenError {
    /// It is not a regular file (a directory, FIFO, device, socket or symlink).
    NotRegular,
    /// It could not be opened or read.
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::NotRegular => f.write_str("not a regular file"),
            OpenError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A file's contents as read, wiped when dropped (it may be a private key).
pub struct Contents {
    /// The bytes read (at most the bound).
    pub bytes: Zeroizing<Vec<u8>>,
    /// Whether the file is longer than what was read.
    pub truncated: bool,
    /// The file's metadata, from the open handle.
    pub metadata: Metadata,
}

impl Root {
    /// The root at `dir`, which must be a directory.
    pub fn new(dir: &Path) -> io::Result<Root> {
        let dir = std::fs::canonicalize(dir)?;
        if !std::fs::metadata(&dir)?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a directory",
            ));
        }
        Ok(Root { dir })
    }

    /// Whether this is the machine's own `/`.
    pub fn is_system_root(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// The real path of `host` under the root, without resolving anything (`..` and
    /// symlinks are the caller's business: use [`Root::resolve`] first).
    pub fn real(&self, host: &Path) -> PathBuf {
        let relative: PathBuf = host
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.dir.join(relative)
    }

    /// Resolve every symlink of the host path `host` (absolute) inside the root.
    pub fn resolve(&self, host: &Path) -> Result<Resolved, ResolveError> {
        let mut pending: Vec<PathBuf> = Vec::new();
        push_components(&mut pending, host);
        let mut current = PathBuf::from("/");
        let mut hops = 0usize;
        let mut via_symlink = false;
        while let Some(part) = pending.pop() {
            if part.as_os_str() == "/" {
                current = PathBuf::from("/");
                continue;
            }
            if part.as_os_str() == ".." {
                current.pop();
                continue;
            }
            let candidate = current.join(&part);
            let metadata = match std::fs::symlink_metadata(self.real(&candidate)) {
                Ok(metadata) => metadata,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                    ) =>
                {
                    return Err(ResolveError::NotFound);
                }
                Err(e) => return Err(ResolveError::Io(e.to_string())),
            };
            if metadata.file_type().is_symlink() {
                hops = hops.saturating_add(1);
                if hops > MAX_SYMLINKS {
                    return Err(ResolveError::TooManySymlinks);
                }
                via_symlink = true;
                let target = std::fs::read_link(self.real(&candidate))
                    .map_err(|e| ResolveError::Io(e.to_string()))?;
                push_components(&mut pending, &target);
            } else {
                if !pending.is_empty() && !metadata.is_dir() {
                    return Err(ResolveError::NotFound);
                }
                current = candidate;
            }
        }
        Ok(Resolved {
            path: current,
            via_symlink,
        })
    }

    /// Open the resolved host path `host` and read at most `max` bytes, if it is a regular
    /// file. A symlink in its place (swapped in since it was resolved) is not followed.
    pub fn read(&self, host: &Path, max: u64) -> Result<Contents, OpenError> {
        let file = open_no_follow(&self.real(host)).map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                OpenError::NotRegular
            } else {
                OpenError::Io(e)
            }
        })?;
        read_regular(file, max)
    }
}

/// Push the components of `path` onto `pending` so that popping yields them in order;
/// an absolute path starts with `/`.
fn push_components(pending: &mut Vec<PathBuf>, path: &Path) {
    let parts: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::RootDir => Some(PathBuf::from("/")),
            Component::ParentDir => Some(PathBuf::from("..")),
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    pending.extend(parts.into_iter().rev());
}

/// Open `real` read-only without following a final symlink and without blocking on a
/// FIFO or device.
pub fn open_no_follow(real: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(real)
}

/// Read at most `max` bytes of `file` if it is a regular file.
pub fn read_regular(file: File, max: u64) -> Result<Contents, OpenError> {
    let metadata = file.metadata().map_err(OpenError::Io)?;
    if !metadata.is_file() {
        return Err(OpenError::NotRegular);
    }
    let mut bytes = Zeroizing::new(Vec::with_capacity(
        usize::try_from(metadata.len().min(max)).unwrap_or(0),
    ));
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(OpenError::Io)?;
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let truncated = bytes.len() > limit;
    if truncated {
        bytes.truncate(limit);
    }
    Ok(Contents {
        bytes,
        truncated,
        metadata,
    })
}

/// Whether the host path `path` is `dir` or inside it (component-wise, both resolved).
pub fn within(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
}

/// A mode as `0600`.
pub fn mode_string(metadata: &Metadata) -> String {
    format!("{:04o}", metadata.mode() & 0o7777)
}

/// A host path for output.
pub fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch() -> (tempfile::TempDir, Root) {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = Root::new(dir.path()).expect("root");
        (dir, root)
    }

    #[test]
    fn symlinks_stay_inside_the_root() {
        let (dir, root) = scratch();
        std::fs::create_dir_all(dir.path().join("srv/home/alice")).expect("mkdir");
        std::fs::create_dir_all(dir.path().join("home")).expect("mkdir");
        // An absolute link is taken relative to the root, not the machine's /.
        symlink("/srv/home/alice", dir.path().join("home/alice")).expect("symlink");
        let resolved = root.resolve(Path::new("/home/alice")).expect("resolves");
        assert_eq!(resolved.path, PathBuf::from("/srv/home/alice"));
        assert!(resolved.via_symlink);
        // `..` stops at the root.
        symlink("../../../../../etc", dir.path().join("home/up")).expect("symlink");
        assert_eq!(
            root.resolve(Path::new("/home/up")),
            Err(ResolveError::NotFound)
        );
        std::fs::create_dir(dir.path().join("etc")).expect("mkdir");
        assert_eq!(
            root.resolve(Path::new("/home/up")).expect("resolves").path,
            PathBuf::from("/etc")
        );
        // Loops end.
        symlink("/loop", dir.path().join("loop")).expect("symlink");
        assert_eq!(
            root.resolve(Path::new("/loop")),
            Err(ResolveError::TooManySymlinks)
        );
        assert!(within(
            Path::new("/srv/home/alice/.ssh"),
            Path::new("/srv/home/alice")
        ));
        assert!(!within(
            Path::new("/srv/home/alicex"),
            Path::new("/srv/home/alice")
        ));
    }

    #[test]
    fn reads_are_bounded_and_regular_only() {
        let (dir, root) = scratch();
        std::fs::write(dir.path().join("big"), vec![b'a'; 100]).expect("write");
        let contents = root.read(Path::new("/big"), 10).expect("read");
        assert_eq!(contents.bytes.len(), 10);
        assert!(contents.truncated);
        let contents = root.read(Path::new("/big"), 100).expect("read");
        assert!(!contents.truncated);
        symlink("/big", dir.path().join("link")).expect("symlink");
        assert!(matches!(
            root.read(Path::new("/link"), 10),
            Err(OpenError::NotRegular)
        ));
        assert!(matches!(
            root.read(Path::new("/"), 10),
            Err(OpenError::NotRegular)
        ));
        // A FIFO is neither waited on nor read.
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        assert!(matches!(
            root.read(Path::new("/fifo"), 10),
            Err(OpenError::NotRegular)
        ));
    }
}
