//! The container image, run with podman against two real Prometheus replicas on loopback: it
//! answers queries, resolves host names, runs as an unprivileged user on a read-only root
//! filesystem with its endpoints file mounted read-only, and stops cleanly on SIGTERM.
//!
//! The image is built from this test's own binary (a debug build) by `scripts/image.sh`, the
//! script `make image` runs on the release binary; so the Containerfile, the staging of
//! libraries and configuration, and the runtime settings are what is tested here, and
//! `make test` needs no release build (several minutes with fat LTO).

mod common;

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{free_port, get, wait_until};

const MPP: &str = env!("CARGO_BIN_EXE_mpp");
/// The user the image runs as (nobody:nogroup).
const UNPRIVILEGED: &str = "65534";
/// mpp's drain on SIGTERM; the container must exit by itself within it, not be killed after it.
const GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Given to the image's source label: the checkout the test runs in may have no git remote.
const SOURCE: &str = "https://example.invalid/mpp";
/// A host name only the container's /etc/hosts knows (given with `--add-host`).
const REPLICA_NAME: &str = "replica-b.mpp.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_serves_as_non_root_on_a_read_only_root_and_stops_cleanly_on_sigterm() {
    require_tools();
    let (a, b) = tokio::join!(common::Prometheus::start(), common::Prometheus::start());
    let image = Image::build();
    let dir = tempfile::tempdir().unwrap();
    let by_name = b.url().replace("127.0.0.1", REPLICA_NAME);
    let file = common::endpoints_file(dir.path(), &[a.url(), by_name.clone()]);
    // Readable by the container's user whatever the umask (as a ConfigMap mount is).
    std::fs::set_permissions(dir.path(), Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
    let port = free_port();

    let started = Instant::now();
    let container = Container::run(&image, dir.path(), port);
    let mpp = format!("http://127.0.0.1:{port}");
    let query = format!("{mpp}/api/v1/query?query=up");
    wait_until("a query answered through the container", Duration::from_secs(30), || async {
        get(&query).await.is_ok_and(|answer| answer.status == 200)
    })
    .await;
    eprintln!("first query answered {:?} after `podman run`", started.elapsed());
    let answer = get(&query).await.unwrap();
    assert!(answer.text().contains(r#""status":"success""#), "{}", answer.text());
    let served_by = answer.served_by().expect("MPP.ServedBy");
    assert!([a.url(), by_name.clone()].contains(&served_by), "served by {served_by}");

    // Both replicas pass their probes, the one named by a host name included.
    let mut want = vec![a.url(), by_name];
    want.sort();
    wait_until("both replicas viable", Duration::from_secs(20), || async { viable_candidates(&mpp).await == want })
        .await;

    let process = PathBuf::from(format!("/proc/{}", container.inspect("{{.State.Pid}}")));
    let status = std::fs::read_to_string(process.join("status")).unwrap();
    for ids in ["Uid:", "Gid:"] {
        let line = status.lines().find(|l| l.starts_with(ids)).unwrap();
        assert!(line.split_whitespace().skip(1).all(|id| id == UNPRIVILEGED), "{line}");
    }
    let mounts = std::fs::read_to_string(process.join("mountinfo")).unwrap();
    for mount_point in ["/", "/etc/mpp"] {
        assert_eq!(mount_options(&mounts, mount_point).first().copied(), Some("ro"), "{mount_point}: {mounts}");
    }

    let stopping = Instant::now();
    podman(&["stop", "--time", &GRACE_PERIOD.as_secs().to_string(), &container.name]);
    let took = stopping.elapsed();
    // 137 would mean SIGKILL at the end of the grace period.
    assert_eq!(container.inspect("{{.State.ExitCode}}"), "0", "{}", container.logs());
    assert!(took < GRACE_PERIOD, "stopping took {took:?}");
    assert!(container.logs().contains("SIGTERM received"), "{}", container.logs());
}

#[test]
fn image_names_its_user_entrypoint_and_source_version_and_revision() {
    require_tools();
    let image = Image::build();
    assert_eq!(image.inspect("{{.Config.User}}"), format!("{UNPRIVILEGED}:{UNPRIVILEGED}"));
    assert_eq!(image.inspect("{{json .Config.Entrypoint}}"), r#"["/mpp"]"#);
    let labels: serde_json::Value = serde_json::from_str(&image.inspect("{{json .Labels}}")).unwrap();
    assert_eq!(labels["org.opencontainers.image.source"], SOURCE);
    assert_eq!(labels["org.opencontainers.image.version"], env!("CARGO_PKG_VERSION"));
    let head = Command::new("git").args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"]).output().unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    let revision = labels["org.opencontainers.image.revision"].as_str().unwrap();
    assert!(!head.trim().is_empty() && revision.starts_with(head.trim()), "revision {revision}, HEAD {head}");
}

/// Fails the test, saying how to install them, when podman, buildah or runc is missing.
fn require_tools() {
    for tool in ["podman", "buildah", "runc"] {
        let mut dirs: Vec<PathBuf> =
            std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
        dirs.push("/usr/sbin".into());
        assert!(
            dirs.iter().any(|dir| dir.join(tool).is_file()),
            "`{tool}` is not installed; this test builds and runs mpp's image with podman, buildah and runc: \
             apt-get install -y podman buildah runc (or `make deps` as root)"
        );
    }
}

/// podman's settings that work on machines whose cgroups are in hybrid mode (crun refuses them)
/// and that work elsewhere too.
const PODMAN_SETTINGS: [&str; 3] = ["--runtime", "runc", "--cgroup-manager=cgroupfs"];

/// Runs podman with [`PODMAN_SETTINGS`]; fails the test when podman does.
fn podman(args: &[&str]) -> String {
    let output = try_podman(args);
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    assert!(output.status.success(), "podman {args:?} failed: {}", text(&output.stderr));
    text(&output.stdout)
}

fn try_podman(args: &[&str]) -> Output {
    Command::new("podman").args(PODMAN_SETTINGS).args(args).output().expect("run podman")
}

/// The URLs of the candidates `/mpp/status` calls viable, sorted.
async fn viable_candidates(mpp: &str) -> Vec<String> {
    let Ok(answer) = get(&format!("{mpp}/mpp/status?format=json")).await else { return Vec::new() };
    let status: serde_json::Value = serde_json::from_slice(&answer.body).expect("status is JSON");
    let mut viable: Vec<String> = status["candidates"]
        .as_array()
        .expect("candidates")
        .iter()
        .filter(|c| c["viable"] == true)
        .map(|c| c["url"].as_str().unwrap().to_string())
        .collect();
    viable.sort();
    viable
}

/// The options of the mount at `mount_point`, from a process's `mountinfo`.
fn mount_options<'a>(mountinfo: &'a str, mount_point: &str) -> Vec<&'a str> {
    let fields = mountinfo.lines().map(|l| l.split(' ').collect::<Vec<_>>()).rfind(|f| f.get(4) == Some(&mount_point));
    fields.map(|f| f[5].split(',').collect()).unwrap_or_default()
}

/// An image built from this test's binary, removed when dropped.
struct Image {
    name: String,
}

impl Image {
    fn build() -> Image {
        // Unique per build: `cargo test` runs this file's tests in one process, in parallel.
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let name = format!("localhost/mpp-test:{}-{}", std::process::id(), BUILDS.fetch_add(1, Ordering::Relaxed));
        let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh"))
            .args([MPP, &name])
            .env("IMAGE_SOURCE", SOURCE)
            .output()
            .expect("run scripts/image.sh");
        let image = Image { name };
        assert!(output.status.success(), "scripts/image.sh failed: {}", String::from_utf8_lossy(&output.stderr));
        image
    }

    fn inspect(&self, format: &str) -> String {
        podman(&["image", "inspect", "--format", format, &self.name])
    }
}

impl Drop for Image {
    /// Removes the image under the lock `scripts/image.sh` builds under: identical builds share
    /// their layers, and a removal while another test's build commits takes the layer from it.
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
        let lock = std::env::temp_dir().join(format!("mpp-image-{uid}.lock"));
        let _ = Command::new("flock")
            .arg(&lock)
            .arg("podman")
            .args(PODMAN_SETTINGS)
            .args(["rmi", "--force", &self.name])
            .output();
    }
}

/// mpp's container, started detached; removed (killed if still running) when dropped, after
/// printing its log if the test failed.
struct Container {
    name: String,
}

impl Container {
    /// Runs `image` on the host's network, listening on `127.0.0.1:port`, with the image's
    /// default command (the endpoints file at /etc/mpp/endpoints) and `endpoints_dir`
    /// mounted read-only at /etc/mpp, on a read-only root without even a writable /tmp
    /// (as Kubernetes' `readOnlyRootFilesystem` runs it).
    fn run(image: &Image, endpoints_dir: &Path, port: u16) -> Container {
        let name = format!("mpp-test-{}", std::process::id());
        let container = Container { name };
        let volume = format!("{}:/etc/mpp:ro", endpoints_dir.display());
        let listen = format!("MPP_LISTEN_ADDRESS=127.0.0.1:{port}");
        let add_host = format!("{REPLICA_NAME}:127.0.0.1");
        #[rustfmt::skip]
        podman(&[
            "run", "--detach", "--name", &container.name,
            "--network", "host", "--add-host", &add_host,
            "--read-only", "--read-only-tmpfs=false",
            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
            "--volume", &volume, "--env", &listen,
            &image.name,
        ]);
        container
    }

    fn inspect(&self, format: &str) -> String {
        podman(&["container", "inspect", "--format", format, &self.name])
    }

    fn logs(&self) -> String {
        let output = try_podman(&["logs", &self.name]);
        String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("container {} log:\n{}", self.name, self.logs());
        }
        let _ = try_podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}
