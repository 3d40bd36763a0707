//! The archive checks a verify runs without a server: the structure of a backup's first bytes,
//! the whole-archive [`ArchiveCheck`] (structure, CRCs, document counts against the
//! manifest's), and `verify --deep`'s [`DeepArchiveCheck`] (the same, with a summary).

use std::collections::BTreeMap;

use drkit_core::{Error, Manifest, Result};

use super::archive::{self, Kind};
use super::select::{manifest_namespaces, split_ns};

/// Check the first bytes of an archive; when they are the whole archive, also that it ends
/// where it may.
pub(super) fn check_structure(head: &[u8]) -> Result<()> {
    let mut parser = archive::Parser::new();
    parser
        .feed(head, &mut |_| Ok(()))
        .map_err(|e| Error::integrity(e.to_string()))?;
    if head.len() < 4096 {
        // The whole archive fits in the head: it must also end where it may.
        parser
            .finish()
            .map_err(|e| Error::integrity(e.to_string()))?;
    }
    Ok(())
}

/// The whole-archive check run while a backup is verified (and so before every restore):
/// the archive's structure, CRCs, and its document counts against the manifest's.
pub(super) struct ArchiveCheck {
    parser: archive::Parser,
    want: Option<(BTreeMap<String, u64>, Vec<String>)>,
}

impl ArchiveCheck {
    /// A check of the archive of backup `manifest`, fed from its first byte.
    pub(super) fn new(manifest: &Manifest) -> ArchiveCheck {
        ArchiveCheck {
            parser: archive::Parser::new(),
            want: manifest_namespaces(manifest).ok(),
        }
    }
}

impl drkit_core::StreamCheck for ArchiveCheck {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.parser
            .feed(bytes, &mut |_| Ok(()))
            .map_err(|e| Error::integrity(e.to_string()))
    }

    fn finish(self: Box<Self>) -> Result<()> {
        let tally = Tally::of(&self.parser)?;
        let Some((want, views)) = &self.want else {
            return Err(no_stats());
        };
        let wrong = tally.mismatches(want, views, None);
        if !wrong.is_empty() {
            return Err(Error::integrity(format!(
                "the archive does not match the manifest: {}",
                list(&wrong)
            )));
        }
        Ok(())
    }
}

/// `verify --deep`: the same walk as [`ArchiveCheck`] (every document's BSON, every CRC),
/// with each namespace's document count, the views and the total compared with the
/// manifest's, and a one-line summary of what the archive holds.
pub(super) struct DeepArchiveCheck {
    parser: archive::Parser,
    want: Option<(BTreeMap<String, u64>, Vec<String>)>,
    /// `stats.documents`, when the manifest has it.
    total: Option<u64>,
}

impl DeepArchiveCheck {
    /// A deep check of the archive of backup `manifest`, fed from its first byte.
    pub(super) fn new(manifest: &Manifest) -> DeepArchiveCheck {
        DeepArchiveCheck {
            parser: archive::Parser::new(),
            want: manifest_namespaces(manifest).ok(),
            total: manifest.stats.get("documents").and_then(|v| v.as_u64()),
        }
    }
}

impl drkit_core::DeepCheck for DeepArchiveCheck {
    fn update(&mut self, bytes: &[u8]) -> Result<()> {
        self.parser
            .feed(bytes, &mut |_| Ok(()))
            .map_err(|e| Error::integrity(e.to_string()))
    }

    fn finish(self: Box<Self>) -> Result<String> {
        let tally = Tally::of(&self.parser)?;
        let Some((want, views)) = &self.want else {
            return Err(no_stats());
        };
        let wrong = tally.mismatches(want, views, self.total);
        if !wrong.is_empty() {
            return Err(Error::integrity(format!(
                "the archive does not match the manifest: {}",
                list(&wrong)
            )));
        }
        Ok(format!("{}: as the manifest says", tally.summary()))
    }
}

fn no_stats() -> Error {
    Error::integrity("the manifest has no MongoDB stats (stats.collections)")
}

/// At most this many mismatches are named in an error; the rest are counted.
const NAMED_MISMATCHES: usize = 5;

fn list(items: &[String]) -> String {
    let mut text = items
        .iter()
        .take(NAMED_MISMATCHES)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > NAMED_MISMATCHES {
        text.push_str(&format!("; and {} more", items.len() - NAMED_MISMATCHES));
    }
    text
}

/// What a finished archive holds: documents per collection, and views.
#[derive(Debug, Default, PartialEq)]
struct Tally {
    collections: BTreeMap<String, u64>,
    views: Vec<String>,
}

impl Tally {
    /// The counts of the archive `parser` read to its end (an error when it ended early).
    fn of(parser: &archive::Parser) -> Result<Tally> {
        parser
            .finish()
            .map_err(|e| Error::integrity(e.to_string()))?;
        let prelude = parser
            .prelude()
            .ok_or_else(|| Error::integrity("the archive has no prelude"))?;
        let mut tally = Tally::default();
        for (meta, c) in prelude.collections.iter().zip(parser.counts()) {
            match meta.kind {
                Kind::View => tally.views.push(meta.namespace()),
                _ => {
                    tally.collections.insert(meta.namespace(), c.documents);
                }
            }
        }
        tally.views.sort();
        Ok(tally)
    }

    /// How the tally differs from the manifest's counts `want`, `views` and (when given) its
    /// `total` of documents: one line per namespace, naming both numbers.
    fn mismatches(
        &self,
        want: &BTreeMap<String, u64>,
        views: &[String],
        total: Option<u64>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (ns, got) in &self.collections {
            match want.get(ns) {
                Some(w) if w == got => {}
                Some(w) => out.push(format!(
                    "{ns}: the archive holds {got} document(s), the manifest says {w}"
                )),
                None => out.push(format!(
                    "{ns}: in the archive ({got} document(s)), not in the manifest"
                )),
            }
        }
        for (ns, w) in want {
            if !self.collections.contains_key(ns) {
                out.push(format!(
                    "{ns}: in the manifest ({w} document(s)), not in the archive"
                ));
            }
        }
        let mut want_views = views.to_vec();
        want_views.sort();
        for v in self.views.iter().filter(|v| !want_views.contains(v)) {
            out.push(format!("view {v}: in the archive, not in the manifest"));
        }
        for v in want_views.iter().filter(|v| !self.views.contains(v)) {
            out.push(format!("view {v}: in the manifest, not in the archive"));
        }
        let got_total: u64 = self.collections.values().sum();
        if let Some(t) = total.filter(|t| *t != got_total) {
            out.push(format!(
                "in all: the archive holds {got_total} document(s), the manifest says {t}"
            ));
        }
        out
    }

    /// `2 databases, 5 collections, 1 view, 12000 documents`.
    fn summary(&self) -> String {
        let mut dbs: Vec<&str> = self
            .collections
            .keys()
            .chain(self.views.iter())
            .map(|ns| split_ns(ns).0)
            .collect();
        dbs.dedup();
        dbs.sort();
        dbs.dedup();
        let n = |count: usize, one: &str, many: &str| {
            format!("{count} {}", if count == 1 { one } else { many })
        };
        let docs: u64 = self.collections.values().sum();
        let mut parts = vec![
            n(dbs.len(), "database", "databases"),
            n(self.collections.len(), "collection", "collections"),
        ];
        if !self.views.is_empty() {
            parts.push(n(self.views.len(), "view", "views"));
        }
        parts.push(format!(
            "{docs} {}",
            if docs == 1 { "document" } else { "documents" }
        ));
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(colls: &[(&str, u64)], views: &[&str]) -> Tally {
        Tally {
            collections: colls.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            views: views.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn summary_and_mismatches() {
        let t = tally(&[("a.x", 10), ("a.y", 2), ("b.z", 0)], &["a.v"]);
        assert_eq!(
            t.summary(),
            "2 databases, 3 collections, 1 view, 12 documents"
        );
        let want = t.collections.clone();
        assert!(t.mismatches(&want, &["a.v".into()], Some(12)).is_empty());
        let mut off = want.clone();
        off.insert("a.y".into(), 3);
        off.remove("b.z");
        off.insert("c.w".into(), 1);
        let wrong = t.mismatches(&off, &[], Some(13));
        assert_eq!(
            wrong,
            vec![
                "a.y: the archive holds 2 document(s), the manifest says 3",
                "b.z: in the archive (0 document(s)), not in the manifest",
                "c.w: in the manifest (1 document(s)), not in the archive",
                "view a.v: in the archive, not in the manifest",
                "in all: the archive holds 12 document(s), the manifest says 13",
            ]
        );
        assert_eq!(
            tally(&[("a.x", 1)], &[]).summary(),
            "1 database, 1 collection, 1 document"
        );
        let many: Vec<String> = (0..8).map(|i| i.to_string()).collect();
        assert_eq!(list(&many), "0; 1; 2; 3; 4; and 3 more");
    }
}
