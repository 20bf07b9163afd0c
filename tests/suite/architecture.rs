//! The picture in `src/lib.rs` and docs/architecture.md stays true: every module of the library
//! imports only from its own layer or the layers below, and the modules' import graph has no
//! cycle. Reads `crate::…` paths in `src/` (comments skipped), so a new upward arrow fails here
//! before a reviewer has to find it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library's layers, top first: a module may import from its own layer and those below.
const LAYERS: &[(&str, &[&str])] = &[
    ("composition", &["app"]),
    ("HTTP", &["http", "server"]),
    (
        "tasks",
        &[
            "stream",
            "listener",
            "presence",
            "retention",
            "attach_skips",
            "publisher",
            "catch_up",
            "open_reads",
        ],
    ),
    (
        "routing and storage",
        &[
            "registry",
            "store",
            "replica",
            "migrate",
            "tls",
            "frame",
            "limits",
            "budget",
            "metrics",
            "open_files",
        ],
    ),
    (
        "domain",
        &[
            "message", "access", "jsonb", "auth", "config", "error", "sse",
        ],
    ),
];

/// Height of `module`'s layer (the top layer is the highest), or `None` for an unknown module.
fn height(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
        .map(|index| LAYERS.len() - index)
}

/// Every `.rs` file below `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            files.push(path);
        }
    }
    files
}

/// The top-level modules a piece of Rust code names as `crate::module…`, comments left out.
fn imported_modules(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or("");
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::X, b};`
                let group = group.split('}').next().unwrap_or("");
                for path in group.split(',') {
                    found.insert(first_segment(path.trim()));
                }
            } else {
                found.insert(first_segment(rest));
            }
        }
    }
    found.retain(|module| !module.is_empty());
    found
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// The library's import graph: module → the modules it imports. The binary (`main.rs`,
/// `cli/`) is the entry layer above all of these and uses the library by its public paths;
/// `testing` is no part of the relay (it serves the `#[cfg(test)]` modules of every layer with
/// a database), so it is left out, and so are imports of it.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in sources(&src) {
        let relative = file.strip_prefix(&src).unwrap();
        let module = first_segment(&relative.to_string_lossy());
        if matches!(module.as_str(), "lib" | "main" | "cli" | "testing") {
            continue;
        }
        let code = std::fs::read_to_string(&file).unwrap();
        let imports = imported_modules(&code);
        graph.entry(module.clone()).or_default().extend(
            imports
                .into_iter()
                .filter(|imported| *imported != module && imported != "testing"),
        );
    }
    graph
}

#[test]
fn every_module_has_a_layer_and_imports_only_downward() {
    let graph = import_graph();
    let mut wrong = Vec::new();
    for (module, imports) in &graph {
        let Some(own) = height(module) else {
            wrong.push(format!(
                "src/{module} is in no layer: add it to LAYERS and lib.rs"
            ));
            continue;
        };
        for imported in imports {
            match height(imported) {
                None => wrong.push(format!(
                    "{module} imports crate::{imported}, which is not a module of a layer \
                     (an item of the crate root?)"
                )),
                Some(height) if height > own => {
                    wrong.push(format!("{module} imports {imported}, a layer above it"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "upward imports:\n{}", wrong.join("\n"));
}

#[test]
fn the_import_graph_has_no_cycle() {
    let graph = import_graph();
    /// Depth-first search; `path` is the chain being explored.
    fn visit<'a>(
        module: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(start) = path.iter().position(|m| *m == module) {
            return Some(format!("{} -> {module}", path[start..].join(" -> ")));
        }
        if !done.insert(module) {
            return None;
        }
        path.push(module);
        for imported in graph.get(module).into_iter().flatten() {
            if let Some(cycle) = visit(imported, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(module, &graph, &mut path, &mut done) {
            panic!("import cycle: {cycle}");
        }
    }
}

#[test]
fn the_checker_sees_imports() {
    let code = "use crate::store::{self, DbPool};\n// crate::app in a comment\n\
                use crate::{message::Message, error};\nlet x = crate::frame::KEEPALIVE;";
    let found: Vec<String> = imported_modules(code).into_iter().collect();
    assert_eq!(found, ["error", "frame", "message", "store"]);
    assert!(height("app") > height("http") && height("http") > height("message"));
}
