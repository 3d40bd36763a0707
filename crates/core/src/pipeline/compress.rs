use std::fmt;
use std::str::FromStr;

use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder, ZstdDecoder, ZstdEncoder};
use async_compression::zstd::CParameter;
use async_compression::Level;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufRead;

use crate::{BoxRead, Error};

/// Input bytes per job of the multi-threaded zstd encoder.
const ZSTD_JOB_SIZE: u32 = 1 << 20;

/// How stored archives are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Zstandard (default; level 3, multi-threaded).
    #[default]
    Zstd,
    /// gzip (for tools that only read gzip).
    Gzip,
    /// Stored as is.
    None,
}

impl Compression {
    /// The suffix added to the data key: `.zst`, `.gz` or nothing.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".zst",
            Compression::Gzip => ".gz",
            Compression::None => "",
        }
    }

    /// The levels the codec takes (zstd 1-19, gzip 1-9); `None` for `none`.
    pub fn level_range(self) -> Option<std::ops::RangeInclusive<i32>> {
        match self {
            Compression::Zstd => Some(1..=19),
            Compression::Gzip => Some(1..=9),
            Compression::None => None,
        }
    }

    /// The level a backup records: the configured one, or the codec's default (zstd 3,
    /// gzip 6); `None` for `none`.
    pub fn effective_level(self, level: Option<i32>) -> Option<i32> {
        match self {
            Compression::Zstd => Some(level.unwrap_or(3)),
            Compression::Gzip => Some(level.unwrap_or(6)),
            Compression::None => None,
        }
    }

    /// Wrap a raw stream so that reading it yields compressed bytes.
    pub(crate) fn encoder<R: AsyncBufRead + Send + Unpin + 'static>(
        self,
        raw: R,
        level: Option<i32>,
    ) -> BoxRead {
        match self {
            Compression::Zstd => {
                let workers = std::thread::available_parallelism()
                    .map(|n| n.get().min(4) as u32)
                    .unwrap_or(1);
                let level = Level::Precise(level.unwrap_or(3));
                if workers > 1 {
                    // Jobs of 1 MiB instead of zstd's default (4 x window, 8 MiB at level 3):
                    // each worker holds its job's input and output, so this keeps the
                    // compressor to a few MiB whatever the archive size (docs/benchmarks-s3.md).
                    Box::new(ZstdEncoder::with_quality_and_params(
                        raw,
                        level,
                        &[
                            CParameter::nb_workers(workers),
                            CParameter::job_size(ZSTD_JOB_SIZE),
                        ],
                    ))
                } else {
                    Box::new(ZstdEncoder::with_quality(raw, level))
                }
            }
            Compression::Gzip => Box::new(GzipEncoder::with_quality(
                raw,
                level.map(Level::Precise).unwrap_or(Level::Default),
            )),
            Compression::None => Box::new(raw),
        }
    }

    /// Wrap a stored stream so that reading it yields the raw bytes.
    pub(crate) fn decoder<R: AsyncBufRead + Send + Unpin + 'static>(self, stored: R) -> BoxRead {
        match self {
            Compression::Zstd => {
                let mut d = ZstdDecoder::new(stored);
                d.multiple_members(true);
                Box::new(d)
            }
            Compression::Gzip => {
                let mut d = GzipDecoder::new(stored);
                d.multiple_members(true);
                Box::new(d)
            }
            Compression::None => Box::new(stored),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        })
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            other => Err(Error::config(format!(
                "unknown compression {other:?}: use zstd, gzip or none"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, BufReader};

    #[tokio::test]
    async fn roundtrip_each() {
        let data: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let mut enc = c.encoder(BufReader::new(std::io::Cursor::new(data.clone())), None);
            let mut stored = Vec::new();
            enc.read_to_end(&mut stored).await.unwrap();
            if c != Compression::None {
                assert!(stored.len() < data.len() / 2, "{c} did not compress");
            }
            let mut dec = c.decoder(BufReader::new(std::io::Cursor::new(stored)));
            let mut back = Vec::new();
            dec.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data, "{c}");
        }
    }
}
