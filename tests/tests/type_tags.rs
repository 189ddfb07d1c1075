//! ipc-shm knows the names of the workspace's type tags (for `TagMismatch` messages) from a list
//! kept in `ipc_shm::header`; this checks the list against the crates' real tags.

#[test]
fn the_queue_tag_is_named_in_errors() {
    let name = ipc_queue::QUEUE_TAG.name();
    assert!(
        name.is_some(),
        "ipc_queue::QUEUE_TAG ({:?}) is missing from ipc-shm's list of workspace tag names",
        ipc_queue::QUEUE_TAG
    );
    assert_eq!(
        ipc_shm::TypeTag::from_name(name.unwrap()),
        ipc_queue::QUEUE_TAG
    );
}
