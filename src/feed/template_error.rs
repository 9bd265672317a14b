//! What is wrong with a provider template, and where: the line and the key where the parser
//! knows them, in the words of the person who wrote the file. The template parser reads text,
//! not files, so the caller adds the file ([`TemplateError::in_file`]).

use crate::config::value::Invalid;
use crate::config::ConfigError;
use std::fmt;
use std::path::Path;

/// Displayed as `line LINE: key `KEY`: MESSAGE`; without a key (a line that is no setting) as
/// `line LINE: MESSAGE`; without a line (a required key that is not set) as
/// `key `KEY`: MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TemplateError {
    /// A line that is neither a comment nor `key = value`.
    NotKeyValue { line: usize, text: String },
    /// A key templates do not have.
    UnknownKey { line: usize, key: String },
    /// A key that may be set once, set again.
    SetTwice {
        line: usize,
        key: &'static str,
        first: usize,
    },
    /// A value its key does not take.
    BadValue {
        line: usize,
        key: &'static str,
        problem: ValueError,
    },
    /// A key that belongs to the line above it (`expect` to a `send`, `refuse_reason` to a
    /// `refuse`) on a line that does not follow one.
    Misplaced {
        line: usize,
        key: &'static str,
        must_follow: &'static str,
        /// What it is to that line: "whose reply it awaits".
        role: &'static str,
    },
    /// A key in the list with no step that reads it: a defect of this build (the test
    /// `every_key_is_read` keeps the two in step).
    NoParser { line: usize, key: &'static str },
    /// A key that means nothing without another (`heartbeat` without `heartbeat_secs`).
    Needs {
        line: Option<usize>,
        key: &'static str,
        needs: &'static str,
        /// What the other key gives it, if that needs saying.
        why: Option<&'static str>,
    },
    /// A key that needs at least one of some others.
    NeedsOneOf {
        line: Option<usize>,
        key: &'static str,
        one_of: &'static [&'static str],
    },
    /// `symbol_limit_field`, when no `send` awaits a reply to read it from.
    NoReplyAwaited { line: Option<usize> },
    /// A key that describes quotes read from fields, with `quotes = v1`.
    FieldsOnly {
        line: Option<usize>,
        key: &'static str,
    },
    /// A key `quotes = fields` requires, not set.
    Missing { key: &'static str },
}

/// What is wrong with a template key's value, in words for the person who wrote it; the
/// template parser places it at its line and key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// Nothing after the `=`, where text is needed.
    Empty,
    /// Not one of the values the key takes: `expected {expected}, got {got:?}`.
    Expected { expected: String, got: String },
    /// Not a field path (`status`, `response.code`, `data.4`).
    FieldPath { got: String },
    /// A pattern's condition that is not `FIELD=VALUE` or `FIELD!=VALUE`.
    Pattern { got: String },
    /// `contains:` or `equals:` with nothing after the colon.
    PatternText,
    /// A symbol spelling that is not a format over `{symbol}`, or `{base}` and `{quote}`.
    Spelling { got: String },
    /// A `header` line proxy.conf's `upstream_header` would refuse.
    Header(Invalid),
}

impl ValueError {
    pub(crate) fn expected(expected: impl Into<String>, got: &str) -> ValueError {
        ValueError::Expected {
            expected: expected.into(),
            got: got.to_string(),
        }
    }
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Empty => f.write_str("expected a value, got nothing"),
            ValueError::Expected { expected, got } => write!(f, "expected {expected}, got {got:?}"),
            ValueError::FieldPath { got } => write!(
                f,
                "expected a field such as `status`, `response.code` or `data.4` (letters, digits, _ and -, separated by dots), got {got:?}"
            ),
            ValueError::Pattern { got } => write!(
                f,
                "expected `FIELD=VALUE` (or `FIELD!=VALUE`, `FIELD=A|B`, joined with ` and `), `contains:TEXT` or `equals:TEXT`, got {got:?}"
            ),
            ValueError::PatternText => f.write_str("expected text after the colon"),
            ValueError::Spelling { got } => write!(
                f,
                "expected a spelling over {{symbol}} (EURUSD) or {{base}} and {{quote}} (EUR, USD), such as C.{{base}}/{{quote}}, got {got:?}"
            ),
            ValueError::Header(problem) => problem.fmt(f),
        }
    }
}

impl std::error::Error for ValueError {}

impl TemplateError {
    /// The line at fault (1-based), where there is one.
    pub fn line(&self) -> Option<usize> {
        match self {
            TemplateError::NotKeyValue { line, .. }
            | TemplateError::UnknownKey { line, .. }
            | TemplateError::SetTwice { line, .. }
            | TemplateError::BadValue { line, .. }
            | TemplateError::Misplaced { line, .. }
            | TemplateError::NoParser { line, .. } => Some(*line),
            TemplateError::Needs { line, .. }
            | TemplateError::NeedsOneOf { line, .. }
            | TemplateError::NoReplyAwaited { line }
            | TemplateError::FieldsOnly { line, .. } => *line,
            TemplateError::Missing { .. } => None,
        }
    }

    /// The key at fault, named before the message; none for a line that is no setting (an
    /// unknown key is named in the message itself).
    pub fn key(&self) -> Option<&'static str> {
        match self {
            TemplateError::NotKeyValue { .. } | TemplateError::UnknownKey { .. } => None,
            TemplateError::SetTwice { key, .. }
            | TemplateError::BadValue { key, .. }
            | TemplateError::Misplaced { key, .. }
            | TemplateError::NoParser { key, .. }
            | TemplateError::Needs { key, .. }
            | TemplateError::NeedsOneOf { key, .. }
            | TemplateError::FieldsOnly { key, .. }
            | TemplateError::Missing { key } => Some(key),
            TemplateError::NoReplyAwaited { .. } => Some("symbol_limit_field"),
        }
    }

    /// The same error in the configuration's terms, at the template's `file`: displayed as
    /// `FILE:LINE: key `KEY`: MESSAGE`.
    pub fn in_file(&self, file: &Path) -> ConfigError {
        ConfigError::Named {
            file: file.to_path_buf(),
            line: self.line(),
            key: self.key().map(str::to_string),
            message: Message(self).to_string(),
        }
    }
}

/// What went wrong, without the line and the key that [`TemplateError`]'s `Display` puts in
/// front of it.
struct Message<'e>(&'e TemplateError);

impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            TemplateError::NotKeyValue { text, .. } => {
                write!(f, "expected `key = value`, got {text:?}")
            }
            TemplateError::UnknownKey { key, .. } => write!(f, "unknown key `{key}`"),
            TemplateError::SetTwice { first, .. } => {
                write!(f, "set twice (first on line {first})")
            }
            TemplateError::BadValue { problem, .. } => problem.fmt(f),
            TemplateError::Misplaced {
                must_follow, role, ..
            } => write!(f, "must follow the `{must_follow}` {role}"),
            TemplateError::NoParser { .. } => f.write_str("has no parser (a defect of this build)"),
            TemplateError::Needs { needs, why, .. } => {
                write!(f, "needs `{needs}`")?;
                match why {
                    Some(why) => write!(f, ", {why}"),
                    None => Ok(()),
                }
            }
            TemplateError::NeedsOneOf { one_of, .. } => {
                f.write_str("needs at least one of ")?;
                for (i, key) in one_of.iter().enumerate() {
                    let sep = match i {
                        0 => "",
                        _ if i + 1 == one_of.len() => " and ",
                        _ => ", ",
                    };
                    write!(f, "{sep}`{key}`")?;
                }
                Ok(())
            }
            TemplateError::NoReplyAwaited { .. } => {
                f.write_str("is read from the reply a `send` awaits, and no `send` has an `expect`")
            }
            TemplateError::FieldsOnly { .. } => f.write_str("applies to `quotes = fields` only"),
            TemplateError::Missing { .. } => f.write_str("required with `quotes = fields`"),
        }
    }
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line() {
            write!(f, "line {line}: ")?;
        }
        if let Some(key) = self.key() {
            write!(f, "key `{key}`: ")?;
        }
        Message(self).fmt(f)
    }
}

// The value's problem is part of the message, so it is not also given as a `source`.
impl std::error::Error for TemplateError {}
