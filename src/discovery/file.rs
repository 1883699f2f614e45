//! Endpoints file discovery: one backend URL per line, blank lines and `#` comments ignored.
//! The file is re-read every selection round and as soon as it changes (inotify on its
//! directory, so an atomic replace by rename is seen too).

use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{DiscoveryError, Source};
use crate::backend::Backend;

/// The flag that chooses this kind, for messages.
pub const CHOSEN_BY: &str = "--endpoints-file";

/// The endpoints file's flag.
#[derive(Debug, Clone, clap::Args)]
pub struct FileFlags {
    /// A file path containing a list of endpoints to use, one per line. This file is re-read at
    /// every selection interval and whenever it changes
    #[arg(long, env = "MPP_ENDPOINTS_FILE", value_name = "PATH")]
    pub endpoints_file: Option<PathBuf>,
}

impl FileFlags {
    /// The file to read, if this kind is chosen (any path is valid until it is read).
    pub fn config(self) -> Option<PathBuf> {
        self.endpoints_file
    }
}

/// Reads candidates from a file.
pub struct FileDiscovery {
    path: PathBuf,
    /// Kept alive: dropping it stops the change notifications.
    _watcher: Option<notify::RecommendedWatcher>,
    /// The text read last, so that invalid lines are logged when the file changes, not on
    /// every round.
    last_text: Option<String>,
}

impl FileDiscovery {
    /// Checks that the file can be read and starts watching it. A file that cannot be watched
    /// is still read every round; that is logged, not fatal.
    pub fn start(path: PathBuf, changed: mpsc::Sender<()>) -> Result<Self, DiscoveryError> {
        std::fs::read_to_string(&path).map_err(|source| DiscoveryError::Read { path: path.clone(), source })?;
        let watcher = match watch(&path, changed) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "changes will be seen at the next selection interval only");
                None
            }
        };
        Ok(FileDiscovery { path, _watcher: watcher, last_text: None })
    }

    /// Reads the file: every valid line is a candidate; invalid ones are logged with their
    /// line number (once per change of the file) and skipped.
    async fn read(&mut self) -> Result<Vec<Backend>, DiscoveryError> {
        let text = tokio::fs::read_to_string(&self.path)
            .await
            .map_err(|source| DiscoveryError::Read { path: self.path.clone(), source })?;
        let (backends, problems) = parse_endpoints(&text);
        if self.last_text.as_deref() != Some(text.as_str()) {
            for (line, problem) in &problems {
                tracing::warn!(file = %self.path.display(), line, "skipping invalid endpoint: {problem}");
            }
            self.last_text = Some(text);
        }
        if backends.is_empty() {
            return Err(DiscoveryError::Empty { path: self.path.clone() });
        }
        Ok(backends)
    }
}

impl Source for FileDiscovery {
    fn candidates(&mut self) -> BoxFuture<'_, Result<Vec<Backend>, DiscoveryError>> {
        Box::pin(self.read())
    }

    fn describe(&self) -> String {
        format!("endpoints file {}", self.path.display())
    }
}

/// Parses an endpoints file: the valid backends (duplicates dropped, file order kept) and
/// the invalid lines as `(line number, what is wrong)`.
pub fn parse_endpoints(text: &str) -> (Vec<Backend>, Vec<(usize, String)>) {
    let mut backends: Vec<Backend> = Vec::new();
    let mut problems = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match Backend::parse(line) {
            Ok(b) if !backends.contains(&b) => backends.push(b),
            Ok(_) => {}
            Err(e) => problems.push((index + 1, e)),
        }
    }
    (backends, problems)
}

/// Watches the file's directory (a rename over the file replaces its inode, which a watch on
/// the file itself would lose) and signals `changed` on any event that names the file.
fn watch(path: &Path, changed: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher, DiscoveryError> {
    let err = |detail: String| DiscoveryError::Watch { path: path.to_path_buf(), detail };
    let name = path.file_name().ok_or_else(|| err("the path names no file".into()))?.to_os_string();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file ourselves raises access events; only changes count.
        let changes = matches!(event.kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_));
        if changes && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
            // A full channel means a round is already due; that round reads the change.
            let _ = changed.try_send(());
        }
    })
    .map_err(|e| err(e.to_string()))?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| err(e.to_string()))?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_comments_blanks_and_bad_lines_with_their_numbers() {
        let text = "# replicas\nhttp://a:9090\n\n  http://b:9090  # second\nftp://c:1\nhttp://a:9090/\nnot a url\n";
        let (backends, problems) = parse_endpoints(text);
        let urls: Vec<&str> = backends.iter().map(|b| b.url()).collect();
        assert_eq!(urls, ["http://a:9090", "http://b:9090"]);
        let lines: Vec<usize> = problems.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [5, 7]);
    }
}
