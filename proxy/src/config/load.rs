//! Reading a configuration file: TOML parse and typed deserialisation, with every error
//! turned into a [`ConfigIssue`] that points at the line.

use std::path::Path;

use super::error::{did_you_mean, ConfigError, ConfigIssue, LineIndex};
use super::model::ConfigFile;
use super::{validate, Config};

/// Reads, parses and validates the configuration at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let readable_by_others = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    };
    load(&path.display().to_string(), &text, base, readable_by_others)
}

/// Parses and validates configuration `text`; `source` names it in messages; relative
/// file paths (certificates) are taken from the current directory.
pub fn load_str(source: &str, text: &str) -> Result<Config, ConfigError> {
    load_str_in(source, text, Path::new("."))
}

/// Like [`load_str`], with relative file paths resolved against `base`.
pub fn load_str_in(source: &str, text: &str, base: &Path) -> Result<Config, ConfigError> {
    load(source, text, base, false)
}

/// Parses and validates; `readable_by_others` says the file is world-readable (secrets
/// in it are warned about).
fn load(source: &str, text: &str, base: &Path, readable_by_others: bool) -> Result<Config, ConfigError> {
    let lines = LineIndex::new(text);
    let file = parse(text, &lines).map_err(|issue| ConfigError::Invalid {
        file: source.to_string(),
        issues: vec![issue],
    })?;
    validate::validate(source, text, &lines, file, base, readable_by_others).map_err(|issues| ConfigError::Invalid {
        file: source.to_string(),
        issues,
    })
}

fn parse(text: &str, lines: &LineIndex) -> Result<ConfigFile, ConfigIssue> {
    let de = toml::Deserializer::parse(text).map_err(|e| toml_issue(&e, String::new(), lines))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = render_path(e.path());
        toml_issue(e.inner(), path, lines)
    })
}

/// `serde_path_to_error` prints sequences as `listener[0]`; we keep that, and drop the
/// leading `.` it uses for the root.
fn render_path(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." {
        String::new()
    } else {
        p
    }
}

fn toml_issue(e: &toml::de::Error, mut key: String, lines: &LineIndex) -> ConfigIssue {
    let (line, col) = e.span().map(|s| lines.locate(s.start)).unwrap_or((1, 1));
    let mut message = e.message().trim().to_string();
    let mut hint = None;
    let original = message.clone();
    if let Some(rest) = original.strip_prefix("unknown field `") {
        if let Some((unknown, expected)) = rest.split_once('`') {
            let candidates: Vec<&str> = expected
                .split('`')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s)
                .collect();
            if !key.ends_with(unknown) {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(unknown);
            }
            message = format!("unknown key `{unknown}`");
            hint = Some(match did_you_mean(unknown, candidates.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known keys here: {}", candidates.join(", ")),
            });
        }
    } else if message.starts_with("missing field `") {
        hint = Some("add it; see the config reference in README.md".to_string());
    } else if message.contains("invalid type") {
        hint = Some("check the value's type (strings need quotes, durations are strings like \"5s\")".into());
    }
    if key.is_empty() {
        key = "(toml syntax)".into();
    }
    ConfigIssue {
        line,
        col,
        key,
        message: first_line(&message),
        hint,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}
