//! `lcctl`, the lc admin client: see the library crate and lcctl(8).

fn main() -> std::process::ExitCode {
    lcctl::main()
}
