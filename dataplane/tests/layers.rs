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

/// A file's module path: `backend/udp/mod.rs` is `backend::udp`,
/// `backend/udp/offload.rs` is `backend::udp::offload`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut m: Vec<String> = rel.iter().map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string()).collect();
    if m.last().is_some_and(|l| l == "mod" || l == "lib") {
        m.pop();
    }
    m
}

/// Every path a file's non-test code names from `crate::`, `super::` or
/// (in a `mod.rs`) a child module, `use` groups expanded, as segments.
fn paths(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("use ") {
        // Only a `use` item: at the start of a line, or after `pub(..)`.
        let line = rest[..i].rsplit('\n').next().unwrap_or("").trim();
        rest = &rest[i + 4..];
        if !(line.is_empty() || line.starts_with("pub")) {
            continue;
        }
        let Some(end) = rest.find(';') else { break };
        expand("", &rest[..end], &mut out);
        rest = &rest[end..];
    }
    // Paths named in code without `use`.
    for prefix in ["crate::", "super::"] {
        for (i, _) in code.match_indices(prefix) {
            let path: String =
                code[i..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            out.push(path);
        }
    }
    out
}

/// `a::{b, c::{d}}` with `base` before it, as full paths.
fn expand(base: &str, tree: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    match tree.find('{') {
        None => {
            let path = tree.split(" as ").next().unwrap_or("").trim();
            out.push(format!("{base}{path}"));
        }
        Some(open) => {
            let prefix = format!("{base}{}", &tree[..open]);
            let close = tree.rfind('}').filter(|c| *c > open).unwrap_or(tree.len());
            let inner = &tree[open + 1..close];
            let (mut depth, mut start) = (0, 0);
            for (i, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&prefix, &inner[start..i], out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
            if !inner[start..].trim().is_empty() {
                expand(&prefix, &inner[start..], out);
            }
        }
    }
}

/// The file (by module path) a path names: the longest module prefix that
/// is one of `modules`.
fn resolve(own: &[String], is_dir: bool, path: &str, modules: &[Vec<String>]) -> Option<Vec<String>> {
    let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
    let mut abs: Vec<String> = if is_dir { own.to_vec() } else { own[..own.len().saturating_sub(1)].to_vec() };
    let mut i = 0;
    match segs.first() {
        Some(&"crate") => {
            abs.clear();
            i = 1;
        }
        Some(&"super") => {
            while segs.get(i) == Some(&"super") {
                abs.pop();
                i += 1;
            }
            // `super` of a non-mod file is its directory's module.
            if !is_dir {
                abs = own[..own.len() - 1].to_vec();
                for _ in 1..i {
                    abs.pop();
                }
            }
        }
        Some(first) => {
            // A child module of a `mod.rs`; anything else is a crate or std.
            let mut child = own.to_vec();
            child.push(first.to_string());
            if !is_dir || !modules.contains(&child) {
                return None;
            }
            abs = own.to_vec();
        }
        None => return None,
    }
    for s in &segs[i..] {
        abs.push(s.to_string());
    }
    (0..=abs.len()).rev().map(|n| abs[..n].to_vec()).find(|m| modules.contains(m))
}

/// The import graph of the crate's files (module path -> modules it names).
fn graph() -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let rels: Vec<_> = all.iter().map(|p| p.strip_prefix(&src).unwrap().to_path_buf()).collect();
    let modules: Vec<Vec<String>> = rels.iter().map(|r| module_of(r)).collect();
    let mut g = Vec::new();
    for (path, rel) in all.iter().zip(&rels) {
        let own = module_of(rel);
        let is_dir = rel.file_name().is_some_and(|f| f == "mod.rs" || f == "lib.rs");
        let text = std::fs::read_to_string(path).unwrap();
        let mut to: Vec<Vec<String>> = paths(&text)
            .iter()
            .filter_map(|p| resolve(&own, is_dir, p, &modules))
            .filter(|m| *m != own && !m.is_empty())
            .collect();
        to.sort();
        to.dedup();
        g.push((own, to));
    }
    g
}

fn is_under(m: &[String], dir: &[&str]) -> bool {
    m.len() >= dir.len() && m.iter().zip(dir).all(|(a, b)| a == b)
}

/// An import circle is a cycle between files, where a `mod.rs` counts as
/// its own file (its children naming it count; its naming them too).
/// Children re-exported by a parent are not a circle: only edges between
/// files that are not each other's parent are followed.
#[test]
fn no_import_circle() {
    let g = graph();
    let edges = |m: &Vec<String>| -> Vec<Vec<String>> {
        g.iter()
            .find(|(own, _)| own == m)
            .map(|(own, to)| {
                to.iter().filter(|t| !is_under(own, &to_strs(t)) && !is_under(t, &to_strs(own))).cloned().collect()
            })
            .unwrap_or_default()
    };
    // Depth-first search with colours.
    let mut state: std::collections::HashMap<Vec<String>, u8> = Default::default();
    let mut circles = Vec::new();
    fn visit(
        m: &Vec<String>,
        edges: &dyn Fn(&Vec<String>) -> Vec<Vec<String>>,
        state: &mut std::collections::HashMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        state.insert(m.clone(), 1);
        stack.push(m.clone());
        for t in edges(m) {
            match state.get(&t) {
                Some(1) => {
                    let from = stack.iter().position(|s| *s == t).unwrap();
                    let names: Vec<String> = stack[from..].iter().chain([&t]).map(|s| s.join("::")).collect();
                    circles.push(names.join(" -> "));
                }
                Some(_) => {}
                None => visit(&t, edges, state, stack, circles),
            }
        }
        stack.pop();
        state.insert(m.clone(), 2);
    }
    for (m, _) in &g {
        if !state.contains_key(m) {
            visit(m, &edges, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    assert!(circles.is_empty(), "import circles between files:\n{}", circles.join("\n"));
}

fn to_strs(m: &[String]) -> Vec<&str> {
    m.iter().map(String::as_str).collect()
}

/// The userspace backends stand on the substrate (`backend/userspace/`)
/// and never import each other; only the substrate holds `unsafe` in
/// `backend/` (in `sys.rs`, each block with its `// SAFETY:`).
#[test]
fn userspace_backends_use_only_the_substrate() {
    let g = graph();
    let mut wrong = Vec::new();
    for (own, to) in &g {
        for (a, b) in [("udp", "wireguard"), ("wireguard", "udp")] {
            if is_under(own, &["backend", a]) {
                for t in to.iter().filter(|t| is_under(t, &["backend", b])) {
                    wrong.push(format!("{} imports {}", own.join("::"), t.join("::")));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "the userspace backends import each other:\n{}", wrong.join("\n"));

    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/backend");
    let mut all = Vec::new();
    files(&src, &mut all);
    let unsafe_outside: Vec<String> = all
        .iter()
        .filter(|p| !p.starts_with(src.join("userspace")))
        .filter(|p| std::fs::read_to_string(p).unwrap().contains("unsafe"))
        .map(|p| p.display().to_string())
        .collect();
    assert!(unsafe_outside.is_empty(), "unsafe outside the substrate: {unsafe_outside:?}");
}

#[test]
fn the_checks_see_a_circle_and_a_cross_import() {
    let mut out = Vec::new();
    expand("", "super::{fast::{FastRx, FastTx}, handshake::{self, Inbox}}", &mut out);
    assert_eq!(
        out,
        ["super::fast::FastRx", "super::fast::FastTx", "super::handshake::self", "super::handshake::Inbox"]
    );
    let modules: Vec<Vec<String>> = [
        "backend::udp",
        "backend::udp::offload",
        "backend::wireguard",
        "backend::wireguard::fast",
        "backend::userspace::io",
        "backend::userspace",
    ]
    .iter()
    .map(|m| m.split("::").map(String::from).collect())
    .collect();
    let fast = &modules[3];
    let from_fast = |p: &str| resolve(fast, false, p, &modules).map(|m| m.join("::"));
    assert_eq!(from_fast("super::super::udp::offload::read_tun").as_deref(), Some("backend::udp::offload"));
    assert_eq!(from_fast("crate::backend::userspace::io::CHUNK").as_deref(), Some("backend::userspace::io"));
    assert_eq!(from_fast("super::handshake::post").as_deref(), Some("backend::wireguard"), "no such file: the parent");
    assert_eq!(from_fast("std::io").as_deref(), None);
}
