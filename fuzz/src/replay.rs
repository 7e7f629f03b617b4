//! Replaying and writing committed corpus files, shared by `tests/fuzz_corpus.rs`
//! (daemon targets) and `cni/tests/fuzz_corpus.rs` (plugin targets), which compile
//! this file in with `#[path]`.

use std::path::Path;

/// Runs every committed file of `root/<target>/` (the `seed-*` and `crash-*` files
/// git tracks; a local run's additions are left out) through `harness`, and fails
/// naming the first file that panics. An empty corpus fails too.
pub fn replay(root: &Path, target: &str, harness: fn(&[u8])) {
    let mut files: Vec<_> = std::fs::read_dir(root.join(target))
        .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("seed-") || name.starts_with("crash-")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus for {target}");
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let r = std::panic::catch_unwind(|| harness(&data));
        assert!(r.is_ok(), "{target}: {} fails", f.display());
    }
}

/// Writes `root/<target>/seed-<name>`.
pub fn write_seed(root: &Path, target: &str, name: &str, data: &[u8]) {
    let dir = root.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
}
