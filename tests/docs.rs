//! The documentation stays true to the code: the configuration reference in
//! docs/configuration.md is generated from the same clap definitions as `pgrelay serve --help`.
//!
//! When a flag changes, this test fails and prints the new table; `PGRELAY_WRITE_DOCS=1 cargo
//! test --test docs` writes it into the page.

use clap::CommandFactory;

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
const BEGIN: &str = "<!-- generated from `pgrelay serve --help` by tests/docs.rs: begin -->";
const END: &str = "<!-- generated from `pgrelay serve --help` by tests/docs.rs: end -->";

/// The table of every `pgrelay serve` flag: flag, environment variable, default, meaning.
fn configuration_table() -> String {
    let mut root = pgrelay::config::Cli::command();
    root.build();
    let serve = root
        .find_subcommand("serve")
        .expect("pgrelay has a serve subcommand");
    let mut table = String::from("| flag | env | default | meaning |\n|---|---|---|---|\n");
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map(|env| format!("`{}`", env.to_string_lossy()))
            .unwrap_or_default();
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().into_owned())
            .collect();
        let default = if arg.is_required_set() {
            "required".to_owned()
        } else if !defaults.is_empty() && !arg.get_action().takes_values() {
            "off".to_owned()
        } else if defaults.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", defaults.join(","))
        };
        let help = arg
            .get_help()
            .map(|help| help.to_string().replace('|', "\\|"))
            .unwrap_or_default();
        table.push_str(&format!("| `--{long}` | {env} | {default} | {help} |\n"));
    }
    table
}

#[test]
fn configuration_reference_matches_the_command_line() {
    let page = std::fs::read_to_string(PAGE).expect("docs/configuration.md exists");
    let start = page.find(BEGIN).expect("the page has the begin marker") + BEGIN.len();
    let end = page.find(END).expect("the page has the end marker");
    let expected = configuration_table();
    let current = page[start..end].trim();
    if current == expected.trim() {
        return;
    }
    if std::env::var("PGRELAY_WRITE_DOCS").is_ok_and(|value| value == "1") {
        let updated = format!("{}\n{}{}", &page[..start], expected, &page[end..]);
        std::fs::write(PAGE, updated).unwrap();
        return;
    }
    panic!(
        "docs/configuration.md is out of date with `pgrelay serve --help`; run \
         `PGRELAY_WRITE_DOCS=1 cargo test --test docs`. The table should read:\n{expected}"
    );
}
