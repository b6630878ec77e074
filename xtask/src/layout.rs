//! `cargo xtask layout`: the module graph of `gateway/src`, one node per
//! file, and the import cycles in it.
//!
//! An arrow A -> B means file A names an item of file B (`use crate::b::X`,
//! an inline `crate::b::x()`, `super::X`, or a child module `b::X` that A
//! declares). A name a module hands on with `pub use child::*` or `pub use
//! child::{X}` counts as the file that defines it, and a glob import (`use
//! super::*`) as every such file whose names the importing file uses.
//! Not followed: macros, `#[path]`, and paths through a module imported by
//! its short name (`use crate::proxy; proxy::tls::f()`). Test modules (`#[cfg(test)] mod ...`) are left out: a test may
//! reach anywhere. The whole suite refuses a cycle, so the layout that
//! README's *Layout* describes cannot quietly grow one back.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// A module path inside the crate: `["proxy", "pool"]`; the crate root is
/// empty.
type ModPath = Vec<String>;

/// The files of one crate and the arrows between them.
pub struct Graph {
    /// Module path -> file, relative to the crate's `src`.
    files: BTreeMap<ModPath, PathBuf>,
    /// Arrows by module path, self-arrows dropped.
    arrows: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

impl Graph {
    /// Reads every module file reachable from `src/lib.rs`.
    pub fn read(src: &Path) -> Result<Graph> {
        let mut files = BTreeMap::new();
        let mut code = BTreeMap::new();
        let mut todo = vec![(ModPath::new(), src.join("lib.rs"))];
        while let Some((path, file)) = todo.pop() {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let text = strip(&text);
            let (text, children) = drop_test_modules(&text);
            for child in children {
                let mut p = path.clone();
                p.push(child.clone());
                // `a/b.rs` or `a/b/mod.rs`, relative to the folder of a
                // `mod.rs`/`lib.rs`, or to `a/` for a file `a.rs`.
                let dir = if file
                    .file_name()
                    .is_some_and(|n| n == "mod.rs" || n == "lib.rs")
                {
                    file.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    file.with_extension("")
                };
                let flat = dir.join(format!("{child}.rs"));
                let nested = dir.join(&child).join("mod.rs");
                let found = if flat.exists() { flat } else { nested };
                todo.push((p, found));
            }
            let rel = file.strip_prefix(src).unwrap_or(&file).to_path_buf();
            files.insert(path.clone(), rel);
            code.insert(path, text);
        }
        // Each module's file modules, by name.
        let mut children: BTreeMap<ModPath, Vec<String>> = BTreeMap::new();
        for m in files.keys().filter(|m| !m.is_empty()) {
            let (parent, name) = m.split_at(m.len() - 1);
            children
                .entry(parent.to_vec())
                .or_default()
                .push(name[0].clone());
        }
        let children_of = |p: &ModPath| children.get(p).map_or(&[][..], Vec::as_slice);
        let names = Names {
            defs: code
                .iter()
                .map(|(p, t)| (p.clone(), definitions(t)))
                .collect(),
            reexports: code
                .iter()
                .map(|(p, t)| (p.clone(), reexports(t, children_of(p))))
                .collect(),
        };
        let mut arrows = BTreeMap::new();
        for (path, text) in &code {
            let own = &names.defs[path];
            let used: BTreeSet<String> = identifiers(text).filter(|i| !own.contains(i)).collect();
            let mut to = BTreeSet::new();
            for target in references(text, path, children_of(path)) {
                let glob = target.last().is_some_and(|l| l == "*");
                let target = &target[..target.len() - usize::from(glob)];
                let Some(m) = resolve(&files, target) else {
                    continue;
                };
                if glob {
                    // What the glob brings in and the file names: the files
                    // that define it, through the module's re-exports.
                    to.extend(used.iter().filter_map(|n| names.provider(&m, n)));
                    to.insert(m);
                } else {
                    let named = target.get(m.len());
                    to.insert(named.and_then(|n| names.provider(&m, n)).unwrap_or(m));
                }
            }
            to.remove(path);
            arrows.insert(path.clone(), to);
        }
        Ok(Graph { files, arrows })
    }

    /// The cycles, level by level: inside each folder module, its direct
    /// members (files and subfolders, each with everything under it) must
    /// not import each other in a loop. The folder's own `mod.rs` is the
    /// container, not a member: its children may use its items, and at the
    /// level above it counts with the folder.
    pub fn cycles(&self) -> Vec<Cycle> {
        let folders: BTreeSet<&ModPath> = self
            .files
            .keys()
            .filter(|m| {
                self.files
                    .keys()
                    .any(|c| c.len() == m.len() + 1 && c.starts_with(m))
            })
            .collect();
        let mut out = Vec::new();
        for folder in folders {
            // The direct member of `folder` that `m` falls under, if any.
            let member = |m: &ModPath| -> Option<ModPath> {
                (m.len() > folder.len() && m.starts_with(folder))
                    .then(|| m[..=folder.len()].to_vec())
            };
            let members: Vec<ModPath> = self
                .files
                .keys()
                .filter_map(member)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let index: BTreeMap<&ModPath, usize> =
                members.iter().enumerate().map(|(i, m)| (m, i)).collect();
            let mut edges = vec![BTreeSet::new(); members.len()];
            let mut ties: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
            for (from, tos) in &self.arrows {
                let Some(a) = member(from) else { continue };
                for to in tos {
                    let Some(b) = member(to) else { continue };
                    if a != b {
                        let (ia, ib) = (index[&a], index[&b]);
                        edges[ia].insert(ib);
                        ties.entry((ia, ib)).or_default().push(format!(
                            "{} -> {}",
                            self.files[from].display(),
                            self.files[to].display()
                        ));
                    }
                }
            }
            let edges: Vec<Vec<usize>> =
                edges.into_iter().map(|e| e.into_iter().collect()).collect();
            for group in tarjan(&edges).into_iter().filter(|g| g.len() > 1) {
                let name = |i: usize| {
                    let m = &members[i];
                    let file = &self.files[m];
                    if file.ends_with("mod.rs") {
                        format!("{}/", file.parent().unwrap_or(file).display())
                    } else {
                        file.display().to_string()
                    }
                };
                let mut names: Vec<String> = group.iter().map(|&i| name(i)).collect();
                names.sort();
                let mut arrows: Vec<String> = ties
                    .iter()
                    .filter(|((a, b), _)| group.contains(a) && group.contains(b))
                    .flat_map(|(_, t)| t.iter().cloned())
                    .collect();
                arrows.sort();
                out.push(Cycle {
                    members: names,
                    arrows,
                });
            }
        }
        out.sort_by(|a, b| a.members.cmp(&b.members));
        out
    }
}

/// Members of one folder that import each other in a loop, and the file
/// arrows that tie them.
#[derive(Debug, PartialEq)]
pub struct Cycle {
    /// Files (`pool.rs`) and folders (`health/`), by path under `src`.
    pub members: Vec<String>,
    /// `a.rs -> b/c.rs`, one per file arrow inside the loop.
    pub arrows: Vec<String>,
}

/// A child a module hands on: its name, and the names it hands on (`None`
/// for all, `pub use child::*`).
type Reexport = (String, Option<Vec<String>>);

/// What each module defines and hands on from its children.
struct Names {
    defs: BTreeMap<ModPath, BTreeSet<String>>,
    reexports: BTreeMap<ModPath, Vec<Reexport>>,
}

impl Names {
    /// The module that defines `name` as `m` hands it on: `m` itself, or
    /// the child (grandchild, ...) its `pub use` takes it from.
    fn provider(&self, m: &ModPath, name: &str) -> Option<ModPath> {
        if self.defs.get(m).is_some_and(|d| d.contains(name)) {
            return Some(m.clone());
        }
        for (child, names) in self.reexports.get(m).into_iter().flatten() {
            let mut c = m.clone();
            c.push(child.clone());
            match names {
                Some(list) if list.iter().any(|n| n == name) => {
                    return Some(self.provider(&c, name).unwrap_or(c));
                }
                None => {
                    if let Some(p) = self.provider(&c, name) {
                        return Some(p);
                    }
                }
                Some(_) => {}
            }
        }
        None
    }
}

/// Every identifier token of a (stripped) file.
fn identifiers(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with(|c: char| c.is_alphabetic() || c == '_'))
        .map(str::to_owned)
}

/// `cargo xtask layout`: prints the cycles of `gateway/src` and fails if
/// there is one.
pub fn check(src: &Path) -> Result<()> {
    let graph = Graph::read(src)?;
    let cycles = graph.cycles();
    if cycles.is_empty() {
        println!(
            "layout: {} modules in {}, no import cycle",
            graph.files.len(),
            src.display()
        );
        return Ok(());
    }
    for (i, c) in cycles.iter().enumerate() {
        println!("cycle {}: {}", i + 1, c.members.join(", "));
        for line in &c.arrows {
            println!("  {line}");
        }
    }
    anyhow::bail!(
        "{} import cycle(s) between modules of {}",
        cycles.len(),
        src.display()
    )
}

/// Blanks comments, string and char literals (keeping line structure), so a
/// path in a doc comment or a URL in a string is no arrow.
fn strip(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !prev_ident(&b, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                out.push(blank(b[j]));
                j += 1;
            }
            i = j;
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    i += 1;
                }
                if let Some(&ch) = b.get(i) {
                    out.push(blank(ch));
                }
                i += 1;
            }
            i += 1;
        } else if c == '\'' && (next == Some('\\') || b.get(i + 2) == Some(&'\'')) {
            // A char literal, not a lifetime.
            i += 1;
            while i < b.len() && b[i] != '\'' {
                if b[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// Removes `#[cfg(test)]` items (inline `mod x { ... }` or `mod x;`) and
/// returns the remaining text with the names of the file modules it
/// declares.
fn drop_test_modules(text: &str) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut children = Vec::new();
    let mut rest = text;
    loop {
        let Some(at) = rest.find("#[cfg(test)]") else {
            out.push_str(rest);
            break;
        };
        out.push_str(&rest[..at]);
        let after = &rest[at + "#[cfg(test)]".len()..];
        // Skip the item: to its `;` or its balanced braces, whichever ends it.
        let mut depth = 0usize;
        let mut end = after.len();
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    for line in out.lines() {
        if let Some(name) = without_visibility(line)
            .and_then(|t| t.strip_prefix("mod "))
            .and_then(|r| r.trim_end().strip_suffix(';'))
        {
            let name = name.trim();
            children.push(name.strip_prefix("r#").unwrap_or(name).to_owned());
        }
    }
    (out, children)
}

/// An item line without its attributes (`#[...]`) and visibility (`pub`,
/// `pub(crate)`, `pub(in path)`).
fn without_visibility(line: &str) -> Option<&str> {
    let mut t = line.trim_start();
    while let Some(rest) = t.strip_prefix("#[") {
        t = rest.get(rest.find(']')? + 1..)?.trim_start();
    }
    if let Some(rest) = t.strip_prefix("pub") {
        if let Some(r) = rest.strip_prefix('(') {
            t = r.get(r.find(')')? + 1..)?.trim_start();
        } else if rest.starts_with(char::is_whitespace) {
            t = rest.trim_start();
        }
    }
    Some(t)
}

/// The names a file defines at its top level (functions, types, traits,
/// constants, statics, modules, macros): what a path may name in it.
fn definitions(text: &str) -> BTreeSet<String> {
    const KINDS: [&str; 10] = [
        "fn ",
        "struct ",
        "enum ",
        "const ",
        "static ",
        "type ",
        "trait ",
        "union ",
        "mod ",
        "macro_rules! ",
    ];
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with(char::is_whitespace)) {
        let Some(mut t) = without_visibility(line) else {
            continue;
        };
        // Qualifiers before `fn` (`const fn`, `async unsafe fn`); a
        // `const NAME` is a definition of its own.
        loop {
            let before = t;
            for q in ["async ", "unsafe ", "extern \"C\" "] {
                t = t.strip_prefix(q).unwrap_or(t);
            }
            if let Some(r) = t.strip_prefix("const ")
                && ["fn ", "unsafe ", "async "]
                    .iter()
                    .any(|f| r.starts_with(f))
            {
                t = r;
            }
            if t == before {
                break;
            }
        }
        if let Some(rest) = KINDS.iter().find_map(|k| t.strip_prefix(k)) {
            let rest = rest.strip_prefix("r#").unwrap_or(rest);
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The children a `mod.rs` (or any module) hands on with `pub use
/// child::*` (`None`) or `pub use child::{A, B}` (`Some([A, B])`).
fn reexports(text: &str, children: &[String]) -> Vec<Reexport> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = find_word(rest, "use") {
        let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
        let public = rest[line_start..at].trim_start().starts_with("pub");
        let tail = &rest[at + 3..];
        let end = tail.find(';').unwrap_or(tail.len());
        let tree = tail[..end].trim();
        rest = tail.get(end + 1..).unwrap_or("");
        if !public {
            continue;
        }
        let tree = tree.strip_prefix("self::").unwrap_or(tree);
        let Some((child, items)) = tree.split_once("::") else {
            continue;
        };
        if !children.iter().any(|c| c == child) {
            continue;
        }
        let items = items.trim();
        let names = if items == "*" {
            None
        } else {
            let inner = items
                .strip_prefix('{')
                .and_then(|i| i.strip_suffix('}'))
                .unwrap_or(items);
            Some(
                split_top(inner)
                    .into_iter()
                    .filter_map(|i| {
                        let leaf = i.split("::").last()?.trim();
                        // `X as Y` is named Y here.
                        let leaf = leaf.rsplit(" as ").next()?.trim();
                        (!leaf.is_empty()).then(|| leaf.to_owned())
                    })
                    .collect(),
            )
        };
        out.push((child.to_owned(), names));
    }
    out
}

/// Every path the file names, made absolute from the crate root: use trees
/// expanded, `super::` and `self::` resolved, child modules recognised.
fn references(text: &str, here: &ModPath, children: &[String]) -> Vec<ModPath> {
    let mut out = Vec::new();
    // `use` trees first, then every inline path outside them.
    let mut code = String::new();
    let mut rest = text;
    while let Some(at) = find_word(rest, "use") {
        code.push_str(&rest[..at]);
        let tail = &rest[at + 3..];
        let end = tail.find(';').unwrap_or(tail.len());
        expand(tail[..end].trim(), &mut Vec::new(), &mut out);
        rest = tail.get(end + 1..).unwrap_or("");
    }
    code.push_str(rest);
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if (chars[i].is_alphabetic() || chars[i] == '_') && !prev_ident(&chars, i) {
            let mut j = i;
            let mut segs = Vec::new();
            loop {
                let start = j;
                while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                    j += 1;
                }
                segs.push(chars[start..j].iter().collect::<String>());
                if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') {
                    j += 2;
                    if !chars.get(j).is_some_and(|c| c.is_alphabetic() || *c == '_') {
                        break;
                    }
                } else {
                    break;
                }
            }
            if segs.len() > 1 {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out.into_iter()
        .filter_map(|segs| absolute(segs, here, children))
        .collect()
}

/// The byte offset of `word` standing alone (not part of an identifier).
fn find_word(s: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(k) = s[from..].find(word) {
        let at = from + k;
        let before = s[..at].chars().next_back();
        let after = s[at + word.len()..].chars().next();
        let alone = |c: Option<char>| !c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        if alone(before) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + word.len();
    }
    None
}

/// Expands one use tree (`crate::{a::B, c}`) into its paths.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if tree.is_empty() {
        return;
    }
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        for part in split_top(inner) {
            expand(part, &mut prefix.clone(), out);
        }
        return;
    }
    match tree.find("::") {
        Some(k) if !tree[..k].contains('{') => {
            prefix.push(tree[..k].trim().to_owned());
            expand(&tree[k + 2..], prefix, out);
        }
        _ => {
            let leaf = tree.split_whitespace().next().unwrap_or("");
            let mut path = prefix.clone();
            if leaf != "self" {
                path.push(leaf.strip_prefix("r#").unwrap_or(leaf).to_owned());
            }
            out.push(path);
        }
    }
}

/// Splits `a, b::{c, d}, e` at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (k, ch) in s.char_indices() {
        match ch {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Makes a path absolute from the crate root, or `None` when it leaves the
/// crate (another crate, a local name that is no child module).
fn absolute(segs: Vec<String>, here: &ModPath, children: &[String]) -> Option<ModPath> {
    let first = segs.first()?;
    match first.as_str() {
        "crate" => Some(segs[1..].to_vec()),
        "self" => Some(
            here.iter()
                .cloned()
                .chain(segs[1..].iter().cloned())
                .collect(),
        ),
        "super" => {
            let mut base = here.clone();
            let mut k = 0;
            while segs.get(k).is_some_and(|s| s == "super") {
                base.pop()?;
                k += 1;
            }
            Some(base.into_iter().chain(segs[k..].iter().cloned()).collect())
        }
        name if children.iter().any(|c| c == name) => {
            Some(here.iter().cloned().chain(segs).collect())
        }
        _ => None,
    }
}

/// The file that defines the longest module prefix of `path`.
fn resolve(files: &BTreeMap<ModPath, PathBuf>, path: &[String]) -> Option<ModPath> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| files.contains_key(p))
}

/// Tarjan's strongly connected components.
fn tarjan(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct State<'a> {
        edges: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(s: &mut State<'_>, v: usize) {
        s.index[v] = Some(s.next);
        s.low[v] = s.next;
        s.next += 1;
        s.stack.push(v);
        s.on_stack[v] = true;
        for &w in &s.edges[v] {
            match s.index[w] {
                None => {
                    visit(s, w);
                    s.low[v] = s.low[v].min(s.low[w]);
                }
                Some(iw) if s.on_stack[w] => s.low[v] = s.low[v].min(iw),
                Some(_) => {}
            }
        }
        if Some(s.low[v]) == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack[w] = false;
                group.push(w);
                if w == v {
                    break;
                }
            }
            s.out.push(group);
        }
    }
    let n = edges.len();
    let mut s = State {
        edges,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if s.index[v].is_none() {
            visit(&mut s, v);
        }
    }
    s.out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a small crate and returns its `src`.
    fn krate(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xtask-layout-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("a file in a folder")).expect("temp dir");
            std::fs::write(path, text).expect("temp file");
        }
        dir
    }

    #[test]
    fn a_cycle_through_use_trees_inline_paths_and_super_is_found() {
        let src = krate(&[
            ("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n"),
            ("a.rs", "use crate::{b::{self, Thing}, x};\npub struct A;\n"),
            (
                "b.rs",
                "pub fn f() { let _ = crate::c::make(); }\npub struct Thing;\n",
            ),
            ("c/mod.rs", "mod inner;\npub fn make() { inner::go() }\n"),
            ("c/inner.rs", "pub fn go() { let _: super::super::a::A; }\n"),
        ]);
        let g = Graph::read(&src).expect("readable crate");
        let cycles = g.cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0].members, ["a.rs", "b.rs", "c/"]);
        assert!(cycles[0].arrows.contains(&"c/inner.rs -> a.rs".to_owned()));
        assert!(cycles[0].arrows.contains(&"b.rs -> c/mod.rs".to_owned()));
    }

    #[test]
    fn a_child_may_use_its_parent_but_siblings_may_not_loop() {
        let src = krate(&[
            ("lib.rs", "pub mod p;\n"),
            (
                "p/mod.rs",
                "mod x;\nmod y;\npub struct Shared;\npub fn f() { x::g() }\n",
            ),
            ("p/x.rs", "use super::Shared;\npub fn g() {}\n"),
            ("p/y.rs", "use super::{Shared, x::g};\n"),
        ]);
        assert!(
            Graph::read(&src)
                .expect("readable crate")
                .cycles()
                .is_empty()
        );
        let src = krate(&[
            ("lib.rs", "pub mod p;\n"),
            ("p/mod.rs", "mod x;\nmod y;\n"),
            ("p/x.rs", "use super::y::h;\npub fn g() {}\n"),
            ("p/y.rs", "pub fn h() { super::x::g() }\n"),
        ]);
        let cycles = Graph::read(&src).expect("readable crate").cycles();
        assert_eq!(cycles.len(), 1);
        assert_eq!(cycles[0].members, ["p/x.rs", "p/y.rs"]);
    }

    #[test]
    fn comments_strings_and_tests_make_no_arrow() {
        let src = krate(&[
            ("lib.rs", "pub mod a;\npub mod b;\n"),
            ("a.rs", "pub fn f() { crate::b::g() }\n"),
            (
                "b.rs",
                "/// See crate::a::f.\npub fn g() { let _ = \"crate::a::f\"; let _ = r#\"crate::a\"#; let _ = '\"'; }\n\
                 /* crate::a::f */\n#[cfg(test)]\nmod tests { use crate::a::f; }\n#[cfg(test)]\nmod more;\n",
            ),
            ("b/more.rs", "use crate::a::f;\n"),
        ]);
        let g = Graph::read(&src).expect("readable crate");
        assert!(g.cycles().is_empty(), "{:?}", g.cycles());
        assert_eq!(g.files.len(), 3, "the test module file is no node");
    }

    #[test]
    fn names_handed_on_by_mod_rs_count_as_their_defining_file() {
        // The config pattern: every child `use super::*`, mod.rs hands
        // every child on; a loop between two children is still a loop.
        let src = krate(&[
            ("lib.rs", "pub mod p;\n"),
            (
                "p/mod.rs",
                "mod a;\npub(super) mod b;\npub use a::*;\npub use b::{Gee, helper};\n",
            ),
            (
                "p/a.rs",
                "use super::*;\npub struct Aye;\nfn f() { helper() }\n",
            ),
            (
                "p/b.rs",
                "pub struct Gee(super::Aye);\npub fn helper() {}\n",
            ),
        ]);
        let cycles = Graph::read(&src).expect("readable crate").cycles();
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0].members, ["p/a.rs", "p/b.rs"]);
        // Without b's use of Aye, no loop: a child using its parent's
        // re-exports is fine.
        let src = krate(&[
            ("lib.rs", "pub mod p;\n"),
            ("p/mod.rs", "mod a;\nmod b;\npub use a::*;\npub use b::*;\n"),
            (
                "p/a.rs",
                "use super::*;\npub struct Aye;\nfn f() { helper() }\n",
            ),
            ("p/b.rs", "pub fn helper() {}\n"),
        ]);
        assert!(
            Graph::read(&src)
                .expect("readable crate")
                .cycles()
                .is_empty()
        );
    }

    #[test]
    fn gateway_src_has_no_import_cycle() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src");
        check(&src).expect("no import cycle in gateway/src");
    }
}
