//! Every `$ gatehouse ...` line in the README's console blocks is run from
//! the repository root and its output compared with what the README shows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "test code: a failed step is a failed test")]

use std::process::Command;

#[test]
fn readme_console_examples_print_what_the_readme_shows() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let mut examples: Vec<(String, Vec<String>)> = Vec::new();
    let mut in_console = false;
    for line in readme.lines() {
        if line.starts_with("```console") {
            in_console = true;
        } else if line.starts_with("```") {
            in_console = false;
        } else if in_console {
            if let Some(cmd) = line.strip_prefix("$ ") {
                examples.push((cmd.to_owned(), Vec::new()));
            } else if let Some((_, out)) = examples.last_mut() {
                out.push(line.to_owned());
            }
        }
    }
    assert!(examples.len() >= 6, "expected the explain and audit examples, found {}", examples.len());
    for (cmd, want) in examples {
        let rest = cmd.strip_prefix("gatehouse ").unwrap_or_else(|| panic!("not a gatehouse command: {cmd}"));
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("\"$GATEHOUSE\" {rest}"))
            .env("GATEHOUSE", env!("CARGO_BIN_EXE_gatehouse"))
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim_end().to_owned()).collect();
        let want: Vec<String> = want.iter().map(|l| l.trim_end().to_owned()).collect();
        assert_eq!(got, want, "README example output differs for: {cmd}");
    }
}
