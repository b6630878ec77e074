//! Request validation end to end: the media types a route takes (415 for
//! others, before any byte reaches the backend).

use gateway_tests::harness::{Response, Setup, reason_of, setup_with};

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
