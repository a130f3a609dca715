//! Integrity of part files: a CRC-32C of every stored latent (kept in the
//! file, beside the latent), and a SHA-256 of every whole file (kept in the
//! output directory's manifest), computed as the file is written.
//!
//! CRC-32C detects every single-bit flip, and every burst of up to 32 flipped
//! bits, in the bytes it covers; `crc-fast` computes it with the CPU's CRC or
//! carry-less multiply instructions (many GB/s per core), so readers can
//! afford to check every latent they read. SHA-256 (SHA-NI where the CPU has
//! it) covers everything else in a file: page headers, small columns, footer.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The CRC-32C (Castagnoli) of a latent's stored bytes: its whole `.npy`
/// value, header included, as the column holds it.
pub fn latent_checksum(stored: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(stored)
}

/// Lower-case hexadecimal of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A `Write` that hashes (SHA-256) every byte that goes through it: a file's
/// digest, computed while it is written, without reading it back.
pub struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new() }
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The SHA-256 of everything written so far, in hex.
    pub fn hex_digest(&self) -> String {
        hex(&self.hasher.clone().finalize())
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The SHA-256 of the file at `path`, in hex (read front to back in 8 MiB reads).
pub fn file_sha256(path: &Path) -> Result<String> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|e| Error::io(&shown, e))?;
    let meta = file.metadata().map_err(|e| Error::io(&shown, e))?;
    if !meta.is_file() {
        return Err(Error::InvalidArgument(format!("'{shown}' is not a regular file; only files have a digest")));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(&shown, e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value_and_single_bit_flips() {
        // The CRC catalogue's check value of CRC-32/ISCSI.
        assert_eq!(latent_checksum(b"123456789"), 0xe306_9283);
        let data: Vec<u8> = (0..4099u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let want = latent_checksum(&data);
        for bit in (0..data.len() * 8).step_by(7) {
            let mut flipped = data.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_ne!(latent_checksum(&flipped), want, "bit {bit}");
        }
    }

    #[test]
    fn hashing_writer_equals_file_digest() {
        let dir = std::env::temp_dir().join(format!("hpd-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        let mut w = Hashing::new(File::create(&path).unwrap());
        for k in 0..100u32 {
            w.write_all(&k.to_le_bytes().repeat(k as usize * 1000)).unwrap();
        }
        w.flush().unwrap();
        assert_eq!(w.hex_digest(), file_sha256(&path).unwrap());
        std::fs::write(&path, b"abc").unwrap();
        // FIPS 180-2's example digest of "abc".
        assert_eq!(file_sha256(&path).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(file_sha256(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
