//! Puts memory.x and device.x where the linker looks for them (cortex-m-rt's
//! link.x includes both).
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    fs::write(out.join("memory.x"), include_bytes!("memory.x")).expect("memory.x written");
    // The interrupt vectors are defined in src/main.rs (`__INTERRUPTS`), so
    // there are no per-interrupt handler names to provide.
    fs::write(out.join("device.x"), b"/* vectors: see src/main.rs */\n").expect("device.x written");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
}
