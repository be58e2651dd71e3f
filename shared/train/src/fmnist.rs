//! Fashion-MNIST from its IDX files (as Debian's `dataset-fashion-mnist` ships them, gzipped).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

/// Per-pixel normalisation applied to every image (dataset mean and std of x/255).
pub const MEAN: f32 = 0.2860;
pub const STD: f32 = 0.3530;

/// Images (row-major 28×28 bytes each) and labels.
#[derive(Debug)]
pub struct Split {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
    pub rows: usize,
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f).read_to_end(&mut out).with_context(|| format!("gunzip {}", path.display()))?;
    Ok(out)
}

fn be32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Loads `{prefix}-images-idx3-ubyte.gz` and `{prefix}-labels-idx1-ubyte.gz` from `dir`.
pub fn load(dir: &Path, prefix: &str) -> Result<Split> {
    let img = read_gz(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")))?;
    let lab = read_gz(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")))?;
    ensure!(img.len() >= 16 && be32(&img, 0) == 2051, "{prefix} images: bad IDX magic");
    ensure!(lab.len() >= 8 && be32(&lab, 0) == 2049, "{prefix} labels: bad IDX magic");
    let rows = be32(&img, 4);
    if be32(&img, 8) != 28 || be32(&img, 12) != 28 || be32(&lab, 4) != rows {
        bail!("{prefix}: unexpected IDX shapes");
    }
    ensure!(img.len() == 16 + rows * 784 && lab.len() == 8 + rows, "{prefix}: truncated IDX file");
    Ok(Split { images: img[16..].to_vec(), labels: lab[8..].to_vec(), rows })
}

/// Normalised float pixels of the given rows, as N×1×28×28 row-major.
pub fn normalised(split: &Split, rows: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * 784);
    for &r in rows {
        out.extend(split.images[r * 784..(r + 1) * 784].iter().map(|&p| (f32::from(p) / 255.0 - MEAN) / STD));
    }
    out
}
