//! Codebook export (FR-006): a clustered model written as its codebooks plus Huffman-coded
//! indices. The clustering stage writes each layer as `Gather(codebook, indices)` with 8-bit
//! indices; every such index tensor (and any float initializer with at most
//! [`MAX_CODEBOOK`] distinct values) becomes a symbol table and a canonical Huffman
//! bitstream; the rest of the model (the graph, the other
//! initializers) stays ONNX, with those initializers' bytes removed. Decoding restores the
//! exact bits of every weight.
//!
//! File layout (`.tcb`, little-endian): `TAMPCB02`; `u32` header length + the JSON header
//! ([`Header`]); `u64` skeleton length + the skeleton ONNX, deflated; then per coded tensor its codebook
//! (`f32` × n) and its bitstream (MSB first).

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};
use tamp_onnx::Model;
use tamp_onnx::proto::tensor_proto::DataType;
use tamp_onnx::tensor::{dims, element_count};

const MAGIC: &[u8; 8] = b"TAMPCB02";
/// Most distinct values a tensor may have to be coded.
pub const MAX_CODEBOOK: usize = 256;
/// Tensors smaller than this stay in the skeleton (a codebook would not pay for itself).
pub const MIN_ELEMENTS: usize = 64;
/// Longest Huffman code; a tensor whose optimal code is longer gets fixed-length codes.
const MAX_CODE_LEN: u8 = 24;

/// One coded tensor in the header.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodedTensor {
    pub name: String,
    pub elements: usize,
    /// Bytes per element: 4 (float) or 1 (8-bit indices).
    pub width: usize,
    /// Code length of each codebook entry (canonical Huffman: lengths define the codes).
    pub code_lengths: Vec<u8>,
    pub stream_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Header {
    version: u32,
    tensors: Vec<CodedTensor>,
}

/// What the export did, per tensor and in total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub coded_tensors: usize,
    pub coded_weights: usize,
    /// Mean Huffman bits per coded weight (fixed-length indices would take ⌈log2 k⌉).
    pub bits_per_weight: f64,
    pub file_bytes: usize,
}

/// Canonical Huffman code lengths for `freq` (zero-frequency symbols get length 0).
fn code_lengths(freq: &[u64]) -> Vec<u8> {
    let used: Vec<usize> = (0..freq.len()).filter(|&i| freq[i] > 0).collect();
    let mut len = vec![0u8; freq.len()];
    if used.len() == 1 {
        len[used[0]] = 1;
        return len;
    }
    // Min-heap of (weight, node); leaves are 0..n, internal nodes after.
    let mut parent: Vec<usize> = vec![usize::MAX; freq.len()];
    let mut heap: BinaryHeap<std::cmp::Reverse<(u64, usize)>> = used.iter().map(|&i| std::cmp::Reverse((freq[i], i))).collect();
    while heap.len() > 1 {
        let (Some(std::cmp::Reverse((wa, a))), Some(std::cmp::Reverse((wb, b)))) = (heap.pop(), heap.pop()) else { break };
        let node = parent.len();
        parent.push(usize::MAX);
        parent[a] = node;
        parent[b] = node;
        heap.push(std::cmp::Reverse((wa + wb, node)));
    }
    for &i in &used {
        let (mut d, mut n) = (0u32, i);
        while parent[n] != usize::MAX {
            n = parent[n];
            d += 1;
        }
        len[i] = u8::try_from(d).unwrap_or(u8::MAX);
    }
    if len.iter().any(|&l| l > MAX_CODE_LEN) {
        // Fixed-length codes for every used symbol instead.
        let bits = (usize::BITS - (used.len() - 1).leading_zeros()).max(1) as u8;
        for &i in &used {
            len[i] = bits;
        }
    }
    len
}

/// Canonical codes from lengths: `(code, length)` per symbol.
fn canonical(lengths: &[u8]) -> Vec<(u32, u8)> {
    let mut order: Vec<usize> = (0..lengths.len()).filter(|&i| lengths[i] > 0).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut codes = vec![(0u32, 0u8); lengths.len()];
    let (mut code, mut prev) = (0u32, 0u8);
    for (k, &i) in order.iter().enumerate() {
        if k > 0 {
            code = (code + 1) << (lengths[i] - prev);
        } else {
            code <<= lengths[i];
        }
        prev = lengths[i];
        codes[i] = (code, lengths[i]);
    }
    codes
}

fn encode_stream(symbols: &[u16], lengths: &[u8]) -> Vec<u8> {
    let codes = canonical(lengths);
    let mut out = Vec::new();
    let (mut acc, mut n) = (0u64, 0u32);
    for &s in symbols {
        let (code, len) = codes[usize::from(s)];
        acc = (acc << len) | u64::from(code);
        n += u32::from(len);
        while n >= 8 {
            n -= 8;
            out.push((acc >> n) as u8);
        }
        acc &= (1u64 << n) - 1;
    }
    if n > 0 {
        out.push((acc << (8 - n)) as u8);
    }
    out
}

fn decode_stream(bytes: &[u8], lengths: &[u8], count: usize) -> Result<Vec<u16>, String> {
    let codes = canonical(lengths);
    let by_code: HashMap<(u32, u8), u16> = codes.iter().enumerate().filter(|(_, c)| c.1 > 0).map(|(i, &c)| (c, i as u16)).collect();
    let mut out = Vec::with_capacity(count);
    let (mut code, mut len) = (0u32, 0u8);
    'bytes: for &b in bytes {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((b >> bit) & 1);
            len += 1;
            if let Some(&s) = by_code.get(&(code, len)) {
                out.push(s);
                if out.len() == count {
                    break 'bytes;
                }
                (code, len) = (0, 0);
            } else if len > MAX_CODE_LEN.max(16) {
                return Err("corrupt bitstream: no code matches".into());
            }
        }
    }
    if out.len() == count { Ok(out) } else { Err(format!("bitstream ended after {} of {count} weights", out.len())) }
}

/// Writes `model` as codebooks + Huffman-coded indices.
pub fn encode(model: &Model) -> Result<(Vec<u8>, Report), String> {
    let mut skeleton = model.clone();
    let mut header = Header { version: 1, tensors: Vec::new() };
    let mut payload = Vec::new();
    let (mut coded_weights, mut bits) = (0usize, 0u64);
    for t in &mut skeleton.proto.graph.as_mut().ok_or("the model has no graph")?.initializer {
        // Float weights left with few values, and the 8-bit index tensors the clustering stage
        // writes (`Gather(codebook, indices)`): each element as its bit pattern.
        let width = match t.data_type.and_then(|d| DataType::try_from(d).ok()) {
            Some(DataType::Float) => 4,
            Some(DataType::Uint8 | DataType::Int8) => 1,
            _ => continue,
        };
        if !t.external_data.is_empty() || element_count(t) < MIN_ELEMENTS {
            continue;
        }
        let values: Vec<u32> = if width == 4 {
            tamp_onnx::tensor::to_array::<f32>(t).map_err(|e| e.to_string())?.iter().map(|v| v.to_bits()).collect()
        } else {
            tamp_onnx::tensor::to_array::<u8>(t).map_err(|e| e.to_string())?.iter().map(|&v| u32::from(v)).collect()
        };
        let mut index: HashMap<u32, u16> = HashMap::new();
        let mut book: Vec<u32> = Vec::new();
        for &v in &values {
            if let std::collections::hash_map::Entry::Vacant(e) = index.entry(v) {
                if book.len() == MAX_CODEBOOK {
                    break;
                }
                e.insert(book.len() as u16);
                book.push(v);
            }
        }
        if values.iter().any(|v| !index.contains_key(v)) {
            continue;
        }
        let symbols: Vec<u16> = values.iter().map(|v| index[v]).collect();
        let mut freq = vec![0u64; book.len()];
        for &s in &symbols {
            freq[usize::from(s)] += 1;
        }
        let lengths = code_lengths(&freq);
        let stream = encode_stream(&symbols, &lengths);
        bits += freq.iter().zip(&lengths).map(|(f, l)| f * u64::from(*l)).sum::<u64>();
        coded_weights += symbols.len();
        payload.extend(book.iter().flat_map(|v| v.to_le_bytes()));
        payload.extend_from_slice(&stream);
        header.tensors.push(CodedTensor {
            name: t.name.clone().unwrap_or_default(),
            elements: symbols.len(),
            width,
            code_lengths: lengths,
            stream_bytes: stream.len(),
        });
        t.raw_data = Some(Vec::new());
        t.float_data.clear();
        t.int32_data.clear();
    }
    // The rest of the model (graph, names, small and float tensors), deflated.
    let skeleton_bytes = {
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        z.write_all(&skeleton.to_bytes().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        z.finish().map_err(|e| e.to_string())?
    };
    let header_bytes = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(16 + header_bytes.len() + skeleton_bytes.len() + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(header_bytes.len()).map_err(|_| "header too large")?.to_le_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(&(skeleton_bytes.len() as u64).to_le_bytes());
    out.extend_from_slice(&skeleton_bytes);
    out.extend_from_slice(&payload);
    let report = Report {
        coded_tensors: header.tensors.len(),
        coded_weights,
        bits_per_weight: if coded_weights > 0 { bits as f64 / coded_weights as f64 } else { 0.0 },
        file_bytes: out.len(),
    };
    Ok((out, report))
}

fn take<'a>(b: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if b.len() < n {
        return Err(format!("truncated codebook file: {what}"));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

/// Rebuilds the ONNX model from a `.tcb` file: every weight with its original bits.
pub fn decode(bytes: &[u8], origin: &Path) -> Result<Model, String> {
    let mut b = bytes;
    if take(&mut b, 8, "magic")? != MAGIC {
        return Err(format!("{} is not a Tamp codebook file (no TAMPCB02 magic)", origin.display()));
    }
    let hlen = u32::from_le_bytes(take(&mut b, 4, "header length")?.try_into().map_err(|_| "header length")?) as usize;
    let header: Header = serde_json::from_slice(take(&mut b, hlen, "header")?).map_err(|e| format!("codebook header: {e}"))?;
    let slen =
        usize::try_from(u64::from_le_bytes(take(&mut b, 8, "skeleton length")?.try_into().map_err(|_| "skeleton length")?)).map_err(|_| "skeleton length")?;
    let skeleton = {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(take(&mut b, slen, "skeleton")?).read_to_end(&mut out).map_err(|e| format!("skeleton: {e}"))?;
        out
    };
    let mut model = Model::from_bytes(&skeleton, None, origin).map_err(|e| e.to_string())?;
    let mut restored: HashMap<String, (Vec<u8>, usize)> = HashMap::new();
    for t in &header.tensors {
        let book: Vec<u32> =
            take(&mut b, 4 * t.code_lengths.len(), "codebook")?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        let symbols = decode_stream(take(&mut b, t.stream_bytes, "bitstream")?, &t.code_lengths, t.elements)?;
        let mut raw = Vec::with_capacity(symbols.len() * t.width);
        for &s in &symbols {
            let v = book.get(usize::from(s)).copied().ok_or("corrupt bitstream: symbol outside the codebook")?;
            raw.extend_from_slice(&v.to_le_bytes()[..t.width]);
        }
        restored.insert(t.name.clone(), (raw, t.width));
    }
    for t in &mut model.proto.graph.as_mut().ok_or("the skeleton has no graph")?.initializer {
        if let Some((raw, width)) = t.name.as_ref().and_then(|n| restored.remove(n)) {
            let n: usize = dims(t).map_err(|e| e.to_string())?.iter().product();
            if raw.len() != width * n {
                return Err(format!("tensor {:?}: {} weights decoded for {n}", t.name, raw.len() / width));
            }
            t.raw_data = Some(raw);
        }
    }
    if let Some(name) = restored.keys().next() {
        return Err(format!("coded tensor {name} is not in the skeleton"));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huffman_round_trips_skewed_and_single_symbol_streams() {
        let symbols: Vec<u16> = (0..10_000u32).map(|i| if i % 10 == 0 { (i % 7) as u16 + 1 } else { 0 }).collect();
        let mut freq = vec![0u64; 8];
        for &s in &symbols {
            freq[usize::from(s)] += 1;
        }
        let lengths = code_lengths(&freq);
        assert_eq!(lengths[0], 1, "the dominant symbol gets one bit: {lengths:?}");
        let stream = encode_stream(&symbols, &lengths);
        assert!(stream.len() * 8 < symbols.len() * 3 / 2, "{} bytes", stream.len());
        assert_eq!(decode_stream(&stream, &lengths, symbols.len()), Ok(symbols));
        let one = vec![3u16; 100];
        let mut f = vec![0u64; 4];
        f[3] = 100;
        let l = code_lengths(&f);
        assert_eq!(decode_stream(&encode_stream(&one, &l), &l, 100), Ok(one));
    }

    #[test]
    fn canonical_codes_are_prefix_free() {
        let lengths = code_lengths(&[50, 20, 10, 10, 5, 3, 1, 1]);
        let codes = canonical(&lengths);
        for (i, a) in codes.iter().enumerate() {
            for (j, b) in codes.iter().enumerate() {
                if i != j && a.1 <= b.1 {
                    assert_ne!(b.0 >> (b.1 - a.1), a.0, "code {i} is a prefix of {j}");
                }
            }
        }
    }
}
