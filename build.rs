//! Build script: the git commit bqsink is built from, for the `bqsink_build_info` metric and
//! `bqsink --version`. Taken from `BQSINK_GIT_SHA` when set (the container build passes it as a
//! build argument: the image's build context has no `.git`), else from `git rev-parse`, else
//! "unknown". A small script rather than a git-version crate because of that first case.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=BQSINK_GIT_SHA");
    let git = Path::new(".git");
    // HEAD names the branch; logs/HEAD grows with every commit or checkout.
    for f in ["HEAD", "logs/HEAD"] {
        if git.join(f).exists() {
            println!("cargo:rerun-if-changed=.git/{f}");
        }
    }
    let sha = std::env::var("BQSINK_GIT_SHA")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=BQSINK_GIT_SHA={}", sha.trim());
}
