//! The layering check: models ← store ← ops ← client ← cli/apps, read from `cargo metadata`;
//! and, read from the sources, that hive-store's backends never reach into each other (the
//! rules live in `rules/`, shared, not in a backend another one borrows from).

use std::collections::{HashMap, HashSet};

use cargo_metadata::{DependencyKind, Metadata, PackageId};

/// A crate's layer; a crate may depend only on crates of lower layers. Apps share a layer
/// with the CLI and must not depend on each other.
fn layer(name: &str) -> Option<u8> {
    Some(match name {
        "hive-models" => 0,
        "hive-store" => 1,
        "hive-ops" => 2,
        "hive-client" => 3,
        // Beside the client: apps running workers may export metrics without the CLI.
        "hive-metrics" => 3,
        "hive-cli" => 4,
        // The dashboard behind `hive serve`, a part of the CLI's layer.
        "hive-web" => 4,
        "hive-tests" => 5,
        n if is_app(n) => 4,
        _ => return None,
    })
}

fn is_app(name: &str) -> bool {
    name.starts_with("ai-")
}

/// Crates hive-models must never reach, even transitively: it is pure.
const IMPURE: &[&str] = &["tokio", "sqlx", "sqlx-core", "async-std", "mio"];

/// Every layering rule the workspace breaks, as sentences naming the edge.
pub fn check(metadata: &Metadata) -> Vec<String> {
    let mut violations = Vec::new();
    for pkg in metadata.workspace_packages() {
        let Some(from) = layer(&pkg.name) else {
            continue;
        };
        for dep in &pkg.dependencies {
            let Some(to) = layer(&dep.name) else { continue };
            if dep.name == *pkg.name {
                continue;
            }
            let kind = match dep.kind {
                DependencyKind::Development => "dev-dependency",
                DependencyKind::Build => "build-dependency",
                _ => "dependency",
            };
            if to >= from && !(to == from && !is_app(&dep.name) && !is_app(&pkg.name)) {
                violations.push(format!(
                    "{} (layer {from}) has a {kind} on {} (layer {to}); dependencies must point down: models <- store <- ops <- client <- cli/apps",
                    pkg.name, dep.name
                ));
            } else if is_app(&pkg.name) && is_app(&dep.name) {
                violations.push(format!(
                    "app {} depends on app {}; apps must not depend on each other",
                    pkg.name, dep.name
                ));
            }
        }
    }
    if let Some(models) = metadata
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == "hive-models")
    {
        for bad in reachable(metadata, &models.id)
            .into_iter()
            .filter(|n| IMPURE.contains(&n.as_str()))
        {
            violations.push(format!("hive-models depends (transitively) on {bad}; it must stay free of IO and async runtimes"));
        }
    }
    violations.sort();
    violations.dedup();
    violations
}

/// hive-store's backends: each is `<name>.rs` plus the files under `<name>/`.
const BACKENDS: &[&str] = &["memory", "sqlite", "postgres"];

/// Every place a backend's source names another backend (`crate::<other>`), as sentences.
pub fn check_backends(store_src: &std::path::Path) -> std::io::Result<Vec<String>> {
    let mut violations = Vec::new();
    for backend in BACKENDS {
        let mut files = vec![store_src.join(format!("{backend}.rs"))];
        let dir = store_src.join(backend);
        if dir.is_dir() {
            let mut stack = vec![dir];
            while let Some(d) = stack.pop() {
                for entry in std::fs::read_dir(&d)? {
                    let path = entry?.path();
                    if path.is_dir() {
                        stack.push(path);
                    } else if path.extension().is_some_and(|e| e == "rs") {
                        files.push(path);
                    }
                }
            }
        }
        for file in files.iter().filter(|f| f.exists()) {
            let text = std::fs::read_to_string(file)?;
            for other in BACKENDS.iter().filter(|o| *o != backend) {
                if text.contains(&format!("crate::{other}")) {
                    violations.push(format!(
                        "{} (the {backend} backend) imports from the {other} backend; shared \
                         rules and helpers belong in rules/, sql.rs or schema.rs",
                        file.display()
                    ));
                }
            }
        }
    }
    violations.sort();
    Ok(violations)
}

/// Names of every package `root` reaches through normal dependencies.
fn reachable(metadata: &Metadata, root: &PackageId) -> HashSet<String> {
    let Some(resolve) = &metadata.resolve else {
        return HashSet::new();
    };
    let nodes: HashMap<&PackageId, _> = resolve.nodes.iter().map(|n| (&n.id, n)).collect();
    let names: HashMap<&PackageId, &str> = metadata
        .packages
        .iter()
        .map(|p| (&p.id, p.name.as_str()))
        .collect();
    let mut seen = HashSet::new();
    let mut stack = vec![root];
    let mut out = HashSet::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in &node.deps {
            let normal = dep
                .dep_kinds
                .iter()
                .any(|k| k.kind == DependencyKind::Normal);
            if normal {
                if let Some(n) = names.get(&dep.pkg) {
                    out.insert((*n).to_owned());
                }
                stack.push(&dep.pkg);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        cargo_metadata::MetadataCommand::new()
            .exec()
            .expect("cargo metadata runs in the workspace")
    }

    #[test]
    fn the_workspace_passes() {
        assert_eq!(check(&metadata()), Vec::<String>::new());
        let store =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/hive-store/src");
        assert_eq!(check_backends(&store).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_backend_borrowing_from_another_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sqlite")).unwrap();
        std::fs::write(dir.path().join("memory.rs"), "//! memory\n").unwrap();
        std::fs::write(
            dir.path().join("sqlite/tasks.rs"),
            "use crate::memory::merge_metadata;\n",
        )
        .unwrap();
        let v = check_backends(dir.path()).unwrap();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("imports from the memory backend"), "{v:?}");
    }

    /// Rewrites the real metadata to add forbidden edges, and sees each one caught.
    #[test]
    fn forbidden_edges_are_caught() {
        let mut json = serde_json::to_value(metadata()).expect("metadata serializes");
        let packages = json["packages"].as_array_mut().expect("packages");
        let tokio_dep = serde_json::json!({
            "name": "tokio", "source": null, "req": "*", "kind": null, "rename": null,
            "optional": false, "uses_default_features": true, "features": [], "target": null,
            "registry": null, "path": null
        });
        let upward = |name: &str| {
            let mut d = tokio_dep.clone();
            d["name"] = serde_json::json!(name);
            d
        };
        for p in packages.iter_mut() {
            match p["name"].as_str() {
                Some("hive-models") => p["dependencies"]
                    .as_array_mut()
                    .expect("deps")
                    .push(upward("hive-store")),
                Some("hive-store") => p["dependencies"]
                    .as_array_mut()
                    .expect("deps")
                    .push(upward("hive-client")),
                _ => {}
            }
        }
        // hive-models reaching tokio through the resolved graph.
        let tokio_id = json["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "tokio"))
            .map(|p| p["id"].clone())
            .expect("tokio is in the workspace graph");
        let models_id = json["packages"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "hive-models"))
            .map(|p| p["id"].clone())
            .expect("hive-models");
        for node in json["resolve"]["nodes"]
            .as_array_mut()
            .expect("resolve nodes")
        {
            if node["id"] == models_id {
                node["deps"].as_array_mut().expect("deps").push(serde_json::json!({
                    "name": "tokio", "pkg": tokio_id, "dep_kinds": [{"kind": null, "target": null}]
                }));
            }
        }
        let broken: Metadata = serde_json::from_value(json).expect("still valid metadata");
        let v = check(&broken);
        assert!(
            v.iter()
                .any(|s| s.starts_with("hive-models (layer 0) has a dependency on hive-store")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|s| s.starts_with("hive-store (layer 1) has a dependency on hive-client")),
            "{v:?}"
        );
        assert!(
            v.iter()
                .any(|s| s.starts_with("hive-models depends (transitively) on tokio")),
            "{v:?}"
        );
        assert_eq!(layer("ai-planner"), Some(4));
    }
}
