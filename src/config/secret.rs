//! Secrets in `proxy.toml`: literal, or `env:NAME` read from the environment at load time.
//! Never printed: `Debug` and the effective-config view mask them.

use std::fmt;

/// A secret string and where it came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    source: Option<String>,
}

impl Secret {
    /// Resolves `env:NAME` or takes the literal.
    pub fn resolve(raw: &str) -> Result<Self, String> {
        match raw.strip_prefix("env:") {
            Some(name) => match std::env::var(name) {
                Ok(v) => Ok(Self {
                    value: v,
                    source: Some(name.to_owned()),
                }),
                Err(_) => Err(format!("environment variable {name} is not set")),
            },
            None => Ok(Self {
                value: raw.to_owned(),
                source: None,
            }),
        }
    }

    /// The secret value.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A masked description for display.
    pub fn masked(&self) -> String {
        match &self.source {
            Some(env) => format!("env:{env} (set, masked)"),
            None => "**** (masked)".to_owned(),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}
