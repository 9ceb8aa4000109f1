//! Rendering tests: every type category against what `to_jsonb()` prints.

use super::*;

fn render(kind: &TypeKind, text: &str) -> String {
    let mut o = String::new();
    write_value(&mut o, kind, text.as_bytes()).unwrap();
    o
}

fn arr(elem: TypeKind) -> TypeKind {
    TypeKind::Array {
        elem: Box::new(elem),
        delim: b',',
    }
}

#[test]
fn scalars() {
    assert_eq!(render(&TypeKind::Bool, "t"), "true");
    assert_eq!(render(&TypeKind::Bool, "f"), "false");
    assert_eq!(render(&TypeKind::Text, "\\x00ff"), "\"\\\\x00ff\"");
    assert_eq!(
        render(&TypeKind::Json, "{\"a\": [1, 2]}"),
        "{\"a\": [1, 2]}"
    );
    assert_eq!(render(&TypeKind::Date, "2024-02-29"), "\"2024-02-29\"");
}

#[test]
fn arrays_nest_and_render_elements_by_type() {
    assert_eq!(render(&arr(TypeKind::Number), "{1,2,NULL}"), "[1,2,null]");
    assert_eq!(
        render(&arr(TypeKind::Number), "{{1,2},{3,4}}"),
        "[[1,2],[3,4]]"
    );
    assert_eq!(render(&arr(TypeKind::Number), "[0:1]={5,6}"), "[5,6]");
    assert_eq!(render(&arr(TypeKind::Number), "{}"), "[]");
    assert_eq!(
        render(
            &arr(TypeKind::Text),
            "{\"a b\",\"q\\\"x\",NULL,\"NULL\",plain}"
        ),
        "[\"a b\",\"q\\\"x\",null,\"NULL\",\"plain\"]"
    );
    assert_eq!(
        render(&arr(TypeKind::Json), "{\"{\\\"k\\\": 1}\"}"),
        "[{\"k\": 1}]"
    );
    let boxes = TypeKind::Array {
        elem: Box::new(TypeKind::Text),
        delim: b';',
    };
    assert_eq!(
        render(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
        "[\"(1,1),(0,0)\",\"(2,2),(1,1)\"]"
    );
}

#[test]
fn malformed_values_are_errors_not_panics() {
    let mut o = String::new();
    assert_eq!(
        write_value(&mut o, &TypeKind::Bool, b"x"),
        Err(ValueError::BadBool)
    );
    assert_eq!(
        write_value(&mut o, &TypeKind::Text, b"\xff"),
        Err(ValueError::InvalidUtf8)
    );
    for bad in [
        "{1,2", "{1,,2}", "1,2}", "{\"a}", "[1:2]{1}", "{1}x", "{\"\\",
    ] {
        assert!(
            write_value(&mut o, &arr(TypeKind::Number), bad.as_bytes()).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn registry_resolves_domains_and_arrays() {
    let rows = vec![
        PgTypeRow {
            oid: 23,
            typtype: b'b',
            typelem: 0,
            typdelim: b',',
            typbasetype: 0,
            typlen: 4,
            ..Default::default()
        },
        PgTypeRow {
            oid: 1007,
            typtype: b'b',
            typelem: 23,
            typdelim: b',',
            typbasetype: 0,
            typlen: -1,
            ..Default::default()
        },
        PgTypeRow {
            oid: 90001,
            typtype: b'd',
            typelem: 0,
            typdelim: b',',
            typbasetype: 23,
            typlen: 4,
            ..Default::default()
        },
        PgTypeRow {
            oid: 90002,
            typtype: b'b',
            typelem: 90001,
            typdelim: b',',
            typbasetype: 0,
            typlen: -1,
            ..Default::default()
        },
        PgTypeRow {
            oid: 600,
            typtype: b'b',
            typelem: 701,
            typdelim: b',',
            typbasetype: 0,
            typlen: 16,
            ..Default::default()
        },
    ];
    let reg = TypeRegistry::from_pg_type(&rows, &[]);
    assert_eq!(reg.kind(90001), &TypeKind::Number);
    assert_eq!(reg.kind(1007), &arr(TypeKind::Number));
    assert_eq!(reg.kind(90002), &arr(TypeKind::Number));
    assert_eq!(
        reg.kind(600),
        &TypeKind::Text,
        "point has typelem but is fixed-length"
    );
    assert_eq!(reg.kind(12345), &TypeKind::Text);
    // Built-in OIDs are always known; user types only if loaded, even when text.
    assert!(reg.knows(12345) && reg.knows(90001) && !reg.knows(90003));
    let demoted = reg.with_text(90002);
    assert_eq!(demoted.kind(90002), &TypeKind::Text);
    assert_eq!(demoted.kind(90001), &TypeKind::Number);
    assert!(demoted.knows(90002));
}
