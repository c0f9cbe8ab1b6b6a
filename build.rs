//! Build script: exposes the git commit the binary was built from as the
//! environment variable `SPATE_GIT_COMMIT` (`env!("SPATE_GIT_COMMIT")`), for
//! `spate --version` and anything else that reports what is running. Builds
//! outside a git checkout (a source tarball, a Docker context without `.git`)
//! get "unknown" rather than failing.

use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SPATE_GIT_COMMIT={commit}");
    // Rebuild when HEAD moves: a commit, a checkout. In a worktree `.git` is a
    // file, so ask git where HEAD and the branch's ref live.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        // A path that does not exist would make cargo rerun this every build.
        match git(&["rev-parse", "--git-path", name]) {
            Some(path) if std::path::Path::new(&path).exists() => println!("cargo:rerun-if-changed={path}"),
            _ => {}
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// Runs git in the package directory; None if git is missing or fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}
