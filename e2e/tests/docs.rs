//! The README must not drift from the binaries: its bounds table is checked against each
//! binary's `--help`.

use std::process::Command;

use chromecard_e2e::*;

/// Rows of the README's "Bounds" table: (binary, flag, default).
fn bounds_rows() -> Vec<(String, String, String)> {
    let readme = std::fs::read_to_string(workspace_file("README.md")).unwrap();
    let section = readme
        .split("\n## Bounds\n")
        .nth(1)
        .expect("README has a ## Bounds section");
    let section = section.split("\n## ").next().unwrap();
    let ticked = |cell: &str| cell.trim().trim_matches('`').to_owned();
    section
        .lines()
        .filter(|line| line.starts_with("| "))
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').collect();
            let (binary, flag, default) = (cells.get(2)?, cells.get(3)?, cells.get(4)?);
            flag.trim()
                .starts_with("`--")
                .then(|| (ticked(binary), ticked(flag), ticked(default)))
        })
        .collect()
}

#[test]
fn readme_bounds_table_matches_help() {
    let rows = bounds_rows();
    assert!(rows.len() >= 10, "the bounds table looks empty: {rows:?}");
    for (binary, flag, default) in rows {
        let out = Command::new(bin_path(&binary))
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        // clap prints "--flag <VALUE>" then, at the end of the description, "[default: N]".
        let mut lines = help.lines().skip_while(|line| {
            let line = line.trim_start();
            !(line.starts_with(&format!("{flag} ")) || line == flag)
        });
        let first = lines
            .next()
            .unwrap_or_else(|| panic!("{binary} --help has no {flag}:\n{help}"));
        let rest: Vec<&str> = lines
            .take_while(|line| !line.trim_start().starts_with('-'))
            .collect();
        let entry = format!("{first}\n{}", rest.join("\n"));
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "README says {binary} {flag} defaults to {default}; --help says:\n{entry}"
        );
    }
}
