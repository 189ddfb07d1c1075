//! Chunking: the sizes a map's arguments are cut into, one job each.
//!
//! A size the caller gives is used for every chunk (Python's `chunksize`). Without one, the
//! local pool cuts *guided* chunks (as OpenMP's `schedule(guided)`): each is half of an even
//! share of what is left, and never below a floor of 1/64 of an even share of the whole map.
//! Chunks shrink as the map goes on, so its last ones are short and the workers finish
//! together. With equal chunks (Python's four per worker), the worker that takes the last
//! chunk runs it alone while the others idle: a whole chunk's time when tasks grow longer
//! along the map (sorted inputs, growing problem sizes), or when another process took a
//! worker's CPU for a while. 400 tasks growing from 100 us to 1.7 ms on 2 workers: 8 equal
//! chunks end at about 90% of the ideal time, guided ones near it.
//!
//! The floor bounds the count of chunks (so of messages per map): with 2 workers about 15,
//! whatever the map's length (8 with Python's equal chunks), and about 9 per worker with
//! more; it grows with the logarithm of the floor divisor, not with the map. The byte ceiling
//! below adds chunks only where arguments are large: a map of 1 M `u64`s on 2 workers is cut
//! into 18 chunks (17 without the ceiling), one of 16 arguments of 1 MiB into 16.
//!
//! Guided chunks also hold at most about [`CHUNK_BYTES`] of encoded arguments (one argument
//! at least), judged by the map's first argument. The caller encodes a chunk before any
//! worker can start on it, and each worker decodes its chunk before running it: with large
//! arguments, short chunks let the caller's copies, the workers' copies and the tasks overlap.
//! 16 tasks of 1 MiB on 2 workers, whose first guided chunk held 4 of them: 4.5-4.6 GB/s
//! uncapped, 7.1-7.5 GB/s one per chunk; 64 of them (a first chunk of 16 MiB): 2.0 against
//! 8.8-9.2 GB/s; 64 KiB arguments: best at 16 per chunk (5.5 against 3.4 GB/s guided), 256 KiB
//! ones at 4 (5.0 against 3.9 GB/s). A scratch probe of `map(touch, ..)`, as the runner's
//! `payload_1MiB` workload. The runner itself (`compare --workloads map_trivial,payload`, three
//! interleaved pairs): 1 MiB arguments at 8.9-12.8 GB/s capped against 4.5-6.3 GB/s uncapped
//! (29-36% of one memcpy against 14-22%); the trivial map of 1 M `u64`s (8 bytes each, so
//! chunks of at most 131 072) alike, 70.7-87.7 against 58.3-87.5 M tasks/s.

/// How a map's arguments are cut into chunks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChunkPlan {
    /// Every chunk of this size (the last one shorter).
    Fixed(usize),
    /// Shrinking chunks for `workers` workers, never below `floor` nor above `most`.
    Guided {
        /// The workers that share the map.
        workers: usize,
        /// The smallest chunk (but the last), unless `most` is smaller.
        floor: usize,
        /// The largest chunk: [`CHUNK_BYTES`] of arguments.
        most: usize,
    },
}

/// About how many bytes of encoded arguments a guided chunk holds at most (see the module
/// docs): the chunk sizes that copied fastest in the measurements there.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// A guided chunk is an even share of what is left divided by this.
const SHARE_DIVISOR: usize = 2;

/// The guided plan's floor is an even share of the map divided by this.
const FLOOR_DIVISOR: usize = 64;

impl ChunkPlan {
    /// The guided plan for `len` arguments of about `arg_bytes` encoded bytes each over
    /// `workers` workers.
    pub(crate) fn guided(len: usize, workers: usize, arg_bytes: usize) -> ChunkPlan {
        let workers = workers.max(1);
        ChunkPlan::Guided {
            workers,
            floor: len.div_ceil(workers * FLOOR_DIVISOR).max(1),
            most: (CHUNK_BYTES / arg_bytes.max(1)).max(1),
        }
    }

    /// The size of the next chunk when `remaining` arguments are left (at least 1 and at most
    /// `remaining`, when any are left).
    fn next(&self, remaining: usize) -> usize {
        let size = match *self {
            ChunkPlan::Fixed(size) => size,
            ChunkPlan::Guided {
                workers,
                floor,
                most,
            } => remaining
                .div_ceil(workers * SHARE_DIVISOR)
                .max(floor)
                .min(most),
        };
        size.clamp(1, remaining.max(1))
    }

    /// The chunk sizes for `len` arguments, in order.
    pub(crate) fn sizes(self, len: usize) -> impl Iterator<Item = usize> {
        let mut remaining = len;
        std::iter::from_fn(move || {
            (remaining > 0).then(|| {
                let size = self.next(remaining);
                remaining -= size;
                size
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkPlan;

    #[test]
    fn fixed_chunks_are_the_given_size_and_the_last_is_the_rest() {
        let sizes: Vec<usize> = ChunkPlan::Fixed(3).sizes(10).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
        assert_eq!(ChunkPlan::Fixed(0).sizes(2).collect::<Vec<_>>(), vec![1, 1]);
        assert_eq!(ChunkPlan::Fixed(5).sizes(0).count(), 0);
    }

    #[test]
    fn guided_chunks_cover_the_map_and_shrink_to_the_floor() {
        for (len, workers) in [
            (400, 2),
            (4000, 2),
            (1_000_000, 2),
            (7, 3),
            (1, 8),
            (100, 1),
        ] {
            let sizes: Vec<usize> = ChunkPlan::guided(len, workers, 1).sizes(len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), len, "{len} over {workers}");
            assert!(sizes.iter().all(|&s| s > 0));
            assert!(
                sizes.windows(2).all(|w| w[0] >= w[1]),
                "not shrinking: {sizes:?}"
            );
            // The first chunk is half an even share.
            assert_eq!(sizes[0], len.div_ceil(workers * 2).min(len));
        }
        let sizes: Vec<usize> = ChunkPlan::guided(400, 2, 8).sizes(400).collect();
        assert_eq!(sizes[0], 100);
        assert!(
            *sizes.last().unwrap() <= 4,
            "the tail is floor-sized: {sizes:?}"
        );
        assert!(sizes.len() <= 16, "too many chunks: {}", sizes.len());
        let million = ChunkPlan::guided(1_000_000, 2, 1).sizes(1_000_000).count();
        assert!(
            million <= 18,
            "a long map stays a few dozen chunks: {million}"
        );
        let eight = ChunkPlan::guided(1_000_000, 8, 1).sizes(1_000_000).count();
        assert!(eight <= 72, "about 9 chunks per worker: {eight}");
    }

    #[test]
    fn guided_chunks_hold_about_a_mebibyte_of_arguments() {
        use super::CHUNK_BYTES;
        // 1 MiB arguments: one per chunk.
        let sizes: Vec<usize> = ChunkPlan::guided(16, 2, CHUNK_BYTES + 8)
            .sizes(16)
            .collect();
        assert_eq!(sizes, vec![1; 16]);
        // 64 KiB ones: 16 per chunk while guided chunks would be larger, then guided.
        let sizes: Vec<usize> = ChunkPlan::guided(1000, 2, 64 << 10).sizes(1000).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 1000);
        assert!(sizes.iter().all(|&s| s <= 16), "{sizes:?}");
        assert_eq!(sizes[0], 16);
        // Larger than the whole map's bytes: the cap changes nothing.
        let small: Vec<usize> = ChunkPlan::guided(400, 2, 8).sizes(400).collect();
        let none: Vec<usize> = ChunkPlan::Guided {
            workers: 2,
            floor: 400usize.div_ceil(2 * 64),
            most: usize::MAX,
        }
        .sizes(400)
        .collect();
        assert_eq!(small, none);
        // An argument that encodes to nothing (a unit) is no division by zero.
        assert_eq!(ChunkPlan::guided(10, 2, 0).sizes(10).sum::<usize>(), 10);
    }
}
