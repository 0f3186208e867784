//! With the `cuda` feature, links `libtorch_cuda` even though no symbol of it
//! is referenced (rustc passes `--as-needed`, which would drop it), so that
//! libtorch registers its CUDA backend and `tch::Cuda::is_available()` can be
//! true. Without the feature the binaries need only `libtorch_cpu` and
//! `libc10`, which a CPU-only install of the torch wheel provides.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
