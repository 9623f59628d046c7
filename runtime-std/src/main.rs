//! The server runtime arrives with the server issue; the binary exists now so
//! the workspace has its final shape.
fn main() {
    eprintln!("mtguard: the server runtime is not built yet; see README.md");
    std::process::exit(2);
}
