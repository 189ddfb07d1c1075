//! Objects another user planted or may write, and truncation: what opening refuses, what it lets
//! through on purpose, and what sealing guarantees.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_shm::{
    Offset, OpenOptions, PAYLOAD_OFFSET, Segment, SegmentBuilder, SegmentOpenError, TypeTag,
};
use ipc_tests::{ShmName, fork_child};

const TAG: TypeTag = TypeTag::from_name("ipc-shm-tests/trust/v1");
const WATCHDOG: Duration = Duration::from_secs(30);
/// The uid of `nobody`.
const NOBODY: u32 = 65534;

fn dev_shm(name: &str) -> String {
    format!("/dev/shm/{name}")
}

fn is_root() -> bool {
    ipc_shm::os::euid() == 0
}

/// Gives the object `name` to `nobody` (what a planted object looks like to us). Only root can.
fn chown_to_nobody(name: &str) {
    std::os::unix::fs::chown(dev_shm(name), Some(NOBODY), Some(NOBODY)).unwrap();
}

fn chmod(name: &str, mode: u32) {
    fs::set_permissions(dev_shm(name), fs::Permissions::from_mode(mode)).unwrap();
}

fn named(name: &ShmName) -> Segment {
    SegmentBuilder::new(64)
        .name(name)
        .type_tag(TAG)
        .create()
        .unwrap()
}

#[test]
fn an_object_owned_by_another_user_is_refused_by_name() {
    if !is_root() {
        eprintln!(
            "SKIPPED an_object_owned_by_another_user_is_refused_by_name: \
             giving an object to `nobody` needs root"
        );
        return;
    }
    let name = ShmName::new("planted");
    let seg = named(&name);
    chown_to_nobody(&name);
    let err = Segment::open(&name, TAG).unwrap_err();
    assert!(
        matches!(
            err,
            SegmentOpenError::ForeignOwner {
                uid: NOBODY,
                expected: 0
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        OpenOptions::new(TAG).open(&name),
        Err(SegmentOpenError::ForeignOwner { .. })
    ));
    // Deliberate sharing between users: an explicit opt-in.
    let opened = OpenOptions::new(TAG)
        .allow_other_owners(true)
        .open(&name)
        .unwrap();
    seg.get(Offset::<AtomicU64>::from_raw(0))
        .unwrap()
        .store(7, Ordering::Relaxed);
    assert_eq!(
        opened
            .get(Offset::<AtomicU64>::from_raw(0))
            .unwrap()
            .load(Ordering::Relaxed),
        7
    );
    // Owned by another user *and* group-writable: both opt-ins are needed.
    chmod(&name, 0o660);
    assert!(matches!(
        OpenOptions::new(TAG).allow_other_owners(true).open(&name),
        Err(SegmentOpenError::TooPermissive { mode: 0o660 })
    ));
    OpenOptions::new(TAG)
        .allow_other_owners(true)
        .allow_group_write(true)
        .open(&name)
        .unwrap();
}

#[test]
fn a_planted_empty_object_is_refused_at_once_not_after_the_init_wait() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_planted_empty_object_is_refused_at_once_not_after_the_init_wait: \
             giving an object to `nobody` needs root"
        );
        return;
    }
    let name = ShmName::new("planted-empty");
    fs::File::create_new(dev_shm(&name)).unwrap();
    chown_to_nobody(&name);
    let start = Instant::now();
    let r = OpenOptions::new(TAG)
        .init_timeout(Duration::from_secs(20))
        .open(&name);
    assert!(
        matches!(r, Err(SegmentOpenError::ForeignOwner { .. })),
        "{r:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_descriptor_is_not_checked_for_its_owner() {
    if !is_root() {
        eprintln!(
            "SKIPPED a_descriptor_is_not_checked_for_its_owner: \
             giving an object to `nobody` needs root"
        );
        return;
    }
    // The process that hands over a descriptor is the trust decision, not the object's owner.
    let name = ShmName::new("planted-fd");
    let seg = named(&name);
    chown_to_nobody(&name);
    chmod(&name, 0o666);
    let fd = seg.fd().try_clone_to_owned().unwrap();
    let opened = Segment::from_fd(fd, TAG).unwrap();
    assert_eq!(opened.len(), 64);
}

#[test]
fn a_world_writable_object_is_refused_unless_opted_in() {
    let name = ShmName::new("world");
    let _seg = SegmentBuilder::new(64)
        .name(&name)
        .type_tag(TAG)
        .mode(0o666)
        .create()
        .unwrap();
    assert!(matches!(
        Segment::open(&name, TAG),
        Err(SegmentOpenError::TooPermissive { mode: 0o666 })
    ));
    // Group write alone does not cover others.
    assert!(matches!(
        OpenOptions::new(TAG).allow_group_write(true).open(&name),
        Err(SegmentOpenError::TooPermissive { mode: 0o666 })
    ));
    OpenOptions::new(TAG)
        .allow_world_write(true)
        .open(&name)
        .unwrap();
}

#[test]
fn a_group_writable_object_is_refused_unless_opted_in() {
    let name = ShmName::new("group");
    let _seg = named(&name);
    // Widened after creation (by its owner, or by root).
    chmod(&name, 0o620);
    assert!(matches!(
        Segment::open(&name, TAG),
        Err(SegmentOpenError::TooPermissive { mode: 0o620 })
    ));
    OpenOptions::new(TAG)
        .allow_group_write(true)
        .open(&name)
        .unwrap();
    // World write implies group write.
    OpenOptions::new(TAG)
        .allow_world_write(true)
        .open(&name)
        .unwrap();
    // Others-writable only.
    chmod(&name, 0o602);
    assert!(matches!(
        OpenOptions::new(TAG).allow_group_write(true).open(&name),
        Err(SegmentOpenError::TooPermissive { mode: 0o602 })
    ));
}

#[test]
fn a_wider_mode_that_nobody_else_can_write_opens_by_default() {
    // Readable by others is not a planting risk: only writers can change what we read.
    let name = ShmName::new("readable");
    let _seg = SegmentBuilder::new(64)
        .name(&name)
        .type_tag(TAG)
        .mode(0o644)
        .create()
        .unwrap();
    assert_eq!(Segment::open(&name, TAG).unwrap().len(), 64);
}

#[test]
fn a_memfd_segment_cannot_be_truncated_by_anyone() {
    let seg = SegmentBuilder::new(8192).type_tag(TAG).create().unwrap();
    assert!(seg.is_size_sealed());
    // Through a second descriptor, as a peer that was passed the fd would hold it.
    let file = fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    let err = file.set_len(PAYLOAD_OFFSET as u64).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err:?}");
    let err = file.set_len(1 << 20).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err:?}");
    seg.check_len().unwrap();
    // And a forked child (a peer with the same mapping) cannot either.
    let child = fork_child(WATCHDOG, || {
        let f = fs::File::from(seg.fd().try_clone_to_owned().unwrap());
        match f.set_len(0) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => 0,
            _ => 1,
        }
    });
    child.wait().assert_success();
}

#[test]
fn a_named_segment_truncated_after_open_is_reported_by_check_len_and_faults_on_access() {
    let name = ShmName::new("trunc-late");
    let seg = SegmentBuilder::new(8192)
        .name(&name)
        .type_tag(TAG)
        .create()
        .unwrap();
    assert!(!seg.is_size_sealed(), "named objects cannot be sealed");
    seg.check_len().unwrap();
    let far = Offset::<AtomicU64>::from_raw(8000);
    // In a child: the truncation is visible to every process that maps the object.
    let child = fork_child(WATCHDOG, || {
        fs::OpenOptions::new()
            .write(true)
            .open(dev_shm(&name))
            .unwrap()
            .set_len(PAYLOAD_OFFSET as u64)
            .unwrap();
        match seg.check_len() {
            Err(SegmentOpenError::SizeMismatch { .. }) => {}
            _ => return 1,
        }
        // This is the documented hazard: the page is gone, and touching it is SIGBUS.
        seg.get(far).unwrap().load(Ordering::Relaxed);
        2
    });
    let outcome = child.wait();
    assert_eq!(outcome.signal(), Some(libc::SIGBUS), "{outcome:?}");
    assert!(matches!(
        seg.check_len(),
        Err(SegmentOpenError::SizeMismatch { .. })
    ));
}

#[test]
fn random_owners_and_modes_follow_the_rule() {
    if !is_root() {
        eprintln!(
            "SKIPPED random_owners_and_modes_follow_the_rule: \
             giving an object to `nobody` needs root"
        );
        return;
    }
    // A fixed xorshift sequence: every combination of owner and write bits, reproducibly.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let name = ShmName::new("rule");
        let _seg = named(&name);
        let uid = if next() % 2 == 0 { 0 } else { NOBODY };
        let mode = (next() % 0o1000) as u32 | 0o600;
        std::os::unix::fs::chown(dev_shm(&name), Some(uid), None).unwrap();
        chmod(&name, mode);
        let r = OpenOptions::new(TAG).open(&name);
        match (uid, mode & 0o022) {
            (0, 0) => assert!(r.is_ok(), "uid {uid} mode {mode:o}: {r:?}"),
            (0, _) => assert!(
                matches!(r, Err(SegmentOpenError::TooPermissive { mode: m }) if m == mode),
                "uid {uid} mode {mode:o}: {r:?}"
            ),
            _ => assert!(
                matches!(r, Err(SegmentOpenError::ForeignOwner { uid: NOBODY, .. })),
                "uid {uid} mode {mode:o}: {r:?}"
            ),
        }
    }
}
