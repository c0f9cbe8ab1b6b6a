//! Sets SPATE_GIT_COMMIT (the short hash of HEAD) for the bench's report,
//! unless the environment already gives it (a build without git).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=SPATE_GIT_COMMIT");
    if std::env::var_os("SPATE_GIT_COMMIT").is_some() {
        return;
    }
    // Rebuild when HEAD moves: HEAD itself, the branch it points to, packed refs.
    for path in ["HEAD", "packed-refs"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &branch]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    if let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) {
        println!("cargo:rustc-env=SPATE_GIT_COMMIT={commit}");
    }
}
