fn main() -> std::process::ExitCode {
    syncback::cli::main()
}
