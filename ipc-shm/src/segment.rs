//! Creating, opening and validating segments.
//!
//! Creation: `shm_open(O_CREAT|O_EXCL, mode)` (or `memfd_create`) → `ftruncate` (zero-filled) →
//! map → write the header → run the caller's initialiser → publish (release store of `state`).
//!
//! Opening: `shm_open` (or an inherited fd) → `fstat` (an object smaller than the header is an
//! error, not a SIGBUS; a zero-sized one may be a creator between `shm_open` and `ftruncate`, so
//! it is waited for) → map → wait, for a bounded time, for `state == READY` (failing at once on a
//! wrong magic) → check magic, version, recorded size against the real size, and the type tag →
//! only then hand out the payload. By name, the `fstat` also checks the owner and mode (a planted
//! object is refused before it is mapped).
//!
//! What opening cannot do: stop a named object from being truncated *after* it was mapped. Only
//! memfds can be size-sealed; see [`Segment`]'s "Truncation" section.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use crate::error::{LayoutError, NameError, SegmentCreateError, SegmentOpenError};
use crate::header::{
    LAYOUT_VERSION, MAGIC, PAYLOAD_OFFSET, STATE_ABANDONED, STATE_EMPTY, STATE_READY,
    SegmentHeader, TypeTag,
};
use crate::inherit;
use crate::layout::{Offset, SliceOffset};
use crate::map::Mapping;
use crate::os;
use crate::shm_safe::ShmSafe;

/// The longest segment name this system accepts (without the leading `/`).
pub fn max_name_len() -> usize {
    os::MAX_NAME_LEN
}

/// The largest payload a segment may have: what fits in a mapping with the header.
const MAX_PAYLOAD: usize = isize::MAX as usize - PAYLOAD_OFFSET;

/// How long an opener waits, by default, for the creator to publish the segment.
const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(2);

fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.contains('/') {
        return Err(NameError::ContainsSlash { name: name.into() });
    }
    if name.contains('\0') {
        return Err(NameError::ContainsNul { name: name.into() });
    }
    // A single path component can only leave /dev/shm as `.` or `..`.
    if name == "." || name == ".." {
        return Err(NameError::Reserved { name: name.into() });
    }
    if name.len() > os::MAX_NAME_LEN {
        return Err(NameError::TooLong {
            len: name.len(),
            max: os::MAX_NAME_LEN,
        });
    }
    Ok(())
}

/// Builds a new [`Segment`].
///
/// ```
/// use ipc_shm::{SegmentBuilder, TypeTag};
///
/// // Anonymous (memfd): no name to leak; share it by fork or by passing the fd.
/// let anon = SegmentBuilder::new(4096).type_tag(TypeTag::from_name("demo")).create()?;
/// assert_eq!(anon.len(), 4096);
/// assert!(anon.name().is_none());
///
/// // Named: other processes open it with `Segment::open`; unlinked when `named` drops.
/// let name = format!("ipc-shm-doc-{}", std::process::id());
/// let named = SegmentBuilder::new(100).name(&name).create()?;
/// assert_eq!(named.name(), Some(name.as_str()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `create` is called"]
pub struct SegmentBuilder {
    len: usize,
    name: Option<String>,
    mode: u32,
    unlink_on_drop: bool,
    tag: TypeTag,
}

impl SegmentBuilder {
    /// A builder for a segment whose payload is `len` bytes (the header comes on top).
    pub fn new(len: usize) -> Self {
        SegmentBuilder {
            len,
            name: None,
            mode: 0o600,
            unlink_on_drop: true,
            tag: TypeTag::UNTYPED,
        }
    }

    /// Gives the segment a name, so unrelated processes can open it. Without one the segment is
    /// an anonymous memfd.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// The permission bits of a named segment (default `0o600`: only this user). Set exactly,
    /// whatever the umask.
    ///
    /// A mode that lets the group or others write (`0o660`, `0o666`) is refused by openers,
    /// this user's included, unless they opt in with [`OpenOptions::allow_group_write`] or
    /// [`OpenOptions::allow_world_write`]: from the mode alone an opener cannot tell that nobody
    /// else wrote the object. Read bits for others (`0o644`) need no opt-in.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode & 0o777;
        self
    }

    /// Whether dropping the creating [`Segment`] removes the name (default `true`). With `false`
    /// the segment persists until [`Segment::unlink`] is called or the machine restarts.
    pub fn unlink_on_drop(mut self, unlink: bool) -> Self {
        self.unlink_on_drop = unlink;
        self
    }

    /// The tag that openers must expect (default [`TypeTag::UNTYPED`]).
    pub fn type_tag(mut self, tag: TypeTag) -> Self {
        self.tag = tag;
        self
    }

    /// Creates and publishes a zero-filled segment.
    pub fn create(self) -> Result<Segment, SegmentCreateError> {
        self.create_with(|_| Ok::<(), std::convert::Infallible>(()))
    }

    /// Creates a segment, lets `init` fill the payload, and only then publishes it, so no opener
    /// ever sees it half-initialised. If `init` fails the segment is marked abandoned (openers fail
    /// fast) and removed.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use ipc_shm::{Offset, SegmentBuilder};
    ///
    /// let answer = Offset::<AtomicU64>::from_raw(0);
    /// let seg = SegmentBuilder::new(8).create_with(|seg| {
    ///     seg.get(answer)?.store(42, Ordering::Relaxed);
    ///     Ok::<_, ipc_shm::LayoutError>(())
    /// })?;
    /// assert_eq!(seg.get(answer)?.load(Ordering::Relaxed), 42);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn create_with<E: std::fmt::Display>(
        self,
        init: impl FnOnce(&Segment) -> Result<(), E>,
    ) -> Result<Segment, SegmentCreateError> {
        if self.len == 0 {
            return Err(SegmentCreateError::ZeroSize);
        }
        if self.len > MAX_PAYLOAD {
            return Err(SegmentCreateError::TooLarge {
                requested: self.len,
                max: MAX_PAYLOAD,
            });
        }
        let total = self.len + PAYLOAD_OFFSET;
        let fd = match &self.name {
            Some(name) => {
                check_name(name)?;
                os::shm_create(name, self.mode).map_err(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => {
                        SegmentCreateError::AlreadyExists { name: name.clone() }
                    }
                    io::ErrorKind::PermissionDenied => {
                        SegmentCreateError::PermissionDenied { name: name.clone() }
                    }
                    _ => SegmentCreateError::Os {
                        op: "shm_open",
                        source: e,
                    },
                })?
            }
            None => os::memfd("ipc-shm").map_err(|e| SegmentCreateError::Os {
                op: "memfd_create",
                source: e,
            })?,
        };
        // From here on a named object exists: remove it again on any failure.
        let cleanup = NameGuard(self.name.as_deref());
        let size_refused = |source| SegmentCreateError::SizeRefused {
            size: total,
            source,
        };
        os::set_len(fd.as_fd(), total as u64).map_err(size_refused)?;
        if self.name.is_none() {
            os::seal_size(fd.as_fd()).map_err(|e| SegmentCreateError::Os {
                op: "fcntl(F_ADD_SEALS)",
                source: e,
            })?;
        }
        let map = Mapping::new(fd.as_fd(), total).map_err(size_refused)?;
        let pid = os::pid();
        map.header().write(total as u64, self.tag, pid);
        let mut segment = Segment {
            map,
            fd,
            name: self.name.clone(),
            unlink_on_drop: false,
            owner_pid: pid,
        };
        if let Err(e) = init(&segment) {
            segment.map.header().abandon();
            return Err(SegmentCreateError::InitFailed {
                reason: e.to_string(),
            });
        }
        segment.map.header().publish();
        std::mem::forget(cleanup);
        segment.unlink_on_drop = self.unlink_on_drop && self.name.is_some();
        Ok(segment)
    }
}

/// Removes a freshly created name if creation fails part-way.
struct NameGuard<'a>(Option<&'a str>);

impl Drop for NameGuard<'_> {
    fn drop(&mut self) {
        if let Some(name) = self.0 {
            let _ = os::shm_remove(name);
        }
    }
}

/// How to open an existing segment.
///
/// ```no_run
/// use std::time::Duration;
/// use ipc_shm::{OpenOptions, TypeTag};
///
/// let seg = OpenOptions::new(TypeTag::from_name("my-app/state/v1"))
///     .init_timeout(Duration::from_millis(500))
///     .min_len(4096)
///     .open("my-app-state")?;
/// # Ok::<(), ipc_shm::SegmentOpenError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "options do nothing until `open` or `from_fd` is called"]
pub struct OpenOptions {
    tag: TypeTag,
    init_timeout: Duration,
    min_len: usize,
    unlink_on_drop: bool,
    allow_other_owners: bool,
    allow_group_write: bool,
    allow_world_write: bool,
}

impl OpenOptions {
    /// Options that accept only segments tagged `tag`.
    pub fn new(tag: TypeTag) -> Self {
        OpenOptions {
            tag,
            init_timeout: DEFAULT_INIT_TIMEOUT,
            min_len: 0,
            unlink_on_drop: false,
            allow_other_owners: false,
            allow_group_write: false,
            allow_world_write: false,
        }
    }

    /// How long to wait for a creator that has not published the segment yet (default 2 s).
    pub fn init_timeout(mut self, timeout: Duration) -> Self {
        self.init_timeout = timeout;
        self
    }

    /// Fail with [`SegmentOpenError::PayloadTooSmall`] unless the payload has at least `len` bytes.
    pub fn min_len(mut self, len: usize) -> Self {
        self.min_len = len;
        self
    }

    /// Whether dropping the opened segment removes its name (default `false`: the creator owns it).
    pub fn unlink_on_drop(mut self, unlink: bool) -> Self {
        self.unlink_on_drop = unlink;
        self
    }

    /// Accept a named object owned by another user (default `false`:
    /// [`SegmentOpenError::ForeignOwner`]).
    ///
    /// `/dev/shm` is writable by everyone, so any local user can create a name before your
    /// creator does and fill it with a valid-looking header and hostile contents; it then owns
    /// the object and can keep writing it (or truncate it, see [`Segment`]) while you use it.
    /// Turn this on only for deliberate sharing between users, together with
    /// [`allow_group_write`](Self::allow_group_write) for a group-writable object, and treat
    /// every byte as written by the other user.
    pub fn allow_other_owners(mut self, allow: bool) -> Self {
        self.allow_other_owners = allow;
        self
    }

    /// Accept a named object that its group may write (mode `g+w`, e.g. `0o660`; default `false`:
    /// [`SegmentOpenError::TooPermissive`]). Every member of the group can then write, truncate
    /// or replace the contents under you. Applies to your own objects too: the mode, not the
    /// owner, says who else may have written it.
    pub fn allow_group_write(mut self, allow: bool) -> Self {
        self.allow_group_write = allow;
        self
    }

    /// Accept a named object that anyone may write (mode `o+w` and/or `g+w`, e.g. `0o666`;
    /// default `false`: [`SegmentOpenError::TooPermissive`]). Every local user can then write,
    /// truncate or replace the contents under you. Implies
    /// [`allow_group_write`](Self::allow_group_write).
    pub fn allow_world_write(mut self, allow: bool) -> Self {
        self.allow_world_write = allow;
        self
    }

    /// Refuses a named object another user owns or may write, unless the caller opted in.
    fn check_owner(&self, stat: &os::ObjectStat) -> Result<(), SegmentOpenError> {
        let expected = os::euid();
        if stat.uid != expected && !self.allow_other_owners {
            return Err(SegmentOpenError::ForeignOwner {
                uid: stat.uid,
                expected,
            });
        }
        let group_write = stat.mode & 0o020 != 0;
        let world_write = stat.mode & 0o002 != 0;
        let allowed_group = self.allow_group_write || self.allow_world_write;
        if (group_write && !allowed_group) || (world_write && !self.allow_world_write) {
            return Err(SegmentOpenError::TooPermissive {
                mode: stat.mode & 0o777,
            });
        }
        Ok(())
    }

    /// Opens the segment called `name`.
    ///
    /// Besides the header checks, the object must be owned by this process's effective uid and
    /// writable by no one else (no `g+w`, no `o+w`), unless [`allow_other_owners`],
    /// [`allow_group_write`] or [`allow_world_write`] say otherwise. This is checked on the
    /// `fstat` done before anything is mapped, so a planted object is refused before it is read.
    ///
    /// [`allow_other_owners`]: Self::allow_other_owners
    /// [`allow_group_write`]: Self::allow_group_write
    /// [`allow_world_write`]: Self::allow_world_write
    pub fn open(&self, name: &str) -> Result<Segment, SegmentOpenError> {
        check_name(name)?;
        let fd = os::shm_open_existing(name).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SegmentOpenError::NotFound { name: name.into() },
            io::ErrorKind::PermissionDenied => {
                SegmentOpenError::PermissionDenied { name: name.into() }
            }
            _ => SegmentOpenError::Os {
                op: "shm_open",
                source: e,
            },
        })?;
        self.validate(fd, Some(name.to_owned()))
    }

    /// Opens the segment behind a descriptor (inherited across `fork` or `exec`, or received
    /// over a socket).
    ///
    /// The owner and mode are **not** checked here: a descriptor is not picked up from a shared
    /// directory but handed to you by a process you chose to trust (your parent, or a peer you
    /// accepted on a socket), and a memfd's mode is always `0o777` with no name to reach it by.
    /// If the sender is not trusted, its object's owner proves nothing (it created it); what
    /// protects you then is the header checks, and [`Segment::is_size_sealed`], which tells
    /// whether the sender can still truncate the object under your mapping.
    pub fn from_fd(&self, fd: OwnedFd) -> Result<Segment, SegmentOpenError> {
        self.validate(fd, None)
    }

    /// Opens the segment whose descriptor this process inherited under the environment variable
    /// `key` (see [`Segment::pass_to_command`]).
    pub fn from_inherited(&self, key: &str) -> Result<Segment, SegmentOpenError> {
        let fd = inherit::take_inherited_fd(key)?;
        self.from_fd(fd)
    }

    fn validate(&self, fd: OwnedFd, name: Option<String>) -> Result<Segment, SegmentOpenError> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        let minimum = PAYLOAD_OFFSET as u64;
        let os_err = |op| move |source| SegmentOpenError::Os { op, source };
        // A zero-sized object may be a creator between shm_open and ftruncate: wait for it.
        let actual = loop {
            let stat = os::stat_of(fd.as_fd()).map_err(os_err("fstat"))?;
            // Opened by name: the object may have been planted by another user. Checked on every
            // fstat, so a planted empty object fails at once rather than after the wait. Only
            // the owner (or root) can change owner or mode later, so passing once is enough.
            if name.is_some() {
                self.check_owner(&stat)?;
            }
            let actual = stat.len;
            if actual != 0 || start.elapsed() >= self.init_timeout {
                break actual;
            }
            backoff.wait();
        };
        if actual < minimum {
            return Err(SegmentOpenError::TooSmall { actual, minimum });
        }
        let map_len = usize::try_from(actual)
            .map_err(|_| SegmentOpenError::SizeMismatch { header: 0, actual })?;
        // Map only the header first: a corrupted size field must not make us map garbage.
        let probe = Mapping::new(fd.as_fd(), PAYLOAD_OFFSET).map_err(os_err("mmap"))?;
        loop {
            let header = probe.header();
            match header.state() {
                STATE_READY => break,
                STATE_ABANDONED => return Err(SegmentOpenError::Abandoned),
                state => {
                    let magic = header.raw_magic();
                    if magic != 0 && magic != MAGIC {
                        return Err(SegmentOpenError::BadMagic { found: magic });
                    }
                    if state != STATE_EMPTY && magic == MAGIC {
                        // Our magic with an unknown state word: corrupted.
                        return Err(SegmentOpenError::NotInitialized {
                            waited: start.elapsed(),
                        });
                    }
                }
            }
            if start.elapsed() >= self.init_timeout {
                return Err(SegmentOpenError::NotInitialized {
                    waited: start.elapsed(),
                });
            }
            backoff.wait();
        }
        let snap = probe.header().snapshot();
        if snap.magic != MAGIC {
            return Err(SegmentOpenError::BadMagic { found: snap.magic });
        }
        if snap.layout_version != LAYOUT_VERSION {
            return Err(SegmentOpenError::VersionMismatch {
                found: snap.layout_version,
                expected: LAYOUT_VERSION,
            });
        }
        if snap.total_size != actual || snap.payload_offset as usize != PAYLOAD_OFFSET {
            return Err(SegmentOpenError::SizeMismatch {
                header: snap.total_size,
                actual,
            });
        }
        if snap.type_tag != self.tag {
            return Err(SegmentOpenError::TagMismatch {
                found: snap.type_tag,
                expected: self.tag,
            });
        }
        let payload = map_len - PAYLOAD_OFFSET;
        if payload < self.min_len {
            return Err(SegmentOpenError::PayloadTooSmall {
                actual: payload,
                needed: self.min_len,
            });
        }
        drop(probe);
        let map = Mapping::new(fd.as_fd(), map_len).map_err(os_err("mmap"))?;
        Ok(Segment {
            map,
            fd,
            unlink_on_drop: self.unlink_on_drop && name.is_some(),
            name,
            owner_pid: os::pid(),
        })
    }
}

/// Spin briefly, then yield, then sleep with a growing interval (bounded waits only).
struct Backoff(u32);

impl Backoff {
    fn new() -> Self {
        Backoff(0)
    }

    fn wait(&mut self) {
        self.0 = self.0.saturating_add(1);
        match self.0 {
            0..=16 => std::hint::spin_loop(),
            17..=32 => std::thread::yield_now(),
            n => std::thread::sleep(Duration::from_micros(u64::from((n - 32).min(100)) * 10)),
        }
    }
}

/// A mapped shared-memory segment: a validated header followed by `len()` bytes of payload.
///
/// The payload starts at a 128-byte aligned address and is zero-filled at creation. Offsets
/// given to [`Segment::get`] and [`Segment::slice`] count from its start.
///
/// A `Segment` is `Send` and `Sync`; share it between threads with `Arc`. In a forked child
/// the copy is valid as it is (the mapping is `MAP_SHARED`), and it never removes the name
/// when dropped there: only the process that created (or opened) it does.
///
/// # Truncation
///
/// A **named** segment (POSIX shm) cannot be sealed: any process allowed to write the object can
/// `ftruncate` it after you mapped it, and your next access to a page past the new end raises
/// **SIGBUS**, which kills the process. Opening checks the real size against the header, so an
/// object truncated *before* the open is a typed error ([`SegmentOpenError::SizeMismatch`] or
/// [`SegmentOpenError::TooSmall`]); nothing in a library can soundly turn a later truncation into
/// an error (catching SIGBUS needs a process-wide signal handler). [`Segment::check_len`]
/// re-checks the size on demand and tells you that it happened, not that it will not.
///
/// An **anonymous** segment (memfd, [`SegmentBuilder`] without a name) is sealed against
/// shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before it is handed out:
/// `ftruncate` fails with `EPERM` in every process, so no peer can make you fault. Use memfd
/// segments for anything shared with a process you do not trust, and check
/// [`Segment::is_size_sealed`] on a descriptor such a process sends you.
#[derive(Debug)]
pub struct Segment {
    map: Mapping,
    fd: OwnedFd,
    name: Option<String>,
    unlink_on_drop: bool,
    owner_pid: u32,
}

impl Segment {
    /// Opens the segment called `name`, which must carry `tag`, with default [`OpenOptions`]:
    /// the object must belong to this process's effective uid and be writable by no one else
    /// (see [`OpenOptions::open`]).
    ///
    /// ```
    /// use ipc_shm::{Segment, SegmentBuilder, SegmentOpenError, TypeTag};
    ///
    /// let name = format!("ipc-shm-open-doc-{}", std::process::id());
    /// let tag = TypeTag::from_name("doc");
    /// let created = SegmentBuilder::new(64).name(&name).type_tag(tag).create()?;
    /// let opened = Segment::open(&name, tag)?;
    /// assert_eq!(opened.len(), 64);
    /// assert!(matches!(
    ///     Segment::open(&name, TypeTag::from_name("other")),
    ///     Err(SegmentOpenError::TagMismatch { .. })
    /// ));
    /// # drop(created);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open(name: &str, tag: TypeTag) -> Result<Segment, SegmentOpenError> {
        OpenOptions::new(tag).open(name)
    }

    /// Opens the segment behind `fd`, which must carry `tag`, with default [`OpenOptions`].
    pub fn from_fd(fd: OwnedFd, tag: TypeTag) -> Result<Segment, SegmentOpenError> {
        OpenOptions::new(tag).from_fd(fd)
    }

    /// Removes the name `name` (the memory lives on while any process maps it).
    pub fn unlink(name: &str) -> Result<(), SegmentOpenError> {
        check_name(name)?;
        os::shm_remove(name).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SegmentOpenError::NotFound { name: name.into() },
            io::ErrorKind::PermissionDenied => {
                SegmentOpenError::PermissionDenied { name: name.into() }
            }
            _ => SegmentOpenError::Os {
                op: "shm_unlink",
                source: e,
            },
        })
    }

    /// The start of the payload. Another process may write there at any time: build `&T` only
    /// through [`Segment::get`] and [`Segment::slice`], never `&mut`.
    #[inline]
    pub fn as_ptr(&self) -> *mut u8 {
        self.map.payload_ptr()
    }

    /// The payload's length in bytes (the header is not counted).
    #[inline]
    pub fn len(&self) -> usize {
        self.map.payload_len()
    }

    /// Faults in the payload's bytes `offset .. offset + len` for writing now, in one system
    /// call (`MADV_POPULATE_WRITE`, Linux 5.14 and later), instead of one page fault per page at
    /// first touch. Worth it before streaming through a large area: a forked child inherits the
    /// mapping but not its page-table entries, so it would otherwise take a fault on every page
    /// of it again. The bytes do not change.
    ///
    /// Fails with `InvalidInput` if the range is not inside the payload, and with the kernel's
    /// error (`EINVAL` before Linux 5.14, `ENOMEM` when memory is short) otherwise; nothing is
    /// lost then, pages are still faulted in when touched.
    ///
    /// ```
    /// let seg = ipc_shm::SegmentBuilder::new(1 << 20).create()?;
    /// let _ = seg.populate(0, seg.len()); // an old kernel refuses; that is harmless
    /// assert!(seg.populate(1, seg.len()).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn populate(&self, offset: usize, len: usize) -> std::io::Result<()> {
        self.map.populate(offset, len)
    }

    /// Always `false`: segments have at least one byte of payload.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name, or `None` for an anonymous (memfd) segment or one opened from a descriptor.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The descriptor of the shared-memory object (close-on-exec).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The validated header.
    pub fn header(&self) -> &SegmentHeader {
        self.map.header()
    }

    /// The type tag the segment was created with.
    pub fn type_tag(&self) -> TypeTag {
        self.header().type_tag()
    }

    /// Whether dropping this handle removes the name.
    pub fn unlinks_on_drop(&self) -> bool {
        self.unlink_on_drop
    }

    /// Changes whether dropping this handle removes the name.
    pub fn set_unlink_on_drop(&mut self, unlink: bool) {
        self.unlink_on_drop = unlink && self.name.is_some();
    }

    /// A reference to the `T` at `offset`, after checking bounds and alignment.
    pub fn get<T: ShmSafe>(&self, offset: Offset<T>) -> Result<&T, LayoutError> {
        self.map.get(offset.get())
    }

    /// A slice of the `T`s at `offset`, after checking bounds and alignment.
    pub fn slice<T: ShmSafe>(&self, offset: SliceOffset<T>) -> Result<&[T], LayoutError> {
        self.map.slice(offset.offset(), offset.len())
    }

    /// Checks that the object still has the size this handle mapped: a
    /// [`SegmentOpenError::SizeMismatch`] if another process truncated it since (accessing the
    /// lost pages would raise SIGBUS), or an [`SegmentOpenError::Os`] if `fstat` fails.
    ///
    /// One `fstat`. It reports a truncation that already happened; one that happens after it
    /// returns can still fault (see [`Segment`]'s "Truncation" section). Always `Ok` for a
    /// size-sealed (memfd) segment.
    pub fn check_len(&self) -> Result<(), SegmentOpenError> {
        let mapped = (self.map.payload_len() + PAYLOAD_OFFSET) as u64;
        let actual = os::len_of(self.fd.as_fd()).map_err(|source| SegmentOpenError::Os {
            op: "fstat",
            source,
        })?;
        if actual < mapped {
            return Err(SegmentOpenError::SizeMismatch {
                header: mapped,
                actual,
            });
        }
        Ok(())
    }

    /// Whether the object is sealed against shrinking, so that no process can truncate it under
    /// this mapping: `true` for segments this crate created as memfds, `false` for named segments
    /// (which cannot be sealed) and for a descriptor whose sender did not seal it.
    pub fn is_size_sealed(&self) -> bool {
        os::is_shrink_sealed(self.fd.as_fd())
    }

    /// A second, independent handle on the same memory (a duplicated descriptor and a second
    /// mapping). It never removes the name.
    pub fn try_clone(&self) -> io::Result<Segment> {
        let fd = os::dup(self.fd.as_fd())?;
        let map = Mapping::new(fd.as_fd(), self.map.payload_len() + PAYLOAD_OFFSET)?;
        Ok(Segment {
            map,
            fd,
            name: self.name.clone(),
            unlink_on_drop: false,
            owner_pid: os::pid(),
        })
    }

    /// Arranges for the child that `cmd` (a `Command` or an [`os::Spawn`](crate::os::Spawn))
    /// will start to inherit this segment's descriptor, named by the environment variable `key`; the child opens it with [`OpenOptions::from_inherited`].
    /// The descriptor stays close-on-exec in this process, so other children never see it.
    ///
    /// ```no_run
    /// use std::process::Command;
    /// use ipc_shm::{OpenOptions, SegmentBuilder, TypeTag};
    ///
    /// const TAG: TypeTag = TypeTag::from_name("my-app/shared/v1");
    /// // Parent:
    /// let seg = SegmentBuilder::new(4096).type_tag(TAG).create()?;
    /// let mut cmd = Command::new("/path/to/child");
    /// seg.pass_to_command(&mut cmd, "MY_APP_SEGMENT_FD")?;
    /// let status = cmd.status()?;
    /// // Child:
    /// let seg = OpenOptions::new(TAG).from_inherited("MY_APP_SEGMENT_FD")?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pass_to_command(
        &self,
        cmd: &mut (impl crate::ChildSetup + ?Sized),
        key: &str,
    ) -> io::Result<()> {
        inherit::pass_fd_to_command(cmd, self.fd.as_fd(), key)
    }
}

impl AsFd for Segment {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Segment {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.unlink_on_drop
            && self.owner_pid == os::pid()
            && let Some(name) = &self.name
        {
            let _ = os::shm_remove(name);
        }
    }
}
