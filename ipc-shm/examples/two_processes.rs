//! Two processes share one named segment: the parent creates it, a child process (this same
//! program, started again) opens it by name and fills in a table, and the parent reads the result.
//!
//! Run: `cargo run --release -p ipc-shm --example two_processes`

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use ipc_shm::{Layout, OpenOptions, SegmentBuilder, SliceOffset, TypeTag};

const TAG: TypeTag = TypeTag::from_name("ipc-shm/example/squares/v1");
const ROLE: &str = "IPC_SHM_EXAMPLE_SEGMENT";
const N: usize = 16;

fn squares() -> SliceOffset<AtomicU64> {
    let mut layout = Layout::new();
    layout.add_slice::<AtomicU64>(N).expect("a small layout")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(name) = std::env::var(ROLE) {
        // The child: open the parent's segment by name; the header is checked before any access.
        let segment = OpenOptions::new(TAG).open(&name)?;
        for (i, slot) in segment.slice(squares())?.iter().enumerate() {
            slot.store((i * i) as u64, Ordering::Release);
        }
        println!("child  (pid {}): wrote {N} squares", std::process::id());
        return Ok(());
    }

    let name = format!("ipc-shm-example-{}", std::process::id());
    let layout_size = N * std::mem::size_of::<AtomicU64>();
    let segment = SegmentBuilder::new(layout_size)
        .name(&name)
        .type_tag(TAG)
        .create()?; // mode 0600; the name is removed when `segment` drops
    println!(
        "parent (pid {}): created /dev/shm/{name}, {} bytes of payload",
        std::process::id(),
        segment.len()
    );

    let status = Command::new(std::env::current_exe()?)
        .env(ROLE, &name)
        .status()?;
    if !status.success() {
        return Err(format!("child failed: {status}").into());
    }

    let values: Vec<u64> = segment
        .slice(squares())?
        .iter()
        .map(|v| v.load(Ordering::Acquire))
        .collect();
    println!("parent (pid {}): read back {values:?}", std::process::id());
    assert!(values.iter().enumerate().all(|(i, &v)| v == (i * i) as u64));
    Ok(())
}
