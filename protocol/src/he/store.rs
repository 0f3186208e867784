//! Offline material on disk: one file per layer and party, streamed so that
//! large models never hold all layers' shares in memory.
//!
//! File `layer-NNNN.<role>.bin`: magic `PIHE`, format version `u32`, role
//! `u8` (0 client `c`, 1 server `s`), layer `u32`, element count `u64`, then
//! the elements as little-endian `u64` (each `< P`). Reading checks every
//! header field, the exact file length and the range of every element.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::error::HeError;
use pibench_models::fixed::P;

const MAGIC: &[u8; 4] = b"PIHE";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 4 + 4 + 1 + 4 + 8;

/// Which party's share a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The client's `c = M·r − s`.
    Client,
    /// The server's `s`.
    Server,
}

impl Role {
    fn tag(self) -> u8 {
        match self {
            Role::Client => 0,
            Role::Server => 1,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// A directory of per-layer share files.
#[derive(Debug, Clone)]
pub struct OfflineStore {
    dir: PathBuf,
}

impl OfflineStore {
    /// Opens (creating if needed) a store directory.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, HeError> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| HeError::Store {
            path: dir.display().to_string(),
            reason: format!("cannot create directory: {e}"),
        })?;
        Ok(Self { dir })
    }

    /// Path of one layer's file.
    pub fn path(&self, role: Role, layer: u32) -> PathBuf {
        self.dir
            .join(format!("layer-{layer:04}.{}.bin", role.name()))
    }

    /// Writes one layer's share.
    pub fn write(&self, role: Role, layer: u32, values: &[u64]) -> Result<(), HeError> {
        let path = self.path(role, layer);
        let err = |e: std::io::Error| HeError::Store {
            path: path.display().to_string(),
            reason: format!("write failed: {e}"),
        };
        let mut w = BufWriter::new(File::create(&path).map_err(err)?);
        w.write_all(MAGIC).map_err(err)?;
        w.write_all(&VERSION.to_le_bytes()).map_err(err)?;
        w.write_all(&[role.tag()]).map_err(err)?;
        w.write_all(&layer.to_le_bytes()).map_err(err)?;
        w.write_all(&(values.len() as u64).to_le_bytes())
            .map_err(err)?;
        for v in values {
            w.write_all(&v.to_le_bytes()).map_err(err)?;
        }
        w.flush().map_err(err)
    }

    /// Reads one layer's share, which must have exactly `expected_len` elements.
    pub fn read(&self, role: Role, layer: u32, expected_len: usize) -> Result<Vec<u64>, HeError> {
        let path = self.path(role, layer);
        let bad = |reason: String| HeError::Store {
            path: path.display().to_string(),
            reason,
        };
        let file = File::open(&path).map_err(|e| bad(format!("cannot open: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| bad(format!("cannot stat: {e}")))?
            .len();
        let expected_bytes = HEADER_LEN + 8 * expected_len as u64;
        if len != expected_bytes {
            return Err(bad(format!(
                "file has {len} bytes, expected {expected_bytes} for {expected_len} elements"
            )));
        }
        let mut r = BufReader::new(file);
        let mut header = [0u8; HEADER_LEN as usize];
        r.read_exact(&mut header)
            .map_err(|e| bad(format!("reading the header: {e}")))?;
        if &header[0..4] != MAGIC {
            return Err(bad("bad magic at byte offset 0".into()));
        }
        let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version} at byte offset 4, expected {VERSION}"
            )));
        }
        if header[8] != role.tag() {
            return Err(bad(format!(
                "role tag {} at byte offset 8, expected {}",
                header[8],
                role.tag()
            )));
        }
        let got_layer = u32::from_le_bytes([header[9], header[10], header[11], header[12]]);
        if got_layer != layer {
            return Err(bad(format!("holds layer {got_layer}, expected {layer}")));
        }
        let mut cnt = [0u8; 8];
        cnt.copy_from_slice(&header[13..21]);
        let count = u64::from_le_bytes(cnt);
        if count != expected_len as u64 {
            return Err(bad(format!(
                "count {count} at byte offset 13, expected {expected_len}"
            )));
        }
        let mut out = Vec::with_capacity(expected_len);
        let mut buf = [0u8; 8];
        for i in 0..expected_len {
            r.read_exact(&mut buf)
                .map_err(|e| bad(format!("element {i}: {e}")))?;
            let v = u64::from_le_bytes(buf);
            if v >= P {
                return Err(bad(format!(
                    "element {i} at byte offset {} is not reduced mod P",
                    HEADER_LEN + 8 * i as u64
                )));
            }
            out.push(v);
        }
        Ok(out)
    }
}
