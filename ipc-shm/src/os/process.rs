//! Processes: ids (this one's cached pid is in [`identity`](super::identity)), fork, die-with-parent, pidfds, signals, reaping, and the `/proc` figures the
//! pool reads. The one fork/pidfd/wait helper that the pool and the test harness share.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use rustix::process::{Pid, WaitOptions};

pub use nix::sys::signal::Signal;

/// How a reaped process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitStatus {
    /// It exited with this status code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

fn to_pid(pid: u32) -> io::Result<Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The CPU the calling thread runs on right now (`getcpu`, through the vDSO: a few
/// nanoseconds). It may have moved by the time the caller looks at the answer: a hint for
/// spinning decisions, never for correctness.
pub fn current_cpu() -> u32 {
    u32::try_from(rustix::thread::sched_getcpu()).unwrap_or(u32::MAX)
}

/// This process's effective user id (the owner its new files get, and the one its opens check
/// against).
pub fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The parent's id (0 if the parent is outside this pid namespace).
pub fn ppid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get().unsigned_abs())
}

/// Whether a process with this id exists (it may be a zombie; good enough for misuse checks).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = to_pid(pid) else {
        return false;
    };
    !matches!(
        rustix::process::test_kill_process(pid),
        Err(rustix::io::Errno::SRCH)
    )
}

/// The exit code of a forked child whose parent died before the child could ask to die with it.
pub const PARENT_GONE: i32 = 111;

/// Forks. In the child, the descriptors `close_in_child` are closed, the child asks for SIGKILL
/// when its parent dies (and exits at once with [`PARENT_GONE`] if the parent already died
/// between the fork and that request), then `child` runs and the process exits with the code it
/// returns (via [`exit_now`]: no atexit handlers, no std buffer flush); it never returns to the
/// caller. In the parent, returns the child's pid.
///
/// `child` must not use the descriptors of `close_in_child` (they are closed, and their numbers
/// may be reused by anything `child` opens). In a multi-threaded parent only the forking thread
/// survives in the child and locks held by other threads stay held forever: `child` must then
/// take no lock another thread may hold (the allocator's included, if it uses one).
pub fn fork_then(
    close_in_child: &[BorrowedFd<'_>],
    child: impl FnOnce() -> i32,
) -> io::Result<u32> {
    let parent = super::pid();
    // SAFETY: fork(2)'s contract (nix): in the child of a multi-threaded process only
    // async-signal-safe work is sound unless no other thread holds a lock the child needs. The
    // child below makes raw system calls (close, prctl, getppid) and runs `child`, whose
    // restriction is this function's documented contract, then leaves with _exit so that no
    // atexit handler or std buffer flush can deadlock on a lock another thread held.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(child.as_raw().unsigned_abs()),
        nix::unistd::ForkResult::Child => {
            for fd in close_in_child {
                // SAFETY: rustix's `close` requires that nothing uses the number afterwards. In
                // this child the owners of these descriptors are copies of the parent's that
                // never run again: the child runs only `child` (which must not use them, as
                // documented) and leaves with _exit, so no owner's drop closes them again.
                unsafe { rustix::io::close(fd.as_raw_fd()) };
            }
            let code = if die_with_parent(parent).is_ok() {
                child()
            } else {
                PARENT_GONE
            };
            exit_now(code)
        }
    }
}

/// Asks the kernel for SIGKILL when the parent `parent` dies, and checks it has not already.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the whole process.
pub fn die_with_parent(parent: u32) -> io::Result<()> {
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if ppid() != parent {
        return Err(io::Error::other("the parent died before the child started"));
    }
    Ok(())
}

/// Ends the process at once: no atexit handlers, no flushing of std buffers (the way out of a
/// forked child of a multi-threaded process).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit(2) has no preconditions; it ends the process and never returns.
    unsafe { libc::_exit(code) }
}

/// Registers `handler` to run in the child of every later `fork` of this process
/// (`pthread_atfork` with a child handler only).
///
/// # Safety
///
/// `handler` runs in the child of a possibly multi-threaded fork, before anything else there:
/// it must be async-signal-safe (no allocation, no lock; an atomic store or add is fine).
pub unsafe fn at_fork_in_child(handler: extern "C" fn()) -> io::Result<()> {
    // SAFETY: `pthread_atfork` only stores the three handler pointers; `None` is allowed for the
    // prepare and parent handlers, and the child handler is a valid `extern "C" fn()` with
    // 'static lifetime whose async-signal-safety is this function's caller's contract.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(handler)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Makes the child that `cmd` starts die with SIGKILL when the thread that spawns it exits.
pub fn command_dies_with_parent(cmd: &mut Command) {
    // SAFETY: `pre_exec`'s contract: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed. It makes one prctl(2) call, allocates nothing and
    // takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            Ok(rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ))?)
        });
    }
}

/// A pidfd for `pid`: readable once the process exits; works for non-children too.
pub fn pidfd(pid: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        to_pid(pid)?,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// `PIDFD_THREAD` (Linux 6.9): the pidfd names one thread, not a thread group (it is `O_EXCL`).
const PIDFD_THREAD: u32 = 0o200;

/// A pidfd for the thread `tid` (of any process): readable once that thread exits, even if its
/// process lives on. Needs Linux 6.9 (`PIDFD_THREAD`): older kernels fail with `EINVAL`. A
/// thread that is gone fails with [`ESRCH`] (see [`io::Error::raw_os_error`]).
pub fn pidfd_thread(tid: u32) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_open(
        to_pid(tid)?,
        rustix::process::PidfdFlags::from_bits_retain(PIDFD_THREAD),
    )?)
}

/// The `errno` of "no such process" (what [`pidfd`] and [`pidfd_thread`] give for one that is
/// gone).
pub const ESRCH: i32 = rustix::io::Errno::SRCH.raw_os_error();

/// Waits until the process behind `pidfd` exits or `timeout` passes; `true` if it exited.
/// An interrupted poll is resumed with the time left.
pub fn wait_exit(pidfd: impl AsFd, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    // A timeout past the clock's range (`Duration::MAX`) waits without a deadline.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let ts = deadline.map(|deadline| {
            let left = deadline.saturating_duration_since(Instant::now());
            Timespec {
                tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(left.subsec_nanos()),
            }
        });
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, ts.as_ref()) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Sends `signal` to `pid`; a process that is already gone is not an error.
pub fn kill(pid: u32, signal: Signal) -> io::Result<()> {
    let sig = rustix::process::Signal::from_named_raw(signal as i32)
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    match rustix::process::kill_process(to_pid(pid)?, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The name of signal number `signal` (`"SIGKILL"`), if it has one.
pub fn signal_name(signal: i32) -> Option<&'static str> {
    Signal::try_from(signal).ok().map(Signal::as_str)
}

fn status(st: rustix::process::WaitStatus) -> Option<ExitStatus> {
    if let Some(code) = st.exit_status() {
        Some(ExitStatus::Code(code))
    } else {
        st.terminating_signal().map(ExitStatus::Signal)
    }
}

/// Reaps the child `pid`, blocking until it has ended (EINTR is retried).
pub fn reap(pid: u32) -> io::Result<ExitStatus> {
    let p = to_pid(pid)?;
    loop {
        match rustix::process::waitpid(Some(p), WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                if let Some(s) = status(st) {
                    return Ok(s);
                }
            }
            Ok(None) | Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reaps the child `pid` if it has ended; `None` if it still runs (or the wait was interrupted).
pub fn try_reap(pid: u32) -> io::Result<Option<ExitStatus>> {
    match rustix::process::waitpid(Some(to_pid(pid)?), WaitOptions::NOHANG) {
        Ok(Some((_, st))) => Ok(status(st)),
        Ok(None) | Err(rustix::io::Errno::INTR) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The identity of this process's executable: device, inode, size and modification time.
pub fn exe_identity() -> io::Result<(u64, u64, u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/exe")?;
    Ok((m.dev(), m.ino(), m.size(), m.mtime()))
}

/// The calling thread's name (its `comm`, at most 15 bytes): for a single-threaded process, the
/// name `/proc/<pid>/comm` and `ps` show.
pub fn thread_name() -> io::Result<std::ffi::CString> {
    Ok(rustix::thread::name()?)
}

/// Names the calling thread (`prctl(PR_SET_NAME)`; the kernel keeps the first 15 bytes).
pub fn set_thread_name(name: &std::ffi::CStr) -> io::Result<()> {
    Ok(rustix::thread::set_name(name)?)
}

/// Resident set size in bytes and CPU time (user + system) of `pid`, from `/proc/<pid>/stat`.
pub fn usage(pid: u32) -> Option<(u64, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the ")", field 3 (state) is index 0; utime is field 14 and stime 15; rss is 24.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let rss_pages: u64 = fields.get(21)?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second().max(1);
    let cpu = Duration::from_secs_f64((utime + stime) as f64 / ticks as f64);
    Some((rss_pages * page_size(), cpu))
}

/// Resident set size of `pid` in bytes (from `/proc/<pid>/statm`, cheaper than `stat`).
pub fn rss(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The size of a memory page in bytes.
pub fn page_size() -> u64 {
    rustix::param::page_size() as u64
}

/// The CPUs this process may use: affinity and cgroup quota respected (std does both).
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Lets this process keep up to `bytes` of freed heap instead of handing it back to the kernel
/// at once, and serve allocations below `bytes` from that heap rather than from fresh mappings
/// (glibc's `M_TRIM_THRESHOLD` and `M_MMAP_THRESHOLD`). Returns whether the allocator took it
/// (`false` on a C library other than glibc, or for a value it refuses).
///
/// Why: with glibc's defaults a process that allocates and frees a few MiB per operation (a
/// pool worker decoding 1 MiB arguments, task after task) gives the memory back after each
/// operation and then takes every page fault again on the next one, which costs more than
/// copying the bytes. A worker process can afford to keep a few tens of MiB.
///
/// It only ever raises the thresholds: a call with no more than an earlier successful call of
/// this process asked for returns `true` and changes nothing (so the crates that call it cannot
/// undo each other's choice).
pub fn keep_freed_heap(bytes: usize) -> bool {
    static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    if bytes <= KEPT.load(std::sync::atomic::Ordering::Relaxed) {
        return true;
    }
    let taken = set_freed_heap(bytes);
    if taken {
        KEPT.fetch_max(bytes, std::sync::atomic::Ordering::Relaxed);
    }
    taken
}

/// `keep_freed_heap`'s two `mallopt` calls.
fn set_freed_heap(bytes: usize) -> bool {
    #[cfg(target_env = "gnu")]
    {
        let Ok(value) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: `mallopt` has no memory-safety preconditions: it takes a parameter number
        // and a value, and returns 0 (refused) or 1 (taken). Both parameters are documented
        // glibc tunables; a value the allocator does not accept is refused, not acted on.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, value) };
        // SAFETY: as above; the mmap threshold is capped by glibc (32 MiB on 64-bit), a larger
        // value is refused and the default dynamic threshold stays.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, value.min(32 << 20)) };
        trim == 1 && mmap == 1
    }
    #[cfg(not(target_env = "gnu"))]
    {
        let _ = bytes;
        false
    }
}

/// The size of a transparent huge page (a PMD's reach): 2 MiB on x86-64.
const HUGE_PAGE: usize = 2 << 20;

/// Backs this process's private anonymous memory (its heap and anonymous mappings) with
/// transparent huge pages where whole 2 MiB stretches of it lie, synchronously
/// (`madvise(MADV_COLLAPSE)`, Linux 6.1; independent of the system's THP setting unless that
/// is `never`). Returns how many bytes were collapsed; stretches the kernel refuses (no huge
/// page free, THP disabled, an older kernel) are skipped. Nothing a program can observe changes
/// but its memory's backing; the resident size may grow by the holes filled.
///
/// Why: `fork` copies one page-table entry (and takes one page reference) per resident 4 KiB
/// page and one per huge page. A process that forks often and holds tens of MiB (the pool's
/// fork server after it loaded the program's debug information: 66 MiB, 1.5-2.3 ms per fork
/// on the 2-vCPU VM) forks several times faster once that memory is in huge pages. A child's
/// first write to a shared huge page splits the mapping and copies one 4 KiB page, as before.
///
/// It takes tens of milliseconds for tens of MiB: call it when idle.
pub fn collapse_to_huge_pages() -> io::Result<usize> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut collapsed = 0;
    for (start, end) in private_anonymous(&maps) {
        let first = start.next_multiple_of(HUGE_PAGE);
        let last = end - end % HUGE_PAGE;
        if last <= first {
            continue;
        }
        // SAFETY: `madvise` with `MADV_COLLAPSE` has no memory-safety preconditions: it only
        // changes which physical pages back the range (the contents stay exactly as they are,
        // every other thread may keep using them meanwhile), and a range that is not (or no
        // longer) mapped, or that the kernel cannot collapse, fails with an error and changes
        // nothing. The range lies inside one mapping /proc/self/maps listed just before and is
        // aligned to the huge-page size the call requires.
        let rc = unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_COLLAPSE,
            )
        };
        if rc == 0 {
            collapsed += last - first;
        }
    }
    Ok(collapsed)
}

/// The private, writable, anonymous mappings (and the heap) listed in a `/proc/<pid>/maps`
/// text, as `(start, end)` addresses; lines it cannot parse are skipped.
fn private_anonymous(maps: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    maps.lines().filter_map(|line| {
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let perms = fields.next()?;
        // offset, device, inode, then the path (absent for anonymous memory).
        let path = fields.nth(3);
        if !perms.starts_with("rw") || !perms.ends_with('p') {
            return None;
        }
        if !matches!(path, None | Some("[heap]")) {
            return None;
        }
        let (start, end) = range.split_once('-')?;
        let start = usize::from_str_radix(start, 16).ok()?;
        let end = usize::from_str_radix(end, 16).ok()?;
        (start < end).then_some((start, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_anonymous_lists_the_heap_and_anonymous_writable_mappings() {
        let maps = "\
55d0c0000000-55d0c0200000 r--p 00000000 fe:00 123 /usr/bin/prog
55d0c1000000-55d0c5000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
7f0000400000-7f0000600000 rw-s 00000000 00:01 77 /memfd:seg (deleted)
7f0000600000-7f0000800000 rw-p 00001000 fe:00 123 /usr/bin/prog
7f0000800000-7f0000a00000 ---p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
garbage line
";
        let got: Vec<_> = private_anonymous(maps).collect();
        assert_eq!(
            got,
            vec![
                (0x55d0_c100_0000, 0x55d0_c500_0000),
                (0x7f00_0000_0000, 0x7f00_0040_0000),
            ]
        );
    }

    #[test]
    fn collapsing_keeps_every_byte() {
        let mut data: Vec<u64> = (0..(8 << 20) / 8).collect();
        data[12345] = 7;
        let collapsed = collapse_to_huge_pages().expect("/proc/self/maps is readable");
        // THP may be off on this machine: nothing collapsed is a valid answer, a changed byte
        // is not.
        assert_eq!(collapsed % HUGE_PAGE, 0);
        assert_eq!(data[12345], 7);
        assert!(
            data.iter()
                .enumerate()
                .all(|(i, &v)| i == 12345 || v == i as u64)
        );
    }
}
