//! A lossless cross-process multi-producer multi-consumer Queue and JoinableQueue of serde messages in shared memory.
#![deny(unsafe_code)]
