//! Parsers under hostile input: a structure-aware mutational fuzzer on stable Rust, built on
//! proptest. Each target starts from a corpus of valid inputs (`tests/fuzz-corpus/<target>/`
//! plus inputs made here with the IR builder and the npz writer), applies random byte-level
//! and token-level mutations (flips, splices of boundary numbers such as 2⁶³−1 and 2⁴⁰,
//! truncation, duplication) and requires that the parser answers with a value or an error —
//! never a panic, an abort or a 5xx. `make test` runs a bounded number of cases per target
//! (`TAMP_FUZZ_CASES`, default 1500; the API target a fifth of that); `make fuzz` runs 100×
//! more. proptest shrinks any failure to a minimal input and records its seed in
//! `tests/fuzz.proptest-regressions`, replayed on every run; each crash found also became a
//! named regression test at the end of this file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::ArrayD;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use tamp_onnx::builder::{Attr, GraphBuilder};
use tamp_onnx::{Model, SaveOptions, TensorValue};

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    files.sort();
    files.iter().filter(|p| p.is_file()).map(|p| std::fs::read(p).unwrap()).collect()
}

fn cases(scale: u32) -> u32 {
    let n: u32 = std::env::var("TAMP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1500);
    (n / scale).max(50)
}

/// Prints how many cases ran and how many inputs the parser accepted (a fuzzer whose inputs
/// are all rejected at the first byte explores nothing).
fn summary(target: &str, ran: &AtomicUsize, accepted: &AtomicUsize) {
    eprintln!("fuzz {target}: {} cases, {} accepted by the parser, no panic", ran.load(Ordering::Relaxed), accepted.load(Ordering::Relaxed));
}

fn runner(scale: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(scale),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/fuzz.proptest-regressions"))),
        ..Config::default()
    })
}

/// Numbers that break size arithmetic, as little-endian varints/ints and as text.
const BOUNDARY: [u64; 8] = [0, 1, 0xFF, 0xFFFF_FFFF, 1 << 32, 1 << 40, i64::MAX as u64, u64::MAX];

/// One mutation: (kind, position, payload).
type Op = (u8, usize, Vec<u8>);

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec((0u8..8, any::<usize>(), prop::collection::vec(any::<u8>(), 0..12)), 1..4)
}

/// Hostile strings for names, paths and free text.
const STRINGS: [&str; 10] = ["", "\0", "../../etc/passwd", "/abs/path", "a/b", "x\u{202e}y", "%2e%2e%2f", "{{}}", "\n\r", "é"];

/// Replaces the `pos`-th number in `text` with a boundary value (numbers drive sizes, counts
/// and shapes in every text format Tamp reads).
fn mutate_number(text: &str, pos: usize, pick: u8) -> Option<String> {
    let spans: Vec<(usize, usize)> = {
        let b = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_digit() {
                let start = i;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                out.push((start, i));
            } else {
                i += 1;
            }
        }
        out
    };
    let (a, z) = *spans.get(pos % spans.len().max(1))?;
    let value = match pick % 6 {
        0 => BOUNDARY[(pick as usize / 6) % BOUNDARY.len()].to_string(),
        1 => "-1".into(),
        2 => "1e309".into(),
        3 => "0".into(),
        4 => "-9223372036854775808".into(),
        _ => "nan".into(),
    };
    Some(format!("{}{value}{}", &text[..a], &text[z..]))
}

fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// Applies `ops` to `seed`: byte flips, random inserts, deletions, truncation, boundary
/// numbers (as protobuf varints, little-endian u64 and decimal text) and self-splices.
fn mutate(seed: &[u8], ops: &[Op]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for (kind, pos, payload) in ops {
        let at = if b.is_empty() { 0 } else { pos % (b.len() + 1) };
        let big = BOUNDARY[payload.first().copied().unwrap_or(0) as usize % BOUNDARY.len()];
        match kind {
            0 => {
                let i = at.min(b.len().saturating_sub(1));
                if let Some(x) = b.get_mut(i) {
                    *x ^= payload.first().copied().unwrap_or(0xFF) | 1;
                }
            }
            1 => {
                b.splice(at..at, payload.iter().copied());
            }
            2 => {
                let end = (at + payload.len().max(1)).min(b.len());
                b.drain(at..end);
            }
            3 => b.truncate(at),
            4 => {
                let end = (at + 10).min(b.len());
                b.splice(at..end, varint(big));
            }
            5 => {
                let end = (at + 8).min(b.len());
                let text = if payload.len() % 2 == 0 { big.to_string().into_bytes() } else { big.to_le_bytes().to_vec() };
                b.splice(at..end, text);
            }
            _ => {
                let from = pos.rotate_left(17) % (b.len() + 1);
                let chunk: Vec<u8> = b[from..(from + 64).min(b.len())].to_vec();
                b.splice(at..at, chunk);
            }
        }
    }
    b
}

/// Small models with initializers, a Constant, a subgraph and external data.
fn onnx_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut b = GraphBuilder::new("g", 17);
    let x = b.input_f32("x", &[None, Some(4)]);
    let w = b.init_f32("w", ArrayD::from_shape_vec(vec![4, 3], (0..12).map(|i| i as f32 / 7.0).collect()).unwrap());
    let h = b.op("MatMul", &[&x, &w], &[]);
    b.op_n("Constant", &[], &["c"], &[("value", Attr::Tensor(tamp_onnx::tensor::from_array("cv", &ArrayD::from_elem(vec![3], 0.5f32))))]);
    let y = b.op("Add", &[&h, "c"], &[]);
    b.op_n("Relu", &[&y], &["out"], &[]);
    b.output_f32("out", &[None, Some(3)]);
    let model = b.build();
    let plain = model.to_bytes().unwrap();
    let ext = dir.join("ext.onnx");
    model.save(&ext, &SaveOptions { external_data: tamp_onnx::ExternalData::Always { location: "ext.onnx.data".into(), threshold: 0 } }).unwrap();
    let mut seeds = vec![plain, std::fs::read(&ext).unwrap()];
    seeds.extend(corpus("onnx"));
    seeds
}

/// Mutates a decoded model where sizes and paths live: dims, data types, raw data lengths,
/// external-data entries, attribute integers; then encodes it again.
fn mutate_model(seed: &[u8], ops: &[Op]) -> Vec<u8> {
    use prost::Message;
    let Ok(mut m) = tamp_onnx::proto::ModelProto::decode(seed) else { return seed.to_vec() };
    let Some(g) = m.graph.as_mut() else { return seed.to_vec() };
    for (kind, pos, payload) in ops {
        let big = BOUNDARY[payload.first().copied().unwrap_or(0) as usize % BOUNDARY.len()] as i64;
        let n = g.initializer.len().max(1);
        match kind % 6 {
            0 => {
                if let Some(t) = g.initializer.get_mut(pos % n) {
                    let d = t.dims.len().max(1);
                    if let Some(x) = t.dims.get_mut(pos / n % d) {
                        *x = if payload.len() % 2 == 0 { big } else { -big };
                    } else {
                        t.dims.push(big);
                    }
                }
            }
            1 => {
                if let Some(t) = g.initializer.get_mut(pos % n) {
                    t.data_type = Some(i32::from(payload.first().copied().unwrap_or(0) % 24));
                }
            }
            2 => {
                if let Some(t) = g.initializer.get_mut(pos % n)
                    && let Some(raw) = t.raw_data.as_mut()
                {
                    raw.truncate(pos % (raw.len() + 1));
                }
            }
            3 => {
                if let Some(t) = g.initializer.get_mut(pos % n) {
                    t.data_location = Some(1);
                    let entry = |k: &str, v: String| tamp_onnx::proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
                    t.external_data = vec![
                        entry("location", STRINGS[pos % STRINGS.len()].to_owned()),
                        entry("offset", big.to_string()),
                        entry("length", (big / 3).to_string()),
                    ];
                }
            }
            4 => {
                let nodes = g.node.len().max(1);
                if let Some(node) = g.node.get_mut(pos % nodes) {
                    for a in &mut node.attribute {
                        a.i = Some(big);
                        a.ints.iter_mut().for_each(|x| *x = big);
                    }
                    if payload.len() % 3 == 0 {
                        node.input.push(STRINGS[pos % STRINGS.len()].to_owned());
                    }
                }
            }
            _ => {
                let v = g.input.len().max(1);
                if let Some(vi) = g.input.get_mut(pos % v) {
                    vi.name = Some(STRINGS[pos % STRINGS.len()].to_owned());
                }
            }
        }
    }
    m.encode_to_vec()
}

/// Everything the service does with model bytes before ONNX Runtime sees them.
fn parse_model(bytes: &[u8], dir: &Path) -> bool {
    let origin = Path::new("model.onnx");
    let _ = Model::external_locations(bytes, origin);
    let parsed = Model::from_bytes(bytes, Some(dir), origin);
    let ok = parsed.is_ok();
    if let Ok(m) = parsed {
        let _ = tamp_onnx::graph::stats(m.graph());
        let _ = tamp_onnx::GraphView::new(m.graph()).check(&Default::default());
        let _ = m.to_bytes();
        for t in &m.graph().initializer {
            let _ = tamp_onnx::tensor::to_array::<f32>(t);
        }
    }
    ok
}

#[test]
fn fuzz_onnx_protobuf_and_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = onnx_seeds(dir.path());
    let (ran, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner(1)
        .run(&(0..seeds.len(), ops()), |(i, ops)| {
            ran.fetch_add(1, Ordering::Relaxed);
            let bytes = if ops[0].0 % 2 == 0 { mutate_model(&seeds[i], &ops) } else { mutate(&seeds[i], &ops) };
            if parse_model(&bytes, dir.path()) {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    summary("onnx", &ran, &accepted);
}

fn npz_seeds(dir: &Path) -> Vec<Vec<u8>> {
    let mut arrays = BTreeMap::new();
    arrays.insert("x".to_owned(), TensorValue::F32(ArrayD::from_shape_vec(vec![4, 2, 1, 1], (0..8).map(|i| i as f32).collect()).unwrap()));
    arrays.insert("labels".to_owned(), TensorValue::I64(ArrayD::from_shape_vec(vec![4], vec![0, 1, 1, 0]).unwrap()));
    arrays.insert("cohort".to_owned(), TensorValue::I32(ArrayD::from_shape_vec(vec![4], vec![1, 1, 2, 2]).unwrap()));
    let p = dir.join("seed.npz");
    tamp_engine::dataset::write_npz(&p, &arrays).unwrap();
    let stored = std::fs::read(&p).unwrap();
    // The same arrays deflated (numpy.savez_compressed's form).
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut src = zip::ZipArchive::new(std::io::Cursor::new(stored.clone())).unwrap();
    for i in 0..src.len() {
        let mut f = src.by_index(i).unwrap();
        let name = f.name().to_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut f, &mut data).unwrap();
        z.start_file(name, zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated)).unwrap();
        std::io::Write::write_all(&mut z, &data).unwrap();
    }
    let deflated = z.finish().unwrap().into_inner();
    let mut seeds = vec![stored, deflated];
    seeds.extend(corpus("npz"));
    seeds
}

/// An archive whose npy headers are drawn, not mutated: dtype, order and shape (boundary
/// sizes included), with data of a drawn length, stored or deflated, named as an input or
/// as `labels`/`cohort`.
fn npz_from_header(ops: &[Op]) -> Vec<u8> {
    const DESCR: [&str; 9] = ["<f4", "<f8", "<i8", "<i4", "|i1", "|u1", "|b1", ">f4", "<U3"];
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (k, (kind, pos, payload)) in ops.iter().enumerate() {
        let dims: Vec<u64> = payload.iter().take(4).map(|b| if b % 5 == 0 { BOUNDARY[(*b as usize / 5) % BOUNDARY.len()] } else { u64::from(b % 7) }).collect();
        let shape = dims.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
        let header = format!(
            "{{'descr': '{}', 'fortran_order': {}, 'shape': ({shape}{}), }}",
            DESCR[pos % DESCR.len()],
            if kind % 2 == 0 { "False" } else { "True" },
            if dims.len() == 1 { "," } else { "" }
        );
        let member = npy(&header, &vec![7u8; pos % 512]);
        let name = match k {
            0 => "x.npy".to_owned(),
            1 => ["labels.npy", "cohort.npy", "y.npy"][pos % 3].to_owned(),
            _ => format!("in{k}.npy"),
        };
        let method = if kind % 3 == 0 { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        z.start_file(name, zip::write::FileOptions::default().compression_method(method)).unwrap();
        std::io::Write::write_all(&mut z, &member).unwrap();
    }
    z.finish().unwrap().into_inner()
}

#[test]
fn fuzz_npz_zip_and_npy_headers() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = npz_seeds(dir.path());
    let path = dir.path().join("case.npz");
    let (ran, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner(1)
        .run(&(0..seeds.len(), ops()), |(i, ops)| {
            ran.fetch_add(1, Ordering::Relaxed);
            let bytes = if ops[0].0 % 2 == 0 { npz_from_header(&ops) } else { mutate(&seeds[i], &ops) };
            std::fs::write(&path, bytes).unwrap();
            if let Ok(d) = tamp_engine::Dataset::load_streaming(&path, 16) {
                accepted.fetch_add(1, Ordering::Relaxed);
                let rows: Vec<usize> = (0..d.rows.min(3)).collect();
                let _ = d.select(&rows);
                let _ = d.class_labels(&rows);
                let _ = d.sequence_lengths();
            }
            Ok(())
        })
        .unwrap();
    summary("npz", &ran, &accepted);
}

#[test]
fn fuzz_recipe_yaml() {
    let seeds = corpus("recipe");
    assert!(seeds.len() >= 10, "the recipe corpus is missing");
    let (ran, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner(1)
        .run(&(0..seeds.len(), ops()), |(i, ops)| {
            ran.fetch_add(1, Ordering::Relaxed);
            let seed = String::from_utf8_lossy(&seeds[i]).into_owned();
            let text = if ops[0].0 % 2 == 0 {
                ops.iter().fold(seed, |t, (_, pos, p)| mutate_number(&t, *pos, p.first().copied().unwrap_or(0)).unwrap_or(t))
            } else {
                String::from_utf8_lossy(&mutate(seed.as_bytes(), &ops)).into_owned()
            };
            if let Ok(r) = tamp_domain::Recipe::from_yaml(&text) {
                accepted.fetch_add(1, Ordering::Relaxed);
                for s in &r.policy.stages {
                    if let tamp_domain::recipe::Stage::Pruning(p) = s {
                        let _ = p.sparsity_pattern();
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    summary("recipe", &ran, &accepted);
}

/// Replaces values of a JSON body: strings with hostile ones, numbers with boundary values,
/// a key dropped or a wrong type put in.
fn mutate_json(body: &[u8], ops: &[Op]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut map)) = serde_json::from_slice::<serde_json::Value>(body) else { return body.to_vec() };
    for (kind, pos, payload) in ops {
        let keys: Vec<String> = map.keys().cloned().collect();
        let Some(key) = keys.get(pos % keys.len().max(1)).cloned() else { break };
        let big = BOUNDARY[payload.first().copied().unwrap_or(0) as usize % BOUNDARY.len()];
        let v = match kind % 6 {
            0 => serde_json::json!(STRINGS[pos % STRINGS.len()]),
            1 => serde_json::json!(big),
            2 => serde_json::json!(-1),
            3 => serde_json::json!("x".repeat(pos % 5000)),
            4 => serde_json::json!([STRINGS[pos % STRINGS.len()], big]),
            _ => {
                map.remove(&key);
                continue;
            }
        };
        map.insert(key, v);
    }
    serde_json::to_vec(&serde_json::Value::Object(map)).unwrap()
}

/// The API's JSON bodies through the real router (local adapters, an admin token): every
/// answer is a response below 500, never a dropped connection.
#[test]
fn fuzz_api_json_bodies() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (app, token) = rt.block_on(async {
        let meta = Arc::new(tamp_adapters_local::SqliteStore::open(&dir.path().join("tamp.db")).unwrap());
        let files =
            Arc::new(tamp_adapters_local::FolderStore::new(dir.path().join("store"), "http://127.0.0.1:1", b"0123456789abcdef0123456789abcdef").unwrap());
        let queue = Arc::new(tamp_adapters_local::MemoryQueue::new(5));
        let runner =
            Arc::new(tamp_adapters_local::ProcessRunner::new("true".into(), vec![], dir.path().join("logs"), queue.clone(), 1, Default::default()).unwrap());
        let bus = Arc::new(tamp_adapters_local::LocalBus::new(None, vec![]).unwrap());
        let svc = tamp_control::Services {
            store: files.clone(),
            meta: meta.clone(),
            queue,
            runner,
            bus,
            clock: Arc::new(tamp_ports::SystemClock),
            retry: tamp_domain::job::RetryPolicy::default(),
            guards: Default::default(),
        };
        let (rec, token) = tamp_control::auth::mint(
            "fuzz",
            "*",
            tamp_ports::Role::Admin,
            std::time::Duration::from_secs(3600),
            "test",
            tamp_ports::Clock::now(&tamp_ports::SystemClock),
        );
        tamp_ports::MetadataStore::put_token(meta.as_ref(), &rec).await.unwrap();
        let auth = Arc::new(tamp_control::auth::Auth::new(tamp_control::auth::AuthConfig { rate_per_min: u32::MAX, ..Default::default() }, meta));
        (tamp_control::api::router(tamp_control::api::AppState { svc, files: Some(files), auth, limits: Default::default(), metrics: None }), token)
    });
    let seeds: Vec<(String, Vec<u8>)> = String::from_utf8(corpus("api").concat())
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["path"].as_str().unwrap().to_owned(), v["body"].to_string().into_bytes())
        })
        .collect();
    let (ran, accepted) = (AtomicUsize::new(0), AtomicUsize::new(0));
    runner(5)
        .run(&(0..seeds.len(), ops()), |(i, ops)| {
            ran.fetch_add(1, Ordering::Relaxed);
            let (path, body) = &seeds[i];
            let body = if ops[0].0 % 2 == 0 { mutate_json(body, &ops) } else { mutate(body, &ops) };
            let req = axum::http::Request::post(path.as_str())
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body.clone()))
                .unwrap();
            let status = rt.block_on(app.clone().oneshot(req)).unwrap().status();
            prop_assert!(status.as_u16() < 500, "{path} answered {status} to {:?}", String::from_utf8_lossy(&body));
            if status.is_success() {
                accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
        .unwrap();
    summary("api", &ran, &accepted);
}

// ---- Regressions: each panic the probe and the fuzzer found, as its own test. ----

#[test]
fn regression_block_pattern_overflow() {
    let r = "policy:\n  name: p\n  stages:\n    - pruning: {type: block, pattern: 4294967296x4294967296}\n";
    let e = tamp_domain::Recipe::from_yaml(r).unwrap_err().to_string();
    assert!(e.contains("pattern") && e.contains("line 4"), "{e}");
}

#[test]
fn regression_npz_shape_product_overflow() {
    let dir = tempfile::tempdir().unwrap();
    // An npy header declaring (2^32, 2^32, 1, 1) float32 with 16 bytes of data.
    let member = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 1, 1), }", &[0u8; 16]);
    for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
        let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        z.start_file("x.npy", zip::write::FileOptions::default().compression_method(method)).unwrap();
        std::io::Write::write_all(&mut z, &member).unwrap();
        let p = dir.path().join("bomb.npz");
        std::fs::write(&p, z.finish().unwrap().into_inner()).unwrap();
        let e = tamp_engine::Dataset::load(&p).unwrap_err().to_string();
        assert!(e.contains("array 'x'") && e.contains("bomb.npz"), "{e}");
    }
}

#[test]
fn regression_zip_bomb_is_refused_before_inflating() {
    let dir = tempfile::tempdir().unwrap();
    // 1.25 GB of float32 zeros deflates to about 1.2 MB: the shape says so before inflating.
    let n: u64 = 1_250_000_000 / 4;
    let header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n},), }}");
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.start_file("x.npy", zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Deflated)).unwrap();
    std::io::Write::write_all(&mut z, &npy(&header, &[])).unwrap();
    let zeros = vec![0u8; 1 << 22];
    for _ in 0..(n * 4 / zeros.len() as u64) {
        std::io::Write::write_all(&mut z, &zeros).unwrap();
    }
    let p = dir.path().join("bomb.npz");
    std::fs::write(&p, z.finish().unwrap().into_inner()).unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 5 << 20, "not a bomb");
    let e = tamp_engine::Dataset::load(&p).unwrap_err().to_string();
    assert!(e.contains("MiB") && e.contains("TAMP_MAX_NPZ_BYTES"), "{e}");
}

#[test]
fn regression_huge_initializer_dims() {
    let mut b = GraphBuilder::new("g", 17);
    let x = b.input_f32("x", &[None, Some(4)]);
    let w = b.init_f32("w", ArrayD::from_elem(vec![4, 4], 1.0f32));
    b.op_n("MatMul", &[&x, &w], &["y"], &[]);
    b.output_f32("y", &[None, Some(4)]);
    let mut m = b.build();
    let mut proto = m.proto.clone();
    if let Some(g) = proto.graph.as_mut() {
        g.initializer[0].dims = vec![1 << 40, 1 << 40];
    }
    m = Model::new(proto);
    let bytes = m.to_bytes().unwrap();
    let loaded = Model::from_bytes(&bytes, None, Path::new("m.onnx")).unwrap();
    let stats = tamp_onnx::graph::stats(loaded.graph());
    assert_eq!(stats.params, usize::MAX, "saturates instead of overflowing");
    let e = tamp_onnx::tensor::to_array::<f32>(&loaded.graph().initializer[0]).unwrap_err().to_string();
    assert!(e.contains("'w'"), "{e}");
}

#[test]
fn regression_label_out_of_range_with_f1_macro() {
    use tamp_engine::metrics::{Targets, lookup};
    let out = ndarray::Array2::<f32>::from_shape_vec((2, 3), vec![0.1, 0.2, 0.7, 0.9, 0.05, 0.05]).unwrap();
    for labels in [[i64::MAX, 0], [-5, 0], [3, 0]] {
        for metric in ["f1_macro", "f1_micro", "top1", "top5", "roc_auc"] {
            let mut m = (lookup(metric).unwrap().make)();
            let e = m.update(out.view(), Targets { classes: Some(&labels), values: None }).unwrap_err().to_string();
            assert!(e.contains("not a class index"), "{metric} {labels:?}: {e}");
        }
    }
}

#[test]
fn regression_recipe_limits() {
    let base = "policy:\n  name: p\n  stages:\n    - ptq: {}\n";
    let e = tamp_domain::Recipe::from_yaml(&format!("{base}evaluation:\n  latency_runs: 1000000000\n")).unwrap_err().to_string();
    assert!(e.contains("latency_runs") && e.contains("line 6"), "{e}");
    let big = format!("{base}#{}\n", "x".repeat(300 << 10));
    assert!(tamp_domain::Recipe::from_yaml(&big).unwrap_err().to_string().contains("at most 262144 bytes"));
    // Anchors and aliases expand to a bounded size or are refused, never exhausting memory.
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        laughs.push_str(&format!("a{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 10].join(", ")));
    }
    laughs.push_str(base);
    assert!(tamp_domain::Recipe::from_yaml(&laughs).is_err());
}

/// An npy member: the v1 magic, `header` padded to 64 bytes as numpy pads it, then `data`.
fn npy(header: &str, data: &[u8]) -> Vec<u8> {
    let h = format!("{header}{}\n", " ".repeat(64 - (10 + header.len() + 1) % 64));
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out.extend_from_slice(data);
    out
}

/// Writes a one-member archive (`x.npy`, stored) to `dir/name`; returns its path.
fn one_member_npz(dir: &Path, name: &str, member: &[u8]) -> PathBuf {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.start_file("x.npy", zip::write::FileOptions::default()).unwrap();
    std::io::Write::write_all(&mut z, member).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, z.finish().unwrap().into_inner()).unwrap();
    p
}

/// Found by `fuzz_npz_zip_and_npy_headers`: a zero dim made the element count 0 while
/// npyz's stride products still multiplied the others.
#[test]
fn regression_npz_zero_dim_with_huge_dims() {
    let dir = tempfile::tempdir().unwrap();
    let member = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 9223372036854775807, 9223372036854775807), }", &[]);
    let e = tamp_engine::Dataset::load(one_member_npz(dir.path(), "zero.npz", &member)).unwrap_err().to_string();
    assert!(e.contains("array 'x'"), "{e}");
}

/// Found by `fuzz_npz_zip_and_npy_headers` (the CI run that timed out): a header of nested
/// `{` sent npyz's Python-literal parser into exponential backtracking.
#[test]
fn regression_nested_npy_header() {
    let dir = tempfile::tempdir().unwrap();
    let header = format!("{}'descr': '<f4', 'fortran_order': False, 'shape': (4, ), }}", "{".repeat(60));
    let member = npy(&header, &[0; 16]);
    let e = tamp_engine::Dataset::load(one_member_npz(dir.path(), "nested.npz", &member)).unwrap_err().to_string();
    assert!(e.contains("array 'x'") && e.contains("nested"), "{e}");
    let member = npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4, ), }", &[0; 16]);
    let e = tamp_engine::Dataset::load(one_member_npz(dir.path(), "structured.npz", &member)).unwrap_err().to_string();
    assert!(e.contains("structured arrays are not supported"), "{e}");
}

/// Found by `fuzz_npz_zip_and_npy_headers`: shape (2^32, 0) holds no bytes, so it passed the
/// memory limit, and listing its 2^32 rows asked for 34 GB.
#[test]
fn regression_npz_rows_without_values() {
    let dir = tempfile::tempdir().unwrap();
    let member = npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 0), }", &[]);
    let e = tamp_engine::Dataset::load(one_member_npz(dir.path(), "empty-rows.npz", &member)).unwrap_err().to_string();
    assert!(e.contains("rows hold no values"), "{e}");
}
