//! Layers point one way (docs: STYLE.md): reads src/ and fails on a `crate::` path from a
//! lower layer into a higher one. No cluster needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What each layer may name besides itself; `None` allows all but the listed modules.
struct Rule {
    layer: &'static str,
    allowed: Option<&'static [&'static str]>,
    forbidden: &'static [&'static str],
}

const RULES: &[Rule] = &[
    // The bottom: types, labels and the worker contract.
    Rule {
        layer: "api",
        allowed: Some(&[]),
        forbidden: &[],
    },
    // A leaf both the guard and the CLI read worker memory through.
    Rule {
        layer: "prometheus",
        allowed: Some(&[]),
        forbidden: &[],
    },
    Rule {
        layer: "worker",
        allowed: Some(&["api"]),
        forbidden: &[],
    },
    Rule {
        layer: "plan",
        allowed: Some(&["api", "worker"]),
        forbidden: &[],
    },
    Rule {
        layer: "queues",
        allowed: Some(&["api", "plan"]),
        forbidden: &[],
    },
    Rule {
        layer: "guard",
        allowed: None,
        forbidden: &["controller", "cli"],
    },
    Rule {
        layer: "controller",
        allowed: None,
        forbidden: &["cli"],
    },
    Rule {
        layer: "cli",
        allowed: Some(&["api", "prometheus"]),
        forbidden: &[],
    },
];

/// The top-level modules a source text names through `crate::` paths, comments left out;
/// `crate::{a::X, b}` names both `a` and `b`.
fn named_modules(source: &str) -> BTreeSet<String> {
    let code: String = source
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        named.insert(ident(&group[start..i]));
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        named.insert(ident(&group[start..i]));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            named.insert(ident(rest));
        }
    }
    named.remove("");
    named
}

/// The paths in `source` that `rule` forbids, as `layer -> module`.
fn violations(rule: &Rule, source: &str) -> Vec<String> {
    named_modules(source)
        .into_iter()
        .filter(|module| module != rule.layer)
        .filter(|module| match rule.allowed {
            Some(allowed) => !allowed.contains(&module.as_str()),
            None => rule.forbidden.contains(&module.as_str()),
        })
        .map(|module| format!("{} -> {module}", rule.layer))
        .collect()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = vec![];
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn layers_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = vec![];
    for rule in RULES {
        let files = rust_files(&src.join(rule.layer));
        assert!(!files.is_empty(), "src/{} holds no Rust file", rule.layer);
        for file in files {
            let source = std::fs::read_to_string(&file).expect("a readable source file");
            for violation in violations(rule, &source) {
                found.push(format!(
                    "{}: {violation}",
                    file.strip_prefix(&src).unwrap_or(&file).display()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "imports against the layers:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_forbidden_import_is_caught() {
    let plan = RULES.iter().find(|r| r.layer == "plan").unwrap();
    let source = "//! use crate::controller::x;\nuse crate::api::X;\nuse crate::guard::view::RunMemory;\nfn f() -> crate::controller::Error { todo!() }\n";
    assert_eq!(
        violations(plan, source),
        ["plan -> controller", "plan -> guard"]
    );
    let grouped = "use crate::{api::RecordRange, controller::{labels, job}};";
    assert_eq!(violations(plan, grouped), ["plan -> controller"]);
    let guard = RULES.iter().find(|r| r.layer == "guard").unwrap();
    assert!(violations(guard, "use crate::plan::X; use crate::queues::Queues;").is_empty());
    assert_eq!(
        violations(guard, "use crate::controller::Context;"),
        ["guard -> controller"]
    );
}
