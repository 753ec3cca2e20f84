//! The AWS service table (generated from botocore, see `data/README.md`), loaded once and
//! indexed for the classifier.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io::Read;
use std::sync::LazyLock;

/// FxHash (rustc's hasher): the tables are fixed at load time and only looked up per
/// request, so hash flooding cannot grow them; SipHash would be a large share of the cost.
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let (words, rest) = bytes.as_chunks::<8>();
        for w in words {
            self.add(u64::from_le_bytes(*w));
        }
        for &b in rest {
            self.add(u64::from(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

static MODEL_GZ: &[u8] = include_bytes!("../data/aws-model.tsv.gz");

/// One string member of an operation's input bound to the query string or a header.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Query key or lower-case header name.
    pub wire: String,
    pub member: String,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub name: String,
    pub method: String,
    pub uri: String,
    /// URI label -> member name, only where they differ.
    pub labels: Vec<(String, String)>,
    pub query: Vec<Binding>,
    pub headers: Vec<Binding>,
}

impl Operation {
    /// Member name bound to URI label `label`.
    pub fn label_member<'a>(&'a self, label: &'a str) -> &'a str {
        self.labels
            .iter()
            .find(|(l, _)| l == label)
            .map_or(label, |(_, m)| m.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Lit(String),
    Label(String),
    /// `{Name+}`: one or more trailing segments.
    Greedy(String),
}

/// A request-URI template pre-split for matching.
#[derive(Debug, Clone)]
pub struct Route {
    pub op: u32,
    pub segs: Vec<Seg>,
    /// Literal query discriminators from the template: key and optional value.
    pub query: Vec<(String, Option<String>)>,
    /// The template path ends with `/` (some services differ only by that).
    pub trailing_slash: bool,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub endpoint_prefix: String,
    pub signing_name: String,
    pub protocol: String,
    pub protocols: Vec<String>,
    pub target_prefix: String,
    pub json_version: String,
    pub api_version: String,
    pub service_id: String,
    pub full_name: String,
    pub global_endpoint: String,
    pub operations: Vec<Operation>,
    pub(crate) op_index: FastMap<String, u32>,
    /// Routes grouped by HTTP method (upper case).
    pub(crate) routes: FastMap<String, Vec<Route>>,
}

impl Service {
    pub fn operation(&self, name: &str) -> Option<&Operation> {
        self.op_index
            .get(name)
            .and_then(|&i| self.operations.get(i as usize))
    }

    pub fn speaks(&self, protocol: &str) -> bool {
        self.protocol == protocol || self.protocols.iter().any(|p| p == protocol)
    }

    /// True for the REST protocols, where the operation comes from method + URI.
    pub fn is_rest(&self) -> bool {
        self.speaks("rest-json") || self.speaks("rest-xml")
    }
}

/// The loaded table with lookup indexes.
#[derive(Debug)]
pub struct Model {
    pub services: Vec<Service>,
    /// Comment lines of the data file (origin, licence).
    pub header: Vec<String>,
    pub(crate) by_name: FastMap<String, usize>,
    pub(crate) by_signing_name: FastMap<String, Vec<usize>>,
    pub(crate) by_endpoint_prefix: FastMap<String, Vec<usize>>,
    pub(crate) by_target_prefix: FastMap<String, Vec<usize>>,
}

static MODEL: LazyLock<Model> = LazyLock::new(|| {
    let mut text = String::new();
    // A corrupt embedded table would be a build defect; an empty model then classifies nothing.
    if flate2::read::GzDecoder::new(MODEL_GZ)
        .read_to_string(&mut text)
        .is_err()
    {
        text.clear();
    }
    Model::parse(&text)
});

/// The embedded model, parsed on first use.
pub fn model() -> &'static Model {
    &MODEL
}

fn split_list(field: &str) -> impl Iterator<Item = &str> {
    field.split(',').filter(|s| !s.is_empty())
}

fn bindings(field: &str) -> Vec<Binding> {
    split_list(field)
        .filter_map(|b| {
            let (required, b) = match b.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, b),
            };
            let (wire, member) = b.split_once('=')?;
            Some(Binding {
                wire: wire.to_string(),
                member: member.to_string(),
                required,
            })
        })
        .collect()
}

/// Splits `/a/{B}/{C+}?x&y=1` into segments and literal query discriminators.
pub fn parse_template(uri: &str) -> (Vec<Seg>, Vec<(String, Option<String>)>) {
    let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
    let segs = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(
            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(l) => match l.strip_suffix('+') {
                    Some(g) => Seg::Greedy(g.to_string()),
                    None => Seg::Label(l.to_string()),
                },
                None => Seg::Lit(s.to_string()),
            },
        )
        .collect();
    let query = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (kv.to_string(), None),
        })
        .collect();
    (segs, query)
}

impl Model {
    /// Parses the table text (see `xtask/src/aws_model.rs` for the format). Malformed lines
    /// are skipped.
    pub fn parse(text: &str) -> Model {
        let mut services: Vec<Service> = Vec::new();
        let mut header = Vec::new();
        for line in text.lines() {
            if let Some(c) = line.strip_prefix('#') {
                header.push(c.trim().to_string());
                continue;
            }
            let f: Vec<&str> = line.split('\t').collect();
            match f.first() {
                Some(&"S") if f.len() >= 12 => services.push(Service {
                    name: f[1].to_string(),
                    endpoint_prefix: f[2].to_string(),
                    signing_name: f[3].to_string(),
                    protocol: f[4].to_string(),
                    protocols: split_list(f[5]).map(str::to_string).collect(),
                    target_prefix: f[6].to_string(),
                    json_version: f[7].to_string(),
                    api_version: f[8].to_string(),
                    service_id: f[9].to_string(),
                    full_name: f[10].to_string(),
                    global_endpoint: f[11].to_string(),
                    operations: Vec::new(),
                    op_index: FastMap::default(),
                    routes: FastMap::default(),
                }),
                Some(&"O") if f.len() >= 7 => {
                    let Some(svc) = services.last_mut() else {
                        continue;
                    };
                    let labels = split_list(f[4])
                        .filter_map(|b| b.split_once('='))
                        .map(|(w, m)| (w.to_string(), m.to_string()))
                        .collect();
                    svc.operations.push(Operation {
                        name: f[1].to_string(),
                        method: f[2].to_ascii_uppercase(),
                        uri: f[3].to_string(),
                        labels,
                        query: bindings(f[5]),
                        headers: bindings(f[6]),
                    });
                }
                _ => {}
            }
        }
        let mut m = Model {
            services,
            header,
            by_name: FastMap::default(),
            by_signing_name: FastMap::default(),
            by_endpoint_prefix: FastMap::default(),
            by_target_prefix: FastMap::default(),
        };
        for (i, svc) in m.services.iter_mut().enumerate() {
            for (j, op) in svc.operations.iter().enumerate() {
                svc.op_index.insert(op.name.clone(), j as u32);
                let (segs, query) = parse_template(&op.uri);
                let path = op.uri.split('?').next().unwrap_or("");
                svc.routes
                    .entry(op.method.clone())
                    .or_default()
                    .push(Route {
                        op: j as u32,
                        segs,
                        query,
                        trailing_slash: path.len() > 1 && path.ends_with('/'),
                    });
            }
            m.by_name.insert(svc.name.clone(), i);
            m.by_signing_name
                .entry(svc.signing_name.clone())
                .or_default()
                .push(i);
            m.by_endpoint_prefix
                .entry(svc.endpoint_prefix.clone())
                .or_default()
                .push(i);
            if !svc.target_prefix.is_empty() {
                m.by_target_prefix
                    .entry(svc.target_prefix.clone())
                    .or_default()
                    .push(i);
            }
        }
        m
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.by_name.get(name).and_then(|&i| self.services.get(i))
    }
}
