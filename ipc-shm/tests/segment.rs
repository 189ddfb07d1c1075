//! Segments across real processes, and every kind of bad input.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ipc_shm::{
    InheritError, Layout, LayoutError, NameError, Offset, OpenOptions, Segment, SegmentBuilder,
    SegmentCreateError, SegmentOpenError, SliceOffset, TypeTag, max_name_len, take_inherited_fd,
};
use ipc_tests::{ShmName, child, child_entry, fork_child};

const TAG: TypeTag = TypeTag::from_name("ipc-shm-tests/v1");
const WATCHDOG: Duration = Duration::from_secs(30);
const COUNTER: Offset<AtomicU64> = Offset::from_raw(0);

fn dev_shm(name: &str) -> String {
    format!("/dev/shm/{name}")
}

#[test]
fn forked_child_writes_and_parent_reads() {
    let seg = SegmentBuilder::new(4096).type_tag(TAG).create().unwrap();
    let child = fork_child(WATCHDOG, || {
        seg.get(COUNTER).unwrap().store(0xfeed, Ordering::Release);
        0
    });
    child.wait().assert_success();
    assert_eq!(seg.get(COUNTER).unwrap().load(Ordering::Acquire), 0xfeed);
}

child_entry! {
    fn child_opens_by_name() {
        let name = std::env::var("SEG_NAME").unwrap();
        let seg = Segment::open(&name, TAG).unwrap();
        assert_eq!(seg.len(), 4096);
        seg.get(COUNTER).unwrap().fetch_add(1, Ordering::AcqRel);
    }

    fn child_opens_inherited_fd() {
        let seg = OpenOptions::new(TAG).from_inherited("SEG_FD").unwrap();
        assert!(seg.name().is_none());
        seg.get(COUNTER).unwrap().fetch_add(10, Ordering::AcqRel);
        // The number is claimed once.
        assert!(matches!(take_inherited_fd("SEG_FD"), Err(InheritError::AlreadyTaken { .. })));
    }

    fn child_checks_inherit_errors() {
        assert!(matches!(
            take_inherited_fd("BAD_FD"),
            Err(InheritError::Malformed { .. })
        ));
        assert!(matches!(
            take_inherited_fd("CLOSED_FD"),
            Err(InheritError::NotOpen { fd: 987, .. })
        ));
        assert!(matches!(
            take_inherited_fd("STDIN_FD"),
            Err(InheritError::NotOpen { fd: 0, .. })
        ));
    }

    fn child_checks_fd_not_inherited() {
        // A child started without pass_to_command must not see the parent's segment fd.
        let fd: i32 = std::env::var("PARENT_FD").unwrap().parse().unwrap();
        let path = format!("/proc/self/fd/{fd}");
        let target = std::fs::read_link(&path).map(|p| p.display().to_string());
        assert!(
            !target.as_deref().unwrap_or("").contains("memfd:ipc-shm"),
            "fd {fd} leaked into an unrelated child: {target:?}"
        );
    }
}

#[test]
fn exec_child_opens_by_name() {
    let name = ShmName::new("by-name");
    let seg = SegmentBuilder::new(4096)
        .name(&name)
        .type_tag(TAG)
        .create()
        .unwrap();
    child!(child_opens_by_name)
        .env("SEG_NAME", name.as_str())
        .watchdog(WATCHDOG)
        .run()
        .assert_success();
    assert_eq!(seg.get(COUNTER).unwrap().load(Ordering::Acquire), 1);
}

#[test]
fn exec_child_opens_inherited_fd_without_leaking_it() {
    let seg = SegmentBuilder::new(4096).type_tag(TAG).create().unwrap();
    let mut cmd = child!(child_opens_inherited_fd).watchdog(WATCHDOG);
    seg.pass_to_command(cmd.command_mut(), "SEG_FD").unwrap();
    cmd.run().assert_success();
    assert_eq!(seg.get(COUNTER).unwrap().load(Ordering::Acquire), 10);

    // Another child, not handed the descriptor, does not inherit it (it is close-on-exec).
    use std::os::fd::AsRawFd;
    child!(child_checks_fd_not_inherited)
        .env("PARENT_FD", seg.as_raw_fd().to_string())
        .watchdog(WATCHDOG)
        .run()
        .assert_success();
}

#[test]
fn bad_names_are_refused() {
    let make = |name: &str| SegmentBuilder::new(64).name(name).create().map(drop);
    assert!(matches!(
        make(""),
        Err(SegmentCreateError::InvalidName(NameError::Empty))
    ));
    assert!(matches!(
        make("a/b"),
        Err(SegmentCreateError::InvalidName(
            NameError::ContainsSlash { .. }
        ))
    ));
    assert!(matches!(
        make("a\0b"),
        Err(SegmentCreateError::InvalidName(
            NameError::ContainsNul { .. }
        ))
    ));
    let long = "x".repeat(max_name_len() + 1);
    assert!(matches!(
        make(&long),
        Err(SegmentCreateError::InvalidName(NameError::TooLong { .. }))
    ));
    assert!(matches!(
        Segment::open("", TAG),
        Err(SegmentOpenError::InvalidName(NameError::Empty))
    ));
    assert!(matches!(
        Segment::open(&long, TAG),
        Err(SegmentOpenError::InvalidName(NameError::TooLong { .. }))
    ));
    // The longest allowed name works.
    let mut longest = ShmName::new("long").as_str().to_owned();
    longest.push_str(&"y".repeat(max_name_len() - longest.len()));
    let guard = LongName(longest.clone());
    let seg = SegmentBuilder::new(64).name(&longest).create().unwrap();
    assert_eq!(seg.name(), Some(longest.as_str()));
    drop(seg);
    drop(guard);
}

#[test]
fn dot_names_are_invalid_not_an_os_error() {
    // `.` and `..` are the only single path components that resolve outside /dev/shm.
    for name in [".", ".."] {
        assert!(
            matches!(
                SegmentBuilder::new(64).name(name).create(),
                Err(SegmentCreateError::InvalidName(NameError::Reserved { name: ref n })) if n == name
            ),
            "create {name:?}"
        );
        assert!(
            matches!(
                Segment::open(name, TAG),
                Err(SegmentOpenError::InvalidName(NameError::Reserved { .. }))
            ),
            "open {name:?}"
        );
        assert!(
            matches!(
                Segment::unlink(name),
                Err(SegmentOpenError::InvalidName(NameError::Reserved { .. }))
            ),
            "unlink {name:?}"
        );
    }
    // Names that merely contain dots are ordinary names.
    for label in ["...", ".hidden", "a..b"] {
        let name = format!("{label}-{}", ShmName::new("dots").as_str());
        let guard = LongName(name.clone());
        let seg = SegmentBuilder::new(64).name(&name).create().unwrap();
        assert_eq!(seg.name(), Some(name.as_str()));
        drop(seg);
        drop(guard);
    }
}

/// Unlinks a name built by hand when the test ends, whatever happens.
struct LongName(String);
impl Drop for LongName {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

#[test]
fn bad_sizes_are_refused() {
    assert!(matches!(
        SegmentBuilder::new(0).create(),
        Err(SegmentCreateError::ZeroSize)
    ));
    assert!(matches!(
        SegmentBuilder::new(usize::MAX).create(),
        Err(SegmentCreateError::TooLarge { .. })
    ));
    // Within isize but far beyond what the system will map.
    let huge = isize::MAX as usize - 4096;
    assert!(matches!(
        SegmentBuilder::new(huge).create(),
        Err(SegmentCreateError::SizeRefused { .. })
    ));
    // A refused size leaves no name behind.
    let name = ShmName::new("huge");
    assert!(matches!(
        SegmentBuilder::new(huge).name(&name).create(),
        Err(SegmentCreateError::SizeRefused { .. })
    ));
    assert!(fs::metadata(dev_shm(&name)).is_err());
}

#[test]
fn create_existing_and_open_missing() {
    let name = ShmName::new("exists");
    let _seg = SegmentBuilder::new(64).name(&name).create().unwrap();
    assert!(matches!(
        SegmentBuilder::new(64).name(&name).create(),
        Err(SegmentCreateError::AlreadyExists { .. })
    ));
    let missing = ShmName::new("missing");
    assert!(matches!(
        Segment::open(&missing, TAG),
        Err(SegmentOpenError::NotFound { .. })
    ));
    assert!(matches!(
        Segment::unlink(&missing),
        Err(SegmentOpenError::NotFound { .. })
    ));
}

#[test]
fn permission_denied_for_another_user() {
    let name = ShmName::new("perm");
    let _seg = SegmentBuilder::new(64)
        .name(&name)
        .type_tag(TAG)
        .create()
        .unwrap();
    let is_root = fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    // Become another user in a forked child (root can do that; others already are "another
    // user" only if the segment were someone else's, which we cannot arrange unprivileged).
    if !is_root {
        eprintln!("skipping the other-user half: not running as root");
        return;
    }
    let name_for_child = name.as_str().to_owned();
    let child = fork_child(WATCHDOG, move || {
        if nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).is_err()
            || nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).is_err()
        {
            return 3;
        }
        match Segment::open(&name_for_child, TAG) {
            Err(SegmentOpenError::PermissionDenied { .. }) => 0,
            _ => 1,
        }
    });
    assert_eq!(child.wait().code(), Some(0));
}

#[test]
fn segments_are_created_0600_or_exactly_the_mode_asked() {
    let name = ShmName::new("mode");
    let _seg = SegmentBuilder::new(64).name(&name).create().unwrap();
    let mode = fs::metadata(dev_shm(&name)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let name2 = ShmName::new("mode2");
    let _seg2 = SegmentBuilder::new(64)
        .name(&name2)
        .mode(0o644)
        .create()
        .unwrap();
    let mode2 = fs::metadata(dev_shm(&name2)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode2, 0o644);
}

/// Writes `bytes` as a POSIX shm object called `name` (a foreign or corrupted segment), mode
/// `0o600` whatever the umask (a group- or world-writable one is refused before its bytes are
/// read, which is not what these tests are about).
fn write_object(name: &str, bytes: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(dev_shm(name))
        .unwrap();
    f.write_all(bytes).unwrap();
}

fn header_bytes(magic: u64, version: u32, state: &[u8; 4], total: u64, tag: u64) -> Vec<u8> {
    let mut h = vec![0u8; total as usize];
    h[0..8].copy_from_slice(&magic.to_le_bytes());
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[12..16].copy_from_slice(state);
    h[16..24].copy_from_slice(&total.to_le_bytes());
    h[24..32].copy_from_slice(&tag.to_le_bytes());
    h[32..36].copy_from_slice(&128u32.to_le_bytes());
    h
}

fn quick() -> OpenOptions {
    OpenOptions::new(TAG).init_timeout(Duration::from_millis(50))
}

#[test]
fn foreign_and_corrupted_objects_are_refused() {
    // Garbage.
    let garbage = ShmName::new("garbage");
    write_object(&garbage, &[0xAB; 4096]);
    assert!(matches!(
        quick().open(&garbage),
        Err(SegmentOpenError::BadMagic { found }) if found == 0xABAB_ABAB_ABAB_ABAB
    ));

    // Too small to hold a header (would SIGBUS if mapped and read blindly).
    let tiny = ShmName::new("tiny");
    write_object(&tiny, &[1, 2, 3]);
    assert!(matches!(
        quick().open(&tiny),
        Err(SegmentOpenError::TooSmall { actual: 3, .. })
    ));

    // Empty object that nobody ever sizes: waited for, then refused.
    let empty = ShmName::new("empty");
    write_object(&empty, &[]);
    assert!(matches!(
        quick().open(&empty),
        Err(SegmentOpenError::TooSmall { actual: 0, .. })
    ));

    // A header that is all zeros: never initialised.
    let zeros = ShmName::new("zeros");
    write_object(&zeros, &[0; 4096]);
    assert!(matches!(
        quick().open(&zeros),
        Err(SegmentOpenError::NotInitialized { .. })
    ));

    // Right magic, wrong version.
    let version = ShmName::new("version");
    write_object(
        &version,
        &header_bytes(ipc_shm::MAGIC, 99, b"REDY", 4096, TAG.0),
    );
    assert!(matches!(
        quick().open(&version),
        Err(SegmentOpenError::VersionMismatch {
            found: 99,
            expected: 1
        })
    ));

    // Recorded size disagrees with the real one.
    let size = ShmName::new("size");
    let mut bytes = header_bytes(ipc_shm::MAGIC, 1, b"REDY", 4096, TAG.0);
    bytes.truncate(1000);
    write_object(&size, &bytes);
    assert!(matches!(
        quick().open(&size),
        Err(SegmentOpenError::SizeMismatch {
            header: 4096,
            actual: 1000
        })
    ));

    // Abandoned by its creator.
    let abandoned = ShmName::new("abandoned");
    write_object(
        &abandoned,
        &header_bytes(ipc_shm::MAGIC, 1, b"DEAD", 4096, TAG.0),
    );
    assert!(matches!(
        quick().open(&abandoned),
        Err(SegmentOpenError::Abandoned)
    ));
}

#[test]
fn wrong_tag_and_short_payload_are_refused() {
    let name = ShmName::new("tag");
    let _seg = SegmentBuilder::new(256)
        .name(&name)
        .type_tag(TAG)
        .create()
        .unwrap();
    let other = TypeTag::from_name("something else");
    assert!(matches!(
        Segment::open(&name, other),
        Err(SegmentOpenError::TagMismatch { found, expected }) if found == TAG && expected == other
    ));
    assert!(matches!(
        OpenOptions::new(TAG).min_len(257).open(&name),
        Err(SegmentOpenError::PayloadTooSmall {
            actual: 256,
            needed: 257
        })
    ));
    assert_eq!(
        OpenOptions::new(TAG)
            .min_len(256)
            .open(&name)
            .unwrap()
            .len(),
        256
    );
}

#[test]
fn truncating_a_live_named_segment_is_caught_on_open() {
    let name = ShmName::new("trunc");
    let _seg = SegmentBuilder::new(8192)
        .name(&name)
        .type_tag(TAG)
        .create()
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(dev_shm(&name))
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert!(matches!(
        Segment::open(&name, TAG),
        Err(SegmentOpenError::SizeMismatch { .. })
    ));
}

#[test]
fn anonymous_segments_cannot_be_resized() {
    let seg = SegmentBuilder::new(4096).create().unwrap();
    let file = fs::File::from(seg.fd().try_clone_to_owned().unwrap());
    assert!(
        file.set_len(64).is_err(),
        "a sealed memfd must refuse to shrink"
    );
    assert!(
        file.set_len(1 << 20).is_err(),
        "a sealed memfd must refuse to grow"
    );
}

#[test]
fn failed_initialisation_removes_the_segment() {
    let name = ShmName::new("initfail");
    let r = SegmentBuilder::new(64)
        .name(&name)
        .create_with(|_| Err("no thanks"));
    assert!(matches!(r, Err(SegmentCreateError::InitFailed { reason }) if reason == "no thanks"));
    assert!(fs::metadata(dev_shm(&name)).is_err());
}

#[test]
fn creator_unlinks_on_drop_unless_told_to_persist() {
    let name = ShmName::new("lifetime");
    drop(SegmentBuilder::new(64).name(&name).create().unwrap());
    assert!(fs::metadata(dev_shm(&name)).is_err());

    let seg = SegmentBuilder::new(64)
        .name(&name)
        .unlink_on_drop(false)
        .create()
        .unwrap();
    drop(seg);
    assert!(fs::metadata(dev_shm(&name)).is_ok());
    Segment::unlink(&name).unwrap();
    assert!(fs::metadata(dev_shm(&name)).is_err());
}

#[test]
fn a_forked_copy_never_unlinks() {
    let name = ShmName::new("forkdrop");
    let seg = std::cell::Cell::new(Some(SegmentBuilder::new(64).name(&name).create().unwrap()));
    // Only the child takes the segment out and drops it; the parent keeps its handle.
    let child = fork_child(WATCHDOG, || {
        drop(seg.take());
        0
    });
    child.wait().assert_success();
    assert!(fs::metadata(dev_shm(&name)).is_ok());
    drop(seg.take());
    assert!(fs::metadata(dev_shm(&name)).is_err());
}

#[test]
fn inherited_fd_errors() {
    assert!(matches!(
        take_inherited_fd("IPC_SHM_TEST_SURELY_UNSET"),
        Err(InheritError::Missing { .. })
    ));
    child!(child_checks_inherit_errors)
        .env("BAD_FD", "abc")
        .env("CLOSED_FD", "987")
        .env("STDIN_FD", "0")
        .watchdog(WATCHDOG)
        .run()
        .assert_success();
}

#[test]
fn layout_offsets_are_checked() {
    let mut layout = Layout::new();
    let a = layout.add::<AtomicU32>().unwrap();
    let b = layout.add::<AtomicU64>().unwrap();
    let s = layout.add_slice::<AtomicU32>(10).unwrap();
    assert_eq!((a.get(), b.get(), s.offset()), (0, 8, 16));
    assert_eq!(layout.size(), 56);
    assert!(matches!(
        layout.align_to(4096),
        Err(LayoutError::AlignTooLarge { .. })
    ));
    assert!(matches!(
        layout.add_slice::<u64>(usize::MAX),
        Err(LayoutError::Overflow)
    ));

    let seg = SegmentBuilder::new(layout.size()).create().unwrap();
    assert!(seg.get(a).is_ok());
    assert!(seg.slice(s).is_ok());
    assert!(matches!(
        seg.get(Offset::<AtomicU64>::from_raw(52)),
        Err(LayoutError::OutOfBounds { .. })
    ));
    assert!(matches!(
        seg.get(Offset::<AtomicU64>::from_raw(4)),
        Err(LayoutError::Misaligned { .. })
    ));
    assert!(matches!(
        seg.slice(SliceOffset::<AtomicU32>::from_raw(16, usize::MAX)),
        Err(LayoutError::OutOfBounds { .. })
    ));
    assert!(matches!(
        seg.get(Offset::<AtomicU64>::from_raw(usize::MAX - 3)),
        Err(LayoutError::OutOfBounds { .. })
    ));
}

#[test]
fn try_clone_maps_the_same_memory_and_never_unlinks() {
    let name = ShmName::new("clone");
    let seg = SegmentBuilder::new(64).name(&name).create().unwrap();
    let clone = seg.try_clone().unwrap();
    assert!(!clone.unlinks_on_drop());
    seg.get(COUNTER).unwrap().store(7, Ordering::Relaxed);
    assert_eq!(clone.get(COUNTER).unwrap().load(Ordering::Relaxed), 7);
    assert_ne!(seg.as_ptr(), clone.as_ptr());
    drop(clone);
    assert!(fs::metadata(dev_shm(&name)).is_ok());
}

#[test]
fn concurrent_open_waits_for_the_creator_to_publish() {
    // The creator publishes only after its initialiser ran; an opener that starts first waits.
    let name = ShmName::new("race");
    let name2 = name.as_str().to_owned();
    let opener = std::thread::spawn(move || {
        loop {
            match OpenOptions::new(TAG)
                .init_timeout(Duration::from_secs(10))
                .open(&name2)
            {
                Ok(seg) => return seg.get(COUNTER).unwrap().load(Ordering::Acquire),
                Err(SegmentOpenError::NotFound { .. }) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
    });
    let _seg = SegmentBuilder::new(64)
        .name(&name)
        .type_tag(TAG)
        .create_with(|seg| {
            seg.get(COUNTER).unwrap().store(99, Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    assert_eq!(opener.join().unwrap(), 99);
}
