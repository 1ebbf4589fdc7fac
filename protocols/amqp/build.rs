//! Generates the AMQP 0-9-1 method and property codec from RabbitMQ's
//! machine-readable protocol definition, `spec/amqp-rabbitmq-0.9.1.json`
//! (rabbitmq/rabbitmq-codegen, commit 5df4512d; the file keeps its own
//! permission notice). Nothing in the generated file is typed by hand: one
//! struct per method with its fields in wire order, the `Method` enum with
//! its decoder and encoder, `BasicProperties` with its flag words, and the
//! spec's constants (frame types, reply codes).
//!
//! The output (`$OUT_DIR/generated.rs`) is included by `src/codec/methods.rs`.

// A build script reports a broken spec file by failing the build.
#![allow(clippy::panic)]

use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;

const SPEC: &str = "spec/amqp-rabbitmq-0.9.1.json";

fn main() {
    println!("cargo:rerun-if-changed={SPEC}");
    println!("cargo:rerun-if-changed=build.rs");
    let text = std::fs::read_to_string(SPEC).unwrap_or_else(|e| panic!("read {SPEC}: {e}"));
    let spec: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {SPEC}: {e}"));
    let out = generate(&spec);
    let dir = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| panic!("OUT_DIR unset")));
    std::fs::write(dir.join("generated.rs"), out).unwrap_or_else(|e| panic!("write: {e}"));
}

fn camel(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn snake(s: &str) -> String {
    let n = s.replace('-', "_");
    match n.as_str() {
        "type" => "kind".to_owned(),
        _ => n,
    }
}

/// Frame types and the frame-end octet (everything else is a reply code or
/// the minimum frame size).
fn is_frame_constant(name: &str) -> bool {
    matches!(
        name,
        "FRAME_METHOD" | "FRAME_HEADER" | "FRAME_BODY" | "FRAME_HEARTBEAT" | "FRAME_END"
    )
}

fn screaming(s: &str) -> String {
    s.replace('-', "_").to_ascii_uppercase()
}

struct Field {
    name: String,
    wire: String,
    ty: String,
}

fn domain_type(spec: &Value, arg: &Value) -> String {
    if let Some(t) = arg.get("type").and_then(Value::as_str) {
        return t.to_owned();
    }
    let d = arg
        .get("domain")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("argument without type or domain: {arg}"));
    spec["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x[0].as_str() == Some(d))
        .and_then(|x| x[1].as_str())
        .unwrap_or_else(|| panic!("unknown domain {d}"))
        .to_owned()
}

fn rust_type(t: &str) -> &'static str {
    match t {
        "octet" => "u8",
        "short" => "u16",
        "long" => "u32",
        "longlong" | "timestamp" => "u64",
        "bit" => "bool",
        "shortstr" => "ShortStr",
        "longstr" => "Bytes",
        "table" => "Headers",
        other => panic!("unknown AMQP type {other}"),
    }
}

fn read_expr(t: &str) -> &'static str {
    match t {
        "octet" => "r.u8()?",
        "short" => "r.u16()?",
        "long" => "r.u32()?",
        "longlong" | "timestamp" => "r.u64()?",
        "shortstr" => "r.shortstr()?",
        "longstr" => "r.longstr()?",
        "table" => "r.table()?",
        other => panic!("no reader for {other}"),
    }
}

fn write_stmt(t: &str, expr: &str) -> String {
    match t {
        "octet" => format!("w.put_u8({expr});"),
        "short" => format!("w.put_u16({expr});"),
        "long" => format!("w.put_u32({expr});"),
        "longlong" | "timestamp" => format!("w.put_u64({expr});"),
        "shortstr" => format!("put_shortstr(w, &{expr});"),
        "longstr" => format!("put_longstr(w, &{expr});"),
        "table" => format!("put_table(w, &{expr});"),
        other => panic!("no writer for {other}"),
    }
}

fn fields(spec: &Value, args: &Value) -> Vec<Field> {
    args.as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            let wire = a["name"]
                .as_str()
                .unwrap_or_else(|| panic!("unnamed"))
                .to_owned();
            Field {
                name: snake(&wire),
                ty: domain_type(spec, a),
                wire,
            }
        })
        .collect()
}

/// Decoding statements for `fs` in wire order; consecutive bits share octets.
fn decode_body(fs: &[Field]) -> String {
    let mut s = String::new();
    let mut bit = 8;
    for f in fs {
        if f.ty == "bit" {
            if bit == 8 {
                s.push_str("let bits = r.u8()?;\n");
                bit = 0;
            }
            let _ = writeln!(s, "let {} = bits & (1 << {bit}) != 0;", f.name);
            bit += 1;
        } else {
            bit = 8;
            let _ = writeln!(s, "let {} = {};", f.name, read_expr(&f.ty));
        }
    }
    s
}

fn encode_body(fs: &[Field], prefix: &str) -> String {
    let mut s = String::new();
    let mut i = 0;
    while let Some(f) = fs.get(i) {
        if f.ty == "bit" {
            s.push_str("let mut bits = 0u8;\n");
            let mut n = 0;
            while let Some(b) = fs.get(i).filter(|b| b.ty == "bit" && n < 8) {
                let _ = writeln!(s, "if {prefix}{} {{ bits |= 1 << {n}; }}", b.name);
                n += 1;
                i += 1;
            }
            s.push_str("w.put_u8(bits);\n");
        } else {
            s.push_str(&write_stmt(&f.ty, &format!("{prefix}{}", f.name)));
            s.push('\n');
            i += 1;
        }
    }
    s
}

fn generate(spec: &Value) -> String {
    let mut o = String::new();
    o.push_str("// @generated by build.rs from spec/amqp-rabbitmq-0.9.1.json. Do not edit.\n\n");

    // Constants.
    for c in spec["constants"].as_array().into_iter().flatten() {
        let name = screaming(c["name"].as_str().unwrap_or_default());
        let v = c["value"].as_u64().unwrap_or_default();
        let ty = if name == "FRAME_MIN_SIZE" {
            "u32"
        } else if is_frame_constant(&name) {
            "u8"
        } else {
            "u16"
        };
        let class = c.get("class").and_then(Value::as_str).unwrap_or("");
        let doc = match class {
            "soft-error" => "A channel error (the spec's soft error): closes the channel.",
            "hard-error" => "A connection error (the spec's hard error): closes the connection.",
            _ => "A constant of the AMQP 0-9-1 specification.",
        };
        let _ = writeln!(o, "/// {doc}\npub const {name}: {ty} = {v};");
    }
    // Reply code names.
    o.push_str("\n/// The spec's name of a reply code (`404` → `NOT_FOUND`).\npub fn reply_name(code: u16) -> Option<&'static str> {\n    match code {\n");
    for c in spec["constants"].as_array().into_iter().flatten() {
        let name = screaming(c["name"].as_str().unwrap_or_default());
        if is_frame_constant(&name) || name == "FRAME_MIN_SIZE" {
            continue;
        }
        let v = c["value"].as_u64().unwrap_or_default();
        let _ = writeln!(o, "        {v} => Some(\"{name}\"),");
    }
    o.push_str("        _ => None,\n    }\n}\n\n");
    o.push_str("/// True when the spec classes `code` as a hard (connection) error.\npub fn is_hard_error(code: u16) -> bool {\n    matches!(code, ");
    let hard: Vec<String> = spec["constants"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c.get("class").and_then(Value::as_str) == Some("hard-error"))
        .map(|c| c["value"].as_u64().unwrap_or_default().to_string())
        .collect();
    o.push_str(&hard.join(" | "));
    o.push_str(")\n}\n\n");

    struct M {
        variant: String,
        class_id: u64,
        method_id: u64,
        name: String,
        content: bool,
        sync: bool,
        fields: Vec<Field>,
    }
    let mut methods = Vec::new();
    for c in spec["classes"].as_array().into_iter().flatten() {
        let cname = c["name"].as_str().unwrap_or_default();
        for m in c["methods"].as_array().into_iter().flatten() {
            let mname = m["name"].as_str().unwrap_or_default();
            methods.push(M {
                variant: camel(cname) + &camel(mname),
                class_id: c["id"].as_u64().unwrap_or_default(),
                method_id: m["id"].as_u64().unwrap_or_default(),
                name: format!("{cname}.{mname}"),
                content: m.get("content").and_then(Value::as_bool).unwrap_or(false),
                sync: m
                    .get("synchronous")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
                fields: fields(spec, &m["arguments"]),
            });
        }
    }

    for m in &methods {
        let _ = writeln!(
            o,
            "/// `{}` (class {}, method {}){}.",
            m.name,
            m.class_id,
            m.method_id,
            if m.content {
                ", followed by content"
            } else {
                ""
            }
        );
        o.push_str("#[derive(Debug, Clone, Default, PartialEq)]\n");
        let _ = writeln!(o, "pub struct {} {{", m.variant);
        for f in &m.fields {
            let _ = writeln!(o, "    /// `{}` ({}).", f.wire, f.ty);
            let _ = writeln!(o, "    pub {}: {},", f.name, rust_type(&f.ty));
        }
        o.push_str("}\n\n");
        let _ = writeln!(
            o,
            "impl From<{v}> for Method {{\n    fn from(m: {v}) -> Method {{\n        Method::{v}(m)\n    }}\n}}\n",
            v = m.variant
        );
    }

    o.push_str("/// Every method of AMQP 0-9-1 with RabbitMQ's extensions.\n#[derive(Debug, Clone, PartialEq)]\npub enum Method {\n");
    for m in &methods {
        let _ = writeln!(o, "    {}({}),", m.variant, m.variant);
    }
    o.push_str("}\n\nimpl Method {\n");
    // ids, names, flags
    o.push_str(
        "    /// The class id.\n    pub fn class_id(&self) -> u16 {\n        match self {\n",
    );
    for m in &methods {
        let _ = writeln!(o, "            Method::{}(_) => {},", m.variant, m.class_id);
    }
    o.push_str("        }\n    }\n\n    /// The method id within its class.\n    pub fn method_id(&self) -> u16 {\n        match self {\n");
    for m in &methods {
        let _ = writeln!(
            o,
            "            Method::{}(_) => {},",
            m.variant, m.method_id
        );
    }
    o.push_str("        }\n    }\n\n    /// The spec's name, `class.method`.\n    pub fn name(&self) -> &'static str {\n        match self {\n");
    for m in &methods {
        let _ = writeln!(o, "            Method::{}(_) => \"{}\",", m.variant, m.name);
    }
    o.push_str("        }\n    }\n\n    /// True when a content header and body frames follow the method.\n    pub fn has_content(&self) -> bool {\n        matches!(self, ");
    let content: Vec<String> = methods
        .iter()
        .filter(|m| m.content)
        .map(|m| format!("Method::{}(_)", m.variant))
        .collect();
    o.push_str(&content.join(" | "));
    o.push_str(")\n    }\n\n    /// True for a request the peer answers with a `-ok` method.\n    pub fn is_synchronous(&self) -> bool {\n        matches!(self, ");
    let sync: Vec<String> = methods
        .iter()
        .filter(|m| m.sync)
        .map(|m| format!("Method::{}(_)", m.variant))
        .collect();
    o.push_str(&sync.join(" | "));
    o.push_str(")\n    }\n\n");
    // decode
    o.push_str("    /// Decodes the arguments of method (`class_id`, `method_id`) from `r`.\n    pub fn decode(class_id: u16, method_id: u16, r: &mut Reader) -> Result<Method, DecodeError> {\n        Ok(match (class_id, method_id) {\n");
    for m in &methods {
        let _ = writeln!(o, "            ({}, {}) => {{", m.class_id, m.method_id);
        for line in decode_body(&m.fields).lines() {
            let _ = writeln!(o, "                {line}");
        }
        let names: Vec<&str> = m.fields.iter().map(|f| f.name.as_str()).collect();
        let _ = writeln!(
            o,
            "                Method::{}({} {{ {} }})\n            }}",
            m.variant,
            m.variant,
            names.join(", ")
        );
    }
    o.push_str("            _ => return Err(DecodeError::UnknownMethod { class_id, method_id }),\n        })\n    }\n\n");
    // encode
    o.push_str("    /// Appends the method's arguments (after the class and method ids).\n    pub fn encode_args(&self, w: &mut BytesMut) {\n        match self {\n");
    for m in &methods {
        if m.fields.is_empty() {
            let _ = writeln!(o, "            Method::{}(_) => {{}}", m.variant);
            continue;
        }
        let _ = writeln!(o, "            Method::{}(m) => {{", m.variant);
        for line in encode_body(&m.fields, "m.").lines() {
            let _ = writeln!(o, "                {line}");
        }
        o.push_str("            }\n");
    }
    o.push_str("        }\n    }\n}\n\n");
    o.push_str("/// The spec's name of method (`class_id`, `method_id`), if it exists.\npub fn method_name(class_id: u16, method_id: u16) -> Option<&'static str> {\n    match (class_id, method_id) {\n");
    for m in &methods {
        let _ = writeln!(
            o,
            "        ({}, {}) => Some(\"{}\"),",
            m.class_id, m.method_id, m.name
        );
    }
    o.push_str("        _ => None,\n    }\n}\n\n");

    // Basic properties.
    let basic = spec["classes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"].as_str() == Some("basic"))
        .unwrap_or_else(|| panic!("no basic class"));
    let props = fields(spec, &basic["properties"]);
    o.push_str("/// The content header properties of class `basic`, in flag order.\n#[derive(Debug, Clone, Default, PartialEq)]\npub struct BasicProperties {\n");
    for p in &props {
        let _ = writeln!(o, "    /// `{}` ({}).", p.wire, p.ty);
        let _ = writeln!(o, "    pub {}: Option<{}>,", p.name, rust_type(&p.ty));
    }
    o.push_str("}\n\nimpl BasicProperties {\n");
    let _ = writeln!(
        o,
        "    /// Number of properties.\n    pub const COUNT: usize = {};\n",
        props.len()
    );
    o.push_str("    /// Decodes the property flags and the present properties.\n    pub fn decode(r: &mut Reader) -> Result<BasicProperties, DecodeError> {\n        let flags = r.property_flags(Self::COUNT)?;\n        let mut p = BasicProperties::default();\n");
    for (i, f) in props.iter().enumerate() {
        let _ = writeln!(
            o,
            "        if flags & (1u64 << {}) != 0 {{ p.{} = Some({}); }}",
            63 - i,
            f.name,
            read_expr(&f.ty)
        );
    }
    o.push_str("        Ok(p)\n    }\n\n    /// Appends the property flags and the present properties.\n    pub fn encode(&self, w: &mut BytesMut) {\n        let mut flags = 0u16;\n");
    for (i, f) in props.iter().enumerate() {
        let _ = writeln!(
            o,
            "        if self.{}.is_some() {{ flags |= 1 << {}; }}",
            f.name,
            15 - i
        );
    }
    o.push_str("        w.put_u16(flags);\n");
    for f in &props {
        let _ = writeln!(
            o,
            "        if let Some(v) = &self.{} {{ {} }}",
            f.name,
            write_stmt(&f.ty, "*v").replace("&*v", "v")
        );
    }
    o.push_str("    }\n}\n");
    o
}
