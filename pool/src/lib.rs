//! Process and a worker Pool with Python's multiprocessing API, composed from the ipc crates, that survives crashing, hanging and leaking workers.
#![deny(unsafe_code)]
