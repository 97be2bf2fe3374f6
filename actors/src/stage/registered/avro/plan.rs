//! A registered Avro schema compiled, once, into what decoding a value needs: a flat list of
//! [`Node`]s with named types resolved to indexes (so a record refers to itself by index, and no
//! name is looked up per value), field names and enum symbols written as JSON text ahead of time,
//! and each union branch's label (Kafka Connect's mapping: see [`super`]) decided.

use std::collections::HashMap;

use apache_avro::schema::{Name, UnionSchema};
use apache_avro::Schema;

use super::super::text::{self, Misfit};
use super::AvroSchema;

/// One schema node. Indexes point into [`Plan::nodes`].
#[derive(Debug, Clone)]
pub(super) enum Node {
    Null,
    Boolean,
    /// int or long: both written as their number.
    Long,
    Float,
    Double,
    Bytes,
    Fixed(usize),
    String,
    /// The symbols as JSON strings.
    Enum(Box<[Box<[u8]>]>),
    Record(Box<[Field]>),
    Array(usize),
    Map(usize),
    Union(Box<[Branch]>),
    Date,
    /// time-millis (`true`) or time-micros.
    Time {
        millis: bool,
    },
    /// timestamp-* and local-timestamp-*: the unit per µs, and whether it is UTC (TIMESTAMP) or
    /// local (DATETIME).
    Timestamp {
        unit: Unit,
        utc: bool,
    },
    /// decimal on bytes (`fixed: None`) or on a fixed of that size.
    Decimal {
        scale: usize,
        fixed: Option<usize>,
    },
    BigDecimal,
    Uuid,
    Duration,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Unit {
    Millis,
    Micros,
    Nanos,
}

impl Unit {
    pub(super) fn micros(self, n: i64) -> i128 {
        match self {
            Unit::Millis => i128::from(n) * 1_000,
            Unit::Micros => i128::from(n),
            Unit::Nanos => i128::from(n) / 1_000,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Field {
    /// The field's name (Avro names need no escaping in JSON).
    pub name: Box<str>,
    pub node: usize,
}

#[derive(Debug, Clone)]
pub(super) struct Branch {
    pub node: usize,
    /// `{"<branch name>":` when the union is written as a record with one field per branch;
    /// `None` when the branch's value is written as it is (a union of null and one type, or null).
    pub label: Option<(Box<str>, Box<[u8]>)>,
}

/// The compiled schema; the registered schema is `nodes[0]`.
#[derive(Debug)]
pub(super) struct Plan {
    pub nodes: Vec<Node>,
}

impl Plan {
    pub(super) fn new(root: &AvroSchema) -> Result<Self, Misfit> {
        let mut builder = Builder {
            root,
            nodes: Vec::new(),
            named: HashMap::new(),
        };
        builder.add(&root.schema)?;
        Ok(Plan {
            nodes: builder.nodes,
        })
    }
}

struct Builder<'a> {
    root: &'a AvroSchema,
    nodes: Vec<Node>,
    /// Named types (records, enums, fixed) already added, by full name.
    named: HashMap<Name, usize>,
}

impl Builder<'_> {
    /// Adds `schema` and returns its index. A named type is added once: later uses (and `Ref`s
    /// to it, recursive ones included) get the same index.
    fn add(&mut self, schema: &Schema) -> Result<usize, Misfit> {
        let schema = resolve(self.root, schema)?;
        if let Some(name) = schema.name() {
            if let Some(&at) = self.named.get(name) {
                return Ok(at);
            }
        }
        let at = self.nodes.len();
        self.nodes.push(Node::Null);
        if let Some(name) = schema.name() {
            self.named.insert(name.clone(), at);
        }
        let node = match schema {
            Schema::Null => Node::Null,
            Schema::Boolean => Node::Boolean,
            Schema::Int | Schema::Long => Node::Long,
            Schema::Float => Node::Float,
            Schema::Double => Node::Double,
            Schema::Bytes => Node::Bytes,
            Schema::String => Node::String,
            Schema::Fixed(f) => Node::Fixed(f.size),
            Schema::Enum(e) => Node::Enum(
                e.symbols
                    .iter()
                    .map(|s| {
                        let mut json = Vec::with_capacity(s.len() + 2);
                        text::string(&mut json, s);
                        json.into_boxed_slice()
                    })
                    .collect(),
            ),
            Schema::Record(r) => {
                let mut fields = Vec::with_capacity(r.fields.len());
                for f in &r.fields {
                    let node = self.add(&f.schema).map_err(|e| e.within(&f.name))?;
                    fields.push(Field {
                        name: f.name.as_str().into(),
                        node,
                    });
                }
                Node::Record(fields.into())
            }
            Schema::Array(a) => Node::Array(self.add(&a.items)?),
            Schema::Map(m) => Node::Map(self.add(&m.types)?),
            Schema::Union(u) => Node::Union(self.union(u)?),
            Schema::Date => Node::Date,
            Schema::TimeMillis => Node::Time { millis: true },
            Schema::TimeMicros => Node::Time { millis: false },
            Schema::TimestampMillis => timestamp(Unit::Millis, true),
            Schema::TimestampMicros => timestamp(Unit::Micros, true),
            Schema::TimestampNanos => timestamp(Unit::Nanos, true),
            Schema::LocalTimestampMillis => timestamp(Unit::Millis, false),
            Schema::LocalTimestampMicros => timestamp(Unit::Micros, false),
            Schema::LocalTimestampNanos => timestamp(Unit::Nanos, false),
            Schema::Decimal(d) => Node::Decimal {
                scale: d.scale,
                fixed: match resolve(self.root, &d.inner)? {
                    Schema::Fixed(f) => Some(f.size),
                    _ => None,
                },
            },
            Schema::BigDecimal => Node::BigDecimal,
            Schema::Uuid => Node::Uuid,
            Schema::Duration => Node::Duration,
            Schema::Ref { name } => {
                return Err(Misfit::new(format!(
                    "unknown named type {}",
                    name.fullname(None)
                )))
            }
        };
        self.nodes[at] = node;
        Ok(at)
    }

    /// A union of null and one type is that type, nullable; any other union is an object with one
    /// member named after the branch's type (Kafka Connect's mapping); null is null in both.
    fn union(&mut self, union: &UnionSchema) -> Result<Box<[Branch]>, Misfit> {
        let variants = union.variants();
        let non_null = variants.iter().filter(|s| **s != Schema::Null).count();
        let mut branches = Vec::with_capacity(variants.len());
        for v in variants {
            let name = branch_name(v);
            let node = self.add(v).map_err(|e| e.within(&name))?;
            let label = (non_null > 1 && *v != Schema::Null).then(|| {
                let mut json = vec![b'{'];
                text::string(&mut json, &name);
                json.push(b':');
                (name.into(), json.into())
            });
            branches.push(Branch { node, label });
        }
        Ok(branches.into())
    }
}

fn timestamp(unit: Unit, utc: bool) -> Node {
    Node::Timestamp { unit, utc }
}

/// `schema`, or the named type it refers to.
pub(crate) fn resolve<'s>(root: &'s AvroSchema, schema: &'s Schema) -> Result<&'s Schema, Misfit> {
    match schema {
        Schema::Ref { name } => root
            .named(name)
            .ok_or_else(|| Misfit::new(format!("unknown named type {}", name.fullname(None)))),
        other => Ok(other),
    }
}

/// Kafka Connect's name for a union branch: the named type's name, else the Avro type's.
pub(crate) fn branch_name(schema: &Schema) -> String {
    match schema.name() {
        Some(Name { name, .. }) => name.clone(),
        None => format!("{:?}", apache_avro::schema::SchemaKind::from(schema)).to_lowercase(),
    }
}
