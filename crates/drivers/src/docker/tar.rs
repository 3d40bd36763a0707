//! A streaming reader of the tar archives the Engine's archive endpoint produces and accepts.
//!
//! It never buffers file contents: it walks the headers as the bytes go by, counts entries,
//! computes a content digest, and (on restore) refuses entries that would land outside the
//! volume. It parses headers the way Go's `archive/tar` (which the Engine uses to extract)
//! does, so that what it checks is what the Engine writes: content lengths of header-only
//! types are ignored, PAX global headers are not applied, GNU long names are.

use std::collections::{BTreeMap, HashSet};

use sha2::{Digest as _, Sha256};

/// The algorithm of a content digest (`stats.digest`), named by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestAlgo {
    /// `blake3:`: what new backups record (one pass of BLAKE3 is several times cheaper than
    /// SHA-256 on the machines drkit runs on, and as collision-resistant for this use).
    #[default]
    Blake3,
    /// `sha256:`: what backups recorded before; kept so that their manifests still verify.
    Sha256,
}

impl DigestAlgo {
    /// The algorithm a recorded digest names (`"blake3:..."`, `"sha256:..."`); `None` for
    /// anything else (a manifest is hostile input: the caller says so).
    pub fn of(digest: &str) -> Option<DigestAlgo> {
        if digest.starts_with("blake3:") {
            Some(DigestAlgo::Blake3)
        } else if digest.starts_with("sha256:") {
            Some(DigestAlgo::Sha256)
        } else {
            None
        }
    }

    /// The prefix it writes (`blake3`, `sha256`).
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgo::Blake3 => "blake3",
            DigestAlgo::Sha256 => "sha256",
        }
    }
}

/// The running content digest.
enum Hasher {
    Blake3(Box<blake3::Hasher>),
    Sha256(Sha256),
}

impl Hasher {
    fn new(algo: DigestAlgo) -> Hasher {
        match algo {
            DigestAlgo::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            DigestAlgo::Sha256 => Hasher::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: impl AsRef<[u8]>) {
        match self {
            Hasher::Blake3(h) => {
                h.update(bytes.as_ref());
            }
            Hasher::Sha256(h) => h.update(bytes.as_ref()),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Blake3(h) => format!("blake3:{}", h.finalize().to_hex()),
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
        }
    }
}

const BLOCK: usize = 512;
/// Largest PAX or GNU long-name block accepted (Go's reader caps these at 1 MiB too).
const MAX_META: u64 = 1 << 20;
/// Examples of problems kept for warnings.
const MAX_EXAMPLES: usize = 5;

/// Whether problems stop the stream (restore) or are only recorded (backup).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Record problems as warnings; never fail on them (the archive comes from the engine).
    Observe,
    /// Refuse the whole archive at the first entry that could land outside the volume.
    Enforce,
}

/// What the archive holds: the manifest's `stats` for a docker volume.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarStats {
    /// Entries other than the volume's root directory.
    pub entries: u64,
    /// Regular files.
    pub files: u64,
    /// Directories (not counting the root).
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links (to a file earlier in the archive).
    pub hardlinks: u64,
    /// Devices, FIFOs.
    pub other: u64,
    /// Bytes of regular file content.
    pub bytes: u64,
    /// `blake3:` (older backups: `sha256:`) of every entry's path, type, mode, owner, mtime,
    /// link target, xattrs and
    /// content, in archive order: equal digests mean equal volume contents.
    pub digest: String,
}

impl TarStats {
    /// The stats as manifest JSON, with `empty` set when the volume holds nothing.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "entries": self.entries,
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "hardlinks": self.hardlinks,
            "other": self.other,
            "bytes": self.bytes,
            "digest": self.digest,
            "empty": self.entries == 0,
        })
    }
}

/// A problem with one entry: why it would land outside the volume (or is not allowed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsafe {
    /// The entry's path as the archive names it.
    pub path: String,
    /// Why it is refused.
    pub reason: String,
}

impl std::fmt::Display for Unsafe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "entry {:?} {}", self.path, self.reason)
    }
}

/// Why a stream is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarError {
    /// Not a tar archive, or a corrupt one (bad checksum, truncated).
    Malformed(String),
    /// An entry that would land outside the volume, or that is not allowed in a volume.
    Unsafe(Unsafe),
    /// The [`Sink`] fed by [`Scanner::feed_to`] failed (a write of the direct restore).
    Sink(String),
}

/// One entry, as a [`Sink`] sees it: only entries the policy accepted (in
/// [`Mode::Enforce`]) reach it, with their path already normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryView<'a> {
    /// `b'0'` (also for type NUL and `7`), `b'1'`, `b'2'`, `b'5'`, `b'6'`.
    pub typeflag: u8,
    /// The normalized path (`""` for the root; no `./`, no `..`, no trailing `/`).
    pub path: &'a str,
    /// A hard link's target, normalized; a symbolic link's target as written.
    pub link: &'a [u8],
    /// Permission bits (with setuid, setgid and sticky).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, whole seconds.
    pub mtime: i64,
    /// Content bytes that follow (regular files).
    pub size: u64,
    /// PAX extended attributes (`SCHILY.xattr.NAME`), sorted.
    pub xattrs: &'a [(String, Vec<u8>)],
}

/// Where [`Scanner::feed_to`] hands what it accepted: each entry, then its content.
pub trait Sink {
    /// An accepted entry; its `size` content bytes follow through [`Sink::data`].
    fn entry(&mut self, e: &EntryView<'_>) -> Result<(), String>;
    /// The next content bytes of the last entry.
    fn data(&mut self, bytes: &[u8]) -> Result<(), String>;
}

impl std::fmt::Display for TarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TarError::Malformed(m) => write!(f, "not a valid tar archive: {m}"),
            TarError::Unsafe(u) => write!(f, "unsafe archive: {u}"),
            TarError::Sink(m) => write!(f, "{m}"),
        }
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a 512-byte header.
    Header,
    /// Reading a PAX or GNU long-name body.
    Meta {
        kind: u8,
        remaining: u64,
        padding: u64,
    },
    /// File content: passed through and hashed.
    Content { remaining: u64, padding: u64 },
    /// After the end-of-archive zero block.
    End,
}

#[derive(Debug, Default)]
struct Pending {
    pax: BTreeMap<String, Vec<u8>>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

/// The streaming scanner. Feed it every byte of the archive in order.
pub struct Scanner {
    mode: Mode,
    state: State,
    block: Vec<u8>,
    meta: Vec<u8>,
    pending: Pending,
    /// Header bytes not yet released (Enforce mode releases an entry's headers once checked).
    held: Vec<u8>,
    hasher: Hasher,
    stats: TarStats,
    symlinks: HashSet<String>,
    crossed: HashSet<String>,
    problems: u64,
    examples: Vec<Unsafe>,
    root_seen: bool,
    root: Option<RootMeta>,
    watch: Option<Watched>,
}

/// What a scan found at one path ([`Scanner::watch`]): whether any entry is at or under it,
/// and the content bytes of the regular files among them (hard links and symbolic links
/// count nothing: a link is never followed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// The path, normalized (`""` for the whole archive).
    pub path: String,
    /// Whether an entry is at or under the path.
    pub found: bool,
    /// Bytes of regular file content at or under the path.
    pub bytes: u64,
}

impl Watched {
    fn covers(&self, normalized: &str) -> bool {
        self.path.is_empty()
            || normalized
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// The volume root's own metadata, from the archive's `./` entry. The engine's archive
/// endpoint ignores that entry on extraction, so drkit applies it separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootMeta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: u64,
}

impl Scanner {
    /// A scanner in `mode`, with a BLAKE3 content digest (what new backups record).
    pub fn new(mode: Mode) -> Self {
        Self::with_digest(mode, DigestAlgo::Blake3)
    }

    /// A scanner in `mode` computing the content digest with `algo` (to compare with a
    /// recorded digest of that algorithm).
    pub fn with_digest(mode: Mode, algo: DigestAlgo) -> Self {
        Scanner {
            mode,
            state: State::Header,
            block: Vec::with_capacity(BLOCK),
            meta: Vec::new(),
            pending: Pending::default(),
            held: Vec::new(),
            hasher: Hasher::new(algo),
            stats: TarStats::default(),
            symlinks: HashSet::new(),
            crossed: HashSet::new(),
            problems: 0,
            examples: Vec::new(),
            root_seen: false,
            root: None,
            watch: None,
        }
    }

    /// Also sum the entries at or under `path` (a normalized archive path, `""` for all):
    /// see [`Finished::watched`].
    pub fn watch(mut self, path: &str) -> Self {
        self.watch = Some(Watched {
            path: path.to_string(),
            ..Default::default()
        });
        self
    }

    /// Feed bytes; in [`Mode::Enforce`], the bytes that are safe to pass on are appended to
    /// `out` (an entry's headers are held back until the entry is checked).
    pub fn feed(&mut self, input: &[u8], out: Option<&mut Vec<u8>>) -> Result<(), TarError> {
        self.feed_inner(input, out, None)
    }

    /// Feed bytes, handing every entry the policy accepts, and its content, to `sink` (the
    /// direct restore): in [`Mode::Enforce`] a refused entry stops the stream before `sink`
    /// sees it.
    pub fn feed_to(&mut self, input: &[u8], sink: &mut dyn Sink) -> Result<(), TarError> {
        if self.mode != Mode::Enforce {
            // Observe lets refused entries through: never into a sink that writes them.
            return Err(TarError::Sink(
                "a scanner that only observes cannot feed an extraction".into(),
            ));
        }
        self.feed_inner(input, None, Some(sink))
    }

    fn feed_inner(
        &mut self,
        mut input: &[u8],
        mut out: Option<&mut Vec<u8>>,
        mut sink: Option<&mut dyn Sink>,
    ) -> Result<(), TarError> {
        while !input.is_empty() {
            let taken = match self.state {
                State::Header => self.take_header(input, out.as_deref_mut(), &mut sink)?,
                State::Meta { .. } => self.take_meta(input)?,
                State::Content { .. } => self.take_content(input, out.as_deref_mut(), &mut sink)?,
                State::End => {
                    // Whatever follows the end marker is never extracted; pass it on.
                    if let Some(o) = out.as_deref_mut() {
                        o.extend_from_slice(input);
                    }
                    input.len()
                }
            };
            input = &input[taken..];
        }
        Ok(())
    }

    /// Collect header bytes. A whole block is parsed; the header bytes held so far are
    /// released once no PAX or GNU long-name header waits for its entry. Returns the bytes
    /// taken from `input`.
    fn take_header(
        &mut self,
        input: &[u8],
        out: Option<&mut Vec<u8>>,
        sink: &mut Option<&mut dyn Sink>,
    ) -> Result<usize, TarError> {
        let take = (BLOCK - self.block.len()).min(input.len());
        self.block.extend_from_slice(&input[..take]);
        if self.block.len() == BLOCK {
            let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
            self.held.extend_from_slice(&block);
            self.header(&block, sink)?;
            if self.pending_is_clear() {
                match out {
                    Some(o) => o.append(&mut self.held),
                    None => self.held.clear(),
                }
            }
        }
        Ok(take)
    }

    /// Collect a PAX or GNU long-name body, held back with the headers of its entry.
    fn take_meta(&mut self, input: &[u8]) -> Result<usize, TarError> {
        let State::Meta {
            kind,
            remaining,
            padding,
        } = &mut self.state
        else {
            unreachable!("take_meta runs in State::Meta");
        };
        let (take, data) = take_body(input.len(), remaining, padding);
        let (kind, done) = (*kind, *remaining == 0 && *padding == 0);
        self.meta.extend_from_slice(&input[..data]);
        self.held.extend_from_slice(&input[..take]);
        if done {
            let body = std::mem::take(&mut self.meta);
            self.meta_done(kind, body)?;
            self.state = State::Header;
        }
        Ok(take)
    }

    /// Pass file content through, hashing it.
    fn take_content(
        &mut self,
        input: &[u8],
        out: Option<&mut Vec<u8>>,
        sink: &mut Option<&mut dyn Sink>,
    ) -> Result<usize, TarError> {
        let State::Content { remaining, padding } = &mut self.state else {
            unreachable!("take_content runs in State::Content");
        };
        let (take, data) = take_body(input.len(), remaining, padding);
        if *remaining == 0 && *padding == 0 {
            self.state = State::Header;
        }
        self.hasher.update(&input[..data]);
        if let Some(o) = out {
            o.extend_from_slice(&input[..take]);
        }
        if let Some(s) = sink.as_mut() {
            if data > 0 {
                s.data(&input[..data]).map_err(TarError::Sink)?;
            }
        }
        Ok(take)
    }

    /// Entries (other than the root) whose headers were read so far.
    pub fn entries_seen(&self) -> u64 {
        self.stats.entries
    }

    fn pending_is_clear(&self) -> bool {
        matches!(
            self.state,
            State::Content { .. } | State::End | State::Header
        ) && self.pending.pax.is_empty()
            && self.pending.long_name.is_none()
            && self.pending.long_link.is_none()
    }

    /// The stream ended: check it ended at an entry boundary, and return the stats.
    pub fn finish(mut self) -> Result<Finished, TarError> {
        match self.state {
            State::End => {}
            State::Header
                if self.block.is_empty()
                    && self.pending_is_clear()
                    && (self.stats.entries > 0 || self.root_seen) =>
            {
                // No end marker, but complete entries: Go's reader accepts this too.
            }
            _ => {
                return Err(TarError::Malformed(
                    "the archive ends in the middle of an entry".into(),
                ))
            }
        }
        self.stats.digest = self.hasher.finish();
        Ok(Finished {
            stats: self.stats,
            problems: self.problems,
            examples: self.examples,
            root: self.root,
            watched: self.watch,
        })
    }

    fn meta_done(&mut self, kind: u8, body: Vec<u8>) -> Result<(), TarError> {
        match kind {
            // As Go's reader: a PAX header replaces the records of an earlier one.
            b'x' => self.pending.pax = parse_pax(&body)?.into_iter().collect(),
            // Go's reader returns a global header as an entry of its own (the Engine ignores
            // it), which drops whatever PAX or GNU long-name headers came before it.
            b'g' => self.pending = Pending::default(),
            b'L' => self.pending.long_name = Some(trim_nul(&body).to_vec()),
            b'K' => self.pending.long_link = Some(trim_nul(&body).to_vec()),
            _ => unreachable!("only meta kinds reach meta_done"),
        }
        Ok(())
    }

    /// One header block: the end marker, a PAX or GNU long-name header (whose body follows),
    /// or an entry, which is checked against the entry policy, counted and hashed.
    fn header(&mut self, block: &[u8], sink: &mut Option<&mut dyn Sink>) -> Result<(), TarError> {
        if block.iter().all(|&b| b == 0) {
            self.state = State::End;
            // Go's reader stops here and drops pending PAX or long-name headers: so must we,
            // or their held bytes are never released while what follows the end passes on.
            self.pending = Pending::default();
            return Ok(());
        }
        let fields = HeaderFields::parse(block)?;
        if matches!(fields.typeflag, b'x' | b'g' | b'L' | b'K') {
            return self.start_meta(fields.typeflag, fields.size);
        }
        let entry = EntryInfo::resolve(fields, std::mem::take(&mut self.pending))?;
        let normalized = self.admit(&entry)?;
        self.count(&entry, &normalized);
        if let Some(s) = sink.as_mut() {
            let link = if entry.typeflag == b'1' {
                normalize(&entry.link).unwrap_or_default().into_bytes()
            } else {
                entry.link.clone()
            };
            let view = EntryView {
                typeflag: match entry.typeflag {
                    0 | b'7' => b'0',
                    t => t,
                },
                path: &normalized,
                link: &link,
                mode: (entry.mode & 0o7777) as u32,
                uid: entry.uid,
                gid: entry.gid,
                mtime: entry.mtime.parse().unwrap_or(0),
                size: entry.content,
                xattrs: &entry.xattrs,
            };
            s.entry(&view).map_err(TarError::Sink)?;
        }
        self.hash_entry(&entry, normalized);
        self.state = if entry.content > 0 {
            State::Content {
                remaining: entry.content,
                padding: pad(entry.content),
            }
        } else {
            State::Header
        };
        Ok(())
    }

    /// A PAX (`x`, `g`) or GNU long-name (`L`, `K`) header: its body of `size` bytes follows.
    fn start_meta(&mut self, kind: u8, size: u64) -> Result<(), TarError> {
        if size > MAX_META {
            return Err(TarError::Malformed(format!(
                "extended header of {size} bytes is too large"
            )));
        }
        self.state = if size == 0 {
            State::Header
        } else {
            State::Meta {
                kind,
                remaining: size,
                padding: pad(size),
            }
        };
        Ok(())
    }

    /// Apply the entry policy ([`Scanner::check`]; whatever the archive claims, nothing may
    /// land outside the volume). In [`Mode::Enforce`] a refused entry stops the stream; in
    /// [`Mode::Observe`] it is counted, and kept as an example. Returns the entry's
    /// normalized path (`""` for the root).
    fn admit(&mut self, e: &EntryInfo) -> Result<String, TarError> {
        let reason = match self.check(e.typeflag, &e.name, &e.link, e.sparse) {
            Ok(normalized) => return Ok(normalized),
            Err(reason) => reason,
        };
        let path = String::from_utf8_lossy(&e.name).into_owned();
        let problem = Unsafe {
            path: path.clone(),
            reason,
        };
        if self.mode == Mode::Enforce {
            return Err(TarError::Unsafe(problem));
        }
        self.problems += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(problem);
        }
        Ok(normalize(&e.name).unwrap_or(path))
    }

    /// Count the entry in the stats; for the root (`normalized` empty), keep its metadata.
    fn count(&mut self, e: &EntryInfo, normalized: &str) {
        if let Some(w) = self.watch.as_mut().filter(|w| w.covers(normalized)) {
            w.found = true;
            if matches!(e.typeflag, b'0' | 0 | b'7') {
                w.bytes += e.content;
            }
        }
        if normalized.is_empty() {
            self.root_seen = true;
            if e.typeflag == b'5' {
                self.root = Some(RootMeta {
                    mode: e.mode as u32,
                    uid: e.uid.min(u32::MAX as u64) as u32,
                    gid: e.gid.min(u32::MAX as u64) as u32,
                    mtime: e.mtime.parse().unwrap_or(0),
                });
            }
            return;
        }
        self.stats.entries += 1;
        match e.typeflag {
            b'0' | 0 | b'7' => {
                self.stats.files += 1;
                self.stats.bytes += e.content;
            }
            b'5' => self.stats.dirs += 1,
            b'2' => self.stats.symlinks += 1,
            b'1' => self.stats.hardlinks += 1,
            _ => self.stats.other += 1,
        }
    }

    /// Add the entry's record (type, path, mode, owner, mtime, size, link target, device,
    /// xattrs) to the content digest; its content follows in [`Scanner::take_content`].
    fn hash_entry(&mut self, e: &EntryInfo, normalized: String) {
        let typ = if e.typeflag == 0 { b'0' } else { e.typeflag };
        let link_text = String::from_utf8_lossy(&e.link).into_owned();
        let link = if e.typeflag == b'1' {
            normalize(&e.link).unwrap_or(link_text)
        } else {
            link_text
        };
        let dev = if matches!(e.typeflag, b'3' | b'4') {
            format!("{}:{}", e.dev.0, e.dev.1)
        } else {
            String::new()
        };
        let path = if normalized.is_empty() {
            ".".to_string()
        } else {
            normalized
        };
        self.hasher.update(b"E\0");
        self.hasher.update([typ]);
        for field in [
            path,
            format!("{:o}", e.mode),
            e.uid.to_string(),
            e.gid.to_string(),
            e.mtime.clone(),
            e.content.to_string(),
            link,
            dev,
        ] {
            self.hasher.update(b"\0");
            self.hasher.update(field.as_bytes());
        }
        for (k, v) in &e.xattrs {
            self.hasher.update(b"\0");
            self.hasher.update(k.as_bytes());
            self.hasher.update(b"=");
            self.hasher.update(v);
        }
        self.hasher.update(b"\n");
    }

    /// THE entry policy of a volume archive: whether a restore accepts this entry. Used in
    /// both modes, so that what a backup warns about, what `drkit verify` (and so the guard)
    /// fails, and what a restore refuses are one and the same. Returns the entry's
    /// normalized path (`""` for the root).
    fn check(
        &mut self,
        typeflag: u8,
        name: &[u8],
        link: &[u8],
        sparse: bool,
    ) -> Result<String, String> {
        if name.contains(&0) || link.contains(&0) {
            return Err("has a NUL byte in its name".into());
        }
        let path = normalize(name)?;
        if sparse || typeflag == b'S' {
            return Err("is a sparse file, which volume archives never hold".into());
        }
        match typeflag {
            b'0' | 0 | b'7' | b'1' | b'2' | b'5' | b'6' => {}
            b'3' | b'4' => {
                return Err("is a device node, which drkit does not restore into a volume".into())
            }
            other => return Err(format!("has unsupported type {:?}", other as char)),
        }
        if let Some(through) = self.through_symlink(&path) {
            return Err(format!(
                "would be written through the symbolic link {through:?}"
            ));
        }
        match typeflag {
            b'1' => self.check_hard_link(link)?,
            b'2' => self.check_symlink(&path, link)?,
            b'5' => {}
            _ => {
                if path.is_empty() {
                    return Err("replaces the volume's root with a file".into());
                }
            }
        }
        Ok(path)
    }

    /// A hard link's target: inside the volume, not its root, not through a symbolic link.
    fn check_hard_link(&self, link: &[u8]) -> Result<(), String> {
        let target = normalize(link).map_err(|e| format!("is a hard link whose target {e}"))?;
        if target.is_empty() {
            return Err("is a hard link to the volume's root".into());
        }
        if let Some(through) = self.through_symlink(&target) {
            return Err(format!(
                "is a hard link through the symbolic link {through:?}"
            ));
        }
        Ok(())
    }

    /// A symbolic link at `path`: its target stays inside the volume, and it neither steps
    /// back out of an earlier link with `..` nor stands where a later one would; then it is
    /// recorded, so that no later entry is written through it.
    fn check_symlink(&mut self, path: &str, link: &[u8]) -> Result<(), String> {
        let target = String::from_utf8_lossy(link).into_owned();
        if target.starts_with('/') {
            return Err(format!(
                "is a symbolic link to the absolute path {target:?}, outside the volume"
            ));
        }
        if self.crossed.contains(path) {
            return Err(
                "is a symbolic link at a path another link steps back out of with '..'".into(),
            );
        }
        let mut stack: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        stack.pop();
        let mut crossed = Vec::new();
        for comp in target.split('/') {
            match comp {
                "" | "." => {}
                ".." => {
                    if stack.is_empty() {
                        return Err(format!(
                            "is a symbolic link to {target:?}, outside the volume"
                        ));
                    }
                    let exited = stack.join("/");
                    if self.symlinks.contains(&exited) {
                        return Err(format!("is a symbolic link to {target:?}, which steps back out of the symbolic link {exited:?}"));
                    }
                    crossed.push(exited);
                    stack.pop();
                }
                c => stack.push(c),
            }
        }
        self.crossed.extend(crossed);
        if path.is_empty() {
            return Err("replaces the volume's root with a symbolic link".into());
        }
        self.symlinks.insert(path.to_string());
        Ok(())
    }

    fn through_symlink(&self, path: &str) -> Option<String> {
        if self.symlinks.is_empty() {
            return None;
        }
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let prefix = &path[..end + pos];
            if self.symlinks.contains(prefix) {
                return Some(prefix.to_string());
            }
            end += pos + 1;
        }
        None
    }
}

/// What a header block itself says about its entry, before PAX records and GNU long names.
struct HeaderFields {
    typeflag: u8,
    /// The name field, after the USTAR name prefix when there is one.
    name: Vec<u8>,
    link: Vec<u8>,
    size: u64,
    /// Permission bits.
    mode: u64,
    uid: u64,
    gid: u64,
    mtime: u64,
    /// Device major and minor numbers.
    dev: (u64, u64),
}

impl HeaderFields {
    /// Check a (non-zero) block's checksum and format, and read its fixed fields as Go's
    /// reader does.
    fn parse(block: &[u8]) -> Result<HeaderFields, TarError> {
        let stored = parse_number(&block[148..156])
            .ok_or_else(|| TarError::Malformed("unreadable header checksum".into()))?;
        let (unsigned, signed) = checksums(block);
        if stored != unsigned && stored as i64 != signed {
            return Err(TarError::Malformed("header checksum mismatch".into()));
        }
        // As Go's reader: the name prefix field counts only for USTAR/PAX headers (magic and
        // version both right).
        let ustar = &block[257..263] == b"ustar\0" && &block[263..265] == b"00";
        if ustar && &block[508..512] == b"tar\0" {
            return Err(TarError::Malformed(
                "star-format archives are not supported".into(),
            ));
        }
        let size = parse_number(&block[124..136])
            .ok_or_else(|| TarError::Malformed("unreadable size".into()))?;
        let mut name = trim_nul(&block[0..100]).to_vec();
        let prefix = trim_nul(&block[345..500]);
        if ustar && !prefix.is_empty() {
            name = [prefix, b"/", &name].concat();
        }
        let number = |at: std::ops::Range<usize>| parse_number(&block[at]).unwrap_or(0);
        Ok(HeaderFields {
            typeflag: block[156],
            name,
            link: trim_nul(&block[157..257]).to_vec(),
            size,
            mode: number(100..108) & 0o7777,
            uid: number(108..116),
            gid: number(116..124),
            mtime: number(136..148),
            dev: (number(329..337), number(337..345)),
        })
    }
}

/// An entry as Go's reader returns it (and so as the Engine extracts it): the header's
/// fields, with the pending PAX records and GNU long names applied.
struct EntryInfo {
    typeflag: u8,
    name: Vec<u8>,
    link: Vec<u8>,
    /// Content bytes after the header (none for header-only types, whatever the size says).
    content: u64,
    mode: u64,
    uid: u64,
    gid: u64,
    /// Seconds, as text (the integer part of a PAX mtime).
    mtime: String,
    /// Extended attributes from PAX records, sorted.
    xattrs: Vec<(String, Vec<u8>)>,
    /// A PAX record marks it as a GNU sparse file.
    sparse: bool,
    dev: (u64, u64),
}

impl EntryInfo {
    fn resolve(f: HeaderFields, pending: Pending) -> Result<EntryInfo, TarError> {
        let mut e = EntryInfo {
            typeflag: f.typeflag,
            name: f.name,
            link: f.link,
            content: f.size,
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
            mtime: f.mtime.to_string(),
            xattrs: Vec::new(),
            sparse: false,
            dev: f.dev,
        };
        e.apply_pax(&pending.pax)?;
        // As Go's reader: GNU long names win over PAX paths.
        if let Some(n) = pending.long_name {
            e.name = n;
        }
        if let Some(l) = pending.long_link {
            e.link = l;
        }
        // Go's reader: a legacy regular entry (type NUL) whose final name ends in '/' is a
        // directory, and so carries no content.
        if e.typeflag == 0 && e.name.ends_with(b"/") {
            e.typeflag = b'5';
        }
        if matches!(e.typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
            e.content = 0;
        }
        e.xattrs.sort();
        Ok(e)
    }

    /// The records of the PAX header before the entry, over the header's own fields.
    fn apply_pax(&mut self, pax: &BTreeMap<String, Vec<u8>>) -> Result<(), TarError> {
        for (k, v) in pax {
            match k.as_str() {
                "path" => self.name = v.clone(),
                "linkpath" => self.link = v.clone(),
                "size" => {
                    self.content =
                        ascii_number(v).ok_or_else(|| TarError::Malformed("bad PAX size".into()))?
                }
                "uid" => self.uid = ascii_number(v).unwrap_or(self.uid),
                "gid" => self.gid = ascii_number(v).unwrap_or(self.gid),
                "mtime" => {
                    let s = String::from_utf8_lossy(v);
                    self.mtime = s.split('.').next().unwrap_or("0").to_string();
                }
                k if k.starts_with("SCHILY.xattr.") || k.starts_with("LIBARCHIVE.xattr.") => {
                    self.xattrs.push((k.to_string(), v.clone()))
                }
                k if k.starts_with("GNU.sparse.") => self.sparse = true,
                _ => {}
            }
        }
        Ok(())
    }
}

/// What a finished scan found.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Counts and digest.
    pub stats: TarStats,
    /// Entries that a restore would refuse (counted in [`Mode::Observe`]).
    pub problems: u64,
    /// Up to five of them.
    pub examples: Vec<Unsafe>,
    /// The root directory's metadata, when the archive has a `./` entry.
    pub root: Option<RootMeta>,
    /// What was found at the watched path, when one was set ([`Scanner::watch`]).
    pub watched: Option<Watched>,
}

impl Finished {
    /// Why a restore would refuse this archive, naming the first refused entries; `None`
    /// when it accepts every entry. (A scan in [`Mode::Observe`] applies the same entry
    /// policy as the restore's [`Mode::Enforce`], and counts instead of stopping.)
    pub fn refusal(&self) -> Option<String> {
        if self.problems == 0 {
            return None;
        }
        let shown: Vec<String> = self.examples.iter().map(Unsafe::to_string).collect();
        let more = self.problems.saturating_sub(self.examples.len() as u64);
        Some(format!(
            "{} entr{} a restore refuses: {}{}",
            self.problems,
            if self.problems == 1 { "y" } else { "ies" },
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ))
    }
}

/// Normalize an archive path: strip `./` and trailing `/`; refuse absolute paths and `..`.
pub fn normalize(name: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(name);
    if text.starts_with('/') {
        return Err(format!("is an absolute path ({text:?})"));
    }
    let mut parts = Vec::new();
    for comp in text.split('/') {
        match comp {
            "" | "." => {}
            ".." => return Err(format!("climbs out with '..' ({text:?})")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn pad(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

/// Count off the bytes of `input` (its length) that belong to the body being read:
/// `remaining` bytes of data, then `padding` up to the block boundary. Returns the bytes
/// taken, and how many of them are data.
fn take_body(input: usize, remaining: &mut u64, padding: &mut u64) -> (usize, usize) {
    let take = (*remaining + *padding).min(input as u64) as usize;
    let data = (*remaining).min(take as u64) as usize;
    *remaining -= data as u64;
    *padding -= (take - data) as u64;
    (take, data)
}

/// A header block's checksum, counting its checksum field as spaces: the unsigned sum
/// (POSIX), and the signed one some old tars wrote (Go's reader accepts either).
fn checksums(block: &[u8]) -> (u64, i64) {
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += b as u64;
        signed += b as i8 as i64;
    }
    (unsigned, signed)
}

fn trim_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(p) => &b[..p],
        None => b,
    }
}

/// A numeric header field: octal text, or base-256 when the high bit is set.
fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v: u64 = (field[0] & 0x3f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    // As Go's archive/tar (`parseOctal`), which the engine uses to write what it reads: trim
    // NULs and spaces on both sides, then stop at the first NUL. Reading a field differently
    // from the engine would let a crafted size hide bytes from the entry checks.
    let start = field.iter().position(|&c| c != 0 && c != b' ');
    let text = match start {
        None => return Some(0),
        Some(i) => &field[i..],
    };
    let end = text
        .iter()
        .rposition(|&c| c != 0 && c != b' ')
        .map_or(0, |j| j + 1);
    let text = &text[..end];
    let text = &text[..text.iter().position(|&c| c == 0).unwrap_or(text.len())];
    if !text.iter().all(|c| (b'0'..=b'7').contains(c)) {
        return None;
    }
    text.iter().try_fold(0u64, |v, &c| {
        v.checked_mul(8)?.checked_add((c - b'0') as u64)
    })
}

fn ascii_number(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// Parse PAX records: `"%d %s=%s\n"`.
fn parse_pax(mut body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    let bad = || TarError::Malformed("corrupt PAX extended header".into());
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.iter().all(|&b| b == 0) {
            break;
        }
        let sp = body.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&body[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > body.len() || body[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &body[sp + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        let key = String::from_utf8(record[..eq].to_vec()).map_err(|_| bad())?;
        out.push((key, record[eq + 1..].to_vec()));
        body = &body[len..];
    }
    Ok(out)
}

/// Whether `head` starts like a tar archive (a header block with a valid checksum, or an
/// empty archive of zero blocks).
pub fn looks_like_tar(head: &[u8]) -> bool {
    if head.len() < BLOCK {
        return false;
    }
    let block = &head[..BLOCK];
    if block.iter().all(|&b| b == 0) {
        return true;
    }
    parse_number(&block[148..156]).is_some_and(|stored| stored == checksums(block).0)
}

/// Building archives, for the helper's own small uploads and for tests.
pub mod build {
    /// One entry of a test or helper archive.
    pub struct Entry<'a> {
        /// Path inside the archive (written as-is, unchecked).
        pub path: &'a str,
        /// `b'0'` file, `b'5'` dir, `b'2'` symlink, `b'1'` hardlink.
        pub typeflag: u8,
        /// Link target for links.
        pub link: &'a str,
        /// File content.
        pub data: &'a [u8],
        /// Permission bits.
        pub mode: u32,
        /// Owner.
        pub uid: u32,
        /// Group.
        pub gid: u32,
        /// Modification time (seconds).
        pub mtime: u64,
    }

    /// Copy `value` as it is into a header's name or link field: no normalization, so that
    /// tests can build the hostile archives the scanner must refuse.
    fn put(field: &mut [u8], value: &str, what: &str) {
        assert!(
            value.len() <= field.len(),
            "{what} {value:?} is longer than {} bytes: build writes no long-name headers",
            field.len()
        );
        field[..value.len()].copy_from_slice(value.as_bytes());
    }

    /// A ustar header block for `e` (names and link targets up to 100 bytes).
    pub fn header(e: &Entry<'_>) -> [u8; 512] {
        let mut h = ::tar::Header::new_ustar();
        put(&mut h.as_old_mut().name, e.path, "entry path");
        put(&mut h.as_old_mut().linkname, e.link, "link target");
        h.set_mode(e.mode);
        h.set_uid(e.uid.into());
        h.set_gid(e.gid.into());
        let size = if e.typeflag == b'0' {
            e.data.len() as u64
        } else {
            0
        };
        h.set_size(size);
        h.set_mtime(e.mtime);
        // Raw, not `set_entry_type`: that writes a legacy NUL type as '0'.
        h.as_old_mut().linkflag = [e.typeflag];
        h.set_cksum();
        *h.as_bytes()
    }

    /// A whole archive of `entries`, with the end marker.
    pub fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            out.extend_from_slice(&header(e));
            if e.typeflag == b'0' {
                out.extend_from_slice(e.data);
                out.resize(out.len() + super::pad(e.data.len() as u64) as usize, 0);
            }
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    /// A plain entry with default owner and time.
    pub fn entry<'a>(path: &'a str, typeflag: u8, link: &'a str, data: &'a [u8]) -> Entry<'a> {
        Entry {
            path,
            typeflag,
            link,
            data,
            mode: if typeflag == b'5' { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_number;

    #[test]
    fn numbers_are_read_as_go_reads_them() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"0000644\0", Some(0o644)),
            (b"00000001000\0", Some(512)),
            (b"\x000000001000\0", Some(512)), // a leading NUL: Go skips it, so do we
            (b"  1000 \0", Some(512)),
            (b"\0\0\0\0\0\0\0\0", Some(0)),
            (b"        ", Some(0)),
            (b"12\x0034", Some(0o12)),
            (b"+1000", None),
            (b"12 34", None),
            (b"0009", None),
            (b"77777777777777777777777", None), // overflows u64
        ];
        for (field, want) in cases {
            assert_eq!(
                parse_number(field),
                *want,
                "{:?}",
                String::from_utf8_lossy(field)
            );
        }
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 0x02, 0x00]), Some(512));
    }

    use super::build::{archive, entry};
    use super::*;

    fn scan(bytes: &[u8], mode: Mode, chunk: usize) -> Result<(Finished, Vec<u8>), TarError> {
        let mut s = Scanner::new(mode);
        let mut out = Vec::new();
        for c in bytes.chunks(chunk) {
            s.feed(c, Some(&mut out))?;
        }
        Ok((s.finish()?, out))
    }

    #[test]
    fn counts_and_passes_bytes_through() {
        let a = archive(&[
            entry("./", b'5', "", b""),
            entry("./a.txt", b'0', "", b"hello"),
            entry("./sub/", b'5', "", b""),
            entry("./sub/big", b'0', "", &[7u8; 1500]),
            entry("./link", b'2', "a.txt", b""),
            entry("./sub/hard", b'1', "./a.txt", b""),
            entry("./up", b'2', "sub/../a.txt", b""),
        ]);
        for chunk in [1, 7, 512, 100_000] {
            let (f, out) = scan(&a, Mode::Enforce, chunk).unwrap();
            assert_eq!(out, a, "chunk {chunk}");
            let s = f.stats;
            assert_eq!(
                (s.entries, s.files, s.dirs, s.symlinks, s.hardlinks, s.bytes),
                (6, 2, 1, 2, 1, 1505)
            );
            assert!(s.digest.starts_with("blake3:"));
        }
    }

    #[test]
    fn watch_sums_the_files_at_or_under_a_path() {
        let a = archive(&[
            entry("./", b'5', "", b""),
            entry("./a.txt", b'0', "", b"hello"),
            entry("./sub/", b'5', "", b""),
            entry("./sub/big", b'0', "", &[7u8; 1500]),
            entry("./sub/deeper/", b'5', "", b""),
            entry("./sub/deeper/c", b'0', "", b"abc"),
            entry("./sub/hard", b'1', "./a.txt", b""),
            entry("./subway", b'0', "", b"not under sub"),
            entry("./link", b'2', "sub", b""),
        ]);
        let watch = |path: &str| {
            let mut s = Scanner::new(Mode::Observe).watch(path);
            for c in a.chunks(100) {
                s.feed(c, None).unwrap();
            }
            let w = s.finish().unwrap().watched.unwrap();
            (w.found, w.bytes)
        };
        assert_eq!(watch("a.txt"), (true, 5));
        assert_eq!(watch("sub"), (true, 1503));
        assert_eq!(watch("sub/deeper"), (true, 3));
        assert_eq!(watch("sub/deeper/c"), (true, 3));
        assert_eq!(watch("sub/hard"), (true, 0));
        assert_eq!(watch("link"), (true, 0), "a symlink is not followed");
        assert_eq!(watch("link/big"), (false, 0), "nor walked through");
        assert_eq!(watch("su"), (false, 0));
        assert_eq!(watch("missing"), (false, 0));
        assert_eq!(watch(""), (true, 5 + 1503 + 13));
    }

    #[test]
    fn digest_sees_content_mode_owner_and_time() {
        let base = archive(&[entry("./a", b'0', "", b"x")]);
        let d = |a: &[u8]| scan(a, Mode::Observe, 64).unwrap().0.stats.digest;
        let mut e = entry("./a", b'0', "", b"y");
        assert_ne!(d(&base), d(&archive(&[e])), "content");
        e = entry("./a", b'0', "", b"x");
        e.mode = 0o600;
        assert_ne!(d(&base), d(&archive(&[e])), "mode");
        e = entry("./a", b'0', "", b"x");
        e.uid = 1000;
        assert_ne!(d(&base), d(&archive(&[e])), "owner");
        e = entry("./a", b'0', "", b"x");
        e.mtime = 1;
        assert_ne!(d(&base), d(&archive(&[e])), "mtime");
        assert_eq!(
            d(&base),
            d(&archive(&[entry("a", b'0', "", b"x")])),
            "./ prefix is not content"
        );
    }

    #[test]
    fn digest_algorithms_are_named_by_their_prefix() {
        let a = archive(&[entry("./a", b'0', "", b"x")]);
        let d = |algo| {
            let mut s = Scanner::with_digest(Mode::Observe, algo);
            s.feed(&a, None).unwrap();
            s.finish().unwrap().stats.digest
        };
        let (b3, sha) = (d(DigestAlgo::Blake3), d(DigestAlgo::Sha256));
        assert!(b3.starts_with("blake3:") && b3.len() == 7 + 64, "{b3}");
        assert!(sha.starts_with("sha256:") && sha.len() == 7 + 64, "{sha}");
        assert_eq!(
            scan(&a, Mode::Observe, 3).unwrap().0.stats.digest,
            b3,
            "blake3 by default"
        );
        assert_eq!(DigestAlgo::of(&b3), Some(DigestAlgo::Blake3));
        assert_eq!(DigestAlgo::of(&sha), Some(DigestAlgo::Sha256));
        for bad in ["md5:00", "", "BLAKE3:00", "sha256"] {
            assert_eq!(DigestAlgo::of(bad), None, "{bad}");
        }
        assert_eq!(DigestAlgo::Sha256.name(), "sha256");
    }

    #[test]
    fn empty_volume() {
        let mut root = entry("./", b'5', "", b"");
        root.mode = 0o700;
        root.uid = 999;
        let (f, _) = scan(&archive(&[root]), Mode::Enforce, 512).unwrap();
        assert_eq!(f.stats.entries, 0);
        assert_eq!(
            f.root,
            Some(RootMeta {
                mode: 0o700,
                uid: 999,
                gid: 0,
                mtime: 1_700_000_000
            })
        );
        assert_eq!(f.stats.to_json()["empty"], true);
    }

    #[test]
    fn refuses_unsafe_entries_before_releasing_them() {
        type Case<'a> = (&'a [(&'a str, u8, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&[("../evil", b'0', "")], "climbs out"),
            (&[("./a/../../evil", b'0', "")], "climbs out"),
            (&[("/etc/passwd", b'0', "")], "absolute path"),
            (&[("l", b'2', "/etc")], "absolute path"),
            (&[("l", b'2', "../outside")], "outside the volume"),
            (&[("d/l", b'2', "../../x")], "outside the volume"),
            (
                &[("l", b'2', "."), ("l/x", b'0', "")],
                "through the symbolic link",
            ),
            (&[("a", b'2', "."), ("s", b'2', "a/..")], "steps back out"),
            (&[("s", b'2', "a/.."), ("a", b'2', ".")], "steps back out"),
            (&[("h", b'1', "../x")], "climbs out"),
            (&[("h", b'1', "/etc/shadow")], "absolute path"),
            (
                &[("l", b'2', "sub"), ("h", b'1', "l/x")],
                "through the symbolic link",
            ),
            (&[("dev", b'3', "")], "device"),
            (&[(".", b'2', "x")], "root"),
        ];
        for (entries, want) in cases {
            let mut list: Vec<_> = entries
                .iter()
                .map(|(p, t, l)| entry(p, *t, l, b""))
                .collect();
            list.insert(0, entry("./ok", b'0', "", b"fine"));
            let a = archive(&list);
            let mut s = Scanner::new(Mode::Enforce);
            let mut out = Vec::new();
            let err = s.feed(&a, Some(&mut out)).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(want), "{entries:?}: {msg}");
            // The bad (last) entry's header was never released; the good ones before it were.
            assert_eq!(out.len(), 1024 + 512 * (entries.len() - 1), "{entries:?}");
            // Observe mode records it instead.
            let (f, _) = scan(&a, Mode::Observe, 512).unwrap();
            assert!(f.problems >= 1, "{entries:?}");
        }
    }

    #[test]
    fn observe_refuses_exactly_what_enforce_refuses() {
        // The verify side (Observe, then `refusal`) and the restore side (Enforce) apply one
        // policy: an archive is refused by one exactly when it is by the other, and the
        // first entry named is the one the restore stops at.
        let cases: Vec<Vec<(&str, u8, &str)>> = vec![
            vec![("./a", b'0', ""), ("./l", b'2', "a")],
            vec![("./etc", b'2', "/etc")],
            vec![
                ("./ok", b'0', ""),
                ("./etc", b'2', "/etc"),
                ("./etc/x", b'0', ""),
            ],
            vec![("./d/l", b'2', "../../x")],
            vec![("./h", b'1', "/etc/shadow")],
            vec![("./dev", b'3', "")],
            vec![("../x", b'0', "")],
            vec![("./up", b'2', "sub/../a.txt"), ("./sub/", b'5', "")],
            vec![("./l", b'2', "."), ("./l/x", b'0', "")],
        ];
        for entries in cases {
            let a = archive(
                &entries
                    .iter()
                    .map(|(p, t, l)| entry(p, *t, l, b""))
                    .collect::<Vec<_>>(),
            );
            let enforced = scan(&a, Mode::Enforce, 512);
            let observed = scan(&a, Mode::Observe, 512).expect("observe never fails on entries");
            match (enforced, observed.0.refusal()) {
                (Ok(_), None) => {}
                (Err(TarError::Unsafe(u)), Some(why)) => {
                    assert!(why.contains(&u.to_string()), "{entries:?}: {why} / {u}");
                }
                (e, r) => panic!("{entries:?}: enforce {:?}, observe {r:?}", e.err()),
            }
        }
        let (f, _) = scan(
            &archive(&[
                entry("./a", b'2', "/1", b""),
                entry("./b", b'2', "/2", b""),
                entry("./c", b'2', "/3", b""),
                entry("./d", b'2', "/4", b""),
                entry("./e", b'2', "/5", b""),
                entry("./f", b'2', "/6", b""),
            ]),
            Mode::Observe,
            512,
        )
        .unwrap();
        let why = f.refusal().unwrap();
        assert!(
            why.starts_with("6 entries a restore refuses: entry \"./a\" is a symbolic link to the absolute path \"/1\"")
                && why.ends_with("; and 1 more"),
            "{why}"
        );
    }

    #[test]
    fn header_only_types_carry_no_content() {
        // A symlink header claiming 512 bytes of content: Go's reader (and so the Engine)
        // treats the next block as a header; so must we, or a hidden entry slips through.
        let mut a = Vec::new();
        let mut h = build::header(&entry("l", b'2', "x", b""));
        h[124..136].copy_from_slice(b"00000001000\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        a.extend_from_slice(&h);
        a.extend_from_slice(&build::header(&entry("../evil", b'0', "", b"")));
        a.resize(a.len() + 1024, 0);
        let err = scan(&a, Mode::Enforce, 512).unwrap_err();
        assert!(err.to_string().contains("climbs out"), "{err}");
    }

    fn meta(typeflag: u8, body: &[u8]) -> Vec<u8> {
        let mut e = entry("meta", b'0', "", b"");
        e.typeflag = typeflag;
        let mut h = build::header(&e);
        h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(body);
        out.resize(out.len() + pad(body.len() as u64) as usize, 0);
        out
    }

    #[test]
    fn meta_headers_apply_as_go_applies_them() {
        let tail = |name: &str| {
            let mut t = build::header(&entry(name, b'0', "", b"")).to_vec();
            t.resize(t.len() + 1024, 0);
            t
        };
        let cases: Vec<(Vec<u8>, bool)> = vec![
            // A later PAX header replaces an earlier one: the raw name counts again.
            (
                [
                    meta(b'x', b"13 path=safe\n"),
                    meta(b'x', b"12 uid=1000\n"),
                    tail("../evil"),
                ]
                .concat(),
                false,
            ),
            // A global header drops the pending PAX path.
            (
                [
                    meta(b'x', b"13 path=safe\n"),
                    meta(b'g', b"12 uid=1000\n"),
                    tail("../evil"),
                ]
                .concat(),
                false,
            ),
            // A GNU long name wins over a PAX path.
            (
                [
                    meta(b'L', b"../evil\0"),
                    meta(b'x', b"13 path=safe\n"),
                    tail("x"),
                ]
                .concat(),
                false,
            ),
            // And a PAX path over a plain name.
            (
                [meta(b'x', b"13 path=safe\n"), tail("../evil")].concat(),
                true,
            ),
        ];
        for (i, (a, ok)) in cases.into_iter().enumerate() {
            let got = scan(&a, Mode::Enforce, 512);
            assert_eq!(got.is_ok(), ok, "case {i}: {:?}", got.err());
        }
    }

    #[test]
    fn legacy_directory_entries_carry_no_content() {
        // Type NUL with a trailing '/' is a directory for Go's reader, whatever its size
        // field says: the block after it is the next header, and it is checked.
        let mut e = entry("dir/", b'0', "", b"");
        e.typeflag = 0;
        let mut h = build::header(&e);
        h[124..136].copy_from_slice(b"00000001000\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut a = h.to_vec();
        a.extend_from_slice(&build::header(&entry("../evil", b'0', "", b"")));
        a.resize(a.len() + 1024, 0);
        let err = scan(&a, Mode::Enforce, 512).unwrap_err();
        assert!(err.to_string().contains("climbs out"), "{err}");
    }

    #[test]
    fn pax_path_overrides_header_name() {
        let mut a = Vec::new();
        let record = b"19 path=../../evil\n";
        let mut x = entry("PaxHeaders/x", b'x', "", b"");
        x.typeflag = b'x';
        let mut h = build::header(&x);
        h[124..136].copy_from_slice(format!("{:011o}\0", record.len()).as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        a.extend_from_slice(&h);
        a.extend_from_slice(record);
        a.resize(1024, 0);
        a.extend_from_slice(&build::header(&entry("innocent", b'0', "", b"")));
        a.resize(a.len() + 1024, 0);
        let mut s = Scanner::new(Mode::Enforce);
        let mut out = Vec::new();
        let err = s.feed(&a, Some(&mut out)).unwrap_err();
        assert!(err.to_string().contains("climbs out"), "{err}");
        assert!(
            out.is_empty(),
            "the PAX header was held back with its entry"
        );
    }

    #[test]
    fn malformed_streams() {
        let mut a = archive(&[entry("a", b'0', "", b"abc")]);
        a[0] ^= 1;
        assert!(matches!(
            scan(&a, Mode::Observe, 512),
            Err(TarError::Malformed(_))
        ));
        let a = archive(&[entry("a", b'0', "", &[1u8; 2000])]);
        assert!(matches!(
            scan(&a[..1024], Mode::Observe, 512),
            Err(TarError::Malformed(_))
        ));
        assert!(looks_like_tar(&archive(&[entry("a", b'0', "", b"")])));
        assert!(!looks_like_tar(
            b"SQLite format 3\0 and more bytes to make it long enough"
        ));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  644 \0"), Some(0o644));
        assert_eq!(parse_number(&[0x80, 0, 0, 0, 0, 0, 1, 0]), Some(256));
        assert_eq!(parse_number(b"\0\0\0"), Some(0));
        assert_eq!(parse_number(b"9"), None);
    }
}
