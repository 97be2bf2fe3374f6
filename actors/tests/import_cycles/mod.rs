//! The import-circle scanner behind `tests/no_import_cycles.rs`.
//!
//! A module is a file; a reference is any `crate::…` path (in `use` or inline, brace groups
//! expanded) or a file-level `super::…` path, resolved to the longest module prefix that is a file
//! and followed through `pub use` re-exports to the file that defines the name. A reference from a
//! file to itself or to one of its own child modules does not count.
//!
//! It is a small text scan, not a Rust parser: comments are dropped, string literals blanked, and
//! inline `mod name { … }` blocks tracked only so `super::` inside `mod tests` resolves to the file
//! itself. Known limits: `use` aliases (`as`) are recorded under the original name, glob re-exports
//! are not followed, and `#[path]` attributes are not read (none in this workspace).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// One `crate::…` / `super::…` reference: the referencing file's line and the module it resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub line: usize,
    pub target: Vec<String>,
}

/// The module graph of one crate: module path (`["stage", "dedup"]`) → the file and its references.
pub struct Graph {
    pub files: BTreeMap<Vec<String>, PathBuf>,
    pub edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, Vec<usize>>>,
}

pub fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && !(parts.is_empty() && stem == "lib") {
        parts.push(stem.to_string());
    }
    parts
}

pub fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source with comments removed and string/char literal contents blanked, line breaks kept.
pub fn strip(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if chars[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !ident_before(&chars, i) {
            // Raw string r"…" / r#"…"#: skip to the matching quote and hashes.
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            out.push_str("\"\"");
            while j < chars.len() {
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if chars[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            i = j;
        } else if c == '"' {
            out.push_str("\"\"");
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                if chars.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && next.is_some() && chars.get(i + 2) == Some(&'\'') {
            out.push_str("' '");
            i += 3;
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{..}': skip to the closing quote.
            let mut j = i + 2;
            while j < chars.len() && chars[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

pub fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

pub fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// A token scanner over stripped source: identifiers, `::`, and single punctuation characters.
pub fn tokens(source: &str) -> Vec<(String, usize)> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let start = i;
            while i < chars.len() && is_ident(chars[i]) {
                i += 1;
            }
            out.push((chars[start..i].iter().collect(), line));
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(("::".to_string(), line));
            i += 2;
        } else {
            out.push((c.to_string(), line));
            i += 1;
        }
    }
    out
}

/// Reads a path tail after `crate::` / `super::` starting at `tokens[i]`: `a::b::C`, or a brace
/// group `{a::b, c::{d, e}, self}`. Each expanded path is pushed onto `out` (prefix + segments).
pub fn read_tail(
    tokens: &[(String, usize)],
    mut i: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let mut path = prefix.to_vec();
    loop {
        let Some((tok, _)) = tokens.get(i) else {
            out.push(path);
            return i;
        };
        if tok == "{" {
            i += 1;
            loop {
                match tokens.get(i).map(|t| t.0.as_str()) {
                    None => return i,
                    Some("}") => return i + 1,
                    Some(",") => i += 1,
                    Some("self") => {
                        out.push(path.clone());
                        i += 1;
                    }
                    Some(_) => i = read_tail(tokens, i, &path, out),
                }
            }
        }
        if tok.chars().all(is_ident) && tok != "as" {
            path.push(tok.clone());
            i += 1;
            if tokens.get(i).map(|t| t.0.as_str()) == Some("::") {
                i += 1;
                continue;
            }
        }
        // An `as alias` or anything else ends the path.
        if tokens.get(i).map(|t| t.0.as_str()) == Some("as") {
            i += 2;
        }
        out.push(path);
        return i;
    }
}

/// Per module, the names it re-exports (`pub use child::Name;`, `pub use crate::model::Tp;`) and the
/// absolute path each stands for.
pub type Reexports = BTreeMap<Vec<String>, BTreeMap<String, Vec<String>>>;

/// The `pub use` / `pub(crate) use` items of a file at module path `me`. Paths into other crates
/// are skipped, and so are globs.
pub fn reexports_of(
    source: &str,
    me: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let toks = tokens(&strip(source));
    let tok = |i: usize| toks.get(i).map(|t| t.0.as_str());
    let mut out = BTreeMap::new();
    for i in 0..toks.len() {
        if tok(i) != Some("pub") {
            continue;
        }
        let mut j = i + 1;
        if tok(j) == Some("(") {
            while tok(j).is_some_and(|t| t != ")") {
                j += 1;
            }
            j += 1;
        }
        if tok(j) != Some("use") {
            continue;
        }
        j += 1;
        let mut base: Vec<String> = me.to_vec();
        match tok(j) {
            Some("crate") => {
                base.clear();
                j += 2;
            }
            Some("self") => j += 2,
            Some("super") => {
                while tok(j) == Some("super") && tok(j + 1) == Some("::") {
                    base.pop();
                    j += 2;
                }
            }
            Some(child) if modules.contains(&[me, &[child.to_string()]].concat()) => {}
            _ => continue,
        }
        let mut paths = Vec::new();
        read_tail(&toks, j, &base, &mut paths);
        for path in paths {
            if let Some(name) = path
                .last()
                .filter(|n| n.as_str() != "*" && path.len() > base.len())
            {
                out.insert(name.clone(), path.clone());
            }
        }
    }
    out
}

/// The file a path names: its longest prefix that is a module, followed through re-exports (a
/// facade `mod.rs` that re-exports `client::BigQuery` is not where `BigQuery` lives).
pub fn resolve(
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
    reexports: &Reexports,
) -> Vec<String> {
    let mut path = path.to_vec();
    for _ in 0..8 {
        let module = (0..=path.len())
            .rev()
            .map(|n| path[..n].to_vec())
            .find(|p| modules.contains(p))
            .unwrap_or_default();
        let next = path
            .get(module.len())
            .and_then(|name| reexports.get(&module)?.get(name));
        match next {
            Some(target) if *target != path[..=module.len()] => {
                path = [target.as_slice(), &path[module.len() + 1..]].concat();
            }
            _ => return module,
        }
    }
    Vec::new()
}

/// Every reference in `source` of the file at module path `me`, resolved against `modules` and
/// the crate's re-exports; references to `me` itself and its children are left out.
pub fn references(
    source: &str,
    me: &[String],
    modules: &BTreeSet<Vec<String>>,
    reexports: &Reexports,
) -> Vec<Reference> {
    let toks = tokens(&strip(source));
    let mut out = Vec::new();
    // Inline `mod name {` blocks: brace depth at which each one opened.
    let (mut depth, mut inline_mods): (usize, Vec<usize>) = (0, Vec::new());
    let mut i = 0;
    while i < toks.len() {
        let (tok, line) = (&toks[i].0, toks[i].1);
        let preceded_by_path = i > 0 && toks[i - 1].0 == "::";
        match tok.as_str() {
            "{" => depth += 1,
            "}" => {
                depth = depth.saturating_sub(1);
                if inline_mods.last() == Some(&depth) {
                    inline_mods.pop();
                }
            }
            "mod" if toks.get(i + 2).map(|t| t.0.as_str()) == Some("{") => {
                inline_mods.push(depth);
                depth += 1;
                i += 3;
                continue;
            }
            "crate" | "super"
                if !preceded_by_path && toks.get(i + 1).map(|t| t.0.as_str()) == Some("::") =>
            {
                let mut base: Vec<String> = Vec::new();
                let mut j = i;
                if tok == "super" {
                    let mut ups: usize = 0;
                    while toks.get(j).map(|t| t.0.as_str()) == Some("super")
                        && toks.get(j + 1).map(|t| t.0.as_str()) == Some("::")
                    {
                        ups += 1;
                        j += 2;
                    }
                    // `super` inside an inline module first climbs out of the inline modules.
                    let file_ups = ups.saturating_sub(inline_mods.len());
                    if file_ups == 0 || file_ups > me.len() {
                        i = j;
                        continue;
                    }
                    base.extend_from_slice(&me[..me.len() - file_ups]);
                } else {
                    j += 2;
                }
                let mut paths = Vec::new();
                i = read_tail(&toks, j, &base, &mut paths);
                for path in paths {
                    let target = resolve(&path, modules, reexports);
                    if !target.starts_with(me) {
                        out.push(Reference { line, target });
                    }
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

pub fn graph(src: &Path, skip: &[&str]) -> Graph {
    let mut paths = Vec::new();
    rust_files(src, &mut paths);
    paths.retain(|p| {
        !skip
            .iter()
            .any(|s| p.strip_prefix(src).is_ok_and(|r| r.starts_with(s)))
    });
    let files: BTreeMap<Vec<String>, PathBuf> = paths
        .into_iter()
        .map(|p| (module_path(src, &p), p))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.keys().cloned().collect();
    let sources: BTreeMap<&Vec<String>, String> = files
        .iter()
        .map(|(m, file)| {
            let source = fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            (m, source)
        })
        .collect();
    let reexports: Reexports = sources
        .iter()
        .map(|(m, source)| ((*m).clone(), reexports_of(source, m, &modules)))
        .collect();
    let mut edges: BTreeMap<Vec<String>, BTreeMap<Vec<String>, Vec<usize>>> = BTreeMap::new();
    for (module, source) in &sources {
        let entry = edges.entry((*module).clone()).or_default();
        for r in references(source, module, &modules, &reexports) {
            entry.entry(r.target).or_default().push(r.line);
        }
    }
    Graph { files, edges }
}

/// Strongly connected sets of more than one file (Tarjan), each sorted, the list sorted.
pub fn cycles(g: &Graph) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        on_stack: BTreeSet<&'a Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.g.edges.get(v).into_iter().flat_map(|e| e.keys()) {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                set.push(w.clone());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                s.out.push(set);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.files.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

pub fn report(g: &Graph, root: &Path, sets: &[Vec<Vec<String>>]) -> String {
    let name = |m: &Vec<String>| {
        g.files[m]
            .strip_prefix(root)
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let mut text = String::new();
    for set in sets {
        let members: Vec<String> = set.iter().map(name).collect();
        text += &format!("circle: {}\n", members.join(" ↔ "));
        for from in set {
            for (to, lines) in g.edges.get(from).into_iter().flatten() {
                if set.contains(to) {
                    text += &format!("  {} → {} (lines {:?})\n", name(from), name(to), lines);
                }
            }
        }
    }
    text
}
