fn main() {
    std::process::exit(facebuild::cli::main());
}
