//! Encryption at rest with age (<https://age-encryption.org/v1>): the job's
//! `encryption = { recipients, recipients_file, identity_file }`, the keys it loads, the
//! streaming encryptor of the backup pipeline and the streaming decryptor of every read.
//! The archive is a standard age file: `age -d -i key data.pgdump.zst.age | zstd -d` reads it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use sha2::Digest;

use crate::{BoxRead, Error, ErrorKind, Manifest, Result};

/// The `encryption` value of manifests whose archive is an age file.
pub const AGE: &str = "age";

/// A job's `encryption` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age recipients (`age1...`) and SSH public keys (`ssh-ed25519 ...`, `ssh-rsa ...`).
    #[serde(default)]
    pub recipients: Vec<String>,
    /// A file of recipients, one per line (`#` comments), as `age -R` reads.
    #[serde(default)]
    pub recipients_file: Option<PathBuf>,
    /// The private key file (age identities, or an unencrypted OpenSSH private key), needed
    /// to restore, drill and fully verify; hosts that only back up do without it.
    #[serde(default)]
    pub identity_file: Option<PathBuf>,
}

impl EncryptionConfig {
    /// Check what can be checked at load without reading files: some recipient is named, and
    /// the inline ones parse.
    pub fn validate(&self, what: &str) -> Result<()> {
        if self.recipients.is_empty() && self.recipients_file.is_none() {
            return Err(Error::config(format!(
                "{what}: no recipient: set recipients = [\"age1...\"] or recipients_file"
            )));
        }
        for (i, r) in self.recipients.iter().enumerate() {
            parse_recipient(r, &format!("{what}.recipients[{i}]"))?;
        }
        Ok(())
    }
}

/// A public recipient with its fingerprint.
struct Recipient {
    key: Box<dyn age::Recipient + Send + Sync>,
    fingerprint: String,
}

/// The keys of a job: whom new backups are encrypted to, and (when this host has it) the
/// identity that opens them. Never prints key material.
pub struct Keys {
    recipients: Vec<Recipient>,
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    identity_file: Option<PathBuf>,
    /// Notes for the operator (a group- or world-readable identity file).
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("recipients", &self.fingerprints())
            .field("identity_file", &self.identity_file)
            .finish()
    }
}

/// A recipient's public fingerprint: its type and the first 16 hex digits of the sha256 of
/// its canonical text. Public; recorded in manifests to say which key set a backup needs.
pub fn fingerprint(recipient: &str) -> String {
    let text = recipient
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ");
    let kind = if text.starts_with("age1") {
        "age"
    } else {
        text.split(' ').next().unwrap_or("key")
    };
    let digest = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    format!("{kind}:{}", &digest[..16])
}

/// The short name of a key set (the fingerprints of a manifest): `list` and `status` show it.
pub fn key_set(fingerprints: &[String]) -> String {
    let mut sorted = fingerprints.to_vec();
    sorted.sort();
    let digest = hex::encode(sha2::Sha256::digest(sorted.join("\n").as_bytes()));
    format!("keys:{}", &digest[..8])
}

fn parse_recipient(text: &str, what: &str) -> Result<Recipient> {
    let text = text.trim();
    let key: Box<dyn age::Recipient + Send + Sync> = if text.starts_with("age1") {
        Box::new(
            text.parse::<age::x25519::Recipient>()
                .map_err(|e| Error::config(format!("{what}: not an age recipient: {e}")))?,
        )
    } else if text.starts_with("ssh-") {
        Box::new(text.parse::<age::ssh::Recipient>().map_err(|e| {
            Error::config(format!(
                "{what}: not a usable SSH public key ({e:?}): use ssh-ed25519 or ssh-rsa"
            ))
        })?)
    } else {
        return Err(Error::config(format!(
            "{what}: {:?}... is neither an age recipient (age1...) nor an SSH public key",
            text.chars().take(8).collect::<String>()
        )));
    };
    Ok(Recipient {
        key,
        fingerprint: fingerprint(text),
    })
}

/// Read a key file, refusing more than 1 MiB; warn when others can read a private one.
fn read_key_file(
    path: &Path,
    what: &str,
    private: bool,
    warnings: &mut Vec<String>,
) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .map_err(|e| Error::config(format!("{what}: cannot read {}: {e}", path.display())))?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = file.metadata() {
            if meta.permissions().mode() & 0o077 != 0 {
                warnings.push(format!(
                    "{what}: {} can be read by other users (mode {:o}): chmod 600 it",
                    path.display(),
                    meta.permissions().mode() & 0o777
                ));
            }
        }
    }
    let mut text = String::new();
    file.take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| Error::config(format!("{what}: cannot read {}: {e}", path.display())))?;
    Ok(text)
}

/// Load identities from a file: age identities (`AGE-SECRET-KEY-1...`) or one unencrypted
/// OpenSSH private key.
fn load_identities(
    path: &Path,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>> {
    let text = read_key_file(path, what, true, warnings)?;
    let bad = |why: String| Error::config(format!("{what}: {}: {why}", path.display()));
    if text.trim_start().starts_with("-----BEGIN") {
        let name = Some(path.display().to_string());
        let id = age::ssh::Identity::from_buffer(std::io::Cursor::new(text.as_bytes()), name)
            .map_err(|_| bad("not a readable SSH private key".into()))?;
        if matches!(id, age::ssh::Identity::Encrypted(_)) {
            return Err(bad(
                "the SSH key is passphrase-protected: use an unencrypted key file for drkit".into(),
            ));
        }
        if matches!(id, age::ssh::Identity::Unsupported(_)) {
            return Err(bad("this SSH key type is not supported by age".into()));
        }
        return Ok(vec![Box::new(id)]);
    }
    let mut out: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let id = line
            .parse::<age::x25519::Identity>()
            // The parse error never contains the line (it is a secret).
            .map_err(|_| bad("a line is not an age identity (AGE-SECRET-KEY-1...)".into()))?;
        out.push(Box::new(id));
    }
    if out.is_empty() {
        return Err(bad("no identity in the file".into()));
    }
    Ok(out)
}

impl Keys {
    /// Load the keys of `cfg` (`what` names the table in errors). `identity` overrides the
    /// table's `identity_file` (`--identity FILE`).
    pub fn load(cfg: &EncryptionConfig, what: &str, identity: Option<&Path>) -> Result<Keys> {
        let mut recipients = Vec::new();
        for (i, r) in cfg.recipients.iter().enumerate() {
            recipients.push(parse_recipient(r, &format!("{what}.recipients[{i}]"))?);
        }
        let mut warnings = Vec::new();
        if let Some(path) = &cfg.recipients_file {
            let what = format!("{what}.recipients_file");
            let text = read_key_file(path, &what, false, &mut warnings)?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    recipients.push(parse_recipient(line, &what)?);
                }
            }
        }
        if recipients.is_empty() {
            return Err(Error::config(format!(
                "{what}: no recipient: set recipients = [\"age1...\"] or recipients_file"
            )));
        }
        let identity_file = identity
            .map(Path::to_path_buf)
            .or_else(|| cfg.identity_file.clone());
        let label = match identity {
            Some(_) => "--identity".to_string(),
            None => format!("{what}.identity_file"),
        };
        let identities = match &identity_file {
            Some(p) => load_identities(p, &label, &mut warnings)?,
            None => Vec::new(),
        };
        Ok(Keys {
            recipients,
            identities,
            identity_file,
            warnings,
        })
    }

    /// Keys that only open archives (`--identity FILE` for a job without an `encryption`
    /// table, e.g. on a host rebuilt from scratch): no recipient.
    pub fn identity_only(path: &Path) -> Result<Keys> {
        let mut warnings = Vec::new();
        let identities = load_identities(path, "--identity", &mut warnings)?;
        Ok(Keys {
            recipients: Vec::new(),
            identities,
            identity_file: Some(path.to_path_buf()),
            warnings,
        })
    }

    /// The fingerprints of the recipients new backups are encrypted to.
    pub fn fingerprints(&self) -> Vec<String> {
        self.recipients
            .iter()
            .map(|r| r.fingerprint.clone())
            .collect()
    }

    /// Whether this host can open archives (an identity is loaded).
    pub fn can_decrypt(&self) -> bool {
        !self.identities.is_empty()
    }

    /// Whether new backups can be encrypted (recipients are set).
    pub fn can_encrypt(&self) -> bool {
        !self.recipients.is_empty()
    }

    /// A streaming encryptor to the recipients.
    pub fn encryptor(&self) -> Result<Encrypting> {
        let enc = age::Encryptor::with_recipients(
            self.recipients
                .iter()
                .map(|r| r.key.as_ref() as &dyn age::Recipient),
        )
        .map_err(|e| Error::config(format!("cannot encrypt to these recipients: {e}")))?;
        let out = Shared::default();
        let writer = enc
            .wrap_output(out.clone())
            .map_err(|e| Error::new(ErrorKind::Source, format!("age: {e}")))?;
        Ok(Encrypting {
            writer: Some(writer),
            out,
        })
    }

    /// The file key of an age header, unwrapped with this host's identities (for `rekey`).
    pub(crate) fn unwrap(
        &self,
        stanzas: &[age_core::format::Stanza],
    ) -> Option<age_core::format::FileKey> {
        self.identities
            .iter()
            .find_map(|id| id.unwrap_stanzas(stanzas))
            .and_then(|r| r.ok())
    }

    /// The stanzas that give `file_key` to this key set's recipients (for `rekey`).
    pub(crate) fn wrap(
        &self,
        file_key: &age_core::format::FileKey,
    ) -> Result<Vec<age_core::format::Stanza>> {
        let mut out = Vec::new();
        for r in &self.recipients {
            let (stanzas, _) = r
                .key
                .wrap_file_key(file_key)
                .map_err(|e| Error::config(format!("cannot encrypt to {}: {e}", r.fingerprint)))?;
            out.extend(stanzas);
        }
        Ok(out)
    }

    /// Open the age stream `stored` of `manifest`: its plaintext, or an integrity error when
    /// no identity of this host opens it (a config error when there is none).
    pub(crate) async fn decrypt(&self, manifest: &Manifest, stored: BoxRead) -> Result<BoxRead> {
        use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
        if !self.can_decrypt() {
            return Err(missing_identity(manifest));
        }
        // The header is read and checked here first, at most MAX_HEADER bytes: the age crate
        // buffers a header line by line without a bound, and an attacker's archive could
        // make that line as long as the object.
        let mut stored = stored;
        let mut head = Vec::with_capacity(4096);
        tokio::io::AsyncReadExt::read_to_end(
            &mut tokio::io::AsyncReadExt::take(&mut stored, MAX_HEADER as u64),
            &mut head,
        )
        .await
        .map_err(|e| crate::from_io(e, ErrorKind::Storage, "reading the archive"))?;
        parse_header(&head).map_err(|why| {
            Error::integrity(format!(
                "backup {}/{} is corrupt: its age header cannot be read ({why})",
                manifest.job, manifest.id
            ))
        })?;
        let stored: BoxRead = Box::new(tokio::io::AsyncReadExt::chain(
            std::io::Cursor::new(head),
            stored,
        ));
        let buffered = tokio::io::BufReader::with_capacity(super::pipeline::CHUNK, stored);
        let decryptor = age::Decryptor::new_async_buffered(buffered.compat())
            .await
            .map_err(|e| decrypt_error(manifest, self, e))?;
        let reader = decryptor
            .decrypt_async(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| decrypt_error(manifest, self, e))?;
        Ok(Box::new(reader.compat()))
    }
}

/// The error for an encrypted backup read by a host without an identity.
pub fn missing_identity(manifest: &Manifest) -> Error {
    Error::config(format!(
        "backup {}/{} is encrypted ({}): set job.{}.encryption.identity_file, or pass --identity FILE",
        manifest.job,
        manifest.id,
        key_set(&manifest.data.recipients),
        manifest.job
    ))
}

fn decrypt_error(manifest: &Manifest, keys: &Keys, e: age::DecryptError) -> Error {
    let file = keys
        .identity_file
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    match e {
        age::DecryptError::NoMatchingKeys => Error::integrity(format!(
            "backup {}/{}: the identity in {file} does not open it: it was encrypted to {} ({}); use the identity of that key set",
            manifest.job,
            manifest.id,
            key_set(&manifest.data.recipients),
            manifest.data.recipients.join(", ")
        )),
        other => Error::integrity(format!(
            "backup {}/{} is corrupt: its age header cannot be read ({other})",
            manifest.job, manifest.id
        )),
    }
}

/// The longest age header `rekey` reads: a few dozen recipients fit many times over.
pub const MAX_HEADER: usize = 64 * 1024;

const INTRO: &[u8] = b"age-encryption.org/v1\n";

/// An age header: its stanzas, and where it ends in the file (the nonce and payload follow).
pub struct Header {
    stanzas: Vec<age_core::format::Stanza>,
    mac: Vec<u8>,
    /// Bytes up to and including `---` (what the MAC covers).
    macced: usize,
    /// The whole header, the MAC line's newline included.
    pub len: usize,
}

/// Parse the age header at the start of `bytes` (at most [`MAX_HEADER`] of the archive).
/// Written here because the age crate does not expose header rewriting: `rekey` replaces
/// the recipients' stanzas and the MAC and leaves the nonce and payload untouched, as the
/// format allows (the payload key depends only on the file key and the nonce).
pub fn parse_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    if !bytes.starts_with(INTRO) {
        return Err("not an age v1 file".into());
    }
    let mut pos = INTRO.len();
    let line = |pos: &mut usize| -> std::result::Result<&[u8], String> {
        let rest = &bytes[*pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("the header is longer than drkit reads, or cut short")?;
        *pos += end + 1;
        Ok(&rest[..end])
    };
    let mut stanzas = Vec::new();
    loop {
        let start = pos;
        let l = line(&mut pos)?;
        if let Some(mac) = l.strip_prefix(b"--- ") {
            let mac = b64
                .decode(mac)
                .map_err(|_| "the header MAC is not base64")?;
            return Ok(Header {
                stanzas,
                mac,
                macced: start + 3,
                len: pos,
            });
        }
        let Some(head) = l.strip_prefix(b"-> ") else {
            return Err("a header line is neither a stanza nor the MAC".into());
        };
        let head = std::str::from_utf8(head).map_err(|_| "a stanza is not text")?;
        let mut words = head.split(' ').map(str::to_string);
        let tag = words
            .next()
            .filter(|t| !t.is_empty())
            .ok_or("a stanza has no type")?;
        let args: Vec<String> = words.collect();
        let mut body = Vec::new();
        loop {
            let l = line(&mut pos)?;
            if l.len() > 64 {
                return Err("a stanza body line is too long".into());
            }
            body.extend(b64.decode(l).map_err(|_| "a stanza body is not base64")?);
            if l.len() < 64 {
                break;
            }
        }
        stanzas.push(age_core::format::Stanza { tag, args, body });
    }
}

/// The header text of `stanzas` with its MAC under `file_key`.
fn write_header(
    stanzas: &[age_core::format::Stanza],
    file_key: &age_core::format::FileKey,
) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut out = INTRO.to_vec();
    for s in stanzas {
        out.extend_from_slice(b"-> ");
        out.extend_from_slice(s.tag.as_bytes());
        for a in &s.args {
            out.push(b' ');
            out.extend_from_slice(a.as_bytes());
        }
        out.push(b'\n');
        let body = b64.encode(&s.body);
        for chunk in body.as_bytes().chunks(64) {
            out.extend_from_slice(chunk);
            out.push(b'\n');
        }
        if body.len() % 64 == 0 {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"---");
    let mac = header_mac(file_key, &out);
    out.push(b' ');
    out.extend_from_slice(b64.encode(mac).as_bytes());
    out.push(b'\n');
    out
}

fn header_mac(file_key: &age_core::format::FileKey, macced: &[u8]) -> Vec<u8> {
    use age_core::secrecy::ExposeSecret;
    use hmac::Mac;
    let key = age_core::primitives::hkdf(&[], b"header", file_key.expose_secret());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key");
    mac.update(macced);
    mac.finalize().into_bytes().to_vec()
}

impl Keys {
    /// A new header for the archive whose header is `old` (the first bytes of the file): the
    /// file key opened with this host's identity (`from`), the old MAC checked, and wrapped
    /// again for `to`'s recipients. An integrity error when no identity opens it or the MAC
    /// does not match.
    pub fn rekey_header(
        from: &Keys,
        to: &Keys,
        old: &[u8],
        header: &Header,
        what: &str,
    ) -> Result<Vec<u8>> {
        use hmac::Mac;
        let file_key = from.unwrap(&header.stanzas).ok_or_else(|| {
            Error::integrity(format!(
                "{what}: the identity given does not open it (pass --identity with the identity of its current key set)"
            ))
        })?;
        let key = {
            use age_core::secrecy::ExposeSecret;
            age_core::primitives::hkdf(&[], b"header", file_key.expose_secret())
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key");
        mac.update(&old[..header.macced]);
        mac.verify_slice(&header.mac).map_err(|_| {
            Error::integrity(format!(
                "{what}: its age header was altered (the MAC does not match)"
            ))
        })?;
        Ok(write_header(&to.wrap(&file_key)?, &file_key))
    }
}

/// A shared byte buffer the age writer writes into and the pipeline drains.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The encryptor of one archive: plaintext chunks in, ciphertext out, in the age STREAM
/// format (64 KiB chunks): memory stays at one chunk and the bytes not yet taken.
pub struct Encrypting {
    writer: Option<age::stream::StreamWriter<Shared>>,
    out: Shared,
}

impl Encrypting {
    /// Encrypt `plain`; returns the ciphertext ready so far (may be empty).
    pub fn push(&mut self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        self.writer
            .as_mut()
            .expect("not finished")
            .write_all(plain)?;
        Ok(std::mem::take(
            &mut *self.out.0.lock().expect("not poisoned"),
        ))
    }

    /// End the stream (the last chunk and its tag); returns the last ciphertext.
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let w = self.writer.take().expect("finished once");
        w.finish()?;
        Ok(std::mem::take(
            &mut *self.out.0.lock().expect("not poisoned"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_identity() -> String {
        use age::secrecy::ExposeSecret;
        age::x25519::Identity::generate()
            .to_string()
            .expose_secret()
            .to_string()
    }

    fn keys(dir: &Path, identity: Option<&str>, id: &str) -> Keys {
        let id: age::x25519::Identity = id.parse().unwrap();
        let cfg = EncryptionConfig {
            recipients: vec![id.to_public().to_string()],
            recipients_file: None,
            identity_file: identity.map(|text| {
                let p = dir.join("key.txt");
                std::fs::write(&p, text).unwrap();
                p
            }),
        };
        Keys::load(&cfg, "job.a.encryption", None).unwrap()
    }

    #[test]
    fn fingerprints_are_stable_and_public() {
        let id: age::x25519::Identity = new_identity().parse().unwrap();
        let r = id.to_public().to_string();
        let f = fingerprint(&r);
        assert!(f.starts_with("age:") && f.len() == 20, "{f}");
        assert_eq!(f, fingerprint(&format!("  {r} ")));
        assert_eq!(
            fingerprint("ssh-ed25519 AAAAC3Nza comment")
                .split(':')
                .next(),
            Some("ssh-ed25519")
        );
        assert_eq!(
            fingerprint("ssh-ed25519 AAAAC3Nza a"),
            fingerprint("ssh-ed25519 AAAAC3Nza b")
        );
        assert_eq!(
            key_set(&["b".into(), "a".into()]),
            key_set(&["a".into(), "b".into()])
        );
    }

    #[test]
    fn bad_settings_are_one_line_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let cases: Vec<(EncryptionConfig, &str)> = vec![
            (
                EncryptionConfig {
                    recipients: vec![],
                    recipients_file: None,
                    identity_file: None,
                },
                "no recipient",
            ),
            (
                EncryptionConfig {
                    recipients: vec!["bogus".into()],
                    recipients_file: None,
                    identity_file: None,
                },
                "neither an age recipient",
            ),
            (
                EncryptionConfig {
                    recipients: vec!["age1xyz".into()],
                    recipients_file: None,
                    identity_file: None,
                },
                "not an age recipient",
            ),
        ];
        for (cfg, want) in cases {
            let e = Keys::load(&cfg, "job.a.encryption", None).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
        }
        let p = dir.path().join("bad.txt");
        std::fs::write(&p, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
        let e = Keys::identity_only(&p).unwrap_err().to_string();
        assert!(
            e.contains("not an age identity") && !e.contains("NOTAKEY"),
            "{e}"
        );
    }

    #[test]
    fn a_loose_identity_file_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let secret = new_identity();
        let k = keys(dir.path(), Some(&secret), &secret);
        let p = dir.path().join("key.txt");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = Keys::identity_only(&p).unwrap();
        assert!(
            loose.warnings.iter().any(|w| w.contains("chmod 600")),
            "{:?}",
            loose.warnings
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Keys::identity_only(&p).unwrap().warnings.is_empty());
        assert!(k.can_decrypt() && k.can_encrypt());
        assert!(!format!("{k:?}").contains("AGE-SECRET"));
        assert!(!format!("{k:?}").contains(&secret[15..]));
    }

    #[test]
    fn a_rekeyed_header_opens_with_the_new_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (new_identity(), new_identity());
        let old = keys(dir.path(), Some(&a), &a);
        let dir_b = tempfile::tempdir().unwrap();
        let new = keys(dir_b.path(), Some(&b), &b);
        let plain = crate::testing::noise(200_000, 3);
        let mut enc = old.encryptor().unwrap();
        let mut cipher = enc.push(&plain).unwrap();
        cipher.extend(enc.finish().unwrap());
        let header = parse_header(&cipher).unwrap();
        let fresh = Keys::rekey_header(&old, &new, &cipher, &header, "x").unwrap();
        let mut rekeyed = fresh.clone();
        rekeyed.extend_from_slice(&cipher[header.len..]);
        let id_a: age::x25519::Identity = a.parse().unwrap();
        let id_b: age::x25519::Identity = b.parse().unwrap();
        assert_eq!(age::decrypt(&id_b, &rekeyed).unwrap(), plain);
        assert!(age::decrypt(&id_a, &rekeyed).is_err());
        // The new header parses back to the same length; the payload is untouched.
        assert_eq!(parse_header(&rekeyed).unwrap().len, fresh.len());
        // The wrong identity, an altered MAC, junk: integrity errors, never a panic.
        let e = Keys::rekey_header(&new, &new, &cipher, &header, "x").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Integrity);
        let mut bad = cipher.clone();
        let at = header.len - 5;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        // An altered MAC either does not parse or does not match.
        if let Ok(h) = parse_header(&bad) {
            assert_eq!(
                Keys::rekey_header(&old, &new, &bad, &h, "x")
                    .unwrap_err()
                    .kind(),
                ErrorKind::Integrity
            );
        }
        // An altered stanza parses, and then its MAC (or its unwrap) fails.
        let mut bad = cipher.clone();
        let at = INTRO.len() + 40;
        bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
        let h = parse_header(&bad).expect("still a header");
        assert_eq!(
            Keys::rekey_header(&old, &new, &bad, &h, "x")
                .unwrap_err()
                .kind(),
            ErrorKind::Integrity
        );
        for junk in [
            &b"hello"[..],
            b"age-encryption.org/v1\n-> X25519\n",
            b"age-encryption.org/v1\nxx\n",
        ] {
            assert!(parse_header(junk).is_err());
        }
    }

    #[tokio::test]
    async fn a_header_without_end_is_refused_after_max_header_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let secret = new_identity();
        let k = keys(dir.path(), Some(&secret), &secret);
        let m: Manifest = serde_json::from_value(serde_json::json!({
            "format_version": 2, "id": "20261203T020000Z-abcdef", "job": "db", "driver": "sqlite",
            "started_at": "2026-12-03T02:00:00Z", "finished_at": "2026-12-03T02:00:01Z",
            "data": {"key": "db/20261203T020000Z-abcdef/data.sqlite.zst.age", "compression": "zstd",
                     "encryption": "age", "recipients": ["age:0123456789abcdef"], "raw_size": 1,
                     "raw_sha256": "00", "stored_size": 1, "stored_sha256": "11"},
            "source": {}, "stats": {}, "warnings": [], "drkit_version": "0.1.0", "host": "h"
        }))
        .unwrap();
        // An "age file" whose first line never ends: 16 MiB of it.
        let mut junk = INTRO.to_vec();
        junk.extend(std::iter::repeat_n(b'a', 16 << 20));
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Counting(std::io::Cursor::new(junk), read.clone());
        let e = match k.decrypt(&m, Box::new(counted)).await {
            Err(e) => e,
            Ok(_) => panic!("a header without end was accepted"),
        };
        assert_eq!(e.kind(), ErrorKind::Integrity, "{e}");
        assert!(e.to_string().contains("age header"), "{e}");
        let n = read.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            n <= MAX_HEADER as u64 + 64 * 1024,
            "read {n} bytes of a bad header"
        );
    }

    /// A reader that counts what was read from it.
    struct Counting(std::io::Cursor<Vec<u8>>, Arc<std::sync::atomic::AtomicU64>);

    impl tokio::io::AsyncRead for Counting {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let before = buf.filled().len();
            let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
            let n = (buf.filled().len() - before) as u64;
            self.1.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            r
        }
    }

    #[test]
    fn what_is_encrypted_in_chunks_is_a_standard_age_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = new_identity();
        let k = keys(dir.path(), Some(&secret), &secret);
        let plain = crate::testing::noise(300_000, 7);
        let mut enc = k.encryptor().unwrap();
        let mut cipher = Vec::new();
        for chunk in plain.chunks(10_000) {
            cipher.extend(enc.push(chunk).unwrap());
        }
        cipher.extend(enc.finish().unwrap());
        assert!(cipher.starts_with(b"age-encryption.org/v1\n"));
        let id: age::x25519::Identity = secret.parse().unwrap();
        let back = age::decrypt(&id, &cipher).unwrap();
        assert_eq!(back, plain);
    }
}
