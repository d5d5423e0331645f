//! Canonical JSON: object keys sorted by their bytes, no insignificant whitespace, strings and
//! numbers as serde_json writes them. Written here, walking the value, so the order never
//! depends on how a map type happens to iterate (serde_json's `Map` is ordered by insertion
//! when any crate in the build turns on its `preserve_order` feature).

use serde_json::Value;

/// `value` as canonical JSON.
pub fn canonical_json(value: &impl serde::Serialize) -> Vec<u8> {
    let value = serde_json::to_value(value).expect("image metadata serialises to JSON");
    let mut out = Vec::new();
    write(&value, &mut out);
    out
}

fn write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out);
            }
            out.push(b']');
        }
        other => scalar(other, out),
    }
}

fn scalar(value: &Value, out: &mut Vec<u8>) {
    serde_json::to_writer(out, value).expect("writing to a Vec cannot fail");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_depth_and_nothing_else_changes() {
        let value = serde_json::json!({"b": [{"z": 1, "a": "\u{e9}\"x"}], "a": {"d": null, "c": 1.5}, "B": true});
        assert_eq!(String::from_utf8(canonical_json(&value)).unwrap(), r#"{"B":true,"a":{"c":1.5,"d":null},"b":[{"a":"é\"x","z":1}]}"#);
    }
}
