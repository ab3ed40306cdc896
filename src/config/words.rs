//! Config words: toml's and serde's messages said the way the file is written.
//!
//! serde describes a mismatch in Rust terms (`invalid type: string "many", expected i64`); an
//! operator writes TOML and reads `expected a whole number, found "many"` with a hint to drop the
//! quotes. Every deserialize error passes through [`translate`] once, where it becomes a
//! [`super::ConfigError`]; the hand-written checks describe values with [`Found`] the same way.

use std::fmt;

/// Where every key of the file is shown with its type, default and meaning: the reference config
/// built into the binary, so the hint holds wherever switchboard is installed.
pub(crate) const REFERENCE: &str = "switchboard --print-default-config";

/// A value as the file wrote it, for "found …" in a message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Found {
    /// A string; the text without its quotes.
    Text(String),
    /// An integer, as written.
    Integer(String),
    /// A float, as written.
    Float(String),
    /// `true` or `false`.
    Boolean(bool),
    /// A date or time, as written.
    Datetime(String),
    /// An array.
    List,
    /// A table, inline or with a header.
    Table,
}

impl Found {
    /// The description of a parsed value (the hand-checked keys hold `toml::Value`s).
    pub(crate) fn of(value: &toml::Value) -> Found {
        match value {
            toml::Value::String(s) => Found::Text(s.clone()),
            toml::Value::Integer(n) => Found::Integer(n.to_string()),
            toml::Value::Float(f) => Found::Float(f.to_string()),
            toml::Value::Boolean(b) => Found::Boolean(*b),
            toml::Value::Datetime(d) => Found::Datetime(d.to_string()),
            toml::Value::Array(_) => Found::List,
            toml::Value::Table(_) => Found::Table,
        }
    }

    /// The description of a node of the parsed document; `written` is its source text.
    pub(crate) fn of_node(value: &toml::de::DeValue<'_>, written: &str) -> Found {
        use toml::de::DeValue;
        match value {
            DeValue::String(s) => Found::Text(s.to_string()),
            DeValue::Integer(_) => Found::Integer(written.trim().to_owned()),
            DeValue::Float(_) => Found::Float(written.trim().to_owned()),
            DeValue::Boolean(b) => Found::Boolean(*b),
            DeValue::Datetime(d) => Found::Datetime(d.to_string()),
            DeValue::Array(_) => Found::List,
            DeValue::Table(_) => Found::Table,
        }
    }

    /// A bare number as written (`120`, `1.5`), or the same inside quotes (`"120"`): what a
    /// "write it without quotes" or "add a unit" hint can show.
    pub(crate) fn number(&self) -> Option<&str> {
        match self {
            Found::Integer(n) | Found::Float(n) => Some(n),
            Found::Text(s) if !s.trim().is_empty() && s.trim().parse::<f64>().is_ok() => {
                Some(s.trim())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::Text(s) => write!(f, "{s:?}"),
            Found::Integer(n) | Found::Float(n) => f.write_str(n),
            Found::Boolean(b) => write!(f, "{b}"),
            Found::Datetime(d) => write!(f, "the date {d}"),
            Found::List => f.write_str("a list"),
            Found::Table => f.write_str("a table"),
        }
    }
}

/// A message in config words and the fix, from toml's or serde's `message` about the value
/// `found` (when the error points at one) under the dotted `key` (`""` for the top level).
pub(crate) fn translate(
    message: &str,
    found: Option<&Found>,
    key: &str,
) -> (String, Option<String>) {
    let message = message.trim_end();
    let reference = || {
        Some(format!(
            "{REFERENCE} prints every key with its type and default"
        ))
    };
    if let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        && let Some((serde_found, expected)) = rest.rsplit_once(", expected ")
    {
        let what = expected_words(expected);
        let found_text = found.map_or_else(|| serde_found.to_owned(), Found::to_string);
        let hint = found.and_then(|f| type_hint(expected, &what, f, key));
        return (
            format!("expected {what}, found {found_text}"),
            hint.or_else(reference),
        );
    }
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.rsplit_once("`, expected ")
    {
        let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        return (
            format!("unknown key `{field}`"),
            Some(unknown_key_hint(field, &valid)),
        );
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return (
            format!("missing key `{field}`"),
            Some(missing_key_hint(field, key)),
        );
    }
    if message == "duplicate key" {
        return (
            "this key is written twice in the same table".to_owned(),
            Some("keep one of them".to_owned()),
        );
    }
    (message.to_owned(), reference())
}

/// serde's name of an expected type (`i64`, `a sequence`, `struct RawLimits`) in config words.
fn expected_words(serde: &str) -> String {
    let integers = [
        "i8", "i16", "i32", "i64", "i128", "u8", "u16", "u32", "u64", "u128", "isize", "usize",
    ];
    match serde {
        s if integers.contains(&s) => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a string" | "a borrowed string" | "a char" => "text in quotes, like \"…\"".to_owned(),
        "a sequence" => "a list like [\"a\", \"b\"]".to_owned(),
        s if s == "a map" || s.starts_with("struct ") => "a table like { … }".to_owned(),
        // A visitor of switchboard's own already speaks config (a server "host:port" or table).
        other => other.to_owned(),
    }
}

/// How to write what was found as what was expected, when there is an obvious way.
fn type_hint(serde: &str, what: &str, found: &Found, key: &str) -> Option<String> {
    if let Found::Text(s) = found
        && s.trim().eq_ignore_ascii_case("off")
    {
        return Some(format!("this key cannot be \"off\"; write {what}"));
    }
    let name = key.rsplit('.').next().unwrap_or(key);
    match expected_words(serde).as_str() {
        "a whole number" => Some(match found {
            Found::Text(_) if found.number().is_some_and(|n| n.parse::<i64>().is_ok()) => {
                format!(
                    "write {} without quotes",
                    found.number().unwrap_or_default()
                )
            }
            Found::Integer(_) => "the number is too large".to_owned(),
            Found::Float(_) => "write a whole number, without a decimal point".to_owned(),
            _ => "write a whole number without quotes, e.g. 100".to_owned(),
        }),
        "a number" => Some(match found.number() {
            Some(n) => format!("write {n} without quotes"),
            None => "write a number without quotes, e.g. 1.5".to_owned(),
        }),
        "true or false" => Some(match found {
            Found::Text(s) if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") => {
                format!("write {} without quotes", s.to_ascii_lowercase())
            }
            _ => "write true or false, without quotes".to_owned(),
        }),
        w if w.starts_with("text in quotes") => Some(match found {
            Found::Integer(n) | Found::Float(n) => format!("write \"{n}\", in quotes"),
            Found::Boolean(b) => format!("write \"{b}\", in quotes"),
            _ => format!("write {name} = \"…\""),
        }),
        w if w.starts_with("a list") => Some(match found {
            Found::Table => format!("write {name} = [ … ] with the entries inside"),
            other => format!("write {name} = [{other}], even for one entry"),
        }),
        w if w.starts_with("a table") => Some(format!(
            "write [{key}] with its keys on the lines below, or {name} = {{ key = value, … }} \
             on one line"
        )),
        _ => None,
    }
}

/// "did you mean …?" and the keys the table takes.
fn unknown_key_hint(field: &str, valid: &[&str]) -> String {
    let listed = valid.join(", ");
    let closest = valid
        .iter()
        .map(|v| (edit_distance(field, v), *v))
        .min()
        .filter(|&(d, v)| d <= 2.max(v.len() / 3));
    match closest {
        Some((_, v)) => format!("did you mean `{v}`? The keys here are: {listed}"),
        None if valid.is_empty() => format!("this table takes no keys; see {REFERENCE}"),
        None => format!("the keys here are: {listed} ({REFERENCE} shows what each does)"),
    }
}

/// The form of a required key, for "add …".
fn missing_key_hint(field: &str, key: &str) -> String {
    match field {
        "listen" if key == "admin.listen" => "add listen = \"127.0.0.1:9090\"".to_owned(),
        "listen" => "add listen = \"127.0.0.1:8080\" (the address clients connect to)".to_owned(),
        "servers" => "add servers = [\"127.0.0.1:9001\"]".to_owned(),
        "upstream" => {
            "add upstream = \"NAME\", naming one of the [upstream.NAME] tables".to_owned()
        }
        "cert" => "add cert = \"FILE.pem\" (the PEM certificate chain)".to_owned(),
        "key" => "add key = \"FILE.key\" (the PEM private key)".to_owned(),
        "server_name" => {
            "add server_name = \"backend.internal\" (the name in the backends' certificate)"
                .to_owned()
        }
        "addr" => "add addr = \"HOST:PORT\"".to_owned(),
        other => format!("add {other} = …; {REFERENCE} shows its form"),
    }
}

/// Levenshtein distance, for "did you mean": config keys are short, so the quadratic table is
/// nothing.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(message: &str, found: Found, key: &str) -> (String, String) {
        let (m, h) = translate(message, Some(&found), key);
        (m, h.unwrap_or_default())
    }

    #[test]
    fn type_mismatches_are_said_in_config_words() {
        let text = |s: &str| Found::Text(s.into());
        for (serde, found, key, message, hint) in [
            (
                "invalid type: string \"many\", expected i64",
                text("many"),
                "limits.max_connections",
                "expected a whole number, found \"many\"",
                "write a whole number without quotes, e.g. 100",
            ),
            (
                "invalid type: string \"100\", expected i64",
                text("100"),
                "limits.max_connections",
                "expected a whole number, found \"100\"",
                "write 100 without quotes",
            ),
            (
                "invalid type: floating point `1012.5`, expected i64",
                Found::Float("1012.5".into()),
                "drain.close_code",
                "expected a whole number, found 1012.5",
                "without a decimal point",
            ),
            (
                "invalid type: integer `99999999999999999999` as i128, expected i64",
                Found::Integer("99999999999999999999".into()),
                "limits.max_connections",
                "expected a whole number, found 99999999999999999999",
                "too large",
            ),
            (
                "invalid type: string \"off\", expected i64",
                text("OFF"),
                "limits.max_connections",
                "expected a whole number, found \"OFF\"",
                "this key cannot be \"off\"; write a whole number",
            ),
            (
                "invalid type: string \"x\", expected f64",
                text("1.5"),
                "upstream.a.load_factor",
                "expected a number, found \"1.5\"",
                "write 1.5 without quotes",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                text("yes"),
                "route.require_origin",
                "expected true or false, found \"yes\"",
                "write true or false, without quotes",
            ),
            (
                "invalid type: string \"true\", expected a boolean",
                text("True"),
                "route.require_origin",
                "expected true or false, found \"True\"",
                "write true without quotes",
            ),
            (
                "invalid type: integer `8080`, expected a string",
                Found::Integer("8080".into()),
                "listen",
                "expected text in quotes, like \"…\", found 8080",
                "write \"8080\", in quotes",
            ),
            (
                "invalid type: string \"https://a.b\", expected a sequence",
                text("https://a.b"),
                "route.allowed_origins",
                "expected a list like [\"a\", \"b\"], found \"https://a.b\"",
                "write allowed_origins = [\"https://a.b\"], even for one entry",
            ),
            (
                "invalid type: integer `5`, expected struct RawLimits",
                Found::Integer("5".into()),
                "limits",
                "expected a table like { … }, found 5",
                "write [limits] with its keys on the lines below",
            ),
            (
                "invalid type: integer `5`, expected a map",
                Found::Integer("5".into()),
                "upstream",
                "expected a table like { … }, found 5",
                "or upstream = { key = value, … } on one line",
            ),
            (
                "invalid type: map, expected i64",
                Found::Datetime("1979-05-27".into()),
                "drain.close_code",
                "expected a whole number, found the date 1979-05-27",
                "e.g. 100",
            ),
            (
                "invalid type: sequence, expected a string",
                Found::List,
                "upstream.a.balance",
                "expected text in quotes, like \"…\", found a list",
                "write balance = \"…\"",
            ),
        ] {
            let (m, h) = words(serde, found, key);
            assert_eq!(m, message, "{serde}");
            assert!(h.contains(hint), "{serde}: {h}");
            for rust in [
                "i64", "sequence", "map", "struct", "boolean", "floating", "i128",
            ] {
                assert!(!m.contains(rust) && !h.contains(rust), "{m} / {h}");
            }
        }
    }

    #[test]
    fn unknown_keys_get_the_closest_and_the_list() {
        let (m, h) = translate(
            "unknown field `balanse`, expected one of `balance`, `hash_key`, `servers`",
            None,
            "upstream.app.balanse",
        );
        assert_eq!(m, "unknown key `balanse`");
        assert_eq!(
            h.unwrap(),
            "did you mean `balance`? The keys here are: balance, hash_key, servers"
        );
        let (_, h) = translate(
            "unknown field `zzz`, expected `addr` or `weight`",
            None,
            "x",
        );
        assert_eq!(
            h.unwrap(),
            format!("the keys here are: addr, weight ({REFERENCE} shows what each does)")
        );
        let (_, h) = translate(
            "unknown field `adr`, expected `addr` or `weight`",
            None,
            "x",
        );
        assert!(h.unwrap().starts_with("did you mean `addr`?"));
    }

    #[test]
    fn missing_keys_show_their_form() {
        let (m, h) = translate("missing field `servers`", None, "upstream.app.servers");
        assert_eq!(m, "missing key `servers`");
        assert_eq!(h.unwrap(), "add servers = [\"127.0.0.1:9001\"]");
    }

    #[test]
    fn other_messages_keep_toml_words_and_point_at_the_reference() {
        let (m, h) = translate("invalid basic string, expected `\"`", None, "");
        assert_eq!(m, "invalid basic string, expected `\"`");
        assert!(h.unwrap().contains(REFERENCE));
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("balanse", "balance"), 1);
        assert_eq!(edit_distance("", "ab"), 2);
        assert_eq!(edit_distance("ping_intervall", "ping_interval"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
