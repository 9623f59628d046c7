//! Embeds the commit the binary is built from, for `mtguard --version` and
//! the `mtguard_build_info` metric: `MTGUARD_COMMIT` from the environment
//! when set (a build from a source tarball, or one that must name the
//! commit it was handed), else `git rev-parse` in a checkout, else
//! "unknown". A dirty work tree is not marked: telling it would mean
//! rerunning this on every change to any file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}

/// Asks cargo to run this again when `path` changes; only for a path that
/// exists (cargo reruns every build for one that does not).
fn watch(path: PathBuf) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-env-changed=MTGUARD_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let given = std::env::var("MTGUARD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = given.or_else(|| {
        // HEAD moves on a commit or a checkout; the branch it names moves
        // on a commit, in its loose ref or in packed-refs. In a worktree
        // HEAD is the worktree's and the refs are the main checkout's.
        if let Some(dir) = git(&manifest, &["rev-parse", "--absolute-git-dir"]) {
            watch(Path::new(&dir).join("HEAD"));
        }
        let common = git(
            &manifest,
            &["rev-parse", "--path-format=absolute", "--git-common-dir"],
        );
        if let Some(common) = common {
            let common = Path::new(&common);
            watch(common.join("packed-refs"));
            if let Some(branch) = git(&manifest, &["symbolic-ref", "-q", "HEAD"]) {
                watch(common.join(branch));
            }
        }
        git(&manifest, &["rev-parse", "--short=12", "HEAD"])
    });
    let commit = commit.unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=MTGUARD_COMMIT={commit}");
}
