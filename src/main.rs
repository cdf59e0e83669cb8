//! The `facebuild` binary: everything is in the library.
fn main() {
    std::process::exit(facebuild::main());
}
