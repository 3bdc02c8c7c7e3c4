//! Rebuild the programs when bpf-linker changes: the linker is part of the toolchain.
//!
//! And link with `--disable-expand-memcpy-in-order`. By default bpf-linker passes LLVM
//! `--bpf-expand-memcpy-in-order`, which sets the BPF backend's `MaxStoresPerMemset` to zero:
//! every zeroing of a struct (`Bitmap::EMPTY`, `Packet::EMPTY`, a `Walk`) becomes a call to
//! the byte-loop `memset` the object exports. Whether the middle end had already turned those
//! into stores depends on the LLVM patch release bpf-linker is built against: with Debian's
//! llvm-22 22.1.8 it had not, and the byte loops (whose stores the verifier cannot see as
//! zeroes) took `chaos_tc_in` past the verifier's million instructions. Without the flag the
//! backend expands constant-size memset and memcpy into stores of their own, as clang does.
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
