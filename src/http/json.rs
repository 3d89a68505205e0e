//! Postgres text values to JSON by type OID: numbers, booleans, JSON for json/jsonb,
//! arrays (one or more dimensions) for the common element types, strings otherwise.
//! `numeric` stays a string so no digit is lost.

use serde_json::{Number, Value};

/// The element type of an array type, if it is one this converts.
fn element_of(oid: u32) -> Option<u32> {
    Some(match oid {
        1000 => 16,   // bool[]
        1005 => 21,   // int2[]
        1007 => 23,   // int4[]
        1016 => 20,   // int8[]
        1021 => 700,  // float4[]
        1022 => 701,  // float8[]
        1231 => 1700, // numeric[]
        1009 => 25,   // text[]
        1015 => 1043, // varchar[]
        1014 => 1042, // bpchar[]
        2951 => 2950, // uuid[]
        199 => 114,   // json[]
        3807 => 3802, // jsonb[]
        1182 => 1082, // date[]
        1185 => 1184, // timestamptz[]
        1115 => 1114, // timestamp[]
        1001 => 17,   // bytea[]
        _ => return None,
    })
}

/// Converts one text value of type `oid`.
pub fn value(oid: u32, text: &str) -> Value {
    match oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => text
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_owned())),
        114 | 3802 => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned())),
        _ => match element_of(oid) {
            Some(elem) => array(text, elem).unwrap_or_else(|| Value::String(text.to_owned())),
            None => Value::String(text.to_owned()),
        },
    }
}

/// Parses Postgres' array text form (`{1,2,NULL}`, `{{a,"b c"},{d,e}}`, with an
/// optional `[1:2]=` dimension prefix).
fn array(text: &str, elem: u32) -> Option<Value> {
    let body = match text.find("={") {
        Some(i) if text.starts_with('[') => &text[i + 1..],
        _ => text,
    };
    let mut chars = body.char_indices().peekable();
    let v = parse_level(body, &mut chars, elem)?;
    chars.next().is_none().then_some(v)
}

fn parse_level(
    src: &str,
    it: &mut std::iter::Peekable<std::str::CharIndices<'_>>,
    elem: u32,
) -> Option<Value> {
    if it.next()?.1 != '{' {
        return None;
    }
    let mut out = Vec::new();
    if it.peek()?.1 == '}' {
        it.next();
        return Some(Value::Array(out));
    }
    loop {
        let (_, c) = *it.peek()?;
        if c == '{' {
            out.push(parse_level(src, it, elem)?);
        } else if c == '"' {
            it.next();
            let mut s = String::new();
            loop {
                let (_, c) = it.next()?;
                match c {
                    '\\' => s.push(it.next()?.1),
                    '"' => break,
                    c => s.push(c),
                }
            }
            out.push(value(elem, &s));
        } else {
            let (start, _) = *it.peek()?;
            let mut end = start;
            while let Some(&(i, c)) = it.peek() {
                if c == ',' || c == '}' {
                    break;
                }
                end = i + c.len_utf8();
                it.next();
            }
            let raw = src[start..end].trim();
            out.push(if raw == "NULL" {
                Value::Null
            } else {
                value(elem, raw)
            });
        }
        match it.next()?.1 {
            ',' => continue,
            '}' => return Some(Value::Array(out)),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_common_types() {
        assert_eq!(value(23, "42"), json!(42));
        assert_eq!(value(20, "-9000000000"), json!(-9_000_000_000i64));
        assert_eq!(value(701, "1.5"), json!(1.5));
        assert_eq!(value(701, "NaN"), json!("NaN"));
        assert_eq!(value(1700, "12.3400"), json!("12.3400"));
        assert_eq!(value(16, "t"), json!(true));
        assert_eq!(value(3802, r#"{"a": [1, null]}"#), json!({"a": [1, null]}));
        assert_eq!(value(1007, "{1,2,NULL}"), json!([1, 2, null]));
        assert_eq!(
            value(1009, r#"{a,"b c","q\"x",NULL,"NULL"}"#),
            json!(["a", "b c", "q\"x", null, "NULL"])
        );
        assert_eq!(value(1007, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(value(1007, "[0:1]={5,6}"), json!([5, 6]));
        assert_eq!(value(1007, "{}"), json!([]));
        assert_eq!(
            value(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        );
        assert_eq!(value(17, "\\x0102"), json!("\\x0102"));
        assert_eq!(value(1007, "{1,2"), json!("{1,2"));
    }
}
