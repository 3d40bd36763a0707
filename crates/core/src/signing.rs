//! Signed manifests: an Ed25519 signature beside each manifest, accept record and drill report
//! (`manifest.json.sig`, written before the manifest so the manifest stays last).
//!
//! Whoever can write the storage can forge a backup; checksums in a manifest they also wrote
//! prove nothing. With `signing = { public = "..." }` on a job, drkit accepts only records
//! signed by the matching private key, which never needs to be on the restoring host. The
//! signed message is a context line (`drkit-manifest`, `drkit-accept`, `drkit-drill`) and the
//! record's exact bytes, so a signature of one kind of record never passes for another.

use std::path::{Path, PathBuf};

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::Deserialize;

use crate::{Error, Result};

pub use crate::layout::SIG_SUFFIX;

/// What a signed record is; part of the signed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// A backup's `manifest.json`.
    Manifest,
    /// A backup's `accepted.json`.
    Accept,
    /// A drill report.
    Drill,
}

impl Record {
    fn context(self) -> &'static [u8] {
        match self {
            Record::Manifest => b"drkit-manifest\n",
            Record::Accept => b"drkit-accept\n",
            Record::Drill => b"drkit-drill\n",
        }
    }
}

/// `[job.NAME] signing = { key_file = "...", public = "..." }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningConfig {
    /// The private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes it), on
    /// the hosts that write backups. Relative to the working directory.
    pub key_file: Option<PathBuf>,
    /// The public key: 32 bytes in base64, or a PEM `PUBLIC KEY` block. Without it, the
    /// public half of `key_file` is used.
    pub public: Option<String>,
}

impl SigningConfig {
    /// The signer, when a key file is configured. Its public half must match `public`.
    pub fn signer(&self, what: &str) -> Result<Option<Signer>> {
        let Some(path) = &self.key_file else {
            return Ok(None);
        };
        let signer = Signer::from_file(path)?;
        if let Some(public) = &self.public {
            let want = parse_public(public).map_err(|e| e.context(format!("{what}.public")))?;
            if want != signer.key.verifying_key() {
                return Err(Error::config(format!(
                    "{what}: the public key does not belong to key_file {}: fix one of them",
                    path.display()
                )));
            }
        }
        Ok(Some(signer))
    }

    /// What reading hosts check: the configured public key, else the key file's.
    pub fn trust(&self, what: &str) -> Result<Trust> {
        if let Some(public) = &self.public {
            let key = parse_public(public).map_err(|e| e.context(format!("{what}.public")))?;
            return Ok(Trust { key: Some(key) });
        }
        match self.signer(what)? {
            Some(s) => Ok(Trust {
                key: Some(s.key.verifying_key()),
            }),
            None => Err(Error::config(format!(
                "{what} names neither key_file nor public"
            ))),
        }
    }
}

/// Signs records with a private key.
pub struct Signer {
    key: SigningKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("public", &encode_public(&self.key.verifying_key()))
            .finish()
    }
}

impl Signer {
    /// Read a PKCS#8 PEM private key file.
    pub fn from_file(path: &Path) -> Result<Signer> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read signing key file {}: {e}",
                path.display()
            ))
        })?;
        let key = SigningKey::from_pkcs8_pem(&text).map_err(|_| {
            Error::config(format!(
                "signing key file {} is not an Ed25519 private key in PKCS#8 PEM (make one with `openssl genpkey -algorithm ed25519 -out FILE`)",
                path.display()
            ))
        })?;
        Ok(Signer { key })
    }

    /// A signer from a raw 32-byte seed (tests, embedders that keep keys elsewhere).
    pub fn from_seed(seed: [u8; 32]) -> Signer {
        Signer {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The detached signature file's content for `bytes` of a `record`: base64 and a newline.
    pub fn sign(&self, record: Record, bytes: &[u8]) -> Vec<u8> {
        let sig = self.key.sign(&message(record, bytes));
        let mut out = base64::engine::general_purpose::STANDARD
            .encode(sig.to_bytes())
            .into_bytes();
        out.push(b'\n');
        out
    }

    /// What readers trust: this key's public half.
    pub fn trust(&self) -> Trust {
        Trust {
            key: Some(self.key.verifying_key()),
        }
    }

    /// The public key in base64, as `signing.public` takes it.
    pub fn public_base64(&self) -> String {
        encode_public(&self.key.verifying_key())
    }
}

/// Which signatures a reader accepts: none checked (the storage is trusted blindly) or those
/// of one public key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    key: Option<VerifyingKey>,
}

impl Trust {
    /// No public key: records are not checked.
    pub fn blind() -> Trust {
        Trust { key: None }
    }

    /// Whether records are read without checking a signature.
    pub fn is_blind(&self) -> bool {
        self.key.is_none()
    }

    /// Check `sig` (the signature file's content, `None` when missing) of `bytes`. Without a
    /// public key, anything passes. The error says what is wrong; the caller names the record.
    pub fn check(&self, record: Record, bytes: &[u8], sig: Option<&[u8]>) -> Result<()> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let Some(sig) = sig else {
            return Err(Error::integrity(
                "its signature is missing, and this job requires signed records",
            ));
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(sig).trim())
            .map_err(|_| Error::integrity("its signature file is not base64"))?;
        let raw: [u8; 64] = raw
            .try_into()
            .map_err(|_| Error::integrity("its signature file does not hold 64 bytes"))?;
        key.verify(&message(record, bytes), &Signature::from_bytes(&raw))
            .map_err(|_| {
                Error::integrity(
                    "its signature does not match (the record was changed, or signed by another key)",
                )
            })
    }
}

fn message(record: Record, bytes: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(bytes.len() + 16);
    m.extend_from_slice(record.context());
    m.extend_from_slice(bytes);
    m
}

fn encode_public(key: &VerifyingKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// Parse a public key: 32 bytes in base64, or a PEM `PUBLIC KEY` block.
pub fn parse_public(s: &str) -> Result<VerifyingKey> {
    let s = s.trim();
    if s.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(s)
            .map_err(|_| Error::config("the PEM public key is not an Ed25519 key"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|_| Error::config("the public key is neither base64 nor PEM"))?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| Error::config("the public key must be 32 bytes (base64) or PEM"))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| Error::config("the public key is not valid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn sign_and_check() {
        let signer = Signer::from_seed([7; 32]);
        let trust = signer.trust();
        let sig = signer.sign(Record::Manifest, b"{\"id\":1}");
        assert!(trust
            .check(Record::Manifest, b"{\"id\":1}", Some(&sig))
            .is_ok());
        type Case<'a> = (Record, &'a [u8], Option<&'a [u8]>, &'a str);
        let cases: Vec<Case> = vec![
            (
                Record::Manifest,
                b"{\"id\":2}",
                Some(&sig),
                "does not match",
            ),
            (Record::Accept, b"{\"id\":1}", Some(&sig), "does not match"),
            (Record::Manifest, b"{\"id\":1}", None, "missing"),
            (Record::Manifest, b"{\"id\":1}", Some(b"!!"), "not base64"),
            (Record::Manifest, b"{\"id\":1}", Some(b"AAAA"), "64 bytes"),
        ];
        for (record, bytes, sig, want) in cases {
            let e = trust.check(record, bytes, sig).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Integrity);
            assert!(e.to_string().contains(want), "{e}");
        }
        let other = Signer::from_seed([8; 32]).trust();
        assert!(other
            .check(Record::Manifest, b"{\"id\":1}", Some(&sig))
            .is_err());
        assert!(Trust::blind().check(Record::Manifest, b"x", None).is_ok());
    }

    #[test]
    fn public_keys() {
        let signer = Signer::from_seed([9; 32]);
        let b64 = signer.public_base64();
        assert_eq!(Some(parse_public(&b64).unwrap()), signer.trust().key);
        for bad in ["", "not base64!", "AAAA"] {
            assert_eq!(parse_public(bad).unwrap_err().kind(), ErrorKind::Config);
        }
        let cfg = SigningConfig {
            key_file: None,
            public: Some(b64),
        };
        assert_eq!(cfg.trust("job.a.signing").unwrap(), signer.trust());
        assert!(cfg.signer("job.a.signing").unwrap().is_none());
        let none = SigningConfig::default();
        assert!(none.trust("job.a.signing").is_err());
    }
}
