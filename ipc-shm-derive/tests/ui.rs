//! Compile-fail and compile-pass cases of `#[derive(ShmSafe)]`: one failing case per refusal,
//! each with the compiler's message checked in a `.stderr` file next to it.
//!
//! `TRYBUILD=overwrite cargo test -p ipc-shm-derive --test ui` rewrites the `.stderr` files after
//! a deliberate change of a message (review the diff).

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
