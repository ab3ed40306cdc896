//! TOML text → [`RawConfig`], reporting every wrong type, unknown key and missing key in the
//! file rather than only the first.
//!
//! serde stops at its first error. So the text is parsed once into toml's document tree (a
//! syntax error stops there: what follows it cannot be trusted), and `RawConfig` is deserialized
//! from that tree; after each error the node it points at is taken out of the tree and the
//! deserialization runs again, up to [`MAX_ERRORS`] times. Taking out a node can only make a
//! later *validation* error echo the first (a table that lost its `balance` then complains about
//! `hash_key`), so what was taken out is returned as [`Damage`] for validation errors in it to be
//! left out.

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::error::MAX_ERRORS;
use super::raw::RawConfig;
use super::words::{self, Found};
use super::{ConfigError, line_of};

/// What deserializing found.
pub(super) struct Parsed {
    /// The raw config once every faulty node was taken out.
    pub raw: RawConfig,
    /// The deserialize errors, in the order found.
    pub errors: Vec<ConfigError>,
    /// Where nodes were taken out: validation errors there may only repeat these errors.
    pub damage: Vec<Damage>,
}

/// A part of the file whose validation errors may only echo a deserialize error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Damage {
    /// A table that lost a value of the wrong type, or was dropped for a missing key: errors
    /// about keys inside it (the dotted prefix) written on these lines (for an entry of an
    /// array of tables, such as one `[[route]]`, only that entry's lines).
    Table {
        /// The table's dotted key, `upstream.chat` or `route`.
        prefix: String,
        /// The lines the table (or the array entry) spans.
        lines: std::ops::RangeInclusive<usize>,
    },
    /// A key whose errors all may echo a dropped table: `route` (no route left) once a
    /// `[[route]]` is dropped, `route.upstream` (an unknown name) once an `[upstream.NAME]` is.
    Key(String),
}

impl Damage {
    /// Whether an error about `key` on `line` may only echo what was taken out.
    pub(super) fn covers(&self, key: &str, line: Option<usize>) -> bool {
        match self {
            Damage::Table { prefix, lines } => {
                let inside = prefix.is_empty()
                    || key == prefix
                    || key
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.starts_with('.'));
                inside && line.is_none_or(|l| lines.contains(&l))
            }
            Damage::Key(exact) => key == exact,
        }
    }
}

/// One step from a table to the node an error points at.
#[derive(Debug, Clone)]
enum Step {
    /// The entry of this key (its span identifies it; keys are unique in a table).
    Key(String),
    /// The element at this index of an array.
    Index(usize),
}

/// Parses `src`. `Err` is a syntax error (only the first is reported), or the deserialize
/// errors found when the rest cannot be read (a required top-level key is missing, or more than
/// [`MAX_ERRORS`] turned up).
pub(super) fn parse(src: &str, origin: &str) -> Result<Parsed, ConfigError> {
    let mut doc = DeTable::parse(src).map_err(|e| {
        let line = e.span().map(|span| line_of(src, span.start));
        let (message, hint) = words::translate(e.message(), None, "");
        ConfigError::new(
            origin,
            line,
            None,
            with_source_line(src, line, message),
            hint,
        )
    })?;
    let mut errors = Vec::new();
    let mut damage = Vec::new();
    loop {
        let e = match RawConfig::deserialize(toml::de::Deserializer::from(doc.clone())) {
            Ok(raw) => {
                return Ok(Parsed {
                    raw,
                    errors,
                    damage,
                });
            }
            Err(e) => e,
        };
        let span = e.span();
        let target = span
            .clone()
            .and_then(|span| find(doc.get_ref(), &span, src));
        let line = span.as_ref().map(|span| line_of(src, span.start));
        let missing = e.message().starts_with("missing field `");
        let (key, found) = match &target {
            Some((path, found)) => (dotted(path), found.clone()),
            None => (String::new(), None),
        };
        let key = match e.message().strip_prefix("missing field `") {
            Some(rest) => {
                let field = rest.trim_end_matches('`');
                if key.is_empty() {
                    field.to_owned()
                } else {
                    format!("{key}.{field}")
                }
            }
            None => key,
        };
        let (message, hint) = words::translate(e.message(), found.as_ref(), &key);
        let message = with_source_line(src, line, message);
        let key = (!key.is_empty()).then_some(key);
        let error = ConfigError::new(origin, line, key, message, hint);
        // What the node's removal may echo, found before the removal shifts array entries.
        let unknown_key = e.message().starts_with("unknown field `");
        let harm = match &target {
            Some((path, _)) if !unknown_key => harm(doc.get_ref(), path, missing, src),
            _ => Vec::new(),
        };
        // Go on without the node the error points at, unless that is the whole document (a
        // required top-level key is missing), nothing, or there are too many errors already.
        let removed = match &target {
            Some((path, _)) if errors.len() + 1 < MAX_ERRORS => remove(doc.get_mut(), path),
            _ => false,
        };
        if !removed {
            return Err(ConfigError::collect(error, errors));
        }
        errors.push(error);
        damage.extend(harm);
    }
}

/// What taking out the node at `path` may make validation report again: the table that lost
/// it (for a missing key, the table itself is dropped), and the keys that name a dropped table.
/// An unknown key is harmless: it was never read.
fn harm(doc: &DeTable<'_>, path: &[Step], missing: bool, src: &str) -> Vec<Damage> {
    let table = if missing {
        path
    } else {
        &path[..path.len() - 1]
    };
    let prefix = dotted(table);
    let mut harm = vec![Damage::Table {
        lines: entry_lines(doc, table, src),
        prefix: prefix.clone(),
    }];
    if missing {
        match table {
            [Step::Key(top), Step::Index(_)] if top == "route" => {
                harm.push(Damage::Key("route".into()));
            }
            [Step::Key(top), ..] if top == "upstream" => {
                harm.push(Damage::Key("route.upstream".into()));
            }
            _ => {}
        }
    }
    harm
}

/// The lines of the array entry `table` is in (its header up to the next entry's), or all
/// lines when it is in none.
fn entry_lines(doc: &DeTable<'_>, table: &[Step], src: &str) -> std::ops::RangeInclusive<usize> {
    let mut lines = 1..=usize::MAX;
    let mut node: Option<&DeValue<'_>> = None;
    let mut here = doc;
    for step in table {
        let next = match (step, node) {
            (Step::Key(key), _) => here.get(key.as_str()),
            (Step::Index(i), Some(DeValue::Array(array))) => {
                let start = array.get(*i).map(|e| line_of(src, e.span().start));
                let end = array.get(i + 1).map(|e| line_of(src, e.span().start) - 1);
                if let Some(start) = start {
                    lines = start..=end.unwrap_or(usize::MAX).max(start);
                }
                array.get(*i)
            }
            _ => None,
        };
        let Some(next) = next else {
            break;
        };
        node = Some(next.get_ref());
        if let DeValue::Table(t) = next.get_ref() {
            here = t;
        }
    }
    lines
}

/// `message (in `the line`)`, so a message about a value shows how it was written.
fn with_source_line(src: &str, line: Option<usize>, message: String) -> String {
    let text = line
        .and_then(|l| src.lines().nth(l - 1))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    match text {
        Some(text) => format!("{message} (in `{text}`)"),
        None => message,
    }
}

/// The path to the node whose key or value has exactly this span (what toml's errors point at:
/// a value, a key, or a table's header), with a description of the value when it is one.
fn find(
    table: &DeTable<'_>,
    span: &std::ops::Range<usize>,
    src: &str,
) -> Option<(Vec<Step>, Option<Found>)> {
    for (key, value) in table.iter() {
        let step = Step::Key(key.get_ref().to_string());
        if key.span() == *span {
            return Some((vec![step], None));
        }
        if let Some((mut path, found)) = find_in_value(value, span, src) {
            path.insert(0, step);
            return Some((path, found));
        }
    }
    None
}

fn find_in_value(
    value: &Spanned<DeValue<'_>>,
    span: &std::ops::Range<usize>,
    src: &str,
) -> Option<(Vec<Step>, Option<Found>)> {
    if value.span() == *span {
        let written = src.get(span.clone()).unwrap_or_default();
        return Some((Vec::new(), Some(Found::of_node(value.get_ref(), written))));
    }
    match value.get_ref() {
        DeValue::Table(table) => find(table, span, src),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(i, element)| {
            find_in_value(element, span, src).map(|(mut path, found)| {
                path.insert(0, Step::Index(i));
                (path, found)
            })
        }),
        _ => None,
    }
}

/// Takes the node at `path` out of the document; false if it is the document itself.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    match path {
        [] => false,
        [Step::Key(key)] => table.remove(key.as_str()).is_some(),
        [Step::Key(key), rest @ ..] => match table.get_mut(key.as_str()) {
            Some(value) => remove_in_value(value.get_mut(), rest),
            None => false,
        },
        [Step::Index(_), ..] => false,
    }
}

fn remove_in_value(value: &mut DeValue<'_>, path: &[Step]) -> bool {
    match (value, path) {
        (DeValue::Table(table), _) => remove(table, path),
        (DeValue::Array(array), [Step::Index(i)]) => {
            let mut kept = DeArray::new();
            for (j, element) in array.iter().enumerate() {
                if j != *i {
                    kept.push(element.clone());
                }
            }
            *array = kept;
            true
        }
        (DeValue::Array(array), [Step::Index(i), rest @ ..]) => match array.get_mut(*i) {
            Some(element) => remove_in_value(element.get_mut(), rest),
            None => false,
        },
        _ => false,
    }
}

/// The path in the spelling validation uses for keys: `route.upstream` (array indices left
/// out), `upstream.chat.servers`.
fn dotted(path: &[Step]) -> String {
    let keys: Vec<&str> = path
        .iter()
        .filter_map(|step| match step {
            Step::Key(key) => Some(key.as_str()),
            Step::Index(_) => None,
        })
        .collect();
    keys.join(".")
}
