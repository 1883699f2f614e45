//! Build facts for `mpp_build_info` and `--version`: the git revision and branch (from
//! `MPP_BUILD_REVISION` and `MPP_BUILD_BRANCH` where the build sets them, as the Dockerfile
//! does, else from the checkout, else `unknown`) and the compiler's version.

use std::path::Path;
use std::process::Command;

/// What `program args` prints, trimmed, if it runs and prints something.
fn output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let given = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let revision = given("MPP_BUILD_REVISION")
        .or_else(|| output("git", &["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let branch = given("MPP_BUILD_BRANCH")
        .or_else(|| output("git", &["rev-parse", "--abbrev-ref", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rerun-if-env-changed=MPP_BUILD_REVISION");
    println!("cargo:rerun-if-env-changed=MPP_BUILD_BRANCH");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.95.0 (hash date)": the version.
    let rustc = output(&rustc, &["--version"])
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=MPP_REVISION={revision}");
    println!("cargo:rustc-env=MPP_BRANCH={branch}");
    println!("cargo:rustc-env=MPP_RUSTC={rustc}");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    println!("cargo:rustc-env=MPP_PLATFORM={os}/{arch}");
    println!("cargo:rerun-if-changed=build.rs");
    // A new commit or checkout changes these; without a checkout there is nothing to watch.
    for watched in [".git/HEAD", ".git/refs/heads"] {
        if Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
}
