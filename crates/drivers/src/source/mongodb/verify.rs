//! The archive checks a verify runs without a server: the structure of a backup's first bytes,
//! and the whole-archive [`ArchiveCheck`] (structure, CRCs, document counts against the
//! manifest's).

use std::collections::BTreeMap;

use drkit_core::{Error, Manifest, Result};

use super::archive::{self, Kind};
use super::select::manifest_namespaces;

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
        self.parser
            .finish()
            .map_err(|e| Error::integrity(e.to_string()))?;
        let Some((want, views)) = &self.want else {
            return Err(Error::integrity(
                "the manifest has no MongoDB stats (stats.collections)",
            ));
        };
        let prelude = self
            .parser
            .prelude()
            .expect("a finished archive has a prelude");
        let mut got: BTreeMap<String, u64> = BTreeMap::new();
        let mut got_views = Vec::new();
        for (meta, c) in prelude.collections.iter().zip(self.parser.counts()) {
            match meta.kind {
                Kind::View => got_views.push(meta.namespace()),
                _ => {
                    got.insert(meta.namespace(), c.documents);
                }
            }
        }
        got_views.sort();
        let mut want_views = views.clone();
        want_views.sort();
        if &got != want || got_views != want_views {
            return Err(Error::integrity(format!(
                "the archive does not match the manifest: it holds {} collection(s) with {} document(s) and {} view(s), the manifest says {} with {} and {}",
                got.len(),
                got.values().sum::<u64>(),
                got_views.len(),
                want.len(),
                want.values().sum::<u64>(),
                want_views.len()
            )));
        }
        Ok(())
    }
}
