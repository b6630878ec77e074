//! JSON Schema over simd-json's tape: the validator reads the parsed
//! document where simd-json left it, with nothing converted to
//! `serde_json` and nothing allocated per request.
//!
//! A tape is one flat `Vec` of nodes: an object or array node gives its
//! member count and how many nodes follow inside it, so a node handle is
//! just the slice that starts at it. The tape vector itself is reused per
//! worker (`document::Scratch`); simd-json's borrowed value would build a
//! boxed vector or a hash map for every container of every request.

use std::{borrow::Cow, sync::OnceLock};

use jsonschema::{
    JsonType,
    json::{Array, Json, JsonNumber, Node, NodeIdentity, Object},
};
use jsonschema_value::LazyInstance;
use serde_json::{Number, Value};
use simd_json::{Node as T, StaticNode};

/// The tape representation, for `jsonschema::options_for::<TapeJson>()`.
pub struct TapeJson;

/// One value on a tape: the slice starting at its node.
#[derive(Clone, Copy, Debug)]
pub struct TapeNode<'a>(&'a [T<'a>]);

impl<'a> TapeNode<'a> {
    /// The document's root (the tape's first node).
    pub fn root(tape: &'a [T<'a>]) -> Option<Self> {
        (!tape.is_empty()).then_some(Self(tape))
    }
}

/// Nodes a value spans on the tape, itself included.
pub fn span(nodes: &[T<'_>]) -> usize {
    match nodes.first() {
        Some(T::Object { count, .. } | T::Array { count, .. }) => count + 1,
        _ => 1,
    }
}

impl Json for TapeJson {
    type Node<'a> = TapeNode<'a>;
    type PreparedKey = Box<str>;
    type StringBuffer = ();

    // A lookup is a scan of the members: one pass over them always beats
    // several lookups.
    const KEYS_PER_LOOKUP: usize = 1 << 16;
    const ACYCLIC: bool = true;

    fn prepare_key(key: &str) -> Box<str> {
        key.into()
    }

    fn with_string_node<R>((): &mut (), string: &str, f: impl FnOnce(TapeNode<'_>) -> R) -> R {
        let one = [T::String(string)];
        f(TapeNode(&one))
    }
}

/// A number as simd-json parsed it.
#[derive(Clone, Copy, Debug)]
pub struct TapeNumber(StaticNode);

impl JsonNumber for TapeNumber {
    fn as_u64(&self) -> Option<u64> {
        match self.0 {
            StaticNode::U64(v) => Some(v),
            StaticNode::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self.0 {
            StaticNode::I64(v) => Some(v),
            StaticNode::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        match self.0 {
            StaticNode::I64(v) => Some(v as f64),
            StaticNode::U64(v) => Some(v as f64),
            StaticNode::F64(v) => Some(v),
            _ => None,
        }
    }

    fn as_str(&self) -> Cow<'_, str> {
        Cow::Owned(self.to_number().to_string())
    }

    fn to_number(&self) -> Cow<'_, Number> {
        Cow::Owned(match self.0 {
            StaticNode::I64(v) => Number::from(v),
            StaticNode::U64(v) => Number::from(v),
            // simd-json refuses what does not fit a finite f64.
            StaticNode::F64(v) => Number::from_f64(v).unwrap_or_else(|| Number::from(0)),
            _ => Number::from(0),
        })
    }

    fn is_integer(&self) -> bool {
        match self.0 {
            StaticNode::F64(v) => v.fract() == 0.0,
            _ => true,
        }
    }

    fn is_written_as_integer(&self) -> bool {
        !matches!(self.0, StaticNode::F64(_))
    }
}

fn no_instance(_: &[u8], _: u32) -> Value {
    Value::Null
}

impl<'a> Node<'a, TapeJson> for TapeNode<'a> {
    type Object = TapeObject<'a>;
    type Array = TapeArray<'a>;
    type Number = TapeNumber;

    fn as_object(&self) -> Option<TapeObject<'a>> {
        match self.0[0] {
            T::Object { len, .. } => Some(TapeObject { nodes: self.0, len }),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<TapeArray<'a>> {
        match self.0[0] {
            T::Array { len, .. } => Some(TapeArray { nodes: self.0, len }),
            _ => None,
        }
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        match self.0[0] {
            T::String(s) => Some(Cow::Borrowed(s)),
            _ => None,
        }
    }

    fn as_number(&self) -> Option<TapeNumber> {
        match self.0[0] {
            T::Static(n @ (StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_))) => {
                Some(TapeNumber(n))
            }
            _ => None,
        }
    }

    fn as_boolean(&self) -> Option<bool> {
        match self.0[0] {
            T::Static(StaticNode::Bool(b)) => Some(b),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self.0[0], T::Static(StaticNode::Null))
    }

    fn json_type(&self) -> JsonType {
        match self.0[0] {
            T::String(_) => JsonType::String,
            T::Object { .. } => JsonType::Object,
            T::Array { .. } => JsonType::Array,
            T::Static(StaticNode::Null) => JsonType::Null,
            T::Static(StaticNode::Bool(_)) => JsonType::Boolean,
            T::Static(_) => JsonType::Number,
        }
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // `enum` and `const` of scalars, without building a value.
        match (self.0[0], expected) {
            (T::String(s), Value::String(e)) => s == e,
            (T::String(_), _) => false,
            (T::Static(StaticNode::Bool(b)), Value::Bool(e)) => b == *e,
            (T::Static(StaticNode::Null), Value::Null) => true,
            (T::Static(n @ (StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_))), e) => {
                matches!(e, Value::Number(e) if jsonschema::json::cmp::equal_numbers(&TapeNumber(n), e))
            }
            (T::Static(_), _) => false,
            _ => jsonschema::json::cmp::equal(&self.to_value(), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(to_value(self.0))
    }

    fn lazy_value(&self) -> LazyInstance<'a> {
        // Errors are answered masked (the input is never echoed), so the
        // failing instance is never built.
        LazyInstance::Deferred {
            bytes: &[],
            tag: 0,
            make: no_instance,
            cell: OnceLock::new(),
        }
    }

    fn identity(&self) -> Option<NodeIdentity> {
        Some(NodeIdentity::new(self.0.as_ptr() as usize))
    }
}

/// The value at the start of `nodes`, as `serde_json` (cold paths only).
fn to_value(nodes: &[T<'_>]) -> Value {
    match nodes[0] {
        T::String(s) => Value::String(s.to_owned()),
        T::Static(StaticNode::Null) => Value::Null,
        T::Static(StaticNode::Bool(b)) => Value::Bool(b),
        T::Static(n) => Value::Number(TapeNumber(n).to_number().into_owned()),
        T::Array { len, .. } => Value::Array(
            TapeArray { nodes, len }
                .elements()
                .map(|e| to_value(e.0))
                .collect(),
        ),
        T::Object { len, .. } => Value::Object(
            TapeObject { nodes, len }
                .members()
                .map(|(k, v)| (k.to_owned(), to_value(v.0)))
                .collect(),
        ),
    }
}

/// An object on the tape: its node, then key and value nodes in turn.
#[derive(Clone, Copy, Debug)]
pub struct TapeObject<'a> {
    nodes: &'a [T<'a>],
    len: usize,
}

/// An object's members in document order.
pub struct Members<'a> {
    rest: &'a [T<'a>],
    left: usize,
}

impl<'a> Iterator for Members<'a> {
    type Item = (&'a str, TapeNode<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let T::String(key) = self.rest[0] else {
            // simd-json writes every key as a string node.
            self.left = 0;
            return None;
        };
        let value = &self.rest[1..];
        self.rest = &value[span(value)..];
        Some((key, TapeNode(value)))
    }
}

impl<'a> Object<'a, TapeJson> for TapeObject<'a> {
    type Node = TapeNode<'a>;
    type MemberName = &'a str;
    type MembersIter = Members<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, key: &Box<str>) -> Option<TapeNode<'a>> {
        self.members()
            .find(|(k, _)| *k == key.as_ref())
            .map(|(_, v)| v)
    }

    fn members(&self) -> Members<'a> {
        Members {
            rest: &self.nodes[1..],
            left: self.len,
        }
    }
}

/// An array on the tape.
#[derive(Clone, Copy, Debug)]
pub struct TapeArray<'a> {
    nodes: &'a [T<'a>],
    len: usize,
}

/// An array's elements in order.
pub struct Elements<'a> {
    rest: &'a [T<'a>],
    left: usize,
}

impl<'a> Iterator for Elements<'a> {
    type Item = TapeNode<'a>;

    fn next(&mut self) -> Option<TapeNode<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let value = self.rest;
        self.rest = &value[span(value)..];
        Some(TapeNode(value))
    }
}

impl<'a> Array<'a, TapeJson> for TapeArray<'a> {
    type Node = TapeNode<'a>;
    type ElementsIter = Elements<'a>;

    fn len(&self) -> usize {
        self.len
    }

    fn elements(&self) -> Elements<'a> {
        Elements {
            rest: &self.nodes[1..],
            left: self.len,
        }
    }
}
