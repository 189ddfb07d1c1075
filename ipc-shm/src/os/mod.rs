//! The workspace's OS layer: every system call the crates make outside the futex wrapper, in one
//! place, so another OS can be added by replacing this module.
//!
//! Linux today. Each function turns `errno` into [`std::io::Error`] and knows nothing of headers,
//! pipes or pools; the crates above call these instead of an OS crate of their own.
//!
//! | file | what |
//! |---|---|
//! | [`shm`] | POSIX shared-memory names, memfd, seals, size |
//! | [`fd`] | descriptors: ownership of inherited numbers, close-on-exec in a child, dup |
//! | [`identity`] | this process's id, cached, and the fork generation (a `pthread_atfork` child handler) that every identity cache checks against |
//! | [`process`] | ids, fork, die-with-parent, pidfd (process or thread), signals, reaping, `/proc` figures, how much freed heap the allocator keeps, huge pages for a process that forks often |
//! | [`poll`](mod@poll) | waiting for readability: `poll`, and an [`Epoll`] set other threads add to |
//! | [`socket`] | socketpairs, readiness bytes, `SCM_RIGHTS` |
//! | [`spawn`](mod@spawn) | starting a program with `posix_spawn` (no copy of this process), descriptors kept open in the child only |
//! | [`signal`] | a `signalfd` for `SIGCHLD` (the fork server's reaper) |
//! | [`fatal`] | the early death notice: a crash stores its signal and hangs up before the teardown |
//!
//! The OS crates, one per purpose: `rustix` wherever it has a safe form; `nix` for `fork(2)`,
//! `signalfd(2)` and `posix_spawn(3)`, which rustix does not offer (and for the [`Signal`] type, which the test
//! harness's public API already uses, and `sigaction`); `libc` for `_exit(2)`, glibc's `mallopt(3)`, `madvise(MADV_COLLAPSE)` (an advice rustix does not name) and, inside the
//! crash handler, `shutdown`, `signal` and `raise`.
//!
//! Safe functions return typed `io::Result`s; the few `unsafe fn`s carry `# Safety` sections.
//! Only [`fd`], [`identity`], [`process`] and [`fatal`] allow `unsafe` (borrowing raw numbers, `pre_exec`,
//! `fork`, `_exit`, `pthread_atfork`, `sigaction`, `mallopt`, `madvise` and the crash handler); the other files are safe code
//! over rustix and nix.

pub mod fatal;
pub mod fd;
pub mod identity;
pub mod poll;
pub mod process;
pub mod shm;
pub mod signal;
pub mod socket;
pub mod spawn;

pub use fatal::*;
pub use fd::*;
pub use identity::*;
pub use poll::*;
pub use process::*;
pub use shm::*;
pub use signal::*;
pub use socket::*;
pub use spawn::*;
