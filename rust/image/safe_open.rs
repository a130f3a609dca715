//! Opening image files safely.
//!
//! A path from metadata is opened *beneath* the data root: relative, no `..`,
//! and no symlink that leads out of the root, checked by the kernel at the
//! moment of opening, relative to a directory handle for the root (so a
//! symlink swapped in after planning is still refused). On Linux that is
//! `openat2(root_fd, rel, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`; where
//! openat2 does not exist (older kernels, seccomp filters, other systems),
//! or refuses a path that may still be inside (an absolute symlink that
//! points into the root), a component-by-component walk with `openat` and
//! `O_NOFOLLOW` decides, following each symlink by hand and keeping the walk
//! inside the root.
//!
//! Every open, beneath a root or not, is `O_NONBLOCK` and then `fstat`ed:
//! anything but a regular file (FIFO, socket, device, directory) is refused
//! before a byte is read, so a FIFO named like an image cannot hang a run,
//! and a file larger than the caller's limit is refused from its size.
//! Reads stop at the size seen when the file was opened (plus one byte, to
//! notice a file that grows meanwhile).

use std::collections::VecDeque;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, ImageFailure, Result};

/// Flags of every image open: read-only, never block (a FIFO without a
/// writer opens at once), never become the controlling terminal.
const FILE_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
/// Flags of an intermediate directory during the walk.
const DIR_FLAGS: libc::c_int = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC;
/// Symlinks followed in one walk before giving up (Linux's MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// Python's `repr()` of a string (for messages that must read as the Python
/// side's did).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Why a metadata path is refused before anything is opened, in the words of
/// the Python side's `resolve_image_path` (so failure reasons stay the same):
/// empty or holding a NUL byte, absolute in POSIX or Windows style (a leading
/// `/` or `\`, a drive such as `C:`), or with a `..` component (separated by
/// `/` or `\`).
pub fn check_relative(rel: &OsStr) -> std::result::Result<(), String> {
    let bytes = rel.as_bytes();
    let text = || rel.to_string_lossy();
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(format!("path {} is empty or contains a NUL byte", py_repr(&text())));
    }
    // A drive (`C:`): the second character is a colon.
    let drive = if bytes[0].is_ascii() { bytes.get(1) == Some(&b':') } else { text().chars().nth(1) == Some(':') };
    if bytes[0] == b'/' || bytes[0] == b'\\' || drive {
        return Err(format!("path '{}' is absolute; metadata paths must be relative to the data root", text()));
    }
    if bytes.split(|&b| b == b'/' || b == b'\\').any(|c| c == b"..") {
        return Err(format!("path '{}' contains '..' and could escape the data root", text()));
    }
    Ok(())
}

/// How [`Root::open_beneath`] resolves a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// openat2 where the kernel has it, the walk otherwise.
    Auto,
    /// Always the component-wise `openat` walk (what other systems and old
    /// kernels get; selectable so that tests cover it everywhere).
    Walk,
}

/// Whether this kernel has a usable openat2: 0 unknown, 1 yes, 2 no.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// The data root: an open directory that metadata paths are resolved beneath.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    /// As given (messages name files as `path/rel`, as before).
    path: PathBuf,
    /// Its real path: the prefix an absolute symlink must have to stay inside.
    real: PathBuf,
    resolve: Resolve,
}

/// Why a path could not be opened beneath the root.
#[derive(Debug)]
enum Refusal {
    /// Leaves the root (a symlink out, or `..` above it); the message says so.
    Outside,
    Io(io::Error),
}

impl Root {
    /// Open the directory `path` (symlinks in `path` itself are followed).
    pub fn open(path: &Path) -> Result<Root> {
        let shown = path.display().to_string();
        let dir = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOCTTY)
            .open(path)
            .map_err(|e| Error::io(shown, e))?;
        let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Root { fd: dir.into(), path: path.to_path_buf(), real, resolve: Resolve::Auto })
    }

    /// The same root resolving with `resolve` (tests use [`Resolve::Walk`]).
    pub fn with_resolve(mut self, resolve: Resolve) -> Root {
        self.resolve = resolve;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How a file under the root is named in messages: `root/rel` (as
    /// `Path::join` then `display` write it; built directly for UTF-8 names,
    /// since every probe names its file).
    pub fn shown(&self, rel: &Path) -> String {
        match (self.path.to_str(), rel.to_str()) {
            (Some(base), Some(rel)) if !base.is_empty() && !rel.is_empty() && !rel.starts_with('/') => {
                let mut out = String::with_capacity(base.len() + 1 + rel.len());
                out.push_str(base);
                if !base.ends_with('/') {
                    out.push('/');
                }
                out.push_str(rel);
                out
            }
            _ => self.path.join(rel).display().to_string(),
        }
    }

    /// Open `rel` for reading beneath the root, refusing what
    /// [`check_relative`] refuses and anything that resolves outside.
    pub fn open_beneath(&self, rel: &Path) -> Result<File> {
        check_relative(rel.as_os_str()).map_err(|message| Error::UnsafePath { path: self.shown(rel), message })?;
        match self.resolve_fd(rel.as_os_str().as_bytes()) {
            Ok(fd) => Ok(File::from(fd)),
            Err(Refusal::Outside) => {
                Err(Error::UnsafePath { path: self.shown(rel), message: self.outside_message(rel) })
            }
            Err(Refusal::Io(e)) => Err(opening_error(self.shown(rel), e)),
        }
    }

    fn resolve_fd(&self, rel: &[u8]) -> std::result::Result<OwnedFd, Refusal> {
        #[cfg(target_os = "linux")]
        if self.resolve == Resolve::Auto && OPENAT2.load(Ordering::Relaxed) != 2 {
            let c = CString::new(rel).map_err(|e| Refusal::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
            match openat2_beneath(self.fd.as_raw_fd(), &c) {
                Ok(fd) => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return Ok(fd);
                }
                Err(e) => match e.raw_os_error() {
                    // Not available (old kernel, seccomp): the walk from now on.
                    Some(libc::ENOSYS | libc::EPERM | libc::E2BIG) if OPENAT2.load(Ordering::Relaxed) == 0 => {
                        OPENAT2.store(2, Ordering::Relaxed);
                    }
                    // Refused as leaving the root, a symlink loop or a race
                    // it would not settle: an absolute symlink that points
                    // back inside is allowed, as it always was, so the walk decides.
                    Some(libc::EXDEV | libc::ELOOP | libc::EAGAIN) => {}
                    _ => return Err(Refusal::Io(e)),
                },
            }
        }
        let _ = &OPENAT2;
        self.walk(rel)
    }

    /// Resolve `rel` one component at a time, each opened with `O_NOFOLLOW`
    /// relative to the directory before it; a symlink is read and its target
    /// spliced into the remaining components (an absolute one only when it
    /// points into the root's real path); `..` pops a directory and may not
    /// pop the root.
    fn walk(&self, rel: &[u8]) -> std::result::Result<OwnedFd, Refusal> {
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut pending: VecDeque<Vec<u8>> = components(rel).collect();
        let mut links = 0;
        loop {
            let dir = stack.last().map_or(self.fd.as_raw_fd(), |d| d.as_raw_fd());
            let Some(name) = pending.pop_front() else {
                // The path ends on the root or a directory ("x -> ."): open it,
                // so that the caller's fstat names it a directory.
                return openat(dir, b".", FILE_FLAGS).map_err(Refusal::Io);
            };
            match name.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_none() {
                        return Err(Refusal::Outside);
                    }
                    continue;
                }
                _ => {}
            }
            let last = pending.iter().all(|c| c.is_empty() || c == b".");
            let flags = if last { FILE_FLAGS } else { DIR_FLAGS } | libc::O_NOFOLLOW;
            match openat(dir, &name, flags) {
                Ok(fd) if last => return Ok(fd),
                Ok(fd) => stack.push(fd),
                Err(e) if may_be_symlink(&e) => {
                    let Ok(target) = readlinkat(dir, &name) else { return Err(Refusal::Io(e)) };
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(Refusal::Io(io::Error::from_raw_os_error(libc::ELOOP)));
                    }
                    let target = if target.first() == Some(&b'/') {
                        let Some(inside) = self.strip_root(&target) else { return Err(Refusal::Outside) };
                        stack.clear();
                        inside
                    } else {
                        target
                    };
                    for c in components(&target).rev() {
                        pending.push_front(c);
                    }
                }
                Err(e) => return Err(Refusal::Io(e)),
            }
        }
    }

    /// The part of an absolute symlink target below the root's real path,
    /// or `None` when it points elsewhere.
    fn strip_root(&self, target: &[u8]) -> Option<Vec<u8>> {
        let root = self.real.as_os_str().as_bytes();
        let root = if root.len() > 1 { root.strip_suffix(b"/").unwrap_or(root) } else { b"" };
        let rest = target.strip_prefix(root)?;
        (rest.is_empty() || rest[0] == b'/').then(|| rest.to_vec())
    }

    /// The Python side's words for a path that leaves the root, naming where
    /// it leads when that can be told.
    fn outside_message(&self, rel: &Path) -> String {
        let rel_text = rel.to_string_lossy();
        let root = self.real.display();
        match std::fs::canonicalize(self.real.join(rel)) {
            Ok(real) if !real.starts_with(&self.real) => {
                format!("path '{rel_text}' resolves to '{}', outside the data root '{root}'", real.display())
            }
            _ => format!("path '{rel_text}' resolves outside the data root '{root}'"),
        }
    }
}

fn components(path: &[u8]) -> impl DoubleEndedIterator<Item = Vec<u8>> + '_ {
    path.split(|&b| b == b'/').map(|c| c.to_vec())
}

/// What `openat(..., O_NOFOLLOW)` answers when the last component is a
/// symlink: ELOOP (Linux, POSIX), ENOTDIR (with O_DIRECTORY), EMLINK (FreeBSD).
fn may_be_symlink(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR | libc::EMLINK))
}

fn cstring(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

fn openat(dir: RawFd, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let name = cstring(name)?;
    loop {
        // SAFETY: `name` is a NUL-terminated string; the returned fd is owned by us.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: a fresh descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn readlinkat(dir: RawFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let name = cstring(name)?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `buf` is writable for `buf.len()` bytes.
        let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(buf);
        }
        if buf.len() >= 1 << 20 {
            return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
        }
        buf.resize(buf.len() * 4, 0);
    }
}

#[cfg(target_os = "linux")]
fn openat2_beneath(dir: RawFd, rel: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain integers; all-zero is its documented default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = FILE_FLAGS as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
    loop {
        // SAFETY: valid pointers to a NUL-terminated path and an open_how of the size passed.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir,
                rel.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if r >= 0 {
            // SAFETY: a fresh descriptor nobody else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// An open failure, as this item's error. `ENXIO` is what opening a socket
/// (or a device with no driver) answers: not a regular file either.
fn opening_error(shown: String, e: io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENXIO) {
        return Error::NotRegular { path: shown, what: "socket or device" };
    }
    Error::io(shown, e)
}

/// The file type bits (`S_IFMT` of `st_mode`) and the size of an open file, by `fstat`: one
/// syscall that looks nothing up (std's `File::metadata` is `statx` with an empty path, which
/// costs a path lookup; a probe of a million files pays for it a million times).
fn fstat(file: &File) -> io::Result<(libc::mode_t, u64)> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid open fd and a stat buffer of the right type.
    if unsafe { libc::fstat(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.st_mode & libc::S_IFMT, st.st_size as u64))
}

/// `path` opened read-only without blocking (a FIFO with no writer opens at
/// once), never as the controlling terminal.
fn open_nonblocking(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)
}

/// What a file type (`S_IFMT` bits) is called in messages.
fn kind_name(mode: libc::mode_t) -> &'static str {
    match mode {
        libc::S_IFDIR => "directory",
        libc::S_IFIFO => "FIFO",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "unknown file type",
    }
}

/// Open a local file that must be a regular file (a part file, a footer to
/// read), not beneath any root: without blocking, then `fstat`, so a FIFO,
/// socket, device or directory of that name is [`Error::NotRegular`] before a
/// byte is read, never a hang. Returns the file and its metadata.
pub fn open_regular(path: &Path) -> Result<(File, std::fs::Metadata)> {
    let shown = || path.display().to_string();
    let file = open_nonblocking(path).map_err(|e| opening_error(shown(), e))?;
    let meta = file.metadata().map_err(|e| Error::io(shown(), e))?;
    if !meta.is_file() {
        return Err(Error::NotRegular { path: shown(), what: kind_name(meta.mode() as libc::mode_t & libc::S_IFMT) });
    }
    Ok((file, meta))
}

/// An opened regular image file and what was known of it at open time.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    /// Size when opened (reads stop there).
    pub size: u64,
    /// How messages name it.
    pub shown: String,
}

/// What [`open_image`] refuses by size.
#[derive(Debug, Clone, Copy)]
pub struct FileLimit(pub u64);

/// Open an image file: beneath `root` when given (`path` relative to it),
/// else `path` as it is; then refuse anything but a regular file, and a file
/// over `limit` bytes, before reading a byte.
pub fn open_image(root: Option<&Root>, path: &Path, limit: FileLimit) -> Result<Opened> {
    let (file, shown) = match root {
        Some(root) => (root.open_beneath(path)?, root.shown(path)),
        None => {
            let shown = path.display().to_string();
            (open_nonblocking(path).map_err(|e| opening_error(shown.clone(), e))?, shown)
        }
    };
    let (mode, size) = fstat(&file).map_err(|e| Error::io(&shown, e))?;
    if mode != libc::S_IFREG {
        return Err(Error::NotRegular { path: shown, what: kind_name(mode) });
    }
    if size > limit.0 {
        return Err(Error::image(shown, ImageFailure::FileTooLarge { size, limit: limit.0 }));
    }
    Ok(Opened { file, size, shown })
}

impl Opened {
    /// The whole file, read up to its size at open time: a file that has grown
    /// since is an error (it is being written), never an unbounded read.
    pub fn read_all(&mut self) -> Result<Vec<u8>> {
        use std::io::Seek;
        self.file.rewind().map_err(|e| Error::io(&self.shown, e))?;
        let cap = self.size.saturating_add(1);
        let mut bytes = Vec::new();
        bytes.try_reserve_exact(cap as usize).map_err(|_| Error::OutOfMemory {
            what: format!("reading '{}'", self.shown),
            bytes: cap as u128,
            available: crate::pool::machine_memory(),
        })?;
        (&mut self.file).take(cap).read_to_end(&mut bytes).map_err(|e| Error::io(&self.shown, e))?;
        if bytes.len() as u64 > self.size {
            return Err(Error::io(
                &self.shown,
                io::Error::other(format!(
                    "the file grew while it was read (it was {} bytes when opened); is it still being written?",
                    self.size
                )),
            ));
        }
        Ok(bytes)
    }

    /// Fill `buf` with the file's bytes from `offset` on, stopping at the
    /// size seen at open time (or at end of file, should it have shrunk);
    /// returns how many bytes were read. One `pread` when the kernel hands
    /// over all that was asked (the usual case), more only after a short
    /// read: a probe of a million files pays for every syscall, and
    /// `read_to_end` makes a second one just to see end of file. The file
    /// position does not move.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        use std::os::unix::fs::FileExt;
        let left = self.size.saturating_sub(offset);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..want], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(&self.shown, e)),
            }
        }
        Ok(got)
    }

    /// Extend `bytes`, the file's first `bytes.len()` bytes, to its first
    /// `len` bytes (fewer at the end of the file, never past its size at
    /// open time), with [`Opened::read_at`].
    pub fn read_more(&self, bytes: &mut Vec<u8>, len: usize) -> Result<()> {
        let have = bytes.len();
        let len = len.min(usize::try_from(self.size).unwrap_or(usize::MAX));
        if len <= have {
            return Ok(());
        }
        bytes.resize(len, 0);
        let got = self.read_at(&mut bytes[have..], have as u64)?;
        bytes.truncate(have + got);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Tree {
        base: PathBuf,
        root: PathBuf,
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }

    /// base/root/{a.jpg, sub/b.jpg, in_link -> sub/b.jpg, abs_in -> <root>/a.jpg,
    /// up_in -> ../a.jpg (in sub), out_link -> ../outside.jpg, abs_out -> <base>/outside.jpg,
    /// dir_link -> sub, esc_dir -> .., fifo.jpg, dir.jpg/, zero.jpg -> /dev/zero, loop1 <-> loop2}
    fn tree(tag: &str) -> Tree {
        let base = std::env::temp_dir().join(format!("hpd-safe-open-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(root.join("dir.jpg")).unwrap();
        std::fs::write(root.join("a.jpg"), b"A").unwrap();
        std::fs::write(root.join("sub/b.jpg"), b"B").unwrap();
        std::fs::write(base.join("outside.jpg"), b"OUT").unwrap();
        symlink("sub/b.jpg", root.join("in_link")).unwrap();
        symlink(root.join("a.jpg"), root.join("abs_in")).unwrap();
        symlink("../a.jpg", root.join("sub/up_in")).unwrap();
        symlink("../outside.jpg", root.join("out_link")).unwrap();
        symlink(base.join("outside.jpg"), root.join("abs_out")).unwrap();
        symlink("sub", root.join("dir_link")).unwrap();
        symlink("..", root.join("esc_dir")).unwrap();
        symlink("/dev/zero", root.join("zero.jpg")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let fifo = CString::new(root.join("fifo.jpg").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        Tree { base, root }
    }

    fn read(root: &Root, rel: &str) -> Result<Vec<u8>> {
        open_image(Some(root), Path::new(rel), FileLimit(1 << 20))?.read_all()
    }

    fn unsafe_message(r: Result<Vec<u8>>) -> String {
        match r {
            Err(Error::UnsafePath { message, .. }) => message,
            other => panic!("expected an unsafe-path refusal, got {other:?}"),
        }
    }

    fn check_cases(resolve: Resolve) {
        let t = tree(&format!("{resolve:?}"));
        let root = Root::open(&t.root).unwrap().with_resolve(resolve);
        assert_eq!(read(&root, "a.jpg").unwrap(), b"A");
        assert_eq!(read(&root, "./sub//b.jpg").unwrap(), b"B");
        assert_eq!(read(&root, "in_link").unwrap(), b"B", "a symlink staying inside is followed");
        assert_eq!(read(&root, "abs_in").unwrap(), b"A", "an absolute symlink into the root is followed");
        assert_eq!(read(&root, "sub/up_in").unwrap(), b"A", "'..' inside a symlink target, staying inside");
        assert_eq!(read(&root, "dir_link/b.jpg").unwrap(), b"B");
        let m = unsafe_message(read(&root, "out_link"));
        assert!(m.contains("outside the data root") && m.contains("outside.jpg"), "{m}");
        let m = unsafe_message(read(&root, "abs_out"));
        assert!(m.contains("outside the data root"), "{m}");
        let m = unsafe_message(read(&root, "esc_dir/outside.jpg"));
        assert!(m.contains("outside the data root"), "{m}");
        let m = unsafe_message(read(&root, "zero.jpg"));
        assert!(m.contains("outside the data root"), "{m}");
        assert_eq!(
            unsafe_message(read(&root, "../outside.jpg")),
            "path '../outside.jpg' contains '..' and could escape the data root"
        );
        assert_eq!(
            unsafe_message(read(&root, "/etc/passwd")),
            "path '/etc/passwd' is absolute; metadata paths must be relative to the data root"
        );
        match read(&root, "fifo.jpg") {
            Err(Error::NotRegular { what: "FIFO", .. }) => {}
            other => panic!("FIFO: {other:?}"),
        }
        match read(&root, "dir.jpg") {
            Err(Error::NotRegular { what: "directory", .. }) => {}
            other => panic!("directory: {other:?}"),
        }
        match read(&root, "sub/.") {
            Err(Error::NotRegular { what: "directory", .. }) => {}
            other => panic!("directory: {other:?}"),
        }
        match read(&root, "missing.jpg") {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("missing: {other:?}"),
        }
        match read(&root, "a.jpg/x") {
            Err(Error::Io { .. }) => {}
            other => panic!("file as a directory: {other:?}"),
        }
        match read(&root, "loop1") {
            Err(Error::Io { source, .. }) => assert_eq!(source.raw_os_error(), Some(libc::ELOOP)),
            other => panic!("loop: {other:?}"),
        }
        // Swapped after a first successful open: refused at the next open.
        std::fs::remove_file(t.root.join("a.jpg")).unwrap();
        symlink(t.base.join("outside.jpg"), t.root.join("a.jpg")).unwrap();
        assert!(unsafe_message(read(&root, "a.jpg")).contains("outside the data root"));
    }

    #[test]
    fn beneath_the_root_with_openat2_where_available() {
        check_cases(Resolve::Auto);
    }

    #[test]
    fn beneath_the_root_with_the_openat_walk() {
        check_cases(Resolve::Walk);
    }

    #[test]
    fn relative_paths_are_checked_like_the_python_side() {
        let check = |s: &str| check_relative(OsStr::new(s));
        assert!(check("a/b.jpg").is_ok());
        assert!(check("a..b/c..jpg").is_ok());
        assert_eq!(check("").unwrap_err(), "path '' is empty or contains a NUL byte");
        assert_eq!(check("a\0b").unwrap_err(), "path 'a\\x00b' is empty or contains a NUL byte");
        assert!(check("é:x.jpg").unwrap_err().contains("is absolute"), "a colon as the second character");
        assert!(check("éa:x.jpg").is_ok() && check("ab:c.jpg").is_ok());
        for abs in ["/x.jpg", "\\x.jpg", "C:x.jpg", "c:\\x.jpg", "\\\\server\\share\\x"] {
            assert!(check(abs).unwrap_err().contains("is absolute"), "{abs}");
        }
        for up in ["..", "a/../b", "a\\..\\b", "a/..", "../x"] {
            assert!(check(up).unwrap_err().contains("contains '..'"), "{up}");
        }
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a\\b\n"), "'a\\\\b\\n'");
    }

    #[test]
    fn plain_opens_refuse_non_regular_files_and_big_files() {
        let t = tree("plain");
        let open = |p: &Path, limit| open_image(None, p, FileLimit(limit));
        assert!(matches!(open(&t.root.join("fifo.jpg"), 100), Err(Error::NotRegular { what: "FIFO", .. })));
        assert!(matches!(open(&t.root.join("zero.jpg"), 100), Err(Error::NotRegular { what: "character device", .. })));
        assert!(matches!(open(&t.root, 100), Err(Error::NotRegular { what: "directory", .. })));
        let err = open(&t.base.join("outside.jpg"), 2).unwrap_err();
        assert!(err.to_string().contains("file is 3 bytes, over the limit of 2 bytes"), "{err}");
        let mut ok = open(&t.base.join("outside.jpg"), 3).unwrap();
        assert_eq!(ok.read_all().unwrap(), b"OUT");
        // A file that grows after it was opened is cut at its size and reported.
        std::fs::write(t.base.join("outside.jpg"), b"OUTGROWN").unwrap();
        let err = ok.read_all().unwrap_err();
        assert!(err.to_string().contains("grew while it was read"), "{err}");
    }

    #[test]
    fn files_are_shown_as_path_join_writes_them() {
        let t = tree("shown");
        let bases = [t.root.clone(), PathBuf::from(format!("{}/", t.root.display())), PathBuf::from("/")];
        for base in bases {
            let root = Root::open(&base).unwrap();
            for rel in ["a.jpg", "sub/b.jpg", "./x", "é/ü.jpg", "a//b"] {
                assert_eq!(root.shown(Path::new(rel)), base.join(rel).display().to_string(), "{base:?} {rel}");
            }
            let odd = OsStr::from_bytes(b"bad\xffname.jpg");
            assert_eq!(root.shown(Path::new(odd)), base.join(odd).display().to_string());
        }
    }

    #[test]
    fn a_missing_root_names_itself() {
        let err = Root::open(Path::new("/nonexistent-hpd-root")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-hpd-root"), "{err}");
    }
}
