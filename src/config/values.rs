//! Values that may live outside the file: written out, `env:NAME`, or
//! `file:/path`; and the signing secrets built from them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::deliver::sign::Secret;

/// A value written in the file, or read at load from the environment
/// (`env:NAME`) or a file (`file:/path`, trailing whitespace trimmed).
/// `Debug` never shows a literal value.
#[derive(Clone, PartialEq, Eq)]
pub enum ValueSource {
    Literal(String),
    Env(String),
    File(PathBuf),
}

impl fmt::Debug for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Literal(_) => f.write_str("***"),
            ValueSource::Env(name) => write!(f, "env:{name}"),
            ValueSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

impl ValueSource {
    /// `env:NAME`, `file:/path`, or the text itself.
    pub fn parse(s: &str) -> Result<ValueSource, String> {
        if let Some(name) = s.strip_prefix("env:") {
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "`env:{name}`: an environment variable name is letters, digits and '_'"
                ));
            }
            Ok(ValueSource::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("`file:` needs a path".into());
            }
            Ok(ValueSource::File(PathBuf::from(path)))
        } else {
            Ok(ValueSource::Literal(s.to_string()))
        }
    }
}

impl<'de> Deserialize<'de> for ValueSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ValueSource::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Where `env:NAME` values come from: the process environment, or in tests
/// a map, so tests never touch the real environment.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// The text of a value; errors name the source, never the value.
pub(super) fn resolve_value(
    source: &ValueSource,
    base: &Path,
    env: &dyn Environment,
) -> Result<String, String> {
    match source {
        ValueSource::Literal(s) => Ok(s.clone()),
        ValueSource::Env(name) => env
            .var(name)
            .ok_or_else(|| format!("environment variable {name} is not set (or not UTF-8)")),
        ValueSource::File(file) => {
            let full = base.join(file);
            std::fs::read_to_string(&full)
                .map(|s| s.trim_end().to_string())
                .map_err(|e| format!("cannot read {}: {e}", full.display()))
        }
    }
}

/// A header value marked sensitive (HTTP/2 never indexes it; `Debug` hides it).
pub(super) fn sensitive(text: &str) -> Option<http::HeaderValue> {
    let mut v = http::HeaderValue::from_str(text).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A target's signing secrets: none, one, or several while rotating.
#[derive(Debug, Clone, Default)]
pub struct Secrets(pub Vec<Secret>);

/// The `secret` key as written. Literal secrets are checked as they are
/// read; `env:` and `file:` ones when they are resolved.
#[derive(Debug, Clone, Default)]
pub struct SecretSources(Vec<ValueSource>);

impl SecretSources {
    pub(super) fn resolve(&self, base: &Path, env: &dyn Environment) -> Result<Secrets, String> {
        self.0
            .iter()
            .map(|source| {
                let text = resolve_value(source, base, env)?;
                Secret::parse(&text).map_err(|e| match source {
                    // Never echo a secret; say where it came from.
                    ValueSource::Literal(_) => e,
                    other => format!("{other:?}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Secrets)
    }
}

impl<'de> Deserialize<'de> for SecretSources {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(ValueSource),
            Many(Vec<ValueSource>),
        }
        // serde's own words for an untagged mismatch name no type.
        let either = OneOrMany::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a text (whsec_..., env:NAME or file:/path) or a list of them",
            )
        })?;
        let list = match either {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        for source in &list {
            if let ValueSource::Literal(s) = source {
                Secret::parse(s).map_err(serde::de::Error::custom)?;
            }
        }
        Ok(SecretSources(list))
    }
}
