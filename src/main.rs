//! The `syncback` binary: everything lives in the library; see `syncback::cli`.

/// mimalloc instead of glibc's malloc: the receiver's request path allocates from many
/// threads at once, where glibc's arena locks cost more than the work itself (measured
/// by `cargo bench --bench ingest`: README "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    syncback::cli::main()
}
