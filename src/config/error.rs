//! What is wrong with a configuration, and where: each error names the file, and the line and
//! the key where there is one, in words the person who wrote the file can act on.

use crate::config::value::Invalid;
use std::fmt;
use std::path::PathBuf;

/// Displayed as `FILE:LINE: key `KEY`: MESSAGE`; without a key (a line that is no setting) as
/// `FILE:LINE: MESSAGE`; without a line (a missing key, an unreadable file) as
/// `FILE: MESSAGE`, where the message names the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read.
    Unreadable { file: PathBuf, reason: String },
    /// A line that is neither a comment nor `key = value`.
    NotKeyValue {
        file: PathBuf,
        line: usize,
        text: String,
    },
    /// A key proxy.conf does not have, with the nearest one it has when it looks like a typo.
    UnknownKey {
        file: PathBuf,
        line: usize,
        /// Escaped for the terminal: it is the file's text.
        key: String,
        near: Option<&'static str>,
    },
    SetTwice {
        file: PathBuf,
        line: usize,
        key: &'static str,
        first: usize,
    },
    /// Two keys of which one at most may be set.
    Exclusive {
        file: PathBuf,
        line: usize,
        key: &'static str,
        other: &'static str,
        other_line: usize,
    },
    /// A value its key does not take.
    BadValue {
        file: PathBuf,
        line: usize,
        key: &'static str,
        problem: Invalid,
    },
    /// A required key that is not set; `note` says why it is required here.
    Missing {
        file: PathBuf,
        key: &'static str,
        note: Option<String>,
    },
    /// A value that is fine on its own but not with the rest of the configuration, or that
    /// names a file which cannot be used; at the line that set the key, if one did.
    Setting {
        file: PathBuf,
        line: Option<usize>,
        key: String,
        message: String,
    },
    /// In a file the configuration names (a provider template): that file's line and key.
    Named {
        file: PathBuf,
        line: Option<usize>,
        key: Option<String>,
        message: String,
    },
}

impl ConfigError {
    /// The file at fault.
    pub fn file(&self) -> &PathBuf {
        match self {
            ConfigError::Unreadable { file, .. }
            | ConfigError::NotKeyValue { file, .. }
            | ConfigError::UnknownKey { file, .. }
            | ConfigError::SetTwice { file, .. }
            | ConfigError::Exclusive { file, .. }
            | ConfigError::BadValue { file, .. }
            | ConfigError::Missing { file, .. }
            | ConfigError::Setting { file, .. }
            | ConfigError::Named { file, .. } => file,
        }
    }
}

impl ConfigError {
    /// The line at fault (1-based), where there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Unreadable { .. } | ConfigError::Missing { .. } => None,
            ConfigError::NotKeyValue { line, .. }
            | ConfigError::UnknownKey { line, .. }
            | ConfigError::SetTwice { line, .. }
            | ConfigError::Exclusive { line, .. }
            | ConfigError::BadValue { line, .. } => Some(*line),
            ConfigError::Setting { line, .. } | ConfigError::Named { line, .. } => *line,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file().display();
        match self {
            ConfigError::Unreadable { reason, .. } => {
                write!(f, "{file}: cannot read the configuration file: {reason}")
            }
            ConfigError::NotKeyValue { line, text, .. } => {
                write!(f, "{file}:{line}: expected `key = value`, got {text:?}")
            }
            ConfigError::UnknownKey { line, key, near, .. } => {
                write!(f, "{file}:{line}: unknown key `{key}`")?;
                match near {
                    Some(near) => write!(f, " (did you mean `{near}`?)"),
                    None => Ok(()),
                }
            }
            ConfigError::SetTwice {
                line, key, first, ..
            } => write!(f, "{file}:{line}: key `{key}`: set twice (first on line {first})"),
            ConfigError::Exclusive {
                line,
                key,
                other,
                other_line,
                ..
            } => write!(
                f,
                "{file}:{line}: key `{key}`: `{other}` is already set on line {other_line}; set only one of the two"
            ),
            ConfigError::BadValue {
                line, key, problem, ..
            } => write!(f, "{file}:{line}: key `{key}`: {problem}"),
            ConfigError::Missing { key, note, .. } => {
                write!(f, "{file}: missing required key `{key}`")?;
                match note {
                    Some(note) => write!(f, " ({note})"),
                    None => Ok(()),
                }
            }
            ConfigError::Setting {
                line: Some(line),
                key,
                message,
                ..
            } => write!(f, "{file}:{line}: key `{key}`: {message}"),
            // Without a line the message names the key itself.
            ConfigError::Setting {
                line: None,
                message,
                ..
            } => write!(f, "{file}: {message}"),
            ConfigError::Named {
                line, key, message, ..
            } => {
                write!(f, "{file}")?;
                if let Some(line) = line {
                    write!(f, ":{line}")?;
                }
                match key {
                    Some(key) => write!(f, ": key `{key}`: {message}"),
                    None => write!(f, ": {message}"),
                }
            }
        }
    }
}

impl std::error::Error for ConfigError {}
