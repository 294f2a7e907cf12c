//! Configuration errors: every problem names the file, line, column, key path, what is
//! wrong and what would be right.

use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// 1-based line of the offending value (or its table).
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Dotted key path, e.g. `cluster[0].endpoints[1].address`.
    pub key: String,
    /// What is wrong, with the offending value.
    pub message: String,
    /// What would be right.
    pub hint: Option<String>,
}

/// Where a value was written (line, column, key path): kept in the configuration for
/// the problems found after validation, when the runtime is built from it (a
/// certificate that does not load, a filter module that does not compile). Any two
/// anchors compare equal: moving a line is not a change of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Anchor {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub col: usize,
    /// Dotted key path.
    pub key: String,
}

impl PartialEq for Anchor {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Anchor {
    /// The problem `message` (with its fix) at this place.
    pub fn issue(&self, message: String, hint: &str) -> ConfigIssue {
        ConfigIssue {
            line: self.line,
            col: self.col,
            key: self.key.clone(),
            message,
            hint: Some(hint.to_string()),
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render_issues(file, issues))]
    Invalid {
        /// The file (or a label such as `<embedded demo>`).
        file: String,
        /// Every problem found, in file order.
        issues: Vec<ConfigIssue>,
    },
}

impl ConfigError {
    /// The individual problems (empty for read errors).
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { issues, .. } => issues,
        }
    }
}

fn render_issues(file: &str, issues: &[ConfigIssue]) -> String {
    let mut out = String::new();
    for (i, issue) in issues.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&format!("{file}:{}", Located(issue)));
    }
    out
}

struct Located<'a>(&'a ConfigIssue);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.0;
        write!(f, "{}:{}: {}: {}", i.line, i.col, i.key, i.message)?;
        if let Some(hint) = &i.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// Maps byte offsets of a source text to 1-based line and column.
pub(crate) struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    pub(crate) fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Self { starts }
    }

    pub(crate) fn locate(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        (line, offset - self.starts[line - 1] + 1)
    }
}

/// Suggests the closest of `candidates` to `word`, if one is close enough: within a
/// few edits (transpositions count as one) or sharing a long common prefix.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), strsim::jaro_winkler(word, c), c))
        .filter(|(d, jw, _)| *d <= limit || *jw > 0.9)
        .min_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)))
        .map(|(_, _, c)| c)
}
