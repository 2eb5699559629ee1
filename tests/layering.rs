//! The modules of `src/` form layers: each imports only modules below it in
//! the list at the top of `src/lib.rs` (outside its tests). This test reads
//! that list and every `crate::` path in the non-test code, and fails on an
//! import that points up the list (a back edge, the start of a cycle).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

use std::path::{Path, PathBuf};

/// The layer list, from the `Layers, bottom first:` paragraph of lib.rs.
fn layers(lib: &str) -> Vec<String> {
    let start = lib.find("Layers, bottom first:").expect("lib.rs names its layers");
    let paragraph: String =
        lib[start..].lines().map(|l| l.trim_start_matches("//!").trim()).take_while(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
    let list = paragraph.trim_start_matches("Layers, bottom first:");
    let list = &list[..list.find('.').expect("the list ends with a full stop")];
    list.split(',').map(|m| m.trim().to_owned()).collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its unit tests (which may reach anywhere).
fn production_code(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests").map_or(text, |i| &text[..i])
}

#[test]
fn no_module_imports_a_module_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let order = layers(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let rank = |name: &str| order.iter().position(|m| m == name);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut back_edges = Vec::new();
    let mut modules_seen = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let first = relative.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_owned();
        let name = relative.file_name().unwrap().to_string_lossy();
        // The binary, and files that only tests compile.
        let test_only = relative.components().any(|c| c.as_os_str() == "tests") || name == "tests.rs" || name == "conformance.rs";
        if first == "main" || first == "fuzz" || test_only {
            continue;
        }
        let module = if first == "lib" { "lib".to_owned() } else { first };
        let own = rank(&module).unwrap_or_else(|| panic!("src/{} is in no layer of lib.rs", relative.display()));
        modules_seen += 1;
        let text = std::fs::read_to_string(&file).unwrap();
        for (i, line) in production_code(&text).lines().enumerate() {
            for (at, _) in line.match_indices("crate::") {
                let target: String = line[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                // A root item (`crate::run`) belongs to lib.rs.
                let target = if rank(&target).is_some() { target } else { "lib".to_owned() };
                let theirs = rank(&target).unwrap();
                if target != module && theirs > own {
                    back_edges.push(format!("src/{}:{}: {module} imports {target}, which is above it", relative.display(), i + 1));
                }
            }
        }
    }
    assert!(modules_seen > 20, "read the sources ({modules_seen} files)");
    assert!(back_edges.is_empty(), "{} back edges:\n{}", back_edges.len(), back_edges.join("\n"));
}
