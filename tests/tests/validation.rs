//! Request validation end to end: the media types a route takes (415 for
//! others) and JSON bodies against a route's schema (400 with the field and
//! the rule), each refused before any byte reaches the backend, and a
//! valid body reaching it byte for byte.

use gateway_tests::harness::{Response, Setup, TempDir, reason_of, setup_with, sha256_hex};

const ROUTES: &str = r#"
[[routes]]
path_prefix = "/json"
upstream = "backend"
auth = "none"
content_types = ["application/json"]
"#;

fn post(s: &Setup, content_type: &str) -> Response {
    let mut c = s.client();
    let body = r#"{"a":1}"#;
    c.send(
        format!(
            "POST /json/orders HTTP/1.1\r\nHost: localhost\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    c.response("POST").expect("response")
}

#[test]
fn a_route_takes_only_its_media_types() {
    let s = setup_with("validation-ct", "", "workers = 2", ROUTES, "", &[]);
    for ok in [
        "Content-Type: application/json\r\n",
        "Content-Type: application/json; charset=utf-8\r\n",
        "content-type: Application/JSON\r\n",
    ] {
        assert_eq!(post(&s, ok).status, 200, "{ok}");
    }
    let reached = s.backend.hits("/json");
    assert_eq!(reached, 3);
    for bad in [
        "Content-Type: text/plain\r\n",
        "Content-Type: application/json-evil\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "",
        "Content-Type: application/json\r\nContent-Type: text/plain\r\n",
    ] {
        let r = post(&s, bad);
        assert_eq!(
            (r.status, reason_of(&r).as_str()),
            (415, "validation.content_type"),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(
        s.backend.hits("/json"),
        reached,
        "a refused body reached the backend"
    );
    // No body, nothing to judge.
    assert_eq!(s.get("/json/orders", "").status, 200);
}

/// An order schema in a file, and a route with an inline one.
fn schema_routes(dir: &TempDir) -> String {
    let file = dir.0.join("order.json");
    std::fs::write(
        &file,
        r#"{
          "type": "object",
          "required": ["id", "items"],
          "additionalProperties": false,
          "properties": {
            "id": {"type": "string", "format": "uuid"},
            "note": {"type": "string", "maxLength": 200},
            "role": {"enum": ["user", "viewer"]},
            "items": {"type": "array", "minItems": 1, "items": {
              "type": "object", "required": ["qty"],
              "properties": {"qty": {"type": "integer", "minimum": 1}}}}
          }
        }"#,
    )
    .expect("schema file");
    format!(
        r#"
[[routes]]
path = "/orders"
methods = ["POST"]
upstream = "backend"
auth = "none"
max_body_bytes = 65536
body_schema = "{}"

[[routes]]
path = "/ping"
upstream = "backend"
auth = "none"
body_required = true
body_schema = {{ type = "object", required = ["at"], properties = {{ at = {{ type = "string", format = "date-time" }} }} }}
"#,
        file.display()
    )
}

fn send(s: &Setup, path: &str, headers: &str, body: &[u8]) -> Response {
    let mut c = s.client();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    c.send(&req).expect("send");
    c.response("POST").expect("response")
}

fn post_json(s: &Setup, path: &str, body: &[u8]) -> Response {
    send(s, path, "Content-Type: application/json\r\n", body)
}

fn problem(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

const ID: &str = "9b2d3c4e-1f2a-4b5c-8d6e-7f8091a2b3c4";

#[test]
fn a_valid_body_reaches_the_backend_byte_for_byte() {
    let dir = TempDir::new("validation-schema-files");
    let s = setup_with(
        "validation-ok",
        "",
        "workers = 2",
        &schema_routes(&dir),
        "",
        &[],
    );
    // Escapes and whitespace simd-json rewrites in its own copy.
    let body = format!(
        "{{ \"id\" : \"{ID}\",\n \"note\": \"line\\nbreak \\u00e9 \\\"q\\\" \\ud83d\\ude00\",\n \"items\": [ {{\"qty\": 2}} ] }}\n"
    );
    let r = post_json(&s, "/orders", body.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let got = s.backend.received();
    let last = got.last().expect("reached");
    assert_eq!(last.body_len, body.len() as u64);
    assert_eq!(last.body_sha256, sha256_hex(body.as_bytes()));

    // Chunked: judged whole, forwarded de-chunked with a Content-Length
    // (the same bytes), as nginx forwards a body it buffered.
    let chunked = format!(
        "POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        &body[..5],
        body.len() - 5,
        &body[5..]
    );
    let mut c = s.client();
    c.send(chunked.as_bytes()).expect("send");
    assert_eq!(c.response("POST").expect("response").status, 200);
    let last = s.backend.received().pop().expect("reached");
    assert!(!last.chunked, "{}", last.head);
    assert!(
        last.head
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}\r\n", body.len())),
        "{}",
        last.head
    );
    assert_eq!(last.body_sha256, sha256_hex(body.as_bytes()));

    let r = post_json(&s, "/ping", b"{\"at\":\"2026-11-23T12:00:00Z\"}");
    assert_eq!(r.status, 200, "{r:?}");
}

#[test]
fn hostile_and_invalid_bodies_never_reach_the_backend() {
    let dir = TempDir::new("validation-schema-files");
    let s = setup_with(
        "validation-bad",
        "",
        "workers = 2",
        &schema_routes(&dir),
        "",
        &[],
    );
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let long_note = format!(
        r#"{{"id":"{ID}","items":[{{"qty":1}}],"note":"{}"}}"#,
        "x".repeat(500)
    );
    let cases: Vec<(Vec<u8>, &str, &str, &str)> = vec![
        // (body, reason, field, rule)
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":0}}]}}"#).into(),
            "validation.schema",
            "/items/0/qty",
            "minimum",
        ),
        (
            format!(r#"{{"id":"{ID}","items":[]}}"#).into(),
            "validation.schema",
            "/items",
            "minItems",
        ),
        (
            format!(r#"{{"id":"{ID}"}}"#).into(),
            "validation.schema",
            "",
            "required",
        ),
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":1}}],"admin":true}}"#).into(),
            "validation.schema",
            "",
            "additionalProperties",
        ),
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":1}}],"role":"admin"}}"#).into(),
            "validation.schema",
            "/role",
            "enum",
        ),
        (
            r#"{"id":"1 OR 1=1","items":[{"qty":1}]}"#.into(),
            "validation.schema",
            "/id",
            "format",
        ),
        (long_note.into(), "validation.schema", "/note", "maxLength"),
        // The validator and a last-key-wins backend would judge different documents.
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":1}}],"role":"user","role":"admin"}}"#).into(),
            "validation.json",
            "",
            "duplicate_key",
        ),
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":1}}],"r\u006fle":"user","role":"admin"}}"#)
                .into(),
            "validation.json",
            "",
            "duplicate_key",
        ),
        // At depth too: a duplicate inside an array's object.
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":1,"qty":99}}]}}"#).into(),
            "validation.json",
            "",
            "duplicate_key",
        ),
        (deep.into(), "validation.json", "", "max_depth"),
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":123456789012345678901234567890}}]}}"#).into(),
            "validation.json",
            "",
            "number_range",
        ),
        (
            b"{\"id\":\"\xff\xfe\",\"items\":[]}".to_vec(),
            "validation.json",
            "",
            "encoding",
        ),
        (
            br#"{"id":"\ud800","items":[]}"#.to_vec(),
            "validation.json",
            "",
            "encoding",
        ),
        (
            format!(r#"{{"id":"{ID}","items":[{{"qty":1}}]}} {{"admin":true}}"#).into(),
            "validation.json",
            "",
            "syntax",
        ),
        (b"{\"id\":".to_vec(), "validation.json", "", "syntax"),
        (b"not json".to_vec(), "validation.json", "", "syntax"),
    ];
    for (body, reason, field, rule) in &cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let r = post_json(&s, "/orders", body);
        assert_eq!(
            (r.status, reason_of(&r).as_str()),
            (400, *reason),
            "{shown}: {r:?}"
        );
        let p = problem(&r);
        assert_eq!(
            (p["field"].as_str(), p["rule"].as_str()),
            (Some(*field), Some(*rule)),
            "{shown}: {p}"
        );
        assert!(r.body.len() < 600, "echoed the input: {p}");
        assert_eq!(
            r.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
    }
    // A body of another media type cannot slip past the schema.
    for ct in [
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "",
    ] {
        let r = send(&s, "/orders", ct, br#"{"admin":true}"#);
        assert_eq!(
            (r.status, reason_of(&r).as_str()),
            (415, "validation.content_type"),
            "{ct}"
        );
    }
    // Over the route's limit: refused before the body is read.
    let big = vec![b' '; 70_000];
    let r = post_json(&s, "/orders", &big);
    assert_eq!(r.status, 413, "{r:?}");
    // A body the route requires.
    let r = post_json(&s, "/ping", b"");
    assert_eq!(
        (r.status, reason_of(&r).as_str()),
        (400, "validation.body_missing")
    );
    assert_eq!(
        s.backend.hits("/orders") + s.backend.hits("/ping"),
        0,
        "a refused body reached the backend"
    );
    // The gateway is still well.
    let r = post_json(
        &s,
        "/orders",
        format!(r#"{{"id":"{ID}","items":[{{"qty":1}}]}}"#).as_bytes(),
    );
    assert_eq!(r.status, 200);
}

const PARAM_ROUTES: &str = r#"
[[routes]]
path = "/users/{id}/orders"
methods = ["GET"]
upstream = "backend"
auth = "none"

[[routes.params]]
name = "id"
in = "path"
schema = { type = "integer", minimum = 1 }

[[routes.params]]
name = "limit"
in = "query"
schema = { type = "integer", minimum = 1, maximum = 100 }

[[routes.params]]
name = "sort"
in = "query"
required = true
schema = { enum = ["asc", "desc"] }
"#;

#[test]
fn path_and_query_parameters_are_judged_before_the_backend() {
    let s = setup_with(
        "validation-params",
        "",
        "workers = 2",
        PARAM_ROUTES,
        "",
        &[],
    );
    for ok in [
        "/users/42/orders?sort=asc",
        "/users/7/orders?limit=100&sort=desc&x=%ff",
        "/users/%34%32/orders?so%72t=asc",
    ] {
        let r = s.get(ok, "");
        assert_eq!(r.status, 200, "{ok}: {r:?}");
    }
    let reached = s.backend.hits("/users");
    assert_eq!(reached, 3);
    let cases = [
        (
            "/users/0/orders?sort=asc",
            "validation.path",
            "path",
            "id",
            "minimum",
        ),
        (
            "/users/1%20OR%201=1/orders?sort=asc",
            "validation.path",
            "path",
            "id",
            "type",
        ),
        (
            "/users/1/orders",
            "validation.query",
            "query",
            "sort",
            "required",
        ),
        (
            "/users/1/orders?sort=random",
            "validation.query",
            "query",
            "sort",
            "enum",
        ),
        (
            "/users/1/orders?sort=asc&limit=1000",
            "validation.query",
            "query",
            "limit",
            "maximum",
        ),
        // Parameter pollution: the backend might read either one.
        (
            "/users/1/orders?sort=asc&limit=1&limit=1000",
            "validation.query",
            "query",
            "limit",
            "repeated",
        ),
        (
            "/users/1/orders?sort=asc&limit=%zz",
            "validation.query",
            "query",
            "limit",
            "encoding",
        ),
        (
            "/users/1/orders?sort=asc&li%6dit=1%27%20OR%201=1",
            "validation.query",
            "query",
            "limit",
            "type",
        ),
        // `;` parameters are part of the segment the upstream gets.
        (
            "/users/1;x=1/orders?sort=asc",
            "validation.path",
            "path",
            "id",
            "type",
        ),
        // Names a lenient backend reads as `limit`.
        (
            "/users/1/orders?sort=asc&Limit=1000",
            "validation.query",
            "query",
            "limit",
            "ambiguous",
        ),
        (
            "/users/1/orders?sort=asc&limit[]=1000",
            "validation.query",
            "query",
            "limit",
            "ambiguous",
        ),
    ];
    for (path, reason, at, field, rule) in cases {
        let r = s.get(path, "");
        assert_eq!(
            (r.status, reason_of(&r).as_str()),
            (400, reason),
            "{path}: {r:?}"
        );
        let p = problem(&r);
        assert_eq!(
            (p["in"].as_str(), p["field"].as_str(), p["rule"].as_str()),
            (Some(at), Some(field), Some(rule)),
            "{path}: {p}"
        );
    }
    // Not the template: other routes (the catch-all here), never this one's checks.
    assert_eq!(s.get("/users/1/orders/extra?sort=x", "").status, 200);
    assert_eq!(
        s.backend.hits("/users"),
        reached + 1,
        "a refused request reached the backend"
    );
}
