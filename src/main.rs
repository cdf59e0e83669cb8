fn main() {
    std::process::exit(facebuild::main());
}
