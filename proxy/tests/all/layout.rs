//! The crates' structure as tests: imports run one way. No file of `proxy/src` or
//! `ha/src` imports, through any chain, a file that imports it back; and the top-level
//! parts of `proxy/src` (its folders and files) import each other one way too, so the
//! folder layout is the layering. Imports are read from the code (`crate::` and
//! `super::` paths, a folder face's own children); comments are not imports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path inside a crate, e.g. `["http", "retry"]`; the crate root is empty.
type Module = Vec<String>;

/// Every module of the crate at `src` with the modules it imports.
fn imports(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    collect(src, &mut files);
    let module_of = |f: &Path| -> Module {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut m: Module = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
            m.pop();
        }
        m
    };
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(f)).collect();
    // The longest module that a path names (`crate::http::retry::attempts` → http::retry).
    let resolve = |path: &[String]| -> Option<Module> {
        (1..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|m| modules.contains(m))
    };
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = module_of(f);
        let text = std::fs::read_to_string(f).unwrap();
        let code: String = text
            .split("\n#[cfg(test)]\nmod tests")
            .next()
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut to = BTreeSet::new();
        let is_face = f.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs");
        // `super` is the module above this file's module, whether the file is a face or not.
        let above: Module = me[..me.len().saturating_sub(1)].to_vec();
        for (prefix, base) in [("crate::", Vec::new()), ("super::", above)] {
            for path in paths_after(&code, prefix) {
                let full: Module = base.iter().cloned().chain(path).collect();
                if let Some(m) = resolve(&full) {
                    to.insert(m);
                }
            }
        }
        if is_face {
            // A face's own code naming its children (`instance::create(..)`, `pub use x::Y`).
            for m in modules.iter().filter(|m| m.len() == me.len() + 1 && m.starts_with(&me)) {
                let child = m.last().unwrap();
                if code
                    .lines()
                    .any(|l| !l.trim_start().starts_with("pub mod") && l.contains(&format!("{child}::")))
                {
                    to.insert(m.clone());
                }
            }
        }
        to.retain(|m| m != &me && !me.starts_with(m));
        graph.insert(me, to);
    }
    graph
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") && p.file_name().is_some_and(|n| n != "tests.rs") {
            out.push(p);
        }
    }
}

/// The module paths written after `prefix`, with each item of a `{..}` group.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let head: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if rest[end..].starts_with('{') {
            let close = rest[end..].find('}').map_or(rest.len(), |j| end + j);
            for item in rest[end + 1..close].split(',') {
                let item = item.split(" as ").next().unwrap().trim();
                let tail = item
                    .split("::")
                    .filter(|s| !s.is_empty() && *s != "self")
                    .map(str::to_string);
                out.push(head.iter().cloned().chain(tail).collect());
            }
        } else {
            out.push(head);
        }
    }
    out
}

/// The groups of modules that import each other in a loop (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct T<'g> {
        g: &'g BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'g Module, usize>,
        low: BTreeMap<&'g Module, usize>,
        stack: Vec<&'g Module>,
        on: BTreeSet<&'g Module>,
        out: Vec<Vec<Module>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g Module) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let Some((w, _)) = self.g.get_key_value(w) else {
                    continue;
                };
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    group.push(w.clone());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    self.out.push(group);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

fn crate_src(dir: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir).join("src")
}

fn show(groups: &[Vec<Module>]) -> String {
    groups
        .iter()
        .map(|g| g.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(", "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_file_of_the_proxy_or_the_group_imports_itself_back() {
    for dir in ["proxy", "ha"] {
        let graph = imports(&crate_src(dir));
        assert!(graph.len() > 20, "{dir}: read {} modules", graph.len());
        let loops = cycles(&graph);
        assert!(
            loops.is_empty(),
            "{dir}/src: these files import each other in a loop:\n{}",
            show(&loops)
        );
    }
}

#[test]
fn the_proxys_folders_are_its_layers() {
    let graph = imports(&crate_src("proxy"));
    let mut parts: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, tos) in &graph {
        let top = from.iter().take(1).cloned().collect::<Module>();
        let entry = parts.entry(top.clone()).or_default();
        for to in tos {
            let t = to.iter().take(1).cloned().collect::<Module>();
            if t != top {
                entry.insert(t);
            }
        }
    }
    let loops = cycles(&parts);
    assert!(
        loops.is_empty(),
        "proxy/src: these parts import each other in a loop:\n{}",
        show(&loops)
    );
    // The request path does not reach into the control plane or the VIP/anycast glue.
    for low in ["config", "runtime", "wasm", "http", "l4", "upstream"] {
        let reached = &parts[&vec![low.to_string()]];
        for high in ["control", "cluster", "server", "listen"] {
            assert!(!reached.contains(&vec![high.to_string()]), "{low} imports {high}");
        }
    }
}

#[test]
fn the_configuration_is_plain_values() {
    // `config/` reads and validates; it builds nothing (no TLS config, no compiled
    // module): `runtime/` does, from the values and anchors `config/` keeps.
    let graph = imports(&crate_src("proxy"));
    let config_imports: BTreeSet<&Module> = graph
        .iter()
        .filter(|(from, _)| from.first().is_some_and(|p| p == "config"))
        .flat_map(|(_, tos)| tos)
        .collect();
    for builder in [
        "runtime",
        "wasm",
        "wasm_engine",
        "http",
        "l4",
        "upstream",
        "listen",
        "worker",
    ] {
        assert!(
            !config_imports.iter().any(|m| m.first().is_some_and(|p| p == builder)),
            "config imports {builder}"
        );
    }
    // From `tls` it names the settings types only, never a function that loads files.
    let mut files = Vec::new();
    collect(&crate_src("proxy").join("config"), &mut files);
    for f in files {
        let code = std::fs::read_to_string(&f).unwrap();
        for path in paths_after(&code, "crate::tls::") {
            let name = path.first().map(String::as_str).unwrap_or("");
            assert!(
                matches!(name, "ListenerTls" | "UpstreamTls" | "ClientAuth"),
                "{} uses crate::tls::{name}",
                f.display()
            );
        }
    }
}
