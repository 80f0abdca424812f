//! A small, unambiguous YAML writer for `webhook inject`'s output.
//!
//! serde_yaml writes strings such as `2026-11-22T03:00:00Z` unquoted, which YAML 1.1 readers
//! (Python's, older Go ones) then load as timestamps, breaking annotations. Here every string that is
//! not plainly a word is written double-quoted (JSON string syntax is valid YAML).

use std::fmt::Write as _;

use serde_json::Value;

/// Renders one document in block style, two-space indented.
pub fn to_string(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if !m.is_empty() => write_map(&mut out, m, 0),
        Value::Array(a) if !a.is_empty() => write_seq(&mut out, a, 0),
        scalar => {
            out.push_str(&inline(scalar));
            out.push('\n');
        }
    }
    out
}

fn write_map(out: &mut String, m: &serde_json::Map<String, Value>, indent: usize) {
    for (k, v) in m {
        out.push_str(&" ".repeat(indent));
        out.push_str(&scalar_string(k));
        out.push(':');
        write_value(out, v, indent);
    }
}

fn write_seq(out: &mut String, a: &[Value], indent: usize) {
    for v in a {
        out.push_str(&" ".repeat(indent));
        out.push('-');
        match v {
            // "- key: value" with the rest of the map aligned under the first key.
            Value::Object(m) if !m.is_empty() => {
                let mut first = true;
                for (k, item) in m {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        out.push_str(&" ".repeat(indent + 2));
                    }
                    out.push_str(&scalar_string(k));
                    out.push(':');
                    write_value(out, item, indent + 2);
                }
            }
            other => write_value(out, other, indent),
        }
    }
}

/// Writes what follows `key:` or `-`: an inline scalar, or a nested block on the next lines.
fn write_value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            write_map(out, m, indent + 2);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            write_seq(out, a, indent + 2);
        }
        scalar => {
            let _ = writeln!(out, " {}", inline(scalar));
        }
    }
}

fn inline(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => scalar_string(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Plain when it can only be read back as this string; double-quoted otherwise.
fn scalar_string(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", "nan", "inf",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED.contains(&s.to_ascii_lowercase().as_str())
        && !s.to_ascii_lowercase().starts_with(".inf");
    if plain {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("strings serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[test]
    fn round_trips_through_a_yaml_reader() {
        let v = json!({
            "apiVersion": "v1",
            "metadata": { "annotations": { "kubectl.kubernetes.io/restartedAt": "2026-11-22T03:00:00Z", "n": "10", "b": "true", "y": "y", "empty": "" } },
            "spec": {
                "containers": [
                    { "name": "app", "args": ["--a=1", "*", "-", "x: y", "#c"], "ports": [{ "containerPort": 8080 }], "env": [] },
                    { "name": "b", "emptyDir": {}, "multi": "line\nbreak\t\"q\"" }
                ],
                "nested": [[1, 2], [], [{}]],
                "null": null, "f": 1.5, "neg": -3, "t": true
            }
        });
        let text = to_string(&v);
        let back = Value::deserialize(serde_yaml::Deserializer::from_str(&text)).unwrap();
        assert_eq!(back, v, "\n{text}");
        assert!(
            text.contains("restartedAt: \"2026-11-22T03:00:00Z\""),
            "{text}"
        );
        assert!(text.contains("name: app"), "{text}");
    }
}
