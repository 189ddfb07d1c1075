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
//! more; it grows with the logarithm of the floor divisor, not with the map.

/// How a map's arguments are cut into chunks.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ChunkPlan {
    /// Every chunk of this size (the last one shorter).
    Fixed(usize),
    /// Shrinking chunks for `workers` workers, never below `floor`.
    Guided {
        /// The workers that share the map.
        workers: usize,
        /// The smallest chunk (but the last).
        floor: usize,
    },
}

/// A guided chunk is an even share of what is left divided by this.
const SHARE_DIVISOR: usize = 2;

/// The guided plan's floor is an even share of the map divided by this.
const FLOOR_DIVISOR: usize = 64;

impl ChunkPlan {
    /// The guided plan for `len` arguments over `workers` workers.
    pub(crate) fn guided(len: usize, workers: usize) -> ChunkPlan {
        let workers = workers.max(1);
        ChunkPlan::Guided {
            workers,
            floor: len.div_ceil(workers * FLOOR_DIVISOR).max(1),
        }
    }

    /// The size of the next chunk when `remaining` arguments are left (at least 1 and at most
    /// `remaining`, when any are left).
    fn next(&self, remaining: usize) -> usize {
        let size = match *self {
            ChunkPlan::Fixed(size) => size,
            ChunkPlan::Guided { workers, floor } => {
                remaining.div_ceil(workers * SHARE_DIVISOR).max(floor)
            }
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
            let sizes: Vec<usize> = ChunkPlan::guided(len, workers).sizes(len).collect();
            assert_eq!(sizes.iter().sum::<usize>(), len, "{len} over {workers}");
            assert!(sizes.iter().all(|&s| s > 0));
            assert!(
                sizes.windows(2).all(|w| w[0] >= w[1]),
                "not shrinking: {sizes:?}"
            );
            // The first chunk is half an even share.
            assert_eq!(sizes[0], len.div_ceil(workers * 2).min(len));
        }
        let sizes: Vec<usize> = ChunkPlan::guided(400, 2).sizes(400).collect();
        assert_eq!(sizes[0], 100);
        assert!(
            *sizes.last().unwrap() <= 4,
            "the tail is floor-sized: {sizes:?}"
        );
        assert!(sizes.len() <= 16, "too many chunks: {}", sizes.len());
        let million = ChunkPlan::guided(1_000_000, 2).sizes(1_000_000).count();
        assert!(
            million <= 18,
            "a long map stays a few dozen chunks: {million}"
        );
        let eight = ChunkPlan::guided(1_000_000, 8).sizes(1_000_000).count();
        assert!(eight <= 72, "about 9 chunks per worker: {eight}");
    }
}
