//! JSON body validation (`cargo xtask bench validate`): simd-json's tape
//! plus the schema check, the gateway's request path (copy, parse,
//! duplicate-key check, validate), against `serde_json::from_slice` plus
//! the same schema on `serde_json::Value`, for 1, 16 and 256 KiB bodies.
//! Target: ≥ 2× serde_json's throughput at 16 and 256 KiB, no slower at 1.
//! A third row parses into simd-json's borrowed value alone (no schema):
//! the representation the tape was chosen over.

use std::{hint::black_box, sync::Arc};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gateway::stages::validation::{BodySchema, Scratch, check_body, compile, compile_reference};
use simd_json::prelude::TypedValue as _;

fn schema() -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "required": ["id", "customer", "items"],
        "additionalProperties": false,
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "customer": {
                "type": "object",
                "required": ["email"],
                "properties": {
                    "email": {"type": "string", "format": "email"},
                    "name": {"type": "string", "maxLength": 100}
                }
            },
            "placed": {"type": "string", "format": "date-time"},
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["sku", "qty", "price"],
                    "additionalProperties": false,
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "price": {"type": "number", "minimum": 0},
                        "kind": {"enum": ["retail", "wholesale", "gift"]},
                        "note": {"type": "string", "maxLength": 200}
                    }
                }
            }
        }
    })
}

/// A valid order of about `size` bytes.
fn body(size: usize) -> Vec<u8> {
    let mut s = String::from(
        r#"{"id":"9b2d3c4e-1f2a-4b5c-8d6e-7f8091a2b3c4","customer":{"email":"ann@example.com","name":"Ann O'Brien"},"placed":"2026-11-23T12:00:00Z","items":["#,
    );
    let mut i = 0;
    while s.len() < size - 120 {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"sku":"ABC-{:04}","qty":{},"price":{}.5,"kind":"retail","note":"line {i} \u00e9"}}"#,
            i % 10_000,
            i % 999 + 1,
            i % 500
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn validate(c: &mut Criterion) {
    let schema_value = schema();
    let ours = BodySchema {
        validator: Arc::new(compile(&schema_value).expect("schema")),
        source: "bench".into(),
        required: false,
    };
    let reference = compile_reference(&schema_value).expect("schema");
    let mut group = c.benchmark_group("validate");
    for kib in [1usize, 16, 256] {
        let doc = body(kib * 1024);
        group.throughput(Throughput::Bytes(doc.len() as u64));
        let mut scratch = Scratch::new(64);
        let mut problem = String::new();
        assert_eq!(check_body(&ours, &doc, &mut scratch, &mut problem), Ok(()));
        group.bench_with_input(BenchmarkId::new("simd-json tape", kib), &doc, |b, doc| {
            b.iter(|| check_body(&ours, black_box(doc), &mut scratch, &mut problem))
        });
        let mut copy = Vec::with_capacity(doc.len());
        let mut buffers = simd_json::Buffers::new(doc.len());
        group.bench_with_input(
            BenchmarkId::new("borrowed value, parse only", kib),
            &doc,
            |b, doc| {
                b.iter(|| {
                    copy.clear();
                    copy.extend_from_slice(black_box(doc));
                    simd_json::to_borrowed_value_with_buffers(&mut copy, &mut buffers)
                        .map(|v| black_box(v).value_type())
                })
            },
        );
        group.bench_with_input(BenchmarkId::new("serde_json", kib), &doc, |b, doc| {
            b.iter(|| {
                let v: serde_json::Value =
                    serde_json::from_slice(black_box(doc)).expect("valid JSON");
                reference.is_valid(&v)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
