//! A schema reader over the spanned TOML tree: each getter records what it read and any
//! error with its key path and line, so validation reports every problem at once and
//! unknown keys are errors.

use std::cell::RefCell;
use std::collections::HashSet;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::ConfigError;

/// Shared state of one read: the source text (for line numbers) and the errors so far.
pub struct Ctx<'s> {
    src: &'s str,
    errors: RefCell<Vec<ConfigError>>,
}

impl<'s> Ctx<'s> {
    /// A context over `src`.
    pub fn new(src: &'s str) -> Self {
        Self {
            src,
            errors: RefCell::new(Vec::new()),
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        self.src[..offset.min(self.src.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1
    }

    /// Records an error at a byte offset.
    pub fn error(&self, path: &str, offset: usize, message: impl Into<String>) {
        self.errors.borrow_mut().push(ConfigError {
            path: path.to_owned(),
            line: Some(self.line_of(offset)),
            message: message.into(),
        });
    }

    /// The errors recorded so far.
    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors.into_inner()
    }
}

/// One TOML table being read.
pub struct Table<'a, 's> {
    ctx: &'a Ctx<'s>,
    table: &'a DeTable<'s>,
    path: String,
    offset: usize,
    used: HashSet<String>,
}

impl<'a, 's> Table<'a, 's> {
    /// Wraps a table found at `path`, starting at `offset`.
    pub fn new(ctx: &'a Ctx<'s>, table: &'a DeTable<'s>, path: String, offset: usize) -> Self {
        Self {
            ctx,
            table,
            path,
            offset,
            used: HashSet::new(),
        }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &str) -> Option<&'a Spanned<DeValue<'s>>> {
        self.used.insert(key.to_owned());
        self.table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(_, v)| v)
    }

    /// Records an error about `key` of this table.
    pub fn error(&self, key: &str, message: impl Into<String>) {
        let offset = self
            .table
            .iter()
            .find(|(k, _)| k.get_ref() == key)
            .map(|(k, _)| k.span().start)
            .unwrap_or(self.offset);
        self.ctx.error(&self.key_path(key), offset, message);
    }

    fn type_error(&self, key: &str, v: &Spanned<DeValue<'s>>, want: &str) {
        self.ctx.error(
            &self.key_path(key),
            v.span().start,
            format!("expected {want}, found {}", v.get_ref().type_str()),
        );
    }

    /// A string value.
    pub fn string(&mut self, key: &str) -> Option<String> {
        let v = self.get(key)?;
        match v.get_ref().as_str() {
            Some(s) => Some(s.to_owned()),
            None => {
                self.type_error(key, v, "a string");
                None
            }
        }
    }

    /// An integer within `[min, max]`.
    pub fn int(&mut self, key: &str, min: i64, max: i64) -> Option<i64> {
        let v = self.get(key)?;
        let parsed = v.get_ref().as_integer().and_then(|i| {
            i64::from_str_radix(i.as_str().replace('_', "").as_str(), i.radix()).ok()
        });
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.ctx.error(
                    &self.key_path(key),
                    v.span().start,
                    format!("{n} is out of range ({min}..={max})"),
                );
                None
            }
            None => {
                self.type_error(key, v, "an integer");
                None
            }
        }
    }

    /// A boolean.
    pub fn bool(&mut self, key: &str) -> Option<bool> {
        let v = self.get(key)?;
        match v.get_ref().as_bool() {
            Some(b) => Some(b),
            None => {
                self.type_error(key, v, "a boolean");
                None
            }
        }
    }

    /// A humantime duration string such as `"30s"` or `"5m"`.
    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        let s = self.string(key)?;
        match humantime::parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    key,
                    format!("invalid duration {s:?}: {e} (use e.g. \"500ms\", \"30s\", \"5m\")"),
                );
                None
            }
        }
    }

    /// A byte size: an integer, or a string such as `"64MiB"`.
    pub fn size(&mut self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        if v.get_ref().is_integer() {
            self.used.remove(key);
            return self.int(key, 0, i64::MAX).map(|n| n as u64);
        }
        let s = self.string(key)?;
        match parse_size(&s) {
            Some(n) => Some(n),
            None => {
                self.error(
                    key,
                    format!(
                        "invalid size {s:?} (use bytes or e.g. \"64KiB\", \"16MiB\", \"1GiB\")"
                    ),
                );
                None
            }
        }
    }

    /// A list of strings.
    pub fn strings(&mut self, key: &str) -> Option<Vec<String>> {
        let v = self.get(key)?;
        let Some(arr) = v.get_ref().as_array() else {
            self.type_error(key, v, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(s) => out.push(s.to_owned()),
                None => self.ctx.error(
                    &format!("{}[{i}]", self.key_path(key)),
                    item.span().start,
                    format!("expected a string, found {}", item.get_ref().type_str()),
                ),
            }
        }
        Some(out)
    }

    /// A sub-table.
    pub fn table(&mut self, key: &str) -> Option<Table<'a, 's>> {
        let v = self.get(key)?;
        match v.get_ref().as_table() {
            Some(t) => Some(Table::new(self.ctx, t, self.key_path(key), v.span().start)),
            None => {
                self.type_error(key, v, "a table");
                None
            }
        }
    }

    /// An array of tables (`[[key]]`).
    pub fn tables(&mut self, key: &str) -> Vec<Table<'a, 's>> {
        let Some(v) = self.get(key) else {
            return Vec::new();
        };
        let Some(arr) = v.get_ref().as_array() else {
            self.type_error(key, v, "an array of tables");
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item.get_ref().as_table() {
                Some(t) => out.push(Table::new(
                    self.ctx,
                    t,
                    format!("{}[{i}]", self.key_path(key)),
                    item.span().start,
                )),
                None => self.type_error(key, item, "a table"),
            }
        }
        out
    }

    /// Reports keys that no getter asked for.
    pub fn finish(&self) {
        for (k, _) in self.table.iter() {
            if !self.used.contains(k.get_ref().as_ref()) {
                self.ctx
                    .error(&self.key_path(k.get_ref()), k.span().start, "unknown key");
            }
        }
    }
}

/// Parses `"1GiB"`, `"64MiB"`, `"512KiB"`, `"100kB"`, `"4096"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "kib" | "k" => 1 << 10,
        "mb" => 1_000_000,
        "mib" | "m" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" | "g" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        assert_eq!(parse_size("64 MiB"), Some(64 << 20));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1.5GiB"), None);
        assert_eq!(parse_size("lots"), None);
    }
}
