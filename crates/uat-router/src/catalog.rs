//! Which provider serves which model: discovered or configured model lists
//! plus aliases, rebuilt after each discovery round and swapped in whole.

use std::collections::HashMap;
use std::sync::Arc;
use uat_config::ModelAlias;
use uat_types::Model;

/// One place a model can be served: a provider and its name for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index of the provider.
    pub(crate) slot: usize,
    /// The upstream's model name.
    pub(crate) model: Arc<str>,
}

/// A lookup table from public names to targets.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    by_name: HashMap<String, Arc<[Target]>>,
    pub listing: Vec<Model>,
}

/// `owned_by` of alias entries in `/v1/models`.
pub const ALIAS_OWNER: &str = "uat-alias";

impl Catalog {
    /// Builds the table. `models[i]` are provider `i`'s models; `names[i]` its name.
    pub fn build(
        names: &[Arc<str>],
        models: &[Arc<Vec<String>>],
        aliases: &[ModelAlias],
    ) -> Catalog {
        let mut acc: HashMap<&str, Vec<Target>> = HashMap::new();
        let mut listing = Vec::new();
        for (slot, list) in models.iter().enumerate() {
            for m in list.iter() {
                let entry = acc.entry(m.as_str()).or_default();
                if entry.is_empty() {
                    listing.push(Model::new(m.clone(), names[slot].to_string()));
                }
                if !entry.iter().any(|t| t.slot == slot) {
                    entry.push(Target {
                        slot,
                        model: Arc::from(m.as_str()),
                    });
                }
            }
        }
        let mut by_name: HashMap<String, Arc<[Target]>> = acc
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Arc::from(v)))
            .collect();
        for a in aliases {
            let targets: Vec<Target> = a
                .targets
                .iter()
                .filter_map(|t| {
                    let (prov, model) = t.split_once('/')?;
                    let slot = names.iter().position(|n| &**n == prov)?;
                    Some(Target {
                        slot,
                        model: Arc::from(model),
                    })
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            if !by_name.contains_key(&a.name) {
                listing.push(Model::new(a.name.clone(), ALIAS_OWNER));
            } else if let Some(m) = listing.iter_mut().find(|m| m.id == a.name) {
                m.owned_by = ALIAS_OWNER.into();
            }
            by_name.insert(a.name.clone(), Arc::from(targets));
        }
        Catalog { by_name, listing }
    }

    /// Targets for a public name: an alias, a model, or `provider/model`.
    /// A name without a tag is also found as `name:latest`, as Ollama
    /// itself resolves it (its model lists always carry the tag, while its
    /// documentation and clients mostly leave it out).
    pub fn resolve(&self, name: &str, names: &[Arc<str>]) -> Option<Arc<[Target]>> {
        if let Some(t) = self.by_name.get(name) {
            return Some(t.clone());
        }
        if !name.is_empty()
            && !name.contains(':')
            && let Some(t) = self.by_name.get(&format!("{name}:latest"))
        {
            return Some(t.clone());
        }
        let (prov, model) = name.split_once('/')?;
        let slot = names.iter().position(|n| &**n == prov)?;
        if model.is_empty() {
            return None;
        }
        Some(Arc::from(vec![Target {
            slot,
            model: Arc::from(model),
        }]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_without_a_tag_finds_its_latest() {
        let models = vec![
            Arc::new(vec!["llama3.1:latest".to_string(), "qwen:7b".to_string()]),
            Arc::new(vec!["plain".to_string()]),
        ];
        let c = Catalog::build(&names(), &models, &[]);
        let n = names();
        let t = c.resolve("llama3.1", &n).unwrap();
        assert_eq!((t[0].slot, &*t[0].model), (0, "llama3.1:latest"));
        assert!(c.resolve("llama3.1:latest", &n).is_some());
        assert!(c.resolve("qwen", &n).is_none(), "only :latest is implied");
        assert!(c.resolve("plain", &n).is_some());
        assert!(c.resolve("plain:latest", &n).is_none());
    }

    fn names() -> Vec<Arc<str>> {
        vec![Arc::from("a"), Arc::from("b")]
    }

    #[test]
    fn models_aliases_and_explicit_targets() {
        let models = vec![
            Arc::new(vec!["m1".to_string(), "shared".to_string()]),
            Arc::new(vec!["shared".to_string(), "org/m2".to_string()]),
        ];
        let aliases = vec![ModelAlias {
            name: "fast".into(),
            targets: vec!["b/m9".into(), "a/m1".into(), "zzz/x".into()],
        }];
        let c = Catalog::build(&names(), &models, &aliases);
        let n = names();
        let shared = c.resolve("shared", &n).unwrap();
        assert_eq!(
            shared.iter().map(|t| t.slot).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let fast = c.resolve("fast", &n).unwrap();
        assert_eq!(fast.len(), 2, "unknown provider target dropped");
        assert_eq!((fast[0].slot, &*fast[0].model), (1, "m9"));
        assert_eq!(
            c.resolve("org/m2", &n).unwrap()[0].slot,
            1,
            "model names may hold a slash"
        );
        let explicit = c.resolve("a/anything", &n).unwrap();
        assert_eq!((explicit[0].slot, &*explicit[0].model), (0, "anything"));
        assert!(c.resolve("nope", &n).is_none());
        assert!(c.resolve("c/m1", &n).is_none());
        let ids: Vec<&str> = c.listing.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(
            ids,
            vec!["m1", "shared", "org/m2", "fast"],
            "deduplicated, aliases included"
        );
    }
}
