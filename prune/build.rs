//! Link-time settings of the prune crate's binaries and tests.
//!
//! * **rpath**: torch-sys (a direct dependency for this reason; `links =
//!   "tch"`) exports the libtorch folder it linked against as
//!   `DEP_TCH_LIBTORCH_LIB`. It is embedded as the binaries' run path, so
//!   `piprune` finds `libtorch_cpu.so` from any shell, without
//!   `LD_LIBRARY_PATH` or a sourced script.
//! * **cuda**: with the `cuda` feature, links `libtorch_cuda` even though no
//!   symbol of it is referenced (rustc passes `--as-needed`, which would drop
//!   it), so that libtorch registers its CUDA backend and
//!   `tch::Cuda::is_available()` can be true. Without the feature the
//!   binaries need only `libtorch_cpu` and `libc10`, which the minimal install
//!   of the torch wheel provides.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
        let lib = lib.to_string_lossy();
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
