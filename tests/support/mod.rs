//! Helpers the `tamp serve` end-to-end tests share: a server child with its admin token, a
//! minimal HTTP client, polling for jobs, uploads the way a careful client writes them, and a
//! webhook receiver.

#![allow(dead_code)] // each test binary uses a subset
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

pub mod models;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())).join("..")
}

pub fn tamp() -> PathBuf {
    // Test binaries live in target/<profile>/deps; the CLI one level up.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("tamp");
    assert!(bin.exists(), "{} not built; run `cargo build -p tamp-cli` (make test does)", bin.display());
    bin
}

pub fn cnn() -> PathBuf {
    let dir = root().join("models/fmnist-resnet8");
    assert!(dir.join("model.onnx").exists(), "run `make models`");
    dir
}

/// A `tamp serve` child, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data: tempfile::TempDir,
}

/// Admin tokens by `host:port`: `http` sends the server's token unless a request names its
/// own `Authorization` (an empty one sends none).
pub static TOKENS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(extra: &[&str], envs: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let (child, url) = start(data.path(), extra, envs);
    Server { child, url, data }
}

/// Starts `tamp serve` on the data folder `data` (new or left by an earlier server).
pub fn start(data: &Path, extra: &[&str], envs: &[(&str, &str)]) -> (Child, String) {
    let mut cmd = Command::new(tamp());
    cmd.arg("serve").arg("--data-dir").arg(data).args(["--port", "0", "--retry-delay", "0"]).args(extra).stdout(Stdio::piped()).stderr(Stdio::inherit());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split("API on ").nth(1).and_then(|s| s.split(';').next()).unwrap_or_else(|| panic!("no URL in: {line}")).to_owned();
    let token = std::fs::read_to_string(data.join("admin-token")).unwrap().trim().to_owned();
    TOKENS.lock().unwrap().push((url.trim_start_matches("http://").to_owned(), token));
    (child, url)
}

/// Minimal HTTP/1.1 client: (status, body).
pub fn http(method: &str, url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, Vec<u8>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = TcpStream::connect(host).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    let own_auth = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("authorization"));
    if !own_auth && let Some((_, t)) = TOKENS.lock().unwrap().iter().find(|(h, _)| h == host) {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers.iter().filter(|(_, v)| !v.is_empty()) {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // A server refusing a large body (413) may answer and close before reading it all.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) if resp.is_empty() => panic!("{method} {url}: {e}"),
            Err(_) => break,
        }
    }
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = resp[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

pub fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let end = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..end]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 4 + n..];
    }
}

pub fn json(method: &str, url: &str, body: &[u8], headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let (s, b) = http(method, url, body, headers);
    (s, serde_json::from_slice(&b).unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&b).into_owned())))
}

pub fn wait_for_job(url: &str, id: &str, within: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (s, j) = json("GET", &format!("{url}/jobs/{id}"), b"", &[]);
        assert_eq!(s, 200, "{j}");
        if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap()) {
            return j;
        }
        assert!(start.elapsed() < within, "job {id} still {} after {within:?}: {j}", j["state"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn wait_for_jobs(url: &str, n: usize, within: Duration) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let (_, j) = json("GET", &format!("{url}/jobs"), b"", &[]);
        let jobs = j["jobs"].as_array().unwrap().clone();
        if jobs.len() >= n {
            return jobs;
        }
        assert!(start.elapsed() < within, "{} job(s) after {within:?}, expected {n}", jobs.len());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes a file the way an uploader should: to a temporary name, then renamed.
pub fn upload_file(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{name}.part"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, dir.join(name)).unwrap();
}

pub fn recipe() -> Vec<u8> {
    std::fs::read(root().join("configs/policy_examples/ptq_8bit.yaml")).unwrap()
}

/// Webhook deliveries seen so far: (headers, body).
pub type Deliveries = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Records webhook deliveries.
pub fn webhook_receiver() -> (String, Deliveries) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut r = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len =
                head.lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())).unwrap_or(0);
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            sink.lock().unwrap().push((head, body));
            let _ = r.get_mut().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, got)
}
