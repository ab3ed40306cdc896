//! `config::from_toml_str` on arbitrary text (invalid UTF-8 replaced): it must never panic, and
//! a rejection must say where it came from and point at a line of the text (or at none).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // `admin.token_file` is read during validation: keep the fuzzer off device files, which
    // never end (/dev/zero) or block (/dev/stdin, FIFOs, /proc/kmsg).
    let lower = text.to_ascii_lowercase();
    if ["dev/", "proc/", "sys/", "fd/"]
        .iter()
        .any(|d| lower.contains(d))
    {
        return;
    }
    match switchboard::config::from_toml_str(&text, "fuzz") {
        Ok(config) => {
            // A parsed config reports no file of its own: the text came from a string.
            assert!(config.path.is_none(), "from_toml_str set a path");
        }
        Err(e) => {
            assert_eq!(e.origin, "fuzz");
            assert!(!e.message.is_empty(), "empty error message");
            if let Some(line) = e.line {
                // 1-based; one past the last line is where an unterminated construct ends.
                let lines = text.lines().count().max(1);
                assert!(
                    (1..=lines + 1).contains(&line),
                    "line {line} of a {lines}-line text: {e}"
                );
            }
            let shown = e.to_string();
            assert!(shown.starts_with("fuzz"), "{shown}");
        }
    }
});
