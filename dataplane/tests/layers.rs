//! The crate's layering (docs/architecture.md), checked from its sources: a
//! module imports from its own layer and the layers below it, never above.

use std::path::Path;

/// Layers from the bottom up; a file's layer is its first path component.
const LAYERS: [&[&str]; 6] =
    [&["model", "error"], &["forward"], &["report"], &["kernel"], &["sync"], &["backend", "dataplane", "lib"]];

fn layer_of(name: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&name))
}

/// Every `crate::<module>` named in a file's non-test code.
fn imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_a_higher_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    assert!(all.len() > 30, "found only {} source files under {}", all.len(), src.display());
    let mut wrong = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        let own = layer_of(&top).unwrap_or_else(|| panic!("{} is in no layer; add it to LAYERS", rel.display()));
        for name in imports(&std::fs::read_to_string(path).unwrap()) {
            let Some(theirs) = layer_of(&name) else { continue };
            if theirs > own {
                wrong.push(format!("{} imports crate::{name}", rel.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "lower layers import higher ones:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    assert_eq!(
        imports("use crate::backend::udp;\nuse crate::WEFT_ROUTE_PROTO;\n#[cfg(test)]\nuse crate::sync;"),
        ["backend"]
    );
    assert!(layer_of("kernel") < layer_of("sync"));
    assert!(layer_of("forward") < layer_of("kernel"), "forward/ has no I/O and sits below the kernel layer");
}
