//! Where the output of spawned processes goes.
//!
//! Every process writes stdout and stderr to its own file under
//! `<target>/tmp/microcore-e2e/<test binary>/<test>/`, so a failing test
//! points at complete, unmixed logs instead of output interleaved with other
//! tests. The directory of a test is emptied the first time the test uses it
//! in a process: the logs of the latest run of every test are kept, older
//! runs do not pile up.

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

/// The root of the workspace, fixed when this crate is compiled.
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives one level below the workspace root")
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, otherwise the
/// directory holding the running executable that carries Cargo's
/// `CACHEDIR.TAG` (test binaries live in `<target>/<profile>/deps/`),
/// otherwise `<workspace>/target`.
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
            return workspace_root().join(dir);
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| {
                exe.ancestors()
                    .find(|dir| dir.join("CACHEDIR.TAG").is_file())
                    .map(Path::to_path_buf)
            })
            .unwrap_or_else(|| workspace_root().join("target"))
    })
}

/// Scratch space of the harness inside the target directory.
pub fn scratch_dir() -> PathBuf {
    target_dir().join("tmp").join("microcore-e2e")
}

/// A fresh log file for a process called `name`, in the directory of the
/// current test.
pub fn log_file(name: &str) -> PathBuf {
    static SEQUENCE: AtomicU32 = AtomicU32::new(1);
    static CLEARED: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

    let dir = scratch_dir().join(binary_name()).join(test_name());
    {
        let mut cleared = CLEARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cleared.get_or_insert_with(HashSet::new).insert(dir.clone()) {
            let _ = fs::remove_dir_all(&dir);
        }
    }
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create the log directory {}: {e}", dir.display()));
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{}-{sequence}.log", sanitize(name)))
}

/// The last `lines` lines of the file at `path` (at most the last 64 KiB
/// are read), or a note saying why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) if text.trim().is_empty() => "(empty)".to_owned(),
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The test binary without Cargo's hash suffix (`discovery-1a2b…` →
/// `discovery`), so suites with tests of the same name do not share a
/// directory.
fn binary_name() -> String {
    let stem = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let name = match stem.rsplit_once('-') {
        Some((name, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_owned()
        }
        _ => stem,
    };
    sanitize(&name)
}

/// The test harness names the thread that runs a test after the test
/// (`module::test_name`); other programs run on `main`.
fn test_name() -> String {
    sanitize(std::thread::current().name().unwrap_or("unnamed"))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail(&path, 2), "two\nthree");
        assert_eq!(tail(&path, 10), "one\ntwo\nthree");
        fs::write(&path, "").unwrap();
        assert_eq!(tail(&path, 2), "(empty)");
        assert!(tail(&dir.path().join("missing"), 2).starts_with("(cannot read"));
    }

    #[test]
    fn names_are_safe_file_names() {
        assert_eq!(sanitize("suite::case one"), "suite__case_one");
    }
}
