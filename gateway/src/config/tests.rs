//! The configuration's own unit tests: parsing, errors with their lines, limits.

use super::*;

fn err(text: &str) -> String {
    match Config::parse(text, "t.toml") {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::embedded().expect("embedded default");
    assert_eq!(c.https.to_string(), "127.0.0.1:8443");
    assert_eq!(c.xdp.interface, "lo");
    assert!(c.https_only);
}

#[test]
fn bad_cidr_names_line_and_key() {
    let e = err(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\ndeny = [\"10.0.0.0/8\", \"10.1.2.300/24\"]\n",
    );
    assert!(e.starts_with("t.toml:4: policy.deny[1]: "), "{e}");
}

#[test]
fn cidr_errors_say_what_is_wrong() {
    let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\ndeny = [\"10.0.0.0/33\"]\n");
    assert_eq!(
        e,
        "t.toml:4: policy.deny[0]: prefix length `33` must be 0 to 32 for 10.0.0.0"
    );
    let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"nope/8\"]\n");
    assert_eq!(e, "t.toml:4: policy.allow[0]: `nope` is not an IP address");
    // A bare address is a host route.
    let c = Config::parse(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"2001:db8::1\"]\n",
        "t.toml",
    )
    .expect("valid");
    assert_eq!(c.policy.allow[0].to_string(), "2001:db8::1/128");
}

#[test]
fn same_ports_point_at_the_key() {
    let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\nplain_http_port = 8443\n");
    assert_eq!(
        e,
        "t.toml:3: listen.plain_http_port: must differ from the HTTPS port"
    );
}

#[test]
fn unknown_key_is_refused() {
    let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n\n[xdp]\nmodee = \"skb\"\n");
    assert!(e.starts_with("t.toml:5: xdp"), "{e}");
    assert!(e.contains("modee"), "{e}");
}

#[test]
fn bad_mode_is_refused() {
    let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nmode = \"turbo\"\n");
    assert!(e.starts_with("t.toml:4: xdp.mode: "), "{e}");
}

#[test]
fn zero_burst_is_refused() {
    let e = err("[listen]\nhttps = \"127.0.0.1:8443\"\n[xdp]\nsyn_burst = 0\n");
    assert_eq!(e, "t.toml:4: xdp.syn_burst: must be at least 1");
}

#[test]
fn auto_interface_needs_a_concrete_address() {
    let e = err("[listen]\nhttps = \"0.0.0.0:8443\"\n");
    assert!(e.contains("xdp.interface: `auto` cannot pick"), "{e}");
}

#[test]
fn missing_listen_is_reported() {
    let e = err("[xdp]\nmode = \"skb\"\n");
    assert!(e.contains("missing field `listen`"), "{e}");
}

/// README's complete example is a configuration that loads.
#[test]
fn the_readme_example_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("A complete example:\n\n```toml\n")
        .expect("the example")
        + "A complete example:\n\n```toml\n".len();
    let len = readme[start..].find("```").expect("its end");
    let cfg = Config::parse(&readme[start..start + len], "README.md")
        .unwrap_or_else(|e| panic!("README's example: {e}"));
    assert!(cfg.redirect_plain_http && cfg.https_only);
    assert_eq!(cfg.routes.len(), 1);
}

#[test]
fn too_many_cidrs_are_refused() {
    let many: Vec<String> = (0..=gateway_common::CIDR_CAPACITY)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let e = err(&format!(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [{}]\n",
        many.join(",")
    ));
    assert!(
        e.starts_with("t.toml:4: policy.allow: 16385 CIDRs, more than"),
        "{e}"
    );
    let proxies: Vec<String> = (0..gateway_common::SYN_EXEMPT_CAPACITY)
        .map(|i| format!("\"10.9.{}.{}\"", i / 256, i % 256))
        .collect();
    let e = err(&format!(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[proxy]\ntrusted_proxies = [{}]\n",
        proxies.join(",")
    ));
    assert!(
        e.starts_with("t.toml:4: proxy.trusted_proxies: 1024 CIDRs, more than the kernel's SYN exemption holds (1022)"),
        "{e}"
    );
}

#[test]
fn content_types_are_media_types() {
    let route = |ct: &str| {
        format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"u\"\nauth = \"none\"\ncontent_types = [{ct}]\n"
        )
    };
    let c = Config::parse(&route("\"Application/JSON\""), "t.toml").expect("valid");
    assert_eq!(
        c.routes[0].content_types,
        vec!["application/json".to_owned()]
    );
    let e = err(&route("\"json\""));
    assert_eq!(
        e,
        "t.toml:9: routes[0].content_types: `json` is not a media type (e.g. application/json)"
    );
}

#[test]
fn cidrs_are_normalised() {
    let c = Config::parse(
        "[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\nallow = [\"198.18.0.7/24\"]\n",
        "t.toml",
    )
    .expect("valid");
    assert_eq!(c.policy.allow[0].to_string(), "198.18.0.0/24");
}

#[test]
fn the_config_fuzz_body_holds_on_mutated_seeds() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("A complete example:\n\n```toml\n")
        .expect("the example")
        + "A complete example:\n\n```toml\n".len();
    let example = &readme[start..start + readme[start..].find("```").expect("end")];
    let seeds: &[&[u8]] = &[
        include_bytes!("default.toml"),
        example.as_bytes(),
        b"[listen]\nhttps = \"127.0.0.1:8443\"\n[policy]\ndeny = [\"198.18.0.0/24\"]\n",
    ];
    let parsed = crate::http::fuzz::mutated(seeds)
        .iter()
        .filter(|input| Config::fuzz_parse(input))
        .count();
    assert!(parsed >= 10, "only {parsed} configurations parsed");
}

#[test]
fn routes_are_named_by_their_name_or_position() {
    let base = "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n";
    let route = |name: &str, path: &str| {
        format!("[[routes]]\n{name}path_prefix = \"{path}\"\nupstream = \"u\"\nauth = \"none\"\n")
    };
    let c = Config::parse(
        &format!(
            "{base}{}{}",
            route("name = \"orders.v2\"\n", "/orders"),
            route("", "/")
        ),
        "t.toml",
    )
    .expect("valid");
    let names: Vec<&str> = c.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["orders.v2", "1"]);
    for (name, why) in [
        ("3", "digits only"),
        ("none", "no route took"),
        ("", "1 to 64 characters"),
        ("a b", "only letters, digits"),
        ("x\\\"y", "only letters, digits"),
    ] {
        let e = err(&format!(
            "{base}{}",
            route(&format!("name = \"{name}\"\n"), "/")
        ));
        assert!(e.starts_with("t.toml:7: routes[0].name: "), "{e}");
        assert!(e.contains(why), "{name}: {e}");
    }
    let e = err(&format!(
        "{base}{}{}",
        route("name = \"a\"\n", "/x"),
        route("name = \"a\"\n", "/")
    ));
    assert_eq!(
        e,
        "t.toml:12: routes[1].name: `a` is also the name of routes[0]"
    );
}

#[test]
fn grpc_routes_and_http2_upstreams_go_together() {
    let up = |extra: &str| {
        format!(
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"g\"\nservers = [\"127.0.0.1:1\"]\n{extra}"
        )
    };
    let route = |extra: &str| {
        format!("[[routes]]\npath_prefix = \"/\"\nupstream = \"g\"\nauth = \"none\"\n{extra}")
    };
    let c = Config::parse(
        &format!("{}{}", up("http2 = true\n"), route("grpc = true\n")),
        "t.toml",
    )
    .expect("valid");
    assert!(c.routes[0].grpc && c.upstreams[0].http2);
    let e = err(&format!("{}{}", up(""), route("grpc = true\n")));
    assert!(
        e.contains("routes[0].grpc: a gRPC route needs an upstream with http2 = true"),
        "{e}"
    );
    let e = err(&format!("{}{}", up("http2 = true\n"), route("")));
    assert!(e.contains("only grpc = true routes may use it"), "{e}");
    // Over TLS (h2 in ALPN), checked with the gRPC health protocol.
    let c = Config::parse(
        &format!(
            "{}{}",
            up(
                "http2 = true\n[upstreams.tls]\nserver_name = \"g.internal\"\n\
                [upstreams.health_check]\ngrpc_service = \"test.Echo\"\n"
            ),
            route("grpc = true\n")
        ),
        "t.toml",
    )
    .expect("valid");
    let check = c.upstreams[0].health_check.as_ref().expect("a check");
    assert_eq!(check.grpc_service.as_deref(), Some("test.Echo"));
    assert_eq!(check.path, "/grpc.health.v1.Health/Check");
    assert!(c.upstreams[0].tls.is_some());
    // Without grpc_service: the whole server.
    let c = Config::parse(
        &format!(
            "{}{}",
            up("http2 = true\n[upstreams.health_check]\ninterval_ms = 500\n"),
            route("grpc = true\n")
        ),
        "t.toml",
    )
    .expect("valid");
    let check = c.upstreams[0].health_check.as_ref().expect("a check");
    assert_eq!(check.grpc_service.as_deref(), Some(""));
    for (extra, why) in [
        (
            "http2 = true\n[upstreams.health_check]\npath = \"/healthz\"\n",
            "health_check.path: an HTTP/2 upstream is checked with the gRPC health protocol",
        ),
        (
            "http2 = true\n[upstreams.health_check]\nexpect_status = [200]\n",
            "health_check.expect_status: a gRPC health check passes on SERVING",
        ),
        (
            "[upstreams.health_check]\npath = \"/h\"\ngrpc_service = \"x\"\n",
            "health_check.grpc_service: the gRPC health protocol is spoken to HTTP/2 upstreams only",
        ),
        (
            "[upstreams.health_check]\ninterval_ms = 500\n",
            "health_check.path: the path to GET",
        ),
        (
            "http2 = true\n[upstreams.health_check]\ngrpc_service = \"a\\nb\"\n",
            "health_check.grpc_service: a service name",
        ),
    ] {
        let r = if extra.starts_with("http2") {
            route("grpc = true\n")
        } else {
            route("")
        };
        let e = err(&format!("{}{r}", up(extra)));
        assert!(e.contains(why), "{extra}: {e}");
    }
}

#[test]
fn websocket_routes_and_bounds_are_checked() {
    let base = "[listen]\nhttps = \"127.0.0.1:8443\"\n[[upstreams]]\nname = \"u\"\nservers = [\"127.0.0.1:1\"]\n";
    let route = |extra: &str| {
        format!("[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\nauth = \"none\"\n{extra}")
    };
    let c =
        Config::parse(&format!("{base}{}", route("websocket = true\n")), "t.toml").expect("valid");
    assert!(c.routes[0].websocket);
    assert_eq!(c.websocket, WebSocketSettings::default());
    let e = err(&format!(
        "{base}{}",
        route("websocket = true\nmethods = [\"POST\"]\n")
    ));
    assert!(
        e.contains("routes[0].websocket: a WebSocket upgrade is a GET"),
        "{e}"
    );
    for (section, why) in [
        (
            "idle_timeout_ms = 10",
            "websocket.idle_timeout_ms: between 1000",
        ),
        (
            "max_lifetime_ms = 0",
            "websocket.max_lifetime_ms: between 1000",
        ),
        ("buffer_bytes = 10", "websocket.buffer_bytes: between 1024"),
        (
            "bytes_per_second = 100",
            "websocket.bytes_per_second: 0 (no limit) or at least buffer_bytes",
        ),
        ("nonsense = 1", "unknown field `nonsense`"),
    ] {
        let e = err(&format!("{base}{}[websocket]\n{section}\n", route("")));
        assert!(e.contains(why), "{section}: {e}");
    }
}
