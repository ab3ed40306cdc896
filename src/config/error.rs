//! [`ConfigError`]: every mistake found in one config file, each with its line, key and fix.
//!
//! An operator fixing a file should see all its mistakes at once, not one per run; so loading
//! collects them (up to [`MAX_ERRORS`]) and one `ConfigError` carries the list. Its own fields are
//! the first mistake in file order, so a caller that only looks at one keeps working.

use std::fmt;

/// Most mistakes listed for one file; past that the rest are counted, not shown, since a file
/// with that many is usually not a switchboard config at all.
pub const MAX_ERRORS: usize = 20;

/// What is wrong with a config, pointing at the file and line, with a fix where one is obvious.
/// The fields describe the first mistake (in file order); [`ConfigError::errors`] yields every
/// one found, and `Display` prints them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file name (or another description of where the text came from).
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The dotted key at fault (`upstream.chat.balance`), when known.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// The whole list, when there is more than this one mistake (boxed: most errors come alone,
    /// and a `Result` carrying one stays small).
    list: Option<Box<List>>,
}

/// Every mistake of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct List {
    /// In file order, the first one too; each without a list of its own, so it displays alone.
    all: Vec<ConfigError>,
    /// Mistakes found past [`MAX_ERRORS`], counted but not kept.
    omitted: usize,
}

impl ConfigError {
    /// One mistake.
    pub(crate) fn new(
        origin: &str,
        line: Option<usize>,
        key: Option<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> ConfigError {
        ConfigError {
            origin: origin.to_owned(),
            line,
            key,
            message: message.into(),
            hint,
            list: None,
        }
    }

    /// `one` and `others` as one error, sorted by line (stable, so mistakes on one line stay in
    /// the order they were found) and cut at [`MAX_ERRORS`].
    pub(crate) fn collect(one: ConfigError, others: Vec<ConfigError>) -> ConfigError {
        let found: Vec<ConfigError> = std::iter::once(one).chain(others).collect();
        let carried: usize = found.iter().map(ConfigError::omitted).sum();
        let mut all: Vec<ConfigError> = found.into_iter().flat_map(ConfigError::flatten).collect();
        all.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        let omitted = carried + all.len().saturating_sub(MAX_ERRORS);
        all.truncate(MAX_ERRORS);
        let mut first = all[0].clone();
        if all.len() > 1 || omitted > 0 {
            first.list = Some(Box::new(List { all, omitted }));
        }
        first
    }

    /// The mistakes this error stands for, each on its own.
    fn flatten(mut self) -> Vec<ConfigError> {
        match self.list.take() {
            Some(list) => list.all,
            None => vec![self],
        }
    }

    /// Mistakes found past [`MAX_ERRORS`], counted but not listed.
    fn omitted(&self) -> usize {
        self.list.as_ref().map_or(0, |list| list.omitted)
    }

    /// Every mistake found, first to last in file order; each yielded error describes only
    /// itself.
    pub fn errors(&self) -> impl Iterator<Item = &ConfigError> {
        let (alone, listed) = match &self.list {
            Some(list) => (None, &list.all[..]),
            None => (Some(self), &[][..]),
        };
        alone.into_iter().chain(listed)
    }

    /// How many mistakes were found, including those past [`MAX_ERRORS`] that are not listed.
    pub fn found(&self) -> usize {
        self.errors().count() + self.omitted()
    }

    /// `origin:line: `key`: message` and the hint below it.
    fn fmt_one(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key {
            write!(f, "`{key}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// One mistake per entry, each starting with `origin:line:` so the output reads like a
/// compiler's and can be grepped; with more than one, a last line counts them.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            e.fmt_one(f)?;
        }
        let found = self.found();
        let omitted = self.omitted();
        if omitted > 0 {
            write!(
                f,
                "\n{found} errors in {}; the first {} are shown",
                self.origin,
                found - omitted
            )?;
        } else if found > 1 {
            write!(f, "\n{found} errors in {}", self.origin)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(line: usize) -> ConfigError {
        ConfigError::new("t.toml", Some(line), None, format!("m{line}"), None)
    }

    #[test]
    fn collects_in_line_order_and_bounds_the_list() {
        let e = ConfigError::collect(at(9), vec![at(3), at(5)]);
        assert_eq!(e.line, Some(3));
        let lines: Vec<_> = e.errors().map(|e| e.line.unwrap()).collect();
        assert_eq!(lines, [3, 5, 9]);
        assert_eq!(
            e.to_string(),
            "t.toml:3: m3\nt.toml:5: m5\nt.toml:9: m9\n3 errors in t.toml"
        );

        let many = ConfigError::collect(at(25), (1..=24).rev().map(at).collect());
        assert_eq!((many.errors().count(), many.found()), (MAX_ERRORS, 25));
        assert_eq!(many.errors().last().unwrap().line, Some(20));
        assert!(
            many.to_string()
                .ends_with("\n25 errors in t.toml; the first 20 are shown"),
            "{many}"
        );
        // Collecting collected errors keeps one flat list.
        let again = ConfigError::collect(e, vec![at(1)]);
        assert_eq!(again.errors().count(), 4);
        assert!(again.errors().all(|e| e.list.is_none()));
        // Each listed error prints alone.
        assert_eq!(again.errors().next().unwrap().to_string(), "t.toml:1: m1");
    }

    #[test]
    fn one_error_prints_alone_with_its_hint() {
        let mut e = at(2);
        e.key = Some("limits.max_connections".into());
        e.hint = Some("write 10".into());
        assert_eq!(
            ConfigError::collect(e, Vec::new()).to_string(),
            "t.toml:2: `limits.max_connections`: m2\n  hint: write 10"
        );
    }
}
