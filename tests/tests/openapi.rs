//! Routes imported from an OpenAPI document drive the same checks as
//! written ones (body schemas with `$ref`s, 3.0's `nullable` and boolean
//! exclusive bounds, path and query parameters), and the document is served
//! behind its own authentication with internal operations, server URLs and
//! examples taken out.

use std::process::Command;

use gateway_tests::{
    gateway_bin,
    harness::{Keyed, Response, TempDir, reason_of, setup_keyed, sha256_hex},
};

const DOC: &str = r##"
openapi: 3.0.3
info:
  title: Orders
  version: "1.0"
servers:
  - url: https://orders.internal.corp:8443
paths:
  /orders:
    post:
      operationId: createOrder
      parameters:
        - name: X-Trace
          in: header
          schema: {type: string}
      requestBody:
        $ref: "#/components/requestBodies/Order"
      responses: {"201": {description: created}}
  /orders/{id}:
    parameters:
      - name: id
        in: path
        required: true
        schema: {type: integer, minimum: 1}
    get:
      parameters:
        - name: expand
          in: query
          schema: {type: string, enum: [items, customer]}
      responses: {"200": {description: ok}}
  /users/{id}:
    get:
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer}}
      responses: {"200": {description: ok}}
  /users/me:
    get:
      responses: {"200": {description: ok}}
  /admin/reindex:
    post:
      x-internal: true
      servers:
        - url: https://admin.internal.corp
      responses: {"204": {description: done}}
components:
  requestBodies:
    Order:
      required: true
      content:
        application/json:
          schema: {$ref: "#/components/schemas/Order"}
          examples:
            sample: {value: {id: "x", token: "sk_live_SECRETEXAMPLE"}}
  schemas:
    Order:
      type: object
      required: [items]
      additionalProperties: false
      properties:
        coupon: {type: string, nullable: true}
        example: {type: string}
        items:
          type: array
          minItems: 1
          items: {$ref: "#/components/schemas/Item"}
      example: {coupon: "sk_live_SECRETEXAMPLE", items: []}
    Item:
      type: object
      required: [qty]
      properties:
        qty: {type: number, minimum: 0, exclusiveMinimum: true}
"##;

fn setup(dir: &TempDir) -> Keyed {
    let file = dir.0.join("orders.yaml");
    std::fs::write(&file, DOC).expect("document");
    let routes = format!(
        r#"
[[openapi]]
file = "{}"
upstream = "backend"
auth = "none"
docs = {{ path = "/openapi.json", auth = ["api_key"] }}
"#,
        file.display()
    );
    setup_keyed("openapi", &routes, "")
}

fn post(k: &Keyed, path: &str, body: &str) -> Response {
    let mut c = k.s.client();
    c.send(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .expect("send");
    c.response("POST").expect("response")
}

#[test]
fn imported_operations_are_judged_like_written_routes() {
    let dir = TempDir::new("openapi-doc");
    let k = setup(&dir);
    let good = r#"{"coupon": null, "items": [{"qty": 0.5}]}"#;
    let r = post(&k, "/orders", good);
    assert_eq!(r.status, 200, "{r:?}");
    let last = k.s.backend.received().pop().expect("reached");
    assert_eq!(last.body_sha256, sha256_hex(good.as_bytes()));
    let reached = k.s.backend.hits("/orders");
    for (body, rule) in [
        (r#"{"items": [{"qty": 0}]}"#, "exclusiveMinimum"),
        (r#"{"items": []}"#, "minItems"),
        (r#"{"coupon": 5, "items": [{"qty": 1}]}"#, "type"),
        (
            r#"{"items": [{"qty": 1}], "admin": true}"#,
            "additionalProperties",
        ),
        ("", "body_missing"),
    ] {
        let r = post(&k, "/orders", body);
        assert_eq!(r.status, 400, "{body}: {r:?}");
        let p: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        let got = p["rule"]
            .as_str()
            .map_or_else(|| reason_of(&r), str::to_owned);
        assert!(got.ends_with(rule), "{body}: {p}");
    }
    for (path, reason) in [
        ("/orders/abc", "validation.path"),
        ("/orders/0", "validation.path"),
        ("/orders/5?expand=secrets", "validation.query"),
    ] {
        let r = k.s.get(path, "");
        assert_eq!((r.status, reason_of(&r).as_str()), (400, reason), "{path}");
    }
    assert_eq!(
        k.s.backend.hits("/orders"),
        reached,
        "a refused request reached the backend"
    );
    assert_eq!(k.s.get("/orders/5?expand=items", "").status, 200);
    // A literal path before a template: /users/me is not an id.
    assert_eq!(k.s.get("/users/me", "").status, 200);
    assert_eq!(reason_of(&k.s.get("/users/you", "")), "validation.path");
}

#[test]
fn the_served_document_keeps_internal_things_inside() {
    let dir = TempDir::new("openapi-doc");
    let k = setup(&dir);
    let r = k.s.get("/openapi.json", "");
    assert_eq!((r.status, reason_of(&r).as_str()), (401, "auth.missing"));
    let r =
        k.s.get("/openapi.json", &format!("x-api-key: {}\r\n", k.key));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff")
    );
    let text = String::from_utf8_lossy(&r.body);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("json document");
    assert!(doc["paths"]["/orders"]["post"].is_object(), "{doc}");
    assert!(
        doc["paths"].get("/admin/reindex").is_none(),
        "internal operation served"
    );
    for secret in ["internal.corp", "sk_live_", "x-internal", "\"examples\""] {
        assert!(!text.contains(secret), "{secret} served: {text}");
    }
    // A property that happens to be called `example` is schema, not an example.
    assert!(
        doc.pointer("/components/schemas/Order/properties/example")
            .is_some()
    );
    assert_eq!(
        k.s.backend.hits("/openapi.json"),
        0,
        "documentation came from the backend"
    );
}

#[test]
fn check_shows_what_was_imported() {
    let dir = TempDir::new("openapi-check");
    let file = dir.0.join("orders.yaml");
    std::fs::write(&file, DOC).expect("document");
    let config = dir.0.join("gw.toml");
    std::fs::write(
        &config,
        "[listen]\nhttps = \"127.0.0.1:18443\"\n[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:9000\"]\n[[openapi]]\nfile = \"orders.yaml\"\nupstream = \"app\"\nauth = \"none\"\ninternal_operations = \"skip\"\ndocs = { path = \"/openapi.json\" }\n",
    )
    .expect("config");
    let out = Command::new(gateway_bin())
        .args(["check", "--config", &config.display().to_string()])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Orders (OpenAPI 3.0.3)"), "{text}");
    assert!(text.contains("imported 4 operations"), "{text}");
    assert!(text.contains("POST /admin/reindex: x-internal"), "{text}");
    assert!(
        text.contains("header parameter `X-Trace` not validated"),
        "{text}"
    );
    let me = text.find("path = /users/me").expect("me");
    let id = text.find("path = /users/{id}").expect("id");
    assert!(me < id, "literal after template: {text}");
    assert!(text.contains("body schema: inline, required"), "{text}");

    // A broken document: file and line of the [[openapi]] entry.
    std::fs::write(&file, "openapi: 3.0.0\npaths:\n  /x:\n    post:\n      requestBody:\n        content:\n          application/json:\n            schema: {$ref: \"other.yaml#/Thing\"}\n").expect("doc");
    let out = Command::new(gateway_bin())
        .args(["check", "--config", &config.display().to_string()])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("gw.toml:7: openapi[0]: POST /x") && err.contains("outside the document"),
        "{err}"
    );
}
