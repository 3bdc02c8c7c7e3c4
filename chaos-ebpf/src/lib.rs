//! The crate's programs live in `main.rs` (a `no_main` BPF object). This library target exists so
//! that `chaos-agent` can name the crate as a build dependency, which re-runs its `build.rs`
//! whenever the programs change.
#![no_std]
