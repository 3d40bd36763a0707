//! The `mongodump --archive` format (archive format version `0.1`), written and read with no
//! server involved: pure functions and a push parser, unit-tested against byte layouts built by
//! hand from the format description.
//!
//! ```text
//! archive   = magic prelude block*
//! magic     = 6d e2 99 81                       (uint32 0x8199e26d, little-endian)
//! prelude   = header-doc metadata-doc* terminator
//! block     = namespace-header document* terminator
//! terminator= ff ff ff ff                       (an int32 length of -1)
//! ```
//!
//! - header-doc: `{concurrent_collections: int32, version: "0.1", server_version, tool_version}`.
//! - metadata-doc: `{db, collection, metadata: <canonical Extended JSON v2 of
//!   {options, indexes, uuid, collectionName, type}>, size: int32, type}`, one per
//!   collection or view.
//! - namespace-header: `{db, collection, EOF: bool, CRC: int64}`, exactly these fields in this
//!   order. A data block has `EOF: false, CRC: 0`; each namespace ends with a block whose header
//!   has `EOF: true` and the CRC-64/XZ of all its documents' bytes, and no documents.
//!
//! Every length is 5..=16 MiB and every document ends with a zero byte. The [`Parser`] checks
//! all of that, the structure of every BSON document (element by element), that data only comes
//! for namespaces of the prelude and only before their end, every namespace's CRC, and that
//! every namespace ended before the stream did.

use std::collections::HashMap;

use bson::{Bson, Document, RawBsonRef, RawDocument, RawDocumentBuf};

/// The four bytes every archive starts with (uint32 `0x8199e26d`, little-endian).
pub const MAGIC: [u8; 4] = [0x6d, 0xe2, 0x99, 0x81];
/// Ends the prelude and every block: an int32 length of -1.
pub const TERMINATOR: [u8; 4] = [0xff, 0xff, 0xff, 0xff];
/// The archive format version written in the header (the only one mongo-tools knows).
pub const FORMAT_VERSION: &str = "0.1";
/// The largest BSON document the format (and the server) allows.
pub const MAX_BSON_SIZE: usize = 16 * 1024 * 1024;
/// The smallest BSON document: an empty one.
const MIN_BSON_SIZE: usize = 5;

/// What an archive error is about, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveError(pub String);

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArchiveError {}

type Result<T> = std::result::Result<T, ArchiveError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ArchiveError(msg.into()))
}

// ------------------------------------------------------------------------------ CRC-64 ------

/// CRC-64/XZ (ECMA-182 polynomial, reflected, init and final XOR all ones), the checksum the
/// archive keeps of each namespace's documents. Computed by the `crc` crate (`CRC_64_XZ`,
/// slice-by-16 tables) instead of a hand-written table; `crc64_check_value` pins the check value.
#[derive(Clone)]
pub struct Crc64(crc::Digest<'static, u64, crc::Table<16>>);

static CRC64_XZ: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);

impl Default for Crc64 {
    fn default() -> Self {
        Crc64(CRC64_XZ.digest())
    }
}

impl std::fmt::Debug for Crc64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Crc64").field(&self.value()).finish()
    }
}

impl Crc64 {
    /// Add bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The checksum of everything added so far.
    pub fn value(&self) -> u64 {
        self.0.clone().finalize()
    }
}

// ---------------------------------------------------------------------------- metadata ------

/// What kind of namespace a prelude entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A collection (`type` `""` or `"collection"`).
    Collection,
    /// A view (`type` `"view"`): no documents, recreated from its options.
    View,
    /// A time-series collection as mongodump writes it for servers before 8.3: its data is
    /// the bucket documents of `system.buckets.<name>`.
    Timeseries,
}

impl Kind {
    /// The value of the prelude's `type` field.
    pub fn as_prelude_type(self) -> &'static str {
        match self {
            Kind::Collection => "",
            Kind::View => "view",
            Kind::Timeseries => "timeseries",
        }
    }

    fn as_metadata_type(self) -> &'static str {
        match self {
            Kind::Collection => "collection",
            Kind::View => "view",
            Kind::Timeseries => "timeseries",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "" | "collection" => Some(Kind::Collection),
            "view" => Some(Kind::View),
            "timeseries" => Some(Kind::Timeseries),
            _ => None,
        }
    }
}

/// One namespace of the prelude: a collection or a view with its options and indexes.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionMeta {
    /// Database name.
    pub db: String,
    /// Collection or view name.
    pub collection: String,
    /// Collection, view or (mongodump's) time-series.
    pub kind: Kind,
    /// The `options` of `listCollections` (capped, size, max, validator, collation,
    /// clusteredIndex, timeseries, viewOn, pipeline...).
    pub options: Document,
    /// The index specifications of `listIndexes`, in the server's order.
    pub indexes: Vec<Document>,
    /// The collection's UUID as 32 hex digits, when the server reported one.
    pub uuid: Option<String>,
}

impl CollectionMeta {
    /// `db.collection`.
    pub fn namespace(&self) -> String {
        format!("{}.{}", self.db, self.collection)
    }

    /// The `metadata` string: canonical Extended JSON v2 of
    /// `{options, indexes, uuid, collectionName, type}` (what mongodump writes as
    /// `<collection>.metadata.json`). Field order inside options and index keys is kept.
    pub fn metadata_json(&self) -> String {
        let mut m = serde_json::Map::new();
        m.insert(
            "options".into(),
            Bson::Document(self.options.clone()).into_canonical_extjson(),
        );
        let indexes = self
            .indexes
            .iter()
            .map(|d| Bson::Document(d.clone()).into_canonical_extjson())
            .collect();
        m.insert("indexes".into(), serde_json::Value::Array(indexes));
        if let Some(uuid) = &self.uuid {
            m.insert("uuid".into(), serde_json::Value::String(uuid.clone()));
        }
        m.insert(
            "collectionName".into(),
            serde_json::Value::String(self.collection.clone()),
        );
        m.insert(
            "type".into(),
            serde_json::Value::String(self.kind.as_metadata_type().into()),
        );
        serde_json::Value::Object(m).to_string()
    }
}

/// Read a `metadata` string back: options, indexes and uuid.
pub fn parse_metadata_json(text: &str) -> Result<(Document, Vec<Document>, Option<String>)> {
    if text.is_empty() {
        return Ok((Document::new(), Vec::new(), None));
    }
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ArchiveError(format!("metadata is not valid JSON ({e})")))?;
    let serde_json::Value::Object(mut map) = value else {
        return err("metadata is not a JSON object");
    };
    let options = match map.remove("options") {
        None | Some(serde_json::Value::Null) => Document::new(),
        Some(v) => match Bson::try_from(v) {
            Ok(Bson::Document(d)) => d,
            Ok(_) => return err("metadata options are not a document"),
            Err(e) => {
                return err(format!(
                    "metadata options are not valid Extended JSON ({e})"
                ))
            }
        },
    };
    let indexes = match map.remove("indexes") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match Bson::try_from(item) {
                    Ok(Bson::Document(d)) => out.push(d),
                    Ok(_) => return err("a metadata index is not a document"),
                    Err(e) => {
                        return err(format!("a metadata index is not valid Extended JSON ({e})"))
                    }
                }
            }
            out
        }
        Some(_) => return err("metadata indexes are not an array"),
    };
    let uuid = match map.remove("uuid") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    Ok((options, indexes, uuid))
}

/// The archive header (the first document after the magic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Collections dumped concurrently (drkit writes 1).
    pub concurrent_collections: i32,
    /// Archive format version (`0.1`).
    pub version: String,
    /// Version of the server that was dumped.
    pub server_version: String,
    /// The tool that wrote the archive.
    pub tool_version: String,
}

// ------------------------------------------------------------------------------ writer ------

/// The header document: `{concurrent_collections: 1, version: "0.1", server_version,
/// tool_version}`.
pub fn header_doc(server_version: &str, tool_version: &str) -> Vec<u8> {
    let mut d = RawDocumentBuf::new();
    d.append("concurrent_collections", 1i32);
    d.append("version", FORMAT_VERSION);
    d.append("server_version", server_version);
    d.append("tool_version", tool_version);
    d.into_bytes()
}

/// A prelude entry: `{db, collection, metadata, size: 0, type}`.
pub fn metadata_doc(meta: &CollectionMeta) -> Vec<u8> {
    let mut d = RawDocumentBuf::new();
    d.append("db", meta.db.as_str());
    d.append("collection", meta.collection.as_str());
    d.append("metadata", meta.metadata_json());
    d.append("size", 0i32);
    d.append("type", meta.kind.as_prelude_type());
    d.into_bytes()
}

/// A namespace header: `{db, collection, EOF, CRC}`; the CRC is stored as the bit pattern of
/// the uint64 in an int64.
pub fn namespace_header(db: &str, collection: &str, eof: bool, crc: u64) -> Vec<u8> {
    let mut d = RawDocumentBuf::new();
    d.append("db", db);
    d.append("collection", collection);
    d.append("EOF", eof);
    d.append("CRC", crc as i64);
    d.into_bytes()
}

/// Everything before the first data block: magic, header, one entry per namespace, terminator.
pub fn prelude_bytes(
    server_version: &str,
    tool_version: &str,
    metas: &[CollectionMeta],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&header_doc(server_version, tool_version));
    for m in metas {
        out.extend_from_slice(&metadata_doc(m));
    }
    out.extend_from_slice(&TERMINATOR);
    out
}

/// The end of a namespace: its EOF header with the CRC of all its documents, and a terminator.
pub fn end_block(db: &str, collection: &str, crc: u64) -> Vec<u8> {
    let mut out = namespace_header(db, collection, true, crc);
    out.extend_from_slice(&TERMINATOR);
    out
}

// ------------------------------------------------------------------------------ reader ------

/// Check that `bytes` is one well-formed BSON document: its length, its final zero, and every
/// element down to the last nested one (lengths inside their parents, valid UTF-8 strings).
pub fn validate_document(bytes: &[u8]) -> Result<&RawDocument> {
    let doc = RawDocument::from_bytes(bytes)
        .map_err(|e| ArchiveError(format!("malformed BSON document ({e})")))?;
    validate_elements(doc, 0)?;
    Ok(doc)
}

fn validate_elements(doc: &RawDocument, depth: usize) -> Result<()> {
    if depth > 200 {
        return err("BSON document nested deeper than 200 levels");
    }
    for item in doc.iter() {
        let (_, value) =
            item.map_err(|e| ArchiveError(format!("malformed BSON document ({e})")))?;
        validate_value(value, depth)?;
    }
    Ok(())
}

fn validate_value(value: RawBsonRef<'_>, depth: usize) -> Result<()> {
    match value {
        RawBsonRef::Document(d) => validate_elements(d, depth + 1),
        RawBsonRef::Array(a) => {
            for item in a {
                let v = item.map_err(|e| ArchiveError(format!("malformed BSON array ({e})")))?;
                validate_value(v, depth + 1)?;
            }
            Ok(())
        }
        RawBsonRef::JavaScriptCodeWithScope(c) => validate_elements(c.scope, depth + 1),
        _ => Ok(()),
    }
}

/// The prelude of an archive: its header and namespaces.
#[derive(Debug, Clone, PartialEq)]
pub struct Prelude {
    /// The header document.
    pub header: Header,
    /// One entry per collection or view, in archive order.
    pub collections: Vec<CollectionMeta>,
}

/// What the [`Parser`] reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// The prelude is complete.
    Prelude(&'a Prelude),
    /// One document of namespace `ns` (an index into [`Prelude::collections`]), checked.
    Document {
        /// Index of the namespace in the prelude.
        ns: usize,
        /// The raw BSON bytes.
        bytes: &'a [u8],
    },
    /// Namespace `ns` ended and its CRC matched.
    End {
        /// Index of the namespace in the prelude (read by the tests; restore only needs
        /// the event).
        #[allow(dead_code)]
        ns: usize,
    },
}

/// Per-namespace totals seen by a [`Parser`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Documents.
    pub documents: u64,
    /// Bytes of documents.
    pub bytes: u64,
    /// Whether the namespace's end (EOF header) was seen.
    pub ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Magic,
    PreludeHeader,
    PreludeBody,
    BlockHeader,
    BlockBody,
    Failed,
}

/// A strict push parser of the archive format: feed it bytes as they come, it calls back with
/// checked [`Event`]s, and [`Parser::finish`] says whether the stream ended where it may.
/// Memory: one document (at most 16 MiB) plus the prelude.
pub struct Parser {
    phase: Phase,
    buf: Vec<u8>,
    want: usize,
    offset: u64,
    item_start: u64,
    header: Option<Header>,
    collections: Vec<CollectionMeta>,
    prelude: Option<Prelude>,
    index: HashMap<(String, String), usize>,
    counts: Vec<Counts>,
    crcs: Vec<Crc64>,
    current: usize,
    current_eof: bool,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new()
    }
}

impl Parser {
    /// A parser at the start of an archive.
    pub fn new() -> Self {
        Parser {
            phase: Phase::Magic,
            buf: Vec::new(),
            want: 4,
            offset: 0,
            item_start: 0,
            header: None,
            collections: Vec::new(),
            prelude: None,
            index: HashMap::new(),
            counts: Vec::new(),
            crcs: Vec::new(),
            current: 0,
            current_eof: false,
        }
    }

    /// The prelude, once read.
    pub fn prelude(&self) -> Option<&Prelude> {
        self.prelude.as_ref()
    }

    /// Totals per namespace (same order as the prelude).
    pub fn counts(&self) -> &[Counts] {
        &self.counts
    }

    /// Take the next bytes of the archive. Events are passed to `on` as soon as they are
    /// complete; an error from `on` stops the parser and is returned.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        on: &mut dyn FnMut(Event<'_>) -> std::result::Result<(), ArchiveError>,
    ) -> Result<()> {
        if self.phase == Phase::Failed {
            return err("the archive reader already failed");
        }
        while !input.is_empty() {
            let take = (self.want - self.buf.len()).min(input.len());
            self.buf.extend_from_slice(&input[..take]);
            input = &input[take..];
            self.offset += take as u64;
            if self.buf.len() < self.want {
                break;
            }
            if let Err(e) = self.item(on) {
                self.phase = Phase::Failed;
                return Err(e);
            }
        }
        Ok(())
    }

    /// The stream ended: fails when it ended inside an item, before the prelude was complete,
    /// or before every namespace's end.
    pub fn finish(&self) -> Result<()> {
        match self.phase {
            Phase::Failed => return err("the archive reader already failed"),
            Phase::Magic if self.offset == 0 => return err("the archive is empty"),
            Phase::Magic | Phase::PreludeHeader | Phase::PreludeBody => {
                return err(format!(
                    "the archive is truncated: it ends inside its prelude, after {} bytes",
                    self.offset
                ))
            }
            Phase::BlockBody => {
                return err(format!(
                    "the archive is truncated: it ends inside a block, after {} bytes",
                    self.offset
                ))
            }
            Phase::BlockHeader => {}
        }
        if !self.buf.is_empty() {
            return err(format!(
                "the archive is truncated: it ends inside an item that starts at byte {}",
                self.item_start
            ));
        }
        let missing: Vec<String> = self
            .collections
            .iter()
            .zip(&self.counts)
            .filter(|(_, c)| !c.ended)
            .map(|(m, _)| m.namespace())
            .collect();
        if !missing.is_empty() {
            return err(format!(
                "the archive is truncated: it ended before the end of {} namespace(s): {}",
                missing.len(),
                short_list(&missing)
            ));
        }
        Ok(())
    }

    /// One complete item is in `buf` (the magic, a length, or a whole document).
    fn item(
        &mut self,
        on: &mut dyn FnMut(Event<'_>) -> std::result::Result<(), ArchiveError>,
    ) -> Result<()> {
        if self.phase == Phase::Magic {
            if self.buf[..] != MAGIC {
                return err(format!(
                    "not a mongodump archive: it starts with {:02x} {:02x} {:02x} {:02x}, not the magic 6d e2 99 81",
                    self.buf[0], self.buf[1], self.buf[2], self.buf[3]
                ));
            }
            self.phase = Phase::PreludeHeader;
            self.next_item();
            return Ok(());
        }
        if self.want == 4 {
            let len = i32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            if len == -1 {
                return self.terminator(on);
            }
            if len < MIN_BSON_SIZE as i32 || len as usize > MAX_BSON_SIZE {
                return err(format!(
                    "corrupt archive: {len} at byte {} is neither a BSON length (5 to 16 MiB) nor a terminator",
                    self.item_start
                ));
            }
            self.want = len as usize;
            return Ok(());
        }
        let start = self.item_start;
        if self.buf[self.want - 1] != 0 {
            return err(format!(
                "corrupt archive: the BSON document at byte {start} does not end with a zero byte"
            ));
        }
        let buf = std::mem::take(&mut self.buf);
        let result = validate_document(&buf)
            .map_err(|e| {
                ArchiveError(format!(
                    "corrupt archive: the document at byte {start}: {e}"
                ))
            })
            .and_then(|doc| self.document(doc, on));
        self.buf = buf;
        self.next_item();
        result
    }

    fn next_item(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > 1024 * 1024 {
            self.buf.shrink_to(64 * 1024);
        }
        self.want = 4;
        self.item_start = self.offset;
    }

    fn terminator(
        &mut self,
        on: &mut dyn FnMut(Event<'_>) -> std::result::Result<(), ArchiveError>,
    ) -> Result<()> {
        let at = self.item_start;
        self.next_item();
        match self.phase {
            Phase::PreludeHeader => err(format!(
                "corrupt archive: a terminator at byte {at} where the header belongs"
            )),
            Phase::PreludeBody => {
                let header = self
                    .header
                    .clone()
                    .expect("header read before the prelude body");
                self.prelude = Some(Prelude {
                    header,
                    collections: self.collections.clone(),
                });
                self.phase = Phase::BlockHeader;
                on(Event::Prelude(self.prelude.as_ref().expect("just set")))
            }
            Phase::BlockHeader => err(format!(
                "corrupt archive: two terminators in a row at byte {at} (a block without a header)"
            )),
            Phase::BlockBody => {
                self.phase = Phase::BlockHeader;
                if self.current_eof {
                    self.counts[self.current].ended = true;
                    on(Event::End { ns: self.current })?;
                }
                Ok(())
            }
            Phase::Magic | Phase::Failed => err("internal: terminator in a wrong state"),
        }
    }

    fn document(
        &mut self,
        doc: &RawDocument,
        on: &mut dyn FnMut(Event<'_>) -> std::result::Result<(), ArchiveError>,
    ) -> Result<()> {
        let at = self.item_start;
        match self.phase {
            Phase::PreludeHeader => {
                self.header = Some(
                    parse_header(doc)
                        .map_err(|e| ArchiveError(format!("corrupt archive header: {e}")))?,
                );
                self.phase = Phase::PreludeBody;
                Ok(())
            }
            Phase::PreludeBody => {
                let meta = parse_metadata_doc(doc).map_err(|e| {
                    ArchiveError(format!("corrupt archive prelude (entry at byte {at}): {e}"))
                })?;
                let key = (meta.db.clone(), meta.collection.clone());
                if self.index.contains_key(&key) {
                    return err(format!(
                        "corrupt archive prelude: namespace {} is listed twice",
                        meta.namespace()
                    ));
                }
                self.index.insert(key, self.collections.len());
                self.collections.push(meta);
                self.counts.push(Counts::default());
                self.crcs.push(Crc64::default());
                Ok(())
            }
            Phase::BlockHeader => {
                let (db, coll, eof, crc) = parse_namespace_header(doc).map_err(|e| {
                    ArchiveError(format!(
                        "corrupt archive: the block header at byte {at}: {e}"
                    ))
                })?;
                let ns = self.lookup(&db, &coll).ok_or_else(|| {
                    ArchiveError(format!(
                        "corrupt archive: a block at byte {at} is for {db}.{coll}, which the prelude does not list"
                    ))
                })?;
                if self.counts[ns].ended {
                    return err(format!(
                        "corrupt archive: a block at byte {at} for {db}.{coll} comes after its end"
                    ));
                }
                if eof {
                    let got = self.crcs[ns].value();
                    let got = if self.counts[ns].documents == 0 {
                        0
                    } else {
                        got
                    };
                    if crc as u64 != got {
                        return err(format!(
                            "corrupt archive: the CRC of {db}.{coll} is {got:016x}, its end header says {:016x}",
                            crc as u64
                        ));
                    }
                } else if crc != 0 {
                    return err(format!(
                        "corrupt archive: the data block header at byte {at} has CRC {crc}, not 0"
                    ));
                }
                self.current = ns;
                self.current_eof = eof;
                self.phase = Phase::BlockBody;
                Ok(())
            }
            Phase::BlockBody => {
                if self.current_eof {
                    let ns = self.collections[self.current].namespace();
                    return err(format!(
                        "corrupt archive: a document at byte {at} follows the end header of {ns}"
                    ));
                }
                let bytes = doc.as_bytes();
                let ns = self.current;
                self.crcs[ns].update(bytes);
                self.counts[ns].documents += 1;
                self.counts[ns].bytes += bytes.len() as u64;
                on(Event::Document { ns, bytes })
            }
            Phase::Magic | Phase::Failed => err("internal: document in a wrong state"),
        }
    }

    /// The prelude entry a block is for: the namespace itself, or for mongodump's time-series
    /// collections (before MongoDB 8.3), `system.buckets.<name>` of a `timeseries` entry.
    fn lookup(&self, db: &str, coll: &str) -> Option<usize> {
        if let Some(&i) = self.index.get(&(db.to_string(), coll.to_string())) {
            return Some(i);
        }
        let name = coll.strip_prefix("system.buckets.")?;
        let &i = self.index.get(&(db.to_string(), name.to_string()))?;
        (self.collections[i].kind == Kind::Timeseries).then_some(i)
    }
}

fn short_list(items: &[String]) -> String {
    if items.len() <= 5 {
        items.join(", ")
    } else {
        format!("{}, ... ({} more)", items[..5].join(", "), items.len() - 5)
    }
}

fn get_str<'a>(doc: &'a RawDocument, key: &str) -> Result<&'a str> {
    match doc.get(key) {
        Ok(Some(RawBsonRef::String(s))) => Ok(s),
        Ok(Some(_)) => err(format!("field {key:?} is not a string")),
        Ok(None) => err(format!("field {key:?} is missing")),
        Err(e) => err(format!("field {key:?} cannot be read ({e})")),
    }
}

fn parse_header(doc: &RawDocument) -> Result<Header> {
    let concurrent_collections = match doc.get("concurrent_collections") {
        Ok(Some(RawBsonRef::Int32(n))) => n,
        Ok(Some(_)) => return err("field \"concurrent_collections\" is not an int32"),
        _ => return err("field \"concurrent_collections\" is missing"),
    };
    let version = get_str(doc, "version")?.to_string();
    if version != FORMAT_VERSION {
        return err(format!(
            "archive format version {version:?} is not supported (only {FORMAT_VERSION:?})"
        ));
    }
    Ok(Header {
        concurrent_collections,
        version,
        server_version: get_str(doc, "server_version")?.to_string(),
        tool_version: get_str(doc, "tool_version")?.to_string(),
    })
}

fn parse_metadata_doc(doc: &RawDocument) -> Result<CollectionMeta> {
    let db = get_str(doc, "db")?.to_string();
    let collection = get_str(doc, "collection")?.to_string();
    if db.is_empty() || collection.is_empty() {
        return err("an empty database or collection name");
    }
    let metadata = get_str(doc, "metadata")?;
    match doc.get("size") {
        Ok(Some(RawBsonRef::Int32(_) | RawBsonRef::Int64(_))) => {}
        Ok(Some(_)) => return err("field \"size\" is not an integer"),
        _ => return err("field \"size\" is missing"),
    }
    let kind = match doc.get("type") {
        Ok(None) => Kind::Collection,
        Ok(Some(RawBsonRef::String(s))) => {
            Kind::parse(s).ok_or_else(|| ArchiveError(format!("unknown namespace type {s:?}")))?
        }
        _ => return err("field \"type\" is not a string"),
    };
    let (options, indexes, uuid) = parse_metadata_json(metadata)?;
    Ok(CollectionMeta {
        db,
        collection,
        kind,
        options,
        indexes,
        uuid,
    })
}

fn parse_namespace_header(doc: &RawDocument) -> Result<(String, String, bool, i64)> {
    let mut fields = Vec::with_capacity(4);
    for item in doc.iter() {
        let (k, v) = item.map_err(|e| ArchiveError(e.to_string()))?;
        fields.push((k, v));
    }
    match fields.as_slice() {
        [("db", RawBsonRef::String(db)), ("collection", RawBsonRef::String(coll)), ("EOF", RawBsonRef::Boolean(eof)), ("CRC", RawBsonRef::Int64(crc))] => {
            Ok((db.to_string(), coll.to_string(), *eof, *crc))
        }
        _ => {
            let names: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
            err(format!(
                "it must be exactly {{db: string, collection: string, EOF: bool, CRC: int64}}, it has fields {names:?}"
            ))
        }
    }
}

// ------------------------------------------------------------------------------- tests -------

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    // Hand-built BSON, byte by byte from the BSON spec, to pin the writer's layout.
    fn cstring(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }
    fn el_string(key: &str, val: &str) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend(cstring(key));
        v.extend(((val.len() + 1) as i32).to_le_bytes());
        v.extend(cstring(val));
        v
    }
    fn el_i32(key: &str, val: i32) -> Vec<u8> {
        let mut v = vec![0x10];
        v.extend(cstring(key));
        v.extend(val.to_le_bytes());
        v
    }
    fn el_i64(key: &str, val: i64) -> Vec<u8> {
        let mut v = vec![0x12];
        v.extend(cstring(key));
        v.extend(val.to_le_bytes());
        v
    }
    fn el_bool(key: &str, val: bool) -> Vec<u8> {
        let mut v = vec![0x08];
        v.extend(cstring(key));
        v.push(val as u8);
        v
    }
    fn bson_doc(elements: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = elements.concat();
        let mut v = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        v.extend(body);
        v.push(0);
        v
    }
    fn ns_header(db: &str, coll: &str, eof: bool, crc: i64) -> Vec<u8> {
        bson_doc(&[
            el_string("db", db),
            el_string("collection", coll),
            el_bool("EOF", eof),
            el_i64("CRC", crc),
        ])
    }

    fn meta(db: &str, coll: &str, kind: Kind) -> CollectionMeta {
        CollectionMeta {
            db: db.into(),
            collection: coll.into(),
            kind,
            options: Document::new(),
            indexes: vec![doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}],
            uuid: Some("00112233445566778899aabbccddeeff".into()),
        }
    }

    /// A complete archive built by hand: db `app`, collection `c` with documents `docs`
    /// (in two blocks when there are two or more), and view `v`.
    fn hand_archive(docs: &[Vec<u8>]) -> Vec<u8> {
        let mut a = vec![0x6d, 0xe2, 0x99, 0x81];
        a.extend(bson_doc(&[
            el_i32("concurrent_collections", 1),
            el_string("version", "0.1"),
            el_string("server_version", "7.0.0"),
            el_string("tool_version", "hand"),
        ]));
        let c_meta = r#"{"options":{},"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"}],"collectionName":"c","type":"collection"}"#;
        a.extend(bson_doc(&[
            el_string("db", "app"),
            el_string("collection", "c"),
            el_string("metadata", c_meta),
            el_i32("size", 0),
            el_string("type", ""),
        ]));
        let v_meta = r#"{"options":{"viewOn":"c","pipeline":[]},"indexes":[],"collectionName":"v","type":"view"}"#;
        a.extend(bson_doc(&[
            el_string("db", "app"),
            el_string("collection", "v"),
            el_string("metadata", v_meta),
            el_i32("size", 0),
            el_string("type", "view"),
        ]));
        a.extend([0xff; 4]);
        let mut crc = Crc64::default();
        let split = docs.len() / 2;
        for part in [&docs[..split], &docs[split..]] {
            if part.is_empty() {
                continue;
            }
            a.extend(ns_header("app", "c", false, 0));
            for d in part {
                crc.update(d);
                a.extend(d);
            }
            a.extend([0xff; 4]);
        }
        let c_crc = if docs.is_empty() {
            0
        } else {
            crc.value() as i64
        };
        a.extend(ns_header("app", "c", true, c_crc));
        a.extend([0xff; 4]);
        a.extend(ns_header("app", "v", true, 0));
        a.extend([0xff; 4]);
        a
    }

    fn sample_docs() -> Vec<Vec<u8>> {
        vec![
            bson_doc(&[el_i32("_id", 1), el_string("s", "one")]),
            bson_doc(&[el_i32("_id", 2), el_i64("n", -7)]),
            bson_doc(&[el_i32("_id", 3)]),
        ]
    }

    #[derive(Debug, PartialEq)]
    enum Seen {
        Prelude(Vec<String>),
        Doc(usize, Vec<u8>),
        End(usize),
    }

    fn parse_in_chunks(bytes: &[u8], chunk: usize) -> Result<(Vec<Seen>, Parser)> {
        let mut p = Parser::new();
        let mut seen = Vec::new();
        for part in bytes.chunks(chunk.max(1)) {
            p.feed(part, &mut |e| {
                seen.push(match e {
                    Event::Prelude(pr) => {
                        Seen::Prelude(pr.collections.iter().map(|m| m.namespace()).collect())
                    }
                    Event::Document { ns, bytes } => Seen::Doc(ns, bytes.to_vec()),
                    Event::End { ns } => Seen::End(ns),
                });
                Ok(())
            })?;
        }
        p.finish()?;
        Ok((seen, p))
    }

    #[test]
    fn crc64_check_value() {
        let mut c = Crc64::default();
        c.update(b"123456789");
        assert_eq!(c.value(), 0x995d_c9bb_df19_39fa);
        let mut split = Crc64::default();
        split.update(b"1234");
        split.update(b"56789");
        assert_eq!(split.value(), c.value());
        assert_eq!(Crc64::default().value(), 0);
    }

    #[test]
    fn writer_matches_hand_built_layout() {
        assert_eq!(
            header_doc("7.0.0", "hand"),
            bson_doc(&[
                el_i32("concurrent_collections", 1),
                el_string("version", "0.1"),
                el_string("server_version", "7.0.0"),
                el_string("tool_version", "hand"),
            ])
        );
        assert_eq!(
            namespace_header("app", "c", false, 0),
            ns_header("app", "c", false, 0)
        );
        let crc = 0x995d_c9bb_df19_39fa_u64;
        assert_eq!(
            namespace_header("app", "c", true, crc),
            ns_header("app", "c", true, crc as i64)
        );
        // The bit pattern, not a conversion: this CRC is negative as an int64.
        assert!((crc as i64) < 0);
        let m = meta("app", "c", Kind::Collection);
        let json = m.metadata_json();
        assert_eq!(
            json,
            r#"{"options":{},"indexes":[{"v":{"$numberInt":"2"},"key":{"_id":{"$numberInt":"1"}},"name":"_id_"}],"uuid":"00112233445566778899aabbccddeeff","collectionName":"c","type":"collection"}"#
        );
        assert_eq!(
            metadata_doc(&m),
            bson_doc(&[
                el_string("db", "app"),
                el_string("collection", "c"),
                el_string("metadata", &json),
                el_i32("size", 0),
                el_string("type", ""),
            ])
        );
        assert_eq!(
            end_block("app", "c", 5),
            [ns_header("app", "c", true, 5), vec![0xff; 4]].concat()
        );
        let p = prelude_bytes("7.0.0", "hand", std::slice::from_ref(&m));
        assert_eq!(&p[..4], &[0x6d, 0xe2, 0x99, 0x81]);
        assert_eq!(&p[p.len() - 4..], &[0xff; 4]);
    }

    #[test]
    fn reads_hand_built_archive_in_any_chunking() {
        let docs = sample_docs();
        let archive = hand_archive(&docs);
        for chunk in [1, 3, 7, 64, archive.len()] {
            let (seen, p) = parse_in_chunks(&archive, chunk).unwrap();
            assert_eq!(
                seen,
                vec![
                    Seen::Prelude(vec!["app.c".into(), "app.v".into()]),
                    Seen::Doc(0, docs[0].clone()),
                    Seen::Doc(0, docs[1].clone()),
                    Seen::Doc(0, docs[2].clone()),
                    Seen::End(0),
                    Seen::End(1),
                ],
                "chunk {chunk}"
            );
            let pr = p.prelude().unwrap();
            assert_eq!(pr.header.server_version, "7.0.0");
            assert_eq!(pr.collections[1].kind, Kind::View);
            assert_eq!(
                pr.collections[1].options,
                doc! {"viewOn": "c", "pipeline": []}
            );
            assert_eq!(
                pr.collections[0].indexes,
                vec![doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}]
            );
            let total: u64 = docs.iter().map(|d| d.len() as u64).sum();
            assert_eq!(
                p.counts()[0],
                Counts {
                    documents: 3,
                    bytes: total,
                    ended: true
                }
            );
        }
        // An empty collection: only its end, CRC 0.
        let (seen, _) = parse_in_chunks(&hand_archive(&[]), 5).unwrap();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn writer_and_reader_round_trip() {
        let mut m = meta("shop", "orders", Kind::Collection);
        m.options = doc! {"capped": true, "size": 4096_i64, "max": 10, "validator": {"$jsonSchema": {"required": ["a", "b"]}}, "collation": {"locale": "fr", "strength": 2}};
        m.indexes.push(doc! {"v": 2, "key": {"b": 1, "a": -1, "c": 1}, "name": "b_a_c", "unique": true, "partialFilterExpression": {"n": {"$gt": 5.5}}, "expireAfterSeconds": 3600_i64});
        let view = CollectionMeta {
            options: doc! {"viewOn": "orders", "pipeline": [{"$match": {"x": bson::Regex { pattern: "^a".into(), options: "i".into() }, "d": bson::DateTime::from_millis(-5), "n": 1.0e300}}]},
            indexes: vec![],
            uuid: None,
            ..meta("shop", "big_orders", Kind::View)
        };
        let docs: Vec<Vec<u8>> = (0..50)
            .map(|i| bson::to_vec(&doc! {"_id": i, "t": bson::Timestamp { time: 7, increment: i as u32 }, "d": bson::Decimal128::from_bytes([i as u8; 16])}).unwrap())
            .collect();
        let mut a = prelude_bytes("8.0.1", "drkit test", &[m.clone(), view.clone()]);
        let mut crc = Crc64::default();
        for block in docs.chunks(20) {
            a.extend(namespace_header("shop", "orders", false, 0));
            for d in block {
                crc.update(d);
                a.extend(d);
            }
            a.extend(TERMINATOR);
        }
        a.extend(end_block("shop", "orders", crc.value()));
        a.extend(end_block("shop", "big_orders", 0));
        let (seen, p) = parse_in_chunks(&a, 4096).unwrap();
        let read: Vec<Vec<u8>> = seen
            .into_iter()
            .filter_map(|s| match s {
                Seen::Doc(0, b) => Some(b),
                _ => None,
            })
            .collect();
        assert_eq!(read, docs);
        let pr = p.prelude().unwrap();
        assert_eq!(pr.collections, vec![m, view]);
        // Key order of a compound index survives the JSON metadata.
        let keys: Vec<&String> = pr.collections[0].indexes[1]
            .get_document("key")
            .unwrap()
            .keys()
            .collect();
        assert_eq!(keys, ["b", "a", "c"]);
    }

    fn expect_error(bytes: &[u8], want: &str) {
        let got = parse_in_chunks(bytes, 13).map(|_| ()).unwrap_err();
        assert!(
            got.0.contains(want),
            "expected an error containing {want:?}, got {got}"
        );
    }

    #[test]
    fn strict_reader_rejects_corruption() {
        let docs = sample_docs();
        let good = hand_archive(&docs);
        let prelude_end = {
            // The first data block header follows the prelude's terminator.
            let header = ns_header("app", "c", false, 0);
            good.windows(header.len())
                .position(|w| w == header.as_slice())
                .unwrap()
        };
        let first_doc = prelude_end + ns_header("app", "c", false, 0).len();

        let mut bad_magic = good.clone();
        bad_magic[0] = 0x6e;
        expect_error(&bad_magic, "not a mongodump archive");
        expect_error(&[], "empty");
        expect_error(&good[..2], "truncated");
        expect_error(&good[..prelude_end - 2], "inside its prelude");
        expect_error(&good[..first_doc + 3], "truncated");
        expect_error(&good[..good.len() - 4], "truncated");
        // The view's end header and terminator missing: the archive ends early.
        let view_end = ns_header("app", "v", true, 0).len() + 4;
        expect_error(
            &good[..good.len() - view_end],
            "before the end of 1 namespace(s): app.v",
        );

        // A length that is neither a BSON size nor a terminator.
        let mut bad_len = good.clone();
        bad_len[first_doc..first_doc + 4].copy_from_slice(&3i32.to_le_bytes());
        expect_error(&bad_len, "neither a BSON length");
        let mut huge = good.clone();
        huge[first_doc..first_doc + 4].copy_from_slice(&(17 * 1024 * 1024i32).to_le_bytes());
        expect_error(&huge, "neither a BSON length");
        // A document whose inner element runs past the document: string length too long.
        let mut runs_past = good.clone();
        let s_len_at = first_doc + 4 + 1 + 4 + 4 + 1 + 2; // after _id int32, "s" string length
        runs_past[s_len_at..s_len_at + 4].copy_from_slice(&100i32.to_le_bytes());
        expect_error(&runs_past, "malformed BSON");
        // A document that does not end with 0.
        let mut no_zero = good.clone();
        let d0_end = first_doc + docs[0].len() - 1;
        no_zero[d0_end] = 7;
        expect_error(&no_zero, "does not end with a zero byte");
        // Data changed: the CRC of the end header no longer matches.
        let mut flipped = good.clone();
        flipped[first_doc + docs[0].len() - 3] ^= 0x01; // inside the string "one"
        expect_error(&flipped, "CRC");

        // Two terminators in a row.
        let mut two_terms = good[..prelude_end].to_vec();
        two_terms.extend([0xff; 4]);
        two_terms.extend(&good[prelude_end..]);
        expect_error(&two_terms, "two terminators");
        // A block for a namespace not in the prelude.
        let mut unknown = good[..prelude_end].to_vec();
        unknown.extend(ns_header("app", "zzz", false, 0));
        unknown.extend(&docs[0]);
        unknown.extend([0xff; 4]);
        expect_error(&unknown, "does not list");
        // A header with an extra field, or the CRC as an int32.
        let mut extra = good[..prelude_end].to_vec();
        extra.extend(bson_doc(&[
            el_string("db", "app"),
            el_string("collection", "c"),
            el_bool("EOF", false),
            el_i64("CRC", 0),
            el_i32("x", 1),
        ]));
        expect_error(&extra, "exactly");
        let mut crc32 = good[..prelude_end].to_vec();
        crc32.extend(bson_doc(&[
            el_string("db", "app"),
            el_string("collection", "c"),
            el_bool("EOF", false),
            el_i32("CRC", 0),
        ]));
        expect_error(&crc32, "exactly");
        // Data after a namespace's end.
        let mut after_end = good.clone();
        after_end.extend(ns_header("app", "c", false, 0));
        after_end.extend(&docs[0]);
        after_end.extend([0xff; 4]);
        expect_error(&after_end, "after its end");
        // A header of an unknown format version.
        let mut v2 = good.clone();
        let at = v2.windows(4).position(|w| w == b"0.1\0").unwrap();
        v2[at..at + 3].copy_from_slice(b"9.9");
        expect_error(&v2, "not supported");
        // Metadata that is not JSON.
        let mut bad_json = good.clone();
        let at = bad_json
            .windows(10)
            .position(|w| w == br#"{"options""#)
            .unwrap();
        bad_json[at] = b'[';
        expect_error(&bad_json, "metadata");
    }

    #[test]
    fn reader_stops_after_an_error() {
        let mut p = Parser::new();
        assert!(p.feed(&[1, 2, 3, 4], &mut |_| Ok(())).is_err());
        assert!(p.feed(&[0x6d, 0xe2, 0x99, 0x81], &mut |_| Ok(())).is_err());
        assert!(p.finish().is_err());
    }

    #[test]
    fn timeseries_buckets_map_to_their_collection() {
        let mut a = prelude_bytes("7.0.0", "t", &[meta("app", "ts", Kind::Timeseries)]);
        let d = bson_doc(&[el_i32("_id", 1)]);
        let mut crc = Crc64::default();
        crc.update(&d);
        a.extend(namespace_header("app", "system.buckets.ts", false, 0));
        a.extend(&d);
        a.extend(TERMINATOR);
        a.extend(end_block("app", "system.buckets.ts", crc.value()));
        let (seen, _) = parse_in_chunks(&a, 10).unwrap();
        assert_eq!(seen[1], Seen::Doc(0, d));
        assert_eq!(seen[2], Seen::End(0));
    }
}
