//! The import rule of ARCHITECTURE.md, checked on the source: a module names `crate::<m>` only for
//! an `m` on its own floor or below, so nothing below the roles imports from `workers/`, and the
//! configuration does not know the roles it configures.

use std::path::{Path, PathBuf};

/// Floors, lowest first; a module may import from its own floor and below.
const FLOORS: &[&[&str]] = &[
    &["model", "config"],
    &["telemetry", "error", "shutdown"],
    &["queue", "store", "registry"],
    &["pipeline", "apps", "runtime"],
    &["transport"],
    &["commands"],
    &["ingress"],
    &["workers"],
    &["process"],
    &["cli", "supervisor"],
    &["main"],
];

fn floor(module: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn layers_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
        let module = first.trim_end_matches(".rs");
        if module == "bin" || module == "lib" {
            continue; // the load tool is a client of the crate, lib.rs only declares modules
        }
        let own = floor(module).unwrap_or_else(|| panic!("{} is on no floor of tests/layers.rs", rel.display()));
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate() {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if let Some(theirs) = floor(&name) {
                    if theirs > own {
                        wrong.push(format!("{}:{}: {module} imports {name}", rel.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports that point up:\n{}", wrong.join("\n"));
}
