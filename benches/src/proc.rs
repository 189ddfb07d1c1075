//! Forked helper processes for the cross-process workloads (the peer side of a ping-pong, a
//! producer, an echo server), killed with their parent and reaped on drop.
//!
//! Fork, die-with-parent, kill and waitpid come from the workspace's one OS layer
//! ([`ipc_shm::os`]). What stays on `libc` here has no form in that layer because it is the thing
//! measured or is benchmark-only: the process-shared pthread mutex (the peer our `Lock` is
//! compared with) and its anonymous `MAP_SHARED` page, `PR_SET_DUMPABLE` for a crash without a
//! core file, and procspawn's unsafe opt-in. That is why this module allows `unsafe`.
#![allow(unsafe_code)]

use std::os::fd::BorrowedFd;

use ipc_shm::os::{self, Signal};

/// How a child ended: the OS layer's [`os::ExitStatus`] (`Code(i32)` or `Signal(i32)`).
pub use ipc_shm::os::ExitStatus as Status;

/// The exit code of a child whose `body` panicked (the code of a panicking test).
pub const PANICKED: i32 = 101;

/// A forked child, killed (SIGKILL) and reaped when dropped unless [`Child::wait`] ran.
#[derive(Debug)]
pub struct Child {
    pid: u32,
    reaped: bool,
}

/// Forks a child that runs `body` and leaves with exit code 0 (or [`PANICKED`] if `body`
/// panics), through the OS layer's [`os::fork_then`]: the child dies with this process
/// (`PR_SET_PDEATHSIG`) and leaves with `_exit`, so it never outlives the parent nor runs its
/// atexit handlers.
///
/// The parent may have threads (the runner's pools): the child must only use what it
/// inherited (shared memory, descriptors), allocate (glibc's allocator is fork-safe) and make
/// system calls; it must not take locks that another thread of the parent could have held.
pub fn fork(body: impl FnOnce()) -> Child {
    fork_closing(&[], body)
}

/// [`fork`], closing the child's copies of `close_in_child` first: descriptors the parent keeps
/// using, whose end-of-file the child must see when the parent closes them. `body` must not use
/// them.
pub fn fork_closing(close_in_child: &[BorrowedFd<'_>], body: impl FnOnce()) -> Child {
    let pid = os::fork_then(close_in_child, || {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(()) => 0,
            Err(_) => PANICKED,
        }
    })
    .unwrap_or_else(|e| panic!("fork failed: {e}"));
    Child { pid, reaped: false }
}

impl Child {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the child to end (`Code(-1)` if it cannot be waited for).
    pub fn wait(mut self) -> Status {
        self.reaped = true;
        os::reap(self.pid).unwrap_or(Status::Code(-1))
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(self) {
        drop(self)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            // Our own unreaped child: its pid cannot have been reused. Errors (already gone)
            // leave nothing to do.
            let _ = os::kill(self.pid, Signal::SIGKILL);
            let _ = os::reap(self.pid);
        }
    }
}

/// Makes this process non-dumpable, then aborts: a crash that leaves no core dump behind.
pub fn abort_without_core() -> ! {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's dumpable flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0) };
    std::process::abort()
}

/// Round-trip helpers around a process-shared pthread mutex, for the lock hand-off peer.
#[derive(Debug)]
pub struct PthreadMutex(*mut libc::pthread_mutex_t);

// SAFETY: a process-shared pthread mutex may be locked and unlocked from any thread.
unsafe impl Send for PthreadMutex {}
// SAFETY: as above: every method takes `&self` and the mutex does its own synchronisation.
unsafe impl Sync for PthreadMutex {}

impl PthreadMutex {
    /// Initialises a `PTHREAD_PROCESS_SHARED` mutex at `ptr`.
    ///
    /// # Safety
    ///
    /// `ptr` must be valid, aligned for `pthread_mutex_t`, in memory shared with the other
    /// processes (MAP_SHARED), not yet in use, and must outlive every use of the returned value.
    pub unsafe fn init(ptr: *mut libc::pthread_mutex_t) -> PthreadMutex {
        // SAFETY: `attr` is initialised by pthread_mutexattr_init before use and destroyed
        // after; `ptr` is valid, aligned and unused (the caller's contract).
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutex_init(ptr, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
        }
        PthreadMutex(ptr)
    }

    /// Locks.
    pub fn lock(&self) {
        // SAFETY: an initialised mutex that outlives `self` (the `init` contract).
        unsafe { libc::pthread_mutex_lock(self.0) };
    }

    /// Unlocks (the caller holds it).
    pub fn unlock(&self) {
        // SAFETY: an initialised mutex held by this thread.
        unsafe { libc::pthread_mutex_unlock(self.0) };
    }
}

/// An anonymous `MAP_SHARED` mapping of `len` bytes (zeroed), shared with children forked
/// after it is made; unmapped on drop.
#[derive(Debug)]
pub struct SharedAnon {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory; what is stored in it decides its own thread safety.
unsafe impl Send for SharedAnon {}
// SAFETY: as above: `SharedAnon` hands out only a raw pointer.
unsafe impl Sync for SharedAnon {}

impl SharedAnon {
    /// Maps `len` bytes.
    pub fn new(len: usize) -> SharedAnon {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's choosing: it aliases
        // nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(ptr != libc::MAP_FAILED, "mmap failed");
        SharedAnon {
            ptr: ptr.cast(),
            len,
        }
    }

    /// The start of the mapping (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for SharedAnon {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, which nothing uses any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A process-shared pthread mutex and a turn word in one shared page, for the lock hand-off
/// peer (children forked after `new` share both).
#[derive(Debug)]
pub struct PthreadTurn {
    mutex: PthreadMutex,
    mem: SharedAnon,
}

impl PthreadTurn {
    /// A fresh mutex (at offset 0) and turn word (at offset 64, zero) in a new shared page.
    pub fn new() -> PthreadTurn {
        let mem = SharedAnon::new(4096);
        // SAFETY: the mapping is page aligned (so aligned for pthread_mutex_t), MAP_SHARED,
        // unused, and `mem` is kept in the same struct as the mutex, so it outlives it.
        let mutex = unsafe { PthreadMutex::init(mem.as_ptr().cast()) };
        PthreadTurn { mutex, mem }
    }

    /// The mutex.
    pub fn mutex(&self) -> &PthreadMutex {
        &self.mutex
    }

    /// The turn word.
    pub fn turn(&self) -> &std::sync::atomic::AtomicU32 {
        // SAFETY: offset 64 is past the mutex (40 bytes), 4-byte aligned, inside the page that
        // `self.mem` keeps mapped for the returned lifetime, zero-initialised (a valid
        // AtomicU32), and only ever accessed atomically.
        unsafe {
            &*self
                .mem
                .as_ptr()
                .add(64)
                .cast::<std::sync::atomic::AtomicU32>()
        }
    }
}

impl Default for PthreadTurn {
    fn default() -> Self {
        PthreadTurn::new()
    }
}

/// Tells procspawn (built without its `safe-shared-libraries` feature, to keep the build light)
/// that the functions it spawns live in the executable itself.
pub(crate) fn allow_procspawn() {
    // SAFETY: every function this crate hands to procspawn is a task of `workloads::tasks`,
    // statically linked into the executable; none comes from a shared library.
    unsafe { procspawn::assert_spawn_is_safe() };
}

/// The CPUs the calling thread may run on (`sched_getaffinity`), to be restored after
/// [`pin_to_cpu`]; `None` if it cannot be read.
pub fn cpu_mask() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data (a bit array): all-zero is a valid, empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the size is that of `set`, which the kernel fills.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    (r == 0).then_some(set)
}

/// Restores a mask from [`cpu_mask`] on the calling thread (errors ignored: best effort).
pub fn set_cpu_mask(set: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) };
}

/// Pins the calling thread to CPU `cpu` (the floor's same-core and cross-core placements);
/// false if the CPU does not exist or may not be used.
pub fn pin_to_cpu(cpu: usize) -> bool {
    if cpu >= libc::CPU_SETSIZE as usize {
        return false;
    }
    // SAFETY: all-zero is a valid, empty cpu_set_t.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked above), so CPU_SET stays inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) == 0 }
}

/// The floor of a copying queue between two processes: a ring of fixed slots in shared memory,
/// one process copying each message into the next free slot, the other copying it out of it
/// into a buffer of its own. No framing, encoding, allocation or sleeping: only the two copies,
/// the cache lines they move between the CPUs, and two spinning counters. A queue that copies
/// in and out (as every process queue of owned messages does) cannot beat it.
#[derive(Debug)]
pub struct CopyRing {
    mem: SharedAnon,
    /// Bytes a message takes: the message size rounded up to a cache line.
    slot: usize,
    slots: usize,
    size: usize,
}

/// Where the slots start: the counters have the first page, on cache lines of their own.
const COPY_RING_DATA: usize = 4096;

impl CopyRing {
    /// A ring of `ring_bytes` (at least two slots) for messages of `size` bytes, shared with
    /// children forked after this call.
    pub fn new(size: usize, ring_bytes: usize) -> CopyRing {
        let slot = size.max(1).next_multiple_of(64);
        let slots = (ring_bytes / slot).max(2);
        CopyRing {
            mem: SharedAnon::new(COPY_RING_DATA + slot * slots),
            slot,
            slots,
            size,
        }
    }

    /// Messages written so far (offset 0), and read so far (offset 128).
    fn counter(&self, read: bool) -> &std::sync::atomic::AtomicU64 {
        let at = if read { 128 } else { 0 };
        // SAFETY: offsets 0 and 128 are 8-byte aligned and inside the mapping's first page,
        // which `self.mem` keeps mapped for the returned lifetime; it was zeroed (a valid
        // AtomicU64) and the counters are only ever accessed atomically.
        unsafe {
            &*self
                .mem
                .as_ptr()
                .add(at)
                .cast::<std::sync::atomic::AtomicU64>()
        }
    }

    fn slot_ptr(&self, n: u64) -> *mut u8 {
        let index = (n % self.slots as u64) as usize;
        // SAFETY: `index < slots`, so the slot lies inside the mapping (COPY_RING_DATA + slot *
        // slots bytes).
        unsafe { self.mem.as_ptr().add(COPY_RING_DATA + index * self.slot) }
    }

    /// In the producing process: copies `src` (`size` bytes) into the next `n` slots, each
    /// once it is free.
    pub fn produce(&self, src: &[u8], n: u64) {
        use std::sync::atomic::Ordering;
        assert_eq!(src.len(), self.size);
        let (written, read) = (self.counter(false), self.counter(true));
        let first = written.load(Ordering::Relaxed);
        for i in first..first + n {
            while read.load(Ordering::Acquire) + self.slots as u64 <= i {
                std::hint::spin_loop();
            }
            // SAFETY: `src` is valid for `size` bytes; the slot holds `size` bytes of the
            // mapping, which only this process writes until the counter below publishes it (the
            // consumer has read the slot's previous message: `read` is past it), and the two
            // never overlap (the mapping is not `src`'s memory).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.slot_ptr(i), self.size) };
            written.store(i + 1, Ordering::Release);
        }
    }

    /// In the consuming process: copies the next `n` messages out into `dst` (`size` bytes),
    /// each once it is there.
    pub fn consume(&self, dst: &mut [u8], n: u64) {
        use std::sync::atomic::Ordering;
        assert_eq!(dst.len(), self.size);
        let (written, read) = (self.counter(false), self.counter(true));
        let first = read.load(Ordering::Relaxed);
        for i in first..first + n {
            while written.load(Ordering::Acquire) <= i {
                std::hint::spin_loop();
            }
            // SAFETY: the slot holds `size` bytes of the mapping, published by the producer's
            // Release store that the Acquire load above saw, and not written again until the
            // counter below frees it; `dst` is valid for `size` bytes and is not in the mapping.
            unsafe { std::ptr::copy_nonoverlapping(self.slot_ptr(i), dst.as_mut_ptr(), self.size) };
            read.store(i + 1, Ordering::Release);
        }
    }
}
