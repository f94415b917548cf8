//! The README must not drift from the binaries: its bounds table and its flags tables are
//! checked against each binary's `--help`.

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

/// The long flags in `binary --help` (without --help and --version).
fn help_flags(binary: &str) -> std::collections::BTreeSet<String> {
    let out = Command::new(bin_path(binary))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    help.lines()
        .filter_map(|line| {
            let option = line.trim_start();
            let option = option
                .strip_prefix('-')
                .filter(|rest| !rest.starts_with('-'))
                .map_or(option, |rest| rest[1..].trim_start_matches(", "));
            let flag = option.strip_prefix("--")?.split([' ', '=']).next()?;
            Some(format!("--{flag}"))
        })
        .filter(|flag| flag != "--help" && flag != "--version")
        .collect()
}

/// The flags named in the first column of the README's flags table for `binary` (the
/// table after the line "`binary`:" in "## Flags").
fn readme_flags(binary: &str) -> std::collections::BTreeSet<String> {
    let readme = std::fs::read_to_string(workspace_file("README.md")).unwrap();
    let section = readme
        .split("\n## Flags\n")
        .nth(1)
        .expect("README has a ## Flags section");
    let section = section.split("\n## ").next().unwrap();
    let table = section
        .split(&format!("\n{binary}:\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README's Flags section has no \"{binary}:\" table"));
    let mut flags = std::collections::BTreeSet::new();
    for line in table
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
    {
        let first = line.split('|').nth(1).unwrap_or("");
        for piece in first.split('`').skip(1).step_by(2) {
            if let Some(flag) = piece.strip_prefix("--") {
                let name: String = flag
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                flags.insert(format!("--{name}"));
            }
        }
    }
    flags
}

#[test]
fn readme_flags_tables_list_exactly_the_flags_of_help() {
    for binary in ["k_proxy", "k_server"] {
        let help = help_flags(binary);
        let readme = readme_flags(binary);
        assert!(help.len() >= 10, "{binary} --help parsed to {help:?}");
        let missing: Vec<_> = help.difference(&readme).collect();
        let stale: Vec<_> = readme.difference(&help).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "README's {binary} flags table: missing {missing:?}; not in --help {stale:?}"
        );
    }
}
