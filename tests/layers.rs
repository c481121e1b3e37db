//! The layering of `src/` holds: ARCHITECTURE.md's "## Modules" table says what each top-level
//! module may depend on, and every `crate::` (or `super::` reaching the crate root) path of
//! production code must be allowed by it, with no cycle between top-level modules and none
//! between the files of one folder.
//!
//! The rules are read from the table itself, so the document and this test cannot drift: a row
//! per module of `src/lib.rs` (a folder's row lists the modules its `mod.rs` declares), and its
//! "may depend on" column names modules in backticks, each of a row above (so they form no
//! cycle). Names after the word "temporarily" are known exceptions: each needs a bullet
//! "- `a` → `b`: why" below the table, and one no longer used must be removed. A cycle between
//! top-level modules is refused unless it runs through such an exception (it is then printed,
//! tracked); a cycle between two files of a folder is refused unless a bullet
//! "- `folder::a` ↔ `folder::b`: why" names it.
//!
//! Production code is `src/` without `#[cfg(test)]` items and without the files of
//! `#[cfg(test)] mod name;` declarations (e.g. `controller/sim.rs`, `webhook/tests.rs`,
//! `record/api_tests.rs`, `rng.rs`). `lib.rs` and `main.rs` only declare and wire modules and
//! are exempt. Comments (doc links included) and string literals are not paths. A path through
//! a re-export counts for the module that re-exports it. The parsing is textual (comments,
//! strings and char literals blanked, then tokens), which is exact for the paths this code base
//! writes: `crate::a::b`, `crate::{a, b::{c, d}}`, `super::` chains.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The repository root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src` with comments, string literals and char literals replaced by spaces (newlines kept, so
/// line numbers stay); lifetimes and everything else unchanged.
fn blank_non_code(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let blank = |out: &mut String, ch: char| out.push(if ch == '\n' { '\n' } else { ' ' });
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                blank(&mut out, c[i]);
                i += 1;
            }
            continue;
        }
        if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"#.
        let starts_word =
            i == 0 || !ident(c[i - 1]) || (c[i - 1] == 'b' && (i < 2 || !ident(c[i - 2])));
        if c[i] == 'r' && starts_word {
            let mut j = i + 1;
            while j < c.len() && c[j] == '#' {
                j += 1;
            }
            if c.get(j) == Some(&'"') {
                let hashes = j - i - 1;
                let mut k = j + 1;
                while k < c.len() {
                    if c[k] == '"'
                        && c[k + 1..]
                            .iter()
                            .take(hashes)
                            .filter(|&&h| h == '#')
                            .count()
                            == hashes
                    {
                        break;
                    }
                    k += 1;
                }
                let end = (k + 1 + hashes).min(c.len());
                for &ch in &c[i..end] {
                    blank(&mut out, ch);
                }
                i = end;
                continue;
            }
        }
        if c[i] == '"' {
            blank(&mut out, c[i]);
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    blank(&mut out, c[i]);
                    i += 1;
                }
                if i < c.len() {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
            if i < c.len() {
                blank(&mut out, c[i]);
                i += 1;
            }
            continue;
        }
        if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{1F600}'); otherwise a lifetime or a label.
            let end = if next == Some('\\') {
                let mut k = i + 3;
                while k < c.len() && c[k] != '\'' {
                    k += 1;
                }
                Some(k)
            } else if c.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                for &ch in &c[i..=end.min(c.len() - 1)] {
                    blank(&mut out, ch);
                }
                i = end + 1;
                continue;
            }
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// A token of blanked code: an identifier or number, `::`, or one other character.
#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

fn tokens(code: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut line = 1;
    let c: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch.is_alphanumeric() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: c[start..i].iter().collect(),
                line,
            });
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// One path of production code that names another module of the crate.
#[derive(Clone, Debug)]
struct Use {
    /// The file, relative to the repository.
    file: String,
    line: usize,
    /// The module path named, from the crate root (`webhook::settings::InjectorConfig`).
    path: Vec<String>,
}

/// What one file says: its paths into the crate, and its `#[cfg(test)] mod name;` children.
#[derive(Default)]
struct Scanned {
    uses: Vec<Use>,
    test_children: Vec<String>,
    /// Every `mod name;` child, test-only ones included.
    children: Vec<String>,
    /// `#![cfg(test)]`: the whole file is test-only.
    test_file: bool,
    /// What the scanner could not follow (a glob of the crate root).
    problems: Vec<String>,
}

/// Whether the tokens at `i` are `#[cfg(test)]` (`inner`: `#![cfg(test)]`).
fn cfg_test_at(t: &[Token], i: usize, inner: bool) -> bool {
    let want: &[&str] = if inner {
        &["#", "!", "[", "cfg", "(", "test", ")", "]"]
    } else {
        &["#", "[", "cfg", "(", "test", ")", "]"]
    };
    t.len() >= i + want.len() && want.iter().zip(&t[i..]).all(|(w, tok)| tok.text == *w)
}

/// The index just past the item starting at `i`: past its `;` or its closing `}` at depth 0.
fn skip_item(t: &[Token], mut i: usize) -> usize {
    let mut depth = 0i32;
    while i < t.len() {
        match t[i].text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" => depth -= 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            ";" if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    i
}

/// The index just past a `#[…]` attribute starting at `i`.
fn skip_attribute(t: &[Token], i: usize) -> usize {
    let mut j = i + 1;
    let mut depth = 0;
    while j < t.len() {
        match t[j].text.as_str() {
            "[" => depth += 1,
            "]" => {
                depth -= 1;
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
        j += 1;
    }
    j
}

/// The index of the end of the `{ … }` group opening at `i` (its closing `}`).
fn group_end(t: &[Token], i: usize) -> usize {
    let mut depth = 0;
    for (j, tok) in t.iter().enumerate().skip(i) {
        match tok.text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    t.len()
}

/// The crate paths named at `i`, just after `crate::` (or the `super::`s reaching the root),
/// each after `prefix`: `a::b::C`, or each item of `{a::b, c::{d, e}, self}`.
fn paths_at(
    t: &[Token],
    i: usize,
    prefix: &[String],
    out: &mut Vec<(usize, Vec<String>)>,
    problems: &mut Vec<String>,
) {
    let Some(first) = t.get(i) else { return };
    if first.text == "{" {
        let end = group_end(t, i);
        let mut j = i + 1;
        while j < end {
            paths_at(t, j, prefix, out, problems);
            // On to the next item of this group.
            let mut depth = 0;
            while j < end {
                match t[j].text.as_str() {
                    "{" => depth += 1,
                    "}" => depth -= 1,
                    "," if depth == 0 => break,
                    _ => {}
                }
                j += 1;
            }
            j += 1;
        }
    } else if first.text == "*" && prefix.is_empty() {
        problems.push(format!(
            "line {}: a glob import of the crate root cannot be checked",
            first.line
        ));
    } else if first.text == "self" || first.text == "*" {
        if !prefix.is_empty() {
            out.push((first.line, prefix.to_vec()));
        }
    } else if is_ident(&first.text) {
        let mut path = prefix.to_vec();
        path.push(first.text.clone());
        let mut j = i + 1;
        while j + 1 < t.len() && t[j].text == "::" && is_ident(&t[j + 1].text) {
            path.push(t[j + 1].text.clone());
            j += 2;
        }
        if j + 1 < t.len() && t[j].text == "::" && t[j + 1].text == "{" {
            paths_at(t, j + 1, &path, out, problems);
        } else {
            out.push((first.line, path));
        }
    }
}

/// Scans one file whose module path from the crate root is `module` (`["webhook", "inject"]`).
fn scan(file: &str, code: &str, module: &[String]) -> Scanned {
    let t = tokens(&blank_non_code(code));
    let mut s = Scanned::default();
    // Inline `mod name { … }` blocks we are in: (name, brace depth outside it).
    let mut inline: Vec<(String, i32)> = Vec::new();
    let mut depth = 0i32;
    let mut i = 0;
    let mut found = Vec::new();
    while i < t.len() {
        if cfg_test_at(&t, i, true) {
            s.test_file = true;
            return s;
        }
        if cfg_test_at(&t, i, false) {
            let mut j = i + 7;
            while j < t.len() && t[j].text == "#" {
                j = skip_attribute(&t, j);
            }
            let mut k = j;
            if t.get(k).is_some_and(|x| x.text == "pub") {
                k += 1;
                if t.get(k).is_some_and(|x| x.text == "(") {
                    while k < t.len() && t[k].text != ")" {
                        k += 1;
                    }
                    k += 1;
                }
            }
            if t.get(k).is_some_and(|x| x.text == "mod")
                && t.get(k + 2).is_some_and(|x| x.text == ";")
            {
                s.test_children.push(t[k + 1].text.clone());
                s.children.push(t[k + 1].text.clone());
            }
            i = skip_item(&t, j);
            continue;
        }
        match t[i].text.as_str() {
            "mod" if t.get(i + 2).is_some_and(|x| x.text == ";") => {
                s.children.push(t[i + 1].text.clone());
            }
            "mod" if t.get(i + 2).is_some_and(|x| x.text == "{") => {
                inline.push((t[i + 1].text.clone(), depth));
            }
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            "crate" if t.get(i + 1).is_some_and(|x| x.text == "::") => {
                paths_at(&t, i + 2, &[], &mut found, &mut s.problems);
            }
            "super" if t.get(i + 1).is_some_and(|x| x.text == "::") => {
                let mut ups = 0;
                let mut j = i;
                while t.get(j).is_some_and(|x| x.text == "super")
                    && t.get(j + 1).is_some_and(|x| x.text == "::")
                {
                    ups += 1;
                    j += 2;
                }
                let here: Vec<String> = module
                    .iter()
                    .cloned()
                    .chain(inline.iter().map(|(n, _)| n.clone()))
                    .collect();
                if ups > here.len() {
                    s.problems
                        .push(format!("line {}: `super` above the crate root", t[i].line));
                } else {
                    let base = &here[..here.len() - ups];
                    let mut rel = Vec::new();
                    paths_at(&t, j, &[], &mut rel, &mut s.problems);
                    for (line, path) in rel {
                        found.push((line, base.iter().cloned().chain(path).collect()));
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    s.uses = found
        .into_iter()
        .map(|(line, path)| Use {
            file: file.to_string(),
            line,
            path,
        })
        .collect();
    s
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module path of a file under `src/` (`webhook/inject.rs` → `webhook::inject`,
/// `webhook/mod.rs` → `webhook`; `lib.rs` and `main.rs` → the root).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The directory holding a file's child modules (`src/webhook/mod.rs` → `src/webhook`,
/// `src/webhook/inject.rs` → `src/webhook/inject`).
fn children_dir(rel: &Path) -> PathBuf {
    let stem = rel.file_stem().unwrap().to_string_lossy();
    let parent = rel.parent().unwrap().to_path_buf();
    if matches!(&*stem, "mod" | "lib" | "main") {
        parent
    } else {
        parent.join(&*stem)
    }
}

/// The production code of `src/`.
struct Code {
    /// Top-level modules declared in `lib.rs` (test-only ones included).
    modules: BTreeSet<String>,
    /// Top-level modules declared `#[cfg(test)]`.
    test_modules: BTreeSet<String>,
    /// Child modules of each folder's `mod.rs`, and which of them are test-only.
    folders: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)>,
    /// Every path into the crate from production code outside `lib.rs` and `main.rs`.
    uses: Vec<Use>,
    /// Files left out as test-only.
    test_files: Vec<String>,
    problems: Vec<String>,
}

fn read_code() -> Code {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let scanned: Vec<(PathBuf, Scanned)> = files
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).unwrap().to_path_buf();
            let text = std::fs::read_to_string(p).unwrap();
            let name = format!("src/{}", rel.display());
            let s = scan(&name, &text, &module_of(&rel));
            (rel, s)
        })
        .collect();
    // Files of `#[cfg(test)] mod x;` (and everything below them) are test-only.
    let mut test_roots: Vec<PathBuf> = Vec::new();
    for (rel, s) in &scanned {
        for child in &s.test_children {
            let dir = children_dir(rel);
            test_roots.push(dir.join(format!("{child}.rs")));
            test_roots.push(dir.join(child));
        }
        if s.test_file {
            test_roots.push(rel.clone());
        }
    }
    let is_test = |rel: &Path| test_roots.iter().any(|r| rel.starts_with(r));
    let lib = &scanned
        .iter()
        .find(|(rel, _)| rel == Path::new("lib.rs"))
        .expect("src/lib.rs")
        .1;
    let mut code = Code {
        modules: lib.children.iter().cloned().collect(),
        test_modules: lib.test_children.iter().cloned().collect(),
        folders: BTreeMap::new(),
        uses: Vec::new(),
        test_files: Vec::new(),
        problems: Vec::new(),
    };
    for (rel, s) in scanned {
        let name = format!("src/{}", rel.display());
        if is_test(&rel) {
            code.test_files.push(name);
            continue;
        }
        let module = module_of(&rel);
        if module.len() == 1 && rel.file_name().is_some_and(|f| f == "mod.rs") {
            code.folders.insert(
                module[0].clone(),
                (
                    s.children.iter().cloned().collect(),
                    s.test_children.iter().cloned().collect(),
                ),
            );
        }
        code.problems
            .extend(s.problems.iter().map(|p| format!("{name}: {p}")));
        if module.is_empty() {
            continue; // lib.rs and main.rs: declarations and wiring, exempt.
        }
        code.uses.extend(s.uses);
    }
    code
}

/// The Modules section of ARCHITECTURE.md, as rules.
struct Table {
    /// Per top-level module: what it may depend on, and what it temporarily also does.
    allowed: BTreeMap<String, BTreeSet<String>>,
    temporary: BTreeMap<String, BTreeSet<String>>,
    /// Per folder: the modules the table lists.
    listed: BTreeMap<String, BTreeSet<String>>,
    /// The modules in the order of their rows.
    order: Vec<String>,
    /// The temporary edges the section gives a reason for (its "- `a` → `b`: why" bullets).
    reasons: BTreeSet<(String, String)>,
    /// Known cycles between two files of a folder: (`folder::a`, `folder::b`), sorted (its
    /// "- `folder::a` ↔ `folder::b`: why" bullets).
    known_cycles: BTreeSet<(String, String)>,
    problems: Vec<String>,
}

/// The backticked spans of a Markdown cell.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn read_table(modules: &BTreeSet<String>) -> Table {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let section: Vec<&str> = doc
        .lines()
        .skip_while(|l| l.trim() != "## Modules")
        .skip(1)
        .take_while(|l| !l.starts_with("## "))
        .collect();
    assert!(
        !section.is_empty(),
        "ARCHITECTURE.md has no \"## Modules\" section"
    );
    let cells = |line: &str| -> Vec<String> {
        line.trim()
            .trim_start_matches('|')
            .trim_end_matches('|')
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let rows: Vec<Vec<String>> = section
        .iter()
        .filter(|l| l.trim_start().starts_with('|'))
        .map(|l| cells(l))
        .collect();
    assert!(rows.len() > 2, "the Modules section has no table");
    let header = &rows[0];
    let col = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .unwrap_or_else(|| panic!("the Modules table has no \"{name}\" column: {header:?}"))
    };
    let (c_module, c_submodules, c_deps) = (col("module"), col("submodules"), col("may depend on"));
    let mut table = Table {
        allowed: BTreeMap::new(),
        temporary: BTreeMap::new(),
        listed: BTreeMap::new(),
        order: Vec::new(),
        reasons: BTreeSet::new(),
        known_cycles: BTreeSet::new(),
        problems: Vec::new(),
    };
    let module_name = |name: &str, problems: &mut Vec<String>, row: &str| -> Option<String> {
        let top = name.split("::").next().unwrap_or(name).to_string();
        if modules.contains(&top) {
            Some(top)
        } else {
            problems.push(format!(
                "row {row}: `{name}` in \"may depend on\" is no module of src/lib.rs (only module \
                 names go in backticks there)"
            ));
            None
        }
    };
    for row in rows.iter().skip(2) {
        let names: Vec<String> = backticked(&row[c_module])
            .iter()
            .map(|n| n.trim_end_matches('/').trim_end_matches(".rs").to_string())
            .collect();
        if names.is_empty() {
            table
                .problems
                .push(format!("a row names no module: {:?}", row[c_module]));
        }
        let deps = &row[c_deps];
        let (now, later) = match deps.find("temporarily") {
            Some(at) => (&deps[..at], &deps[at..]),
            None => (&deps[..], ""),
        };
        let mut allowed = BTreeSet::new();
        let mut temporary = BTreeSet::new();
        for n in backticked(now) {
            allowed.extend(module_name(&n, &mut table.problems, &row[c_module]));
        }
        for n in backticked(later) {
            temporary.extend(module_name(&n, &mut table.problems, &row[c_module]));
        }
        for name in names {
            if !modules.contains(&name) {
                table
                    .problems
                    .push(format!("row `{name}`: no such module in src/lib.rs"));
            }
            let listed: BTreeSet<String> = backticked(&row[c_submodules]).into_iter().collect();
            if table.allowed.contains_key(&name) {
                table.problems.push(format!("`{name}` has two rows"));
            }
            table.allowed.insert(name.clone(), allowed.clone());
            table.temporary.insert(name.clone(), temporary.clone());
            table.listed.insert(name.clone(), listed);
            table.order.push(name);
        }
    }
    for line in &section {
        let l = line.trim_start();
        let (cycle, edge) = (l.contains('↔'), l.contains('→'));
        if !l.starts_with("- ") || !(cycle || edge) {
            continue;
        }
        let ends = backticked(l);
        if ends.len() < 2 {
            table.problems.push(format!(
                "a bullet of the Modules section names no two modules: {l}"
            ));
            continue;
        }
        let (a, b) = (ends[0].clone(), ends[1].clone());
        if cycle {
            table
                .known_cycles
                .insert(if a < b { (a, b) } else { (b, a) });
        } else {
            table.reasons.insert((a, b));
        }
    }
    table
}

/// The strongly connected components of `graph` with more than one node (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph.get(v).into_iter().flatten() {
            if !s.index.contains_key(w.as_str()) {
                visit(s, w);
                let l = s.low[w.as_str()].min(s.low[v]);
                s.low.insert(v, l);
            } else if s.on_stack.contains(w.as_str()) {
                let l = s.index[w.as_str()].min(s.low[v]);
                s.low.insert(v, l);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                scc.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                s.out.push(scc);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out
}

/// A shortest cycle through `start` within `scc`, as a path back to `start`.
fn one_cycle(
    graph: &BTreeMap<String, BTreeSet<String>>,
    scc: &[String],
    start: &str,
) -> Vec<String> {
    // Breadth-first from start's successors back to start, inside the component.
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(v) = queue.pop_front() {
        for w in graph.get(&v).into_iter().flatten() {
            if !scc.contains(w) || prev.contains_key(w) {
                continue;
            }
            prev.insert(w.clone(), v.clone());
            if w == start {
                let mut path = vec![start.to_string()];
                let mut at = prev[start].clone();
                while at != start {
                    path.push(at.clone());
                    at = prev[&at].clone();
                }
                path.push(start.to_string());
                path.reverse();
                return path;
            }
            queue.push_back(w.clone());
        }
    }
    scc.to_vec()
}

fn show(u: &Use) -> String {
    format!("{}:{}: crate::{}", u.file, u.line, u.path.join("::"))
}

/// The cycles of `graph`: for each node of a cycle, a shortest cycle through it (each cycle
/// once), with the text naming a path that makes each of its edges.
fn describe_cycles(
    graph: &BTreeMap<String, BTreeSet<String>>,
    evidence: &BTreeMap<(String, String), Vec<&Use>>,
) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    for scc in cycles(graph) {
        let mut seen = BTreeSet::new();
        for node in &scc {
            let mut path = one_cycle(graph, &scc, node);
            // The same cycle from another node: rotate to start at its least node.
            path.pop();
            let least = (0..path.len()).min_by_key(|&k| &path[k]).unwrap();
            path.rotate_left(least);
            path.push(path[0].clone());
            if !seen.insert(path.clone()) {
                continue;
            }
            let mut text = format!("cycle {}", path.join(" → "));
            for w in path.windows(2) {
                let uses = &evidence[&(w[0].clone(), w[1].clone())];
                let _ = write!(
                    text,
                    "\n      {} → {}: {}{}",
                    w[0],
                    w[1],
                    show(uses[0]),
                    if uses.len() > 1 {
                        format!(" (and {} more)", uses.len() - 1)
                    } else {
                        String::new()
                    }
                );
            }
            out.push((path, text));
        }
    }
    out
}

#[test]
fn imports_keep_the_layers_of_the_modules_table() {
    let code = read_code();
    let table = read_table(&code.modules);
    let mut failures: Vec<String> = Vec::new();
    failures.extend(code.problems.iter().cloned());
    failures.extend(table.problems.iter().cloned());
    // Not vacuous: the scan found the code base.
    assert!(
        code.modules.len() >= 10,
        "modules of lib.rs: {:?}",
        code.modules
    );
    assert!(
        code.uses.len() >= 100,
        "only {} crate paths found",
        code.uses.len()
    );
    for skipped in [
        "src/controller/sim.rs",
        "src/webhook/tests.rs",
        "src/record/api_tests.rs",
    ] {
        if root().join(skipped).exists() {
            assert!(
                code.test_files.iter().any(|f| f == skipped),
                "{skipped} is test-only but was scanned: {:?}",
                code.test_files
            );
        }
    }

    // Every production module has a row; every folder's row lists its modules.
    for m in code.modules.difference(&code.test_modules) {
        if !table.allowed.contains_key(m) {
            failures.push(format!(
                "`{m}` (src/lib.rs) has no row in ARCHITECTURE.md's Modules table"
            ));
        }
    }
    for (folder, (children, test_children)) in &code.folders {
        let Some(listed) = table.listed.get(folder) else {
            continue;
        };
        for c in children.difference(test_children) {
            if !listed.contains(c) {
                failures.push(format!(
                    "row `{folder}/` does not list its module `{c}` (src/{folder}/mod.rs)"
                ));
            }
        }
        for l in listed {
            if !children.contains(l) {
                failures.push(format!(
                    "row `{folder}/` lists `{l}`, which src/{folder}/mod.rs does not declare"
                ));
            }
        }
    }

    // The layers the table intends go from the bottom up: each row's modules are above it.
    for (i, m) in table.order.iter().enumerate() {
        for dep in &table.allowed[m] {
            if !table.order[..i].contains(dep) {
                failures.push(format!(
                    "row `{m}` may depend on `{dep}`, which is not in a row above it \
                     (ARCHITECTURE.md's Modules table goes from the bottom up)"
                ));
            }
        }
    }
    // The layers the table intends have no cycle (implied by the order; said plainly).
    let intended: BTreeMap<String, BTreeSet<String>> = table.allowed.clone();
    for scc in cycles(&intended) {
        let path = one_cycle(&intended, &scc, &scc[0]);
        failures.push(format!(
            "ARCHITECTURE.md's \"may depend on\" column is itself a cycle: {}",
            path.join(" → ")
        ));
    }

    // Every edge of the code is allowed.
    let mut evidence: BTreeMap<(String, String), Vec<&Use>> = BTreeMap::new();
    for u in &code.uses {
        let from = u.file_module();
        let to = &u.path[0];
        if !code.modules.contains(to) {
            failures.push(format!("{}: `{to}` is no module of src/lib.rs", show(u)));
            continue;
        }
        if &from != to {
            evidence.entry((from, to.clone())).or_default().push(u);
        }
    }
    let empty = BTreeSet::new();
    let mut used_temporarily: Vec<String> = Vec::new();
    for ((from, to), uses) in &evidence {
        let allowed = table.allowed.get(from).unwrap_or(&empty);
        let temporary = table.temporary.get(from).unwrap_or(&empty);
        if allowed.contains(to) {
            continue;
        }
        if temporary.contains(to) {
            let paths = if uses.len() == 1 { "path" } else { "paths" };
            used_temporarily.push(format!("{from} → {to} ({} {paths})", uses.len()));
            continue;
        }
        let mut text = format!(
            "`{from}` depends on `{to}`, which ARCHITECTURE.md's Modules table does not allow \
             (`{from}` may depend on: {}):",
            if allowed.is_empty() {
                "nothing".to_string()
            } else {
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        );
        for u in uses {
            let _ = write!(text, "\n      {}", show(u));
        }
        failures.push(text);
    }
    let mut temporary_edges = BTreeSet::new();
    for (from, temporary) in &table.temporary {
        for to in temporary {
            let edge = (from.clone(), to.clone());
            if !evidence.contains_key(&edge) {
                failures.push(format!(
                    "`{from}` no longer depends on `{to}`: remove \"temporarily `{to}`\" from its \
                     row in ARCHITECTURE.md, and its reason below the table"
                ));
            }
            if !table.reasons.contains(&edge) {
                failures.push(format!(
                    "`{from}` → `{to}` is allowed temporarily without a reason: add a bullet \
                     \"- `{from}` → `{to}`: why\" below ARCHITECTURE.md's Modules table"
                ));
            }
            temporary_edges.insert(edge);
        }
    }
    for (from, to) in &table.reasons {
        if !temporary_edges.contains(&(from.clone(), to.clone())) {
            failures.push(format!(
                "ARCHITECTURE.md gives a reason for `{from}` → `{to}`, which no row allows \
                 temporarily: remove the bullet"
            ));
        }
    }

    // No cycle between top-level modules.
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in evidence.keys() {
        graph.entry(from.clone()).or_default().insert(to.clone());
    }
    // A cycle of allowed edges, one of them temporary, is tracked; any other is refused.
    let mut tracked: Vec<String> = Vec::new();
    for (path, text) in describe_cycles(&graph, &evidence) {
        let edges: Vec<(String, String)> = path
            .windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect();
        let allowed = |(from, to): &(String, String)| {
            table.allowed.get(from).is_some_and(|a| a.contains(to))
                || temporary_edges.contains(&(from.clone(), to.clone()))
        };
        if edges.iter().all(allowed) && edges.iter().any(|e| temporary_edges.contains(e)) {
            tracked.push(path.join(" → "));
        } else {
            failures.push(format!("top-level modules import each other: {text}"));
        }
    }

    // No cycle between the files of one folder, but the known ones.
    let mut inner: BTreeMap<(String, String), Vec<&Use>> = BTreeMap::new();
    for u in &code.uses {
        let here = u.file_path();
        if here.len() < 2 || u.path.len() < 2 || u.path[0] != here[0] {
            continue;
        }
        let Some((children, _)) = code.folders.get(&here[0]) else {
            continue;
        };
        if !children.contains(&u.path[1]) || u.path[1] == here[1] {
            continue; // Through the folder's mod.rs, or within the file.
        }
        let a = format!("{}::{}", here[0], here[1]);
        let b = format!("{}::{}", here[0], u.path[1]);
        inner.entry((a, b)).or_default().push(u);
    }
    let mut inner_graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (a, b) in inner.keys() {
        inner_graph.entry(a.clone()).or_default().insert(b.clone());
    }
    for (path, text) in describe_cycles(&inner_graph, &inner) {
        let pair = if path[0] < path[1] {
            (path[0].clone(), path[1].clone())
        } else {
            (path[1].clone(), path[0].clone())
        };
        if path.len() == 3 && table.known_cycles.contains(&pair) {
            tracked.push(path.join(" → "));
        } else {
            failures.push(format!("files of one folder import each other: {text}"));
        }
    }
    for (a, b) in &table.known_cycles {
        let both = inner.contains_key(&(a.clone(), b.clone()))
            && inner.contains_key(&(b.clone(), a.clone()));
        if !both {
            failures.push(format!(
                "`{a}` and `{b}` no longer import each other: remove their bullet from \
                 ARCHITECTURE.md's Modules section"
            ));
        }
    }

    if !used_temporarily.is_empty() {
        eprintln!(
            "temporarily allowed (ARCHITECTURE.md): {}\ncycles through them, and known ones in a \
             folder, tracked: {}",
            used_temporarily.join("; "),
            tracked.join("; ")
        );
    }
    assert!(
        failures.is_empty(),
        "the layering of src/ is broken ({} {}; see ARCHITECTURE.md, \"## Modules\"):\n  - {}\n",
        failures.len(),
        if failures.len() == 1 {
            "problem"
        } else {
            "problems"
        },
        failures.join("\n  - ")
    );
}

impl Use {
    /// The module path of the file this path is written in.
    fn file_path(&self) -> Vec<String> {
        module_of(Path::new(self.file.strip_prefix("src/").unwrap()))
    }

    /// The top-level module this path is written in.
    fn file_module(&self) -> String {
        self.file_path()[0].clone()
    }
}

#[test]
fn the_scanner_reads_paths_as_rust_does() {
    let code = r##"
        use crate::{config::{self, X}, core::plan::{Issue, Plan}, self};
        // use crate::agent::Comment;
        /* use crate::agent::Block; /* nested */ */
        const S: &str = "crate::agent::Str";
        const R: &str = r#"crate::agent::"Raw"#;
        const C: char = '{';
        fn f<'a>(x: &'a str) -> crate::vault::SecretString { super::metrics::m(); todo!() }
        mod inner { fn g() { super::super::super::crd::h(); } }
        #[cfg(test)]
        mod tests { use crate::controller::sim; fn k(_: [u8; 2]) {} }
        #[cfg(test)]
        mod sim;
        fn after() { crate::record::ann::KEY; }
    "##;
    let s = scan("src/webhook/x.rs", code, &["webhook".into(), "x".into()]);
    let paths: Vec<String> = s.uses.iter().map(|u| u.path.join("::")).collect();
    assert_eq!(
        paths,
        [
            "config",
            "config::X",
            "core::plan::Issue",
            "core::plan::Plan",
            "vault::SecretString",
            "webhook::metrics::m",
            "crd::h",
            "record::ann::KEY",
        ],
        "{:?}",
        s.uses
    );
    assert_eq!(s.test_children, ["sim"]);
    assert!(s.problems.is_empty(), "{:?}", s.problems);
}
