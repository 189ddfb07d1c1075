//! A duplex Pipe of two Connections over shared memory, with peer-death detection and poll readiness.
#![deny(unsafe_code)]
