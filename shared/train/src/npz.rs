//! Writing `.npz` datasets in the format DESIGN.md fixes (inputs by name, `labels`).

use std::path::Path;

use anyhow::Result;
use npyz::WriterBuilder;

/// A float32 array with its shape.
pub struct F32Array<'a> {
    pub name: &'a str,
    pub shape: Vec<u64>,
    pub data: &'a [f32],
}

/// Writes float inputs plus int64 labels into an uncompressed `.npz`.
pub fn write(path: &Path, arrays: &[F32Array<'_>], labels: &[i64]) -> Result<()> {
    let tmp = path.with_extension("npz.tmp");
    {
        let mut npz = npyz::npz::NpzWriter::create(&tmp)?;
        let opts = || zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(true);
        for a in arrays {
            let mut w = npz.array::<f32>(a.name, opts())?.default_dtype().shape(&a.shape).begin_nd()?;
            w.extend(a.data.iter().copied())?;
            w.finish()?;
        }
        let mut w = npz.array::<i64>("labels", opts())?.default_dtype().shape(&[labels.len() as u64]).begin_nd()?;
        w.extend(labels.iter().copied())?;
        w.finish()?;
        npz.zip_writer().finish()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
