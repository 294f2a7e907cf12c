//! Reading a configuration file: TOML parse and typed deserialisation, with every error
//! turned into a [`ConfigIssue`] that points at the line.

use std::path::Path;

use super::error::{did_you_mean, ConfigError, ConfigIssue, LineIndex};
use super::model::ConfigFile;
use super::{validate, Config};

/// A configuration file read as far as it goes: the values validation built (none when
/// the file does not parse) and every problem found. Later steps (loading certificates
/// and filter modules) add theirs, so one pass reports them all.
#[derive(Debug)]
pub struct Reading {
    /// Where it came from (path or label).
    pub source: String,
    /// The configuration; meaningful only when `issues` is empty.
    pub config: Option<Config>,
    /// Every problem found.
    pub issues: Vec<ConfigIssue>,
}

impl Reading {
    /// The configuration when there is no problem; otherwise every problem, in file order.
    pub fn into_result(self) -> Result<Config, ConfigError> {
        match self.config {
            Some(config) if self.issues.is_empty() => Ok(config),
            _ => Err(invalid(&self.source, self.issues)),
        }
    }
}

/// A refusal listing `issues` in file order, each once.
pub fn invalid(source: &str, mut issues: Vec<ConfigIssue>) -> ConfigError {
    issues.sort_by_key(|i| (i.line, i.col));
    issues.dedup();
    ConfigError::Invalid {
        file: source.to_string(),
        issues,
    }
}

/// Reads, parses and validates the configuration at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    read_file(path)?.into_result()
}

/// Reads, parses and validates the configuration at `path`, keeping what was built
/// beside the problems (see [`Reading`]); only an unreadable file is an error here.
pub fn read_file(path: &Path) -> Result<Reading, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let readable_by_others = {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    };
    Ok(read(&path.display().to_string(), &text, base, readable_by_others))
}

/// Parses and validates configuration `text`; `source` names it in messages; relative
/// file paths (certificates) are taken from the current directory.
pub fn load_str(source: &str, text: &str) -> Result<Config, ConfigError> {
    read_str(source, text).into_result()
}

/// Like [`load_str`], keeping what was built beside the problems (see [`Reading`]).
pub fn read_str(source: &str, text: &str) -> Reading {
    read(source, text, Path::new("."), false)
}

/// Like [`load_str`], with relative file paths resolved against `base`.
pub fn load_str_in(source: &str, text: &str, base: &Path) -> Result<Config, ConfigError> {
    read(source, text, base, false).into_result()
}

/// Parses and validates; `readable_by_others` says the file is world-readable (secrets
/// in it are warned about). Every problem is reported in one pass: unknown keys and
/// badly typed values are set aside so the rest of the file is still read and validated.
fn read(source: &str, text: &str, base: &Path, readable_by_others: bool) -> Reading {
    let lines = LineIndex::new(text);
    let (file, mut issues) = parse(text, &lines);
    let config = file.map(|file| {
        let (config, more) = validate::validate(source, text, &lines, file, base, readable_by_others);
        issues.extend(more);
        config
    });
    Reading {
        source: source.to_string(),
        config,
        issues,
    }
}

/// Most problems one file can report before giving up.
const MAX_PARSE_PROBLEMS: usize = 100;

/// Deserialises the file, setting aside each entry serde refuses (an unknown key, a value
/// of the wrong type) and trying again, so one typo does not hide the next. Returns the
/// file when the rest deserialises, and every problem met.
fn parse(text: &str, lines: &LineIndex) -> (Option<ConfigFile>, Vec<ConfigIssue>) {
    let mut root = match toml::de::DeTable::parse(text) {
        Ok(r) => r,
        Err(e) => return (None, vec![toml_issue(&e, String::new(), lines)]),
    };
    let mut issues = Vec::new();
    // (table path, key) of every entry set aside.
    let mut set_apart: Vec<(String, String)> = Vec::new();
    while issues.len() < MAX_PARSE_PROBLEMS {
        let de = toml::de::Deserializer::from(root.clone());
        let e = match serde_path_to_error::deserialize::<_, ConfigFile>(de) {
            Ok(file) => return (Some(file), issues),
            Err(e) => e,
        };
        let path = render_path(e.path());
        let message = e.inner().message();
        if let Some(field) = quoted(message, "missing field `") {
            // A required key that was misspelt or badly typed is then also "missing":
            // one mistake, one problem. Nothing more can be read past a missing key.
            let consequence = set_apart
                .iter()
                .any(|(table, key)| *table == path && (key == field || did_you_mean(key, [field]).is_some()));
            if !consequence {
                issues.push(toml_issue(e.inner(), path, lines));
            }
            return (None, issues);
        }
        let entry = match quoted(message, "unknown field `") {
            Some(name) => {
                // The path may already end with the unknown key itself.
                let table = path
                    .strip_suffix(name)
                    .map_or(path.as_str(), |t| t.trim_end_matches('.'));
                (table.to_string(), name.to_string())
            }
            None => match path.rsplit_once('.') {
                Some((table, key)) => (table.to_string(), key.to_string()),
                None => (String::new(), path.clone()),
            },
        };
        issues.push(toml_issue(e.inner(), path, lines));
        let Some(span) = e.inner().span() else {
            return (None, issues);
        };
        if !set_aside(root.get_mut(), &span) {
            return (None, issues);
        }
        set_apart.push(entry);
    }
    (None, issues)
}

/// The text between `prefix` and the next backquote in `message`.
fn quoted<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message.strip_prefix(prefix)?.split('`').next()
}

/// Removes the table entry whose key or value is at `span`; false when there is none.
/// Array elements are never removed (the indices of later problems would shift).
fn set_aside(table: &mut toml::de::DeTable<'_>, span: &std::ops::Range<usize>) -> bool {
    let hit = table
        .iter()
        .find(|(k, v)| k.span() == *span || v.span() == *span)
        .map(|(k, _)| k.get_ref().clone());
    if let Some(key) = hit {
        table.remove(key.as_ref());
        return true;
    }
    // Spans of tables opened by a `[header]` cover the header only: search every
    // nested table rather than the one whose span holds `span`.
    table.iter_mut().any(|(_, v)| match v.get_mut() {
        toml::de::DeValue::Table(t) => set_aside(t, span),
        toml::de::DeValue::Array(a) => a.iter_mut().any(|item| match item.get_mut() {
            toml::de::DeValue::Table(t) => set_aside(t, span),
            _ => false,
        }),
        _ => false,
    })
}

/// `serde_path_to_error` prints sequences as `listener[0]`; we keep that, and drop the
/// leading `.` it uses for the root.
fn render_path(path: &serde_path_to_error::Path) -> String {
    // A `Spanned` value shows up as an inner field of serde_spanned's own: not a key.
    let p = path.to_string().replace(".$__serde_spanned_private_value", "");
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
