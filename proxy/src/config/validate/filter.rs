//! `[[filter]]`: proxy-wasm modules, their failure policy and limits.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use super::checker::*;
use crate::config::model::{self, ConfigFile};
use crate::config::*;

impl Checker<'_> {
    /// Validates a `[[filter]]`'s settings (its module is loaded, pinned, compiled and
    /// started once by `runtime::Artifacts` and `wasm::trial`).
    pub(super) fn filter(
        &mut self,
        f: &model::FilterSection,
        key: &str,
        base: &std::path::Path,
    ) -> Option<FilterConfig> {
        let failure_policy = match f.failure_policy.get_ref().as_str() {
            "fail_closed" => FailurePolicy::FailClosed,
            "fail_open" => FailurePolicy::FailOpen,
            other => {
                self.at(
                    &f.failure_policy,
                    format!("{key}.failure_policy"),
                    format!("unknown failure_policy `{other}`"),
                    Some("use \"fail_closed\" (503 when the filter fails) or \"fail_open\" (skip it)".into()),
                );
                FailurePolicy::FailClosed
            }
        };
        if f.memory_limit_mb == 0 || f.memory_limit_mb > 4096 {
            self.at(
                &f.name,
                format!("{key}.memory_limit_mb"),
                format!("{} MiB is out of range", f.memory_limit_mb),
                Some("use 1 to 4096 (default 64)".into()),
            );
        }
        let cpu_limit = self.dur(&f.cpu_limit, format!("{key}.cpu_limit"));
        if cpu_limit.is_zero() && f.cpu_limit.0.is_some() {
            self.at(
                &f.name,
                format!("{key}.cpu_limit"),
                "a zero CPU limit fails every callback".into(),
                Some("use e.g. \"50ms\"".into()),
            );
        }
        let as_bytes = |v: &Option<toml::Value>| -> Vec<u8> {
            match v {
                None => Vec::new(),
                Some(toml::Value::String(s)) => s.clone().into_bytes(),
                Some(other) => serde_json::to_vec(other).unwrap_or_default(),
            }
        };
        let path = self.file(
            base,
            &f.path,
            format!("{key}.path"),
            crate::config::access::Access::Read,
        );
        let cfg = FilterConfig {
            name: f.name.get_ref().clone(),
            path,
            root_id: f.root_id.clone(),
            vm_id: f.vm_id.clone().unwrap_or_else(|| f.name.get_ref().clone()),
            config: as_bytes(&f.config),
            vm_config: as_bytes(&f.vm_config),
            failure_policy,
            memory_limit: (f.memory_limit_mb.clamp(1, 4096) as usize) << 20,
            cpu_limit: if cpu_limit.is_zero() {
                Duration::from_millis(50)
            } else {
                cpu_limit
            },
            shared_prefix: f.shared_prefix.clone().filter(|p| !p.is_empty()),
            env: f.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            sha256: f.sha256.as_ref().map(|s| s.get_ref().clone()),
            path_at: self.anchor(&f.path, format!("{key}.path")),
            sha256_at: self.anchor(f.sha256.as_ref().unwrap_or(&f.path), format!("{key}.sha256")),
            declared_at: self.lines.locate(f.name.span().start),
        };
        Some(cfg)
    }
}

/// `[[filter]]`s, and the listeners' references to
/// them; their names for the routes.
pub(super) fn filters(c: &mut Checker, file: &ConfigFile, base: &Path) -> (Vec<FilterConfig>, HashMap<String, usize>) {
    // Filters (before routes, which name them).
    let mut filters: Vec<FilterConfig> = Vec::new();
    let mut filter_names: HashMap<String, usize> = HashMap::new();
    for (i, f) in file.filters.iter().enumerate() {
        let key = format!("filter[{i}]");
        if filter_names.contains_key(f.name.get_ref()) {
            c.at(
                &f.name,
                format!("{key}.name"),
                format!("filter name `{}` is used twice", f.name.get_ref()),
                Some("give each filter a unique name".into()),
            );
            continue;
        }
        if let Some(cfg) = c.filter(f, &key, base) {
            filter_names.insert(cfg.name.clone(), filters.len());
            filters.push(cfg);
        } else {
            filter_names.insert(f.name.get_ref().clone(), usize::MAX);
        }
    }

    for (i, l) in file.listeners.iter().enumerate() {
        for (j, name) in l.filters.iter().enumerate() {
            c.resolve(
                &filter_names,
                name,
                format!("listener[{i}].filters[{j}]"),
                format!("unknown filter `{}`", name.get_ref()),
                "define it with [[filter]] name = \"…\" path = \"….wasm\"",
            );
        }
        if !l.filters.is_empty() && l.protocol.get_ref() != "tcp" {
            c.at(
                &l.filters[0],
                format!("listener[{i}].filters"),
                "listener filters are network (L4) filters and apply to tcp listeners".into(),
                Some("put HTTP filters on routes: [[route]] filters = [\"…\"]".into()),
            );
        }
    }
    (filters, filter_names)
}
