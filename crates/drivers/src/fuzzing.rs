//! Entry points for the `cargo fuzz` targets of `fuzz/` (feature `fuzzing`), and the
//! regression test that replays every input they found (`fuzz/regressions/TARGET/*`).
//!
//! Each function takes the bytes a hostile backup storage could hand out and drives them
//! through the code paths a restore and a verify use, discarding what they produce: an error
//! is a correct answer, a panic, a hang or a huge allocation is a bug. The parsers stay
//! private to the crate; only these functions are exported.

/// Vary how a stream is cut into reads: the result must not depend on it.
#[cfg(any(feature = "docker", feature = "mongodb"))]
const CHUNKS: [usize; 2] = [7, 512];

/// The Docker volume tar scanner ([`crate::docker::tar::Scanner`]) as a backup and a verify
/// run it (observe mode) and as a restore runs it (enforce mode, passing bytes through). The
/// restore's output must be the input (or, on a refusal, a prefix of it), and the verdict must
/// not depend on how the stream is cut.
#[cfg(feature = "docker")]
pub fn tar_scan(data: &[u8]) {
    use crate::docker::tar::{looks_like_tar, Finished, Mode, Scanner, TarError};

    fn run(data: &[u8], mode: Mode, chunk: usize) -> (Result<Finished, TarError>, Vec<u8>) {
        let mut s = Scanner::new(mode);
        let mut out = Vec::new();
        for c in data.chunks(chunk.max(1)) {
            let sink = (mode == Mode::Enforce).then_some(&mut out);
            if let Err(e) = s.feed(c, sink) {
                return (Err(e), out);
            }
        }
        let _ = s.entries_seen();
        (s.finish(), out)
    }
    fn verdict(r: &Result<Finished, TarError>) -> String {
        match r {
            Ok(f) => format!("{:?} {:?} {:?}", f.stats, f.problems, f.refusal()),
            Err(e) => e.to_string(),
        }
    }

    let _ = looks_like_tar(data);
    let (observed, _) = run(data, Mode::Observe, data.len());
    if let Ok(f) = &observed {
        let _ = f.refusal();
        let _ = f.stats.to_json();
    }
    let (enforced, out) = run(data, Mode::Enforce, data.len());
    assert!(data.starts_with(&out), "enforce mode changed the bytes");
    if enforced.is_ok() {
        assert_eq!(out.len(), data.len(), "enforce mode dropped bytes");
    }
    for chunk in CHUNKS {
        let (o, _) = run(data, Mode::Observe, chunk);
        assert_eq!(
            verdict(&o),
            verdict(&observed),
            "observe, chunks of {chunk}"
        );
        let (e, out_c) = run(data, Mode::Enforce, chunk);
        assert_eq!(
            verdict(&e),
            verdict(&enforced),
            "enforce, chunks of {chunk}"
        );
        assert_eq!(out_c, out, "enforce output, chunks of {chunk}");
    }
}

/// The `mongodump --archive` reader ([`crate::source::mongodb::archive::Parser`]) as the
/// restore runs it (every document copied out as the restore copies it, then the end check)
/// and as the verify's whole-stream check and the head check run it.
#[cfg(feature = "mongodb")]
pub fn mongo_archive(data: &[u8]) {
    use crate::source::mongodb::archive::{Event, Kind, Parser};
    use bson::RawDocumentBuf;

    // The verify's structure check of the first bytes.
    {
        let head = &data[..data.len().min(4096)];
        let mut p = Parser::new();
        if p.feed(head, &mut |_| Ok(())).is_ok() && head.len() < 4096 {
            let _ = p.finish();
        }
    }
    for chunk in [data.len().max(1), CHUNKS[0]] {
        let mut p = Parser::new();
        let mut documents = 0u64;
        let mut failed = false;
        for c in data.chunks(chunk) {
            let r = p.feed(c, &mut |ev| {
                match ev {
                    Event::Prelude(pre) => {
                        let pre = pre.clone();
                        for m in &pre.collections {
                            let _ = m.namespace();
                            let _ = m.options.get_document("clusteredIndex");
                        }
                    }
                    Event::Document { ns: _, bytes } => {
                        RawDocumentBuf::from_bytes(bytes.to_vec()).map_err(|e| {
                            crate::source::mongodb::archive::ArchiveError(e.to_string())
                        })?;
                        documents += 1;
                    }
                    Event::End { ns: _ } => {}
                }
                Ok(())
            });
            if r.is_err() {
                failed = true;
                // A failed parser refuses more bytes.
                assert!(p.feed(b"\0", &mut |_| Ok(())).is_err());
                break;
            }
        }
        if failed || p.finish().is_err() {
            continue;
        }
        // The verify's comparison with the manifest reads the prelude and the counts.
        let prelude = p.prelude().expect("a finished archive has a prelude");
        let mut seen = 0u64;
        for (meta, c) in prelude.collections.iter().zip(p.counts()) {
            assert!(c.ended, "a finished archive ended every namespace");
            if meta.kind != Kind::View {
                seen += c.documents;
            }
        }
        assert!(seen <= documents);
    }
}

/// The PostgreSQL raw stream as a restore reads it ([`crate::source::postgres::archive`]):
/// the head check, then (for drkit's tar of several streams) the members, the index and its
/// file names, the order of the parts, the `PGDMP` check of each database stream and the
/// roles script, read whole and parsed as [`globals_script`] does.
#[cfg(feature = "postgres")]
pub fn pg_archive(data: &[u8]) {
    futures::executor::block_on(pg_archive_async(data));
}

#[cfg(feature = "postgres")]
async fn pg_archive_async(data: &[u8]) {
    use crate::source::postgres::archive::{self, Index, Sequence, TarReader};
    use crate::source::postgres::{check_head, globals, PGDMP};

    // The verify's check of the first bytes; a restore reads the tar whatever it says (the
    // manifest tells the layout).
    let _ = check_head(&data[..data.len().min(4096)]);
    if data.starts_with(PGDMP) {
        // A plain pg_dump archive goes to pg_restore as is.
        return;
    }
    let mut tar = TarReader::new(data);
    let Ok(Some(first)) = tar.next().await else {
        return;
    };
    if first.name != archive::INDEX_NAME {
        return;
    }
    let Ok(index) = serde_json::from_slice::<Index>(&first.data) else {
        return;
    };
    if index.format != archive::FORMAT || index.version != 1 {
        return;
    }
    let mut files = std::collections::HashSet::new();
    for s in &index.streams {
        if archive::check_file_name(&s.file).is_err() || !files.insert(s.file.as_str()) {
            return;
        }
    }
    let mut seq = Sequence::new(&index);
    let mut roles: Option<Vec<u8>> = None;
    let mut streaming_db = false;
    loop {
        let member = match tar.next().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => return,
        };
        let Ok((i, starts)) = seq.next(&member.name) else {
            return;
        };
        let entry = &index.streams[i];
        if starts {
            if let Some(script) = roles.take() {
                globals_script(&script);
            }
            streaming_db = entry.database.is_some();
            if streaming_db {
                if !member.data.starts_with(PGDMP) {
                    return;
                }
            } else {
                roles = Some(Vec::new());
            }
        }
        if !streaming_db {
            let script = roles.as_mut().expect("the roles stream was started");
            if script.len() + member.data.len() > globals::MAX_SCRIPT {
                return;
            }
            script.extend_from_slice(&member.data);
        }
    }
    if seq.started() != index.streams.len() {
        return;
    }
    if let Some(script) = roles.take() {
        globals_script(&script);
    }
}

/// The roles script of a `globals` PostgreSQL backup as the restore reads it
/// ([`crate::source::postgres::globals::parse`]), and the choice of what to run against a
/// destination where some roles, tablespaces and memberships exist.
#[cfg(feature = "postgres")]
pub fn globals_script(data: &[u8]) {
    use crate::source::postgres::globals::{self, Existing};

    if data.len() > globals::MAX_SCRIPT {
        return;
    }
    let text = match std::str::from_utf8(data) {
        Ok(t) => t,
        Err(e) => {
            // The restore names the line of the first invalid byte.
            let _ = data[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return;
        }
    };
    let _ = globals::split(text);
    let Ok(statements) = globals::parse(text) else {
        return;
    };
    let mut existing = Existing::default();
    existing.roles.insert("postgres".into());
    existing.tablespaces.insert("pg_default".into());
    existing
        .memberships
        .insert(("pg_read_all_data".into(), "postgres".into()));
    for s in &statements {
        let _ = existing.keep(s);
        assert!(s.line >= 1, "statement lines count from 1");
    }
}

#[cfg(all(test, feature = "docker", feature = "mongodb", feature = "postgres"))]
mod tests {
    use std::path::PathBuf;

    /// Every input a fuzz target found (`fuzz/regressions/TARGET/NAME`), replayed through its
    /// entry point: it must return, an error being a fine answer.
    #[test]
    fn fuzzing_regressions_return() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
        type Entry = fn(&[u8]);
        let targets: [(&str, Entry); 4] = [
            ("tar_scan", super::tar_scan),
            ("mongo_archive", super::mongo_archive),
            ("pg_archive", super::pg_archive),
            ("globals_script", super::globals_script),
        ];
        let mut ran = 0;
        for (target, entry) in targets {
            let Ok(dir) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            let mut files: Vec<PathBuf> = dir.map(|e| e.unwrap().path()).collect();
            files.sort();
            for f in files {
                let data = std::fs::read(&f).unwrap();
                let r = std::panic::catch_unwind(|| entry(&data));
                assert!(r.is_ok(), "{target}: {} panics", f.display());
                ran += 1;
            }
        }
        eprintln!("{ran} fuzz regression inputs replayed");
    }

    #[test]
    fn fuzzing_entry_points_take_valid_and_empty_inputs() {
        use crate::docker::tar::build::{archive, entry};
        for f in [
            super::tar_scan,
            super::mongo_archive,
            super::pg_archive,
            super::globals_script,
        ] {
            f(b"");
            f(&[0u8; 1024]);
        }
        super::tar_scan(&archive(&[
            entry("./", b'5', "", b""),
            entry("./a", b'0', "", b"hello"),
            entry("./l", b'2', "a", b""),
        ]));
        super::globals_script(b"SET client_encoding = 'UTF8';\nCREATE ROLE app;\n");
    }
}
