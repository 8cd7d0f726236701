//! Promise: the crate's layers form a straight line. A module imports only from layers below
//! its own (docs/architecture.md draws them), so the pipeline reads top to bottom and no change
//! in a low layer has to know about a high one. Checked by reading `src/`.

use std::{collections::BTreeMap, fs, path::Path};

/// Each top-level module with its layer; a module may import only from lower layers.
const LAYERS: [(&str, u8); 17] = [
    ("json_scan", 0),
    ("retry", 0),
    ("config", 0),
    ("domain", 1),
    ("metrics", 2),
    ("template", 2),
    ("telemetry", 2),
    ("llm", 3),
    ("store", 3),
    ("amqp", 3),
    ("http", 3),
    ("pipeline", 4),
    ("admin", 4),
    ("worker", 5),
    ("cli", 6),
    ("client", 6),
    ("commands", 7),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(name, _)| *name == module)
        .map(|(_, layer)| *layer)
        .unwrap_or_else(|| panic!("module `{module}` has no layer in tests/it/layers.rs"))
}

/// The top-level modules that `text` names through `crate::`.
fn imports(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::{..}, b}`: the first segment of each top-level item.
            let (mut depth, mut item_start) = (0usize, true);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_alphanumeric() || c == '_') => {
                        found.push(identifier(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(identifier(rest));
        }
    }
    found
}

fn identifier(text: &str) -> String {
    text.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every `.rs` file under `dir` with the top-level module it belongs to.
fn sources(dir: &Path, module: Option<&str>, out: &mut Vec<(String, String, String)>) {
    for entry in fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("a directory entry").path();
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_owned();
        if path.is_dir() {
            sources(&path, Some(module.unwrap_or(&stem)), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = fs::read_to_string(&path).expect("reading a source file");
            let owner = module.map_or(stem.clone(), str::to_owned);
            out.push((path.display().to_string(), owner, text));
        }
    }
}

#[test]
fn no_module_imports_from_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, None, &mut files);
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut upward = Vec::new();
    for (path, module, text) in &files {
        // The crate root declares the modules and the binary uses the library's public paths.
        if module == "lib" || module == "main" {
            continue;
        }
        assert!(
            !text.contains("super::super"),
            "{path}: name the module through crate::"
        );
        for target in imports(text) {
            if &target == module {
                continue;
            }
            *edges.entry((module.clone(), target.clone())).or_default() += 1;
            if layer(&target) >= layer(module) {
                upward.push(format!(
                    "{path}: {module} (layer {}) imports {target} (layer {})",
                    layer(module),
                    layer(&target)
                ));
            }
        }
    }
    for ((from, to), n) in &edges {
        println!(
            "{from:>12} (layer {}) -> {to} (layer {}): {n} paths",
            layer(from),
            layer(to)
        );
    }
    assert!(
        upward.is_empty(),
        "imports against the layers:\n{}",
        upward.join("\n")
    );
    assert!(
        edges.len() > 20,
        "the scan found too few imports to be reading the sources"
    );
}
