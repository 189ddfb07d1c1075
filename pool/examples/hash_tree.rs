//! Hashes every file under a directory in parallel, with a progress bar.
//!
//! Run: `cargo run --release -p pool --example hash_tree -- [directory]`

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use pool::PoolBuilder;

/// Runs in a worker: the 64-bit FNV-1a hash and size of one file.
fn hash_file(path: String) -> Result<(String, u64, u64), String> {
    let bytes = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok((path, hash, bytes.len() as u64))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => walk(&path, out),
            Ok(t) if t.is_file() => out.push(path),
            _ => {}
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).unwrap_or_else(|| ".".into());
    let mut files = Vec::new();
    walk(Path::new(&root), &mut files);
    let pool = PoolBuilder::new().build()?;
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(ProgressStyle::with_template(
        "{bar:40} {pos}/{len} files {elapsed}",
    )?);
    let mut total_bytes = 0u64;
    let mut combined = 0u64;
    let paths = files.iter().map(|p| p.display().to_string());
    for outcome in pool.imap_unordered(hash_file, paths) {
        match outcome? {
            Ok((_, hash, len)) => {
                combined ^= hash;
                total_bytes += len;
            }
            Err(e) => bar.println(format!("skipped {e}")),
        }
        bar.inc(1);
    }
    bar.finish();
    println!(
        "{} files, {total_bytes} bytes, combined hash {combined:016x}",
        files.len()
    );
    Ok(())
}
