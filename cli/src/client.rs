//! Client verbs against a Tamp API (`tamp serve` or a team's deployment): `login`, `jobs`,
//! `best`, `download`. Credentials: `--url/--token`, else `TAMP_URL`/`TAMP_TOKEN`, else what
//! `tamp login` saved in `~/.config/tamp/credentials.json` (mode 0600).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Conn {
    /// API base URL (default: TAMP_URL, then the saved login).
    #[arg(long, global = true)]
    url: Option<String>,
    /// API token or JWT (default: TAMP_TOKEN, then the saved login).
    #[arg(long, global = true)]
    token: Option<String>,
}

fn credentials_path() -> PathBuf {
    match std::env::var_os("TAMP_CONFIG_DIR") {
        Some(d) => PathBuf::from(d).join("credentials.json"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config/tamp/credentials.json"),
    }
}

struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Conn {
    fn open(&self) -> Result<Api> {
        let saved: Value = std::fs::read(credentials_path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null);
        let pick =
            |flag: &Option<String>, env: &str, key: &str| flag.clone().or_else(|| std::env::var(env).ok()).or_else(|| saved[key].as_str().map(str::to_owned));
        let url = pick(&self.url, "TAMP_URL", "url").ok_or_else(|| anyhow!("no API URL: run `tamp login` or pass --url"))?;
        let token = pick(&self.token, "TAMP_TOKEN", "token").ok_or_else(|| anyhow!("no token: run `tamp login` or pass --token"))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Api { url: url.trim_end_matches('/').to_owned(), token, http: reqwest::Client::new(), rt })
    }
}

impl Api {
    /// Sends a request; a problem document becomes the error message.
    fn call(&self, method: reqwest::Method, path_or_url: &str, body: Option<Vec<u8>>, bearer: bool) -> Result<(u16, Vec<u8>)> {
        let url = if path_or_url.starts_with("http") { path_or_url.to_owned() } else { format!("{}{path_or_url}", self.url) };
        self.rt.block_on(async {
            let mut req = self.http.request(method, &url);
            if bearer {
                req = req.bearer_auth(&self.token);
            }
            if let Some(b) = body {
                req = req.body(b);
            }
            let resp = req.send().await.with_context(|| format!("calling {url}"))?;
            let status = resp.status().as_u16();
            let bytes = resp.bytes().await?.to_vec();
            Ok((status, bytes))
        })
    }

    fn json(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let (status, bytes) = self.call(method, path, body.map(|b| b.to_string().into_bytes()), true)?;
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 400 && status != 409 {
            bail!("{} {}: {}", status, v["title"].as_str().unwrap_or("error"), v["detail"].as_str().unwrap_or(&String::from_utf8_lossy(&bytes)));
        }
        Ok((status, v))
    }

    fn get(&self, path: &str) -> Result<Value> {
        Ok(self.json(reqwest::Method::GET, path, None)?.1)
    }
}

#[derive(clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    conn: Conn,
    /// Use the local `tamp serve` in this data folder (its URL and admin token).
    #[arg(long)]
    local: Option<PathBuf>,
}

pub fn login(args: &LoginArgs) -> Result<()> {
    let (url, token) = match &args.local {
        Some(dir) => {
            let serve: Value = serde_json::from_slice(
                &std::fs::read(dir.join("serve.json")).with_context(|| format!("is `tamp serve --data-dir {}` running?", dir.display()))?,
            )?;
            (serve["url"].as_str().unwrap_or_default().to_owned(), std::fs::read_to_string(dir.join("admin-token"))?.trim().to_owned())
        }
        None => {
            (args.conn.url.clone().ok_or_else(|| anyhow!("pass --url (or --local .tamp)"))?, args.conn.token.clone().ok_or_else(|| anyhow!("pass --token"))?)
        }
    };
    let api = Conn { url: Some(url.clone()), token: Some(token.clone()) }.open()?;
    api.get("/jobs?limit=1").context("checking the credentials")?;
    let path = credentials_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    std::io::Write::write_all(&mut f, serde_json::json!({ "url": url, "token": token }).to_string().as_bytes())?;
    println!("logged in to {url}; credentials in {}", path.display());
    Ok(())
}

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Upload a model, data and recipe as a new version and start its job.
    Submit {
        #[arg(long)]
        project: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        version: String,
        /// The .onnx file.
        #[arg(long)]
        model_file: PathBuf,
        #[arg(long)]
        recipe: PathBuf,
        /// Calibration .npz.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Evaluation .npz.
        #[arg(long)]
        eval: Option<PathBuf>,
        /// Wait until the job ends and print it.
        #[arg(long)]
        wait: bool,
    },
    List {
        #[arg(long)]
        status: Option<String>,
    },
    Get {
        id: String,
    },
    Cancel {
        id: String,
    },
}

#[derive(clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: JobsCmd,
}

fn print(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn wait(api: &Api, id: &str) -> Result<Value> {
    loop {
        let j = api.get(&format!("/jobs/{id}"))?;
        if ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or("")) {
            return Ok(j);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Waits (up to two minutes) for the job the upload of `project/model/version`'s recipe
/// created at or after `since` (seconds), as the ingest function records it.
fn created_job(api: &Api, project: &str, model: &str, version: &str, since: u64) -> Result<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let v = api.get("/jobs?limit=1000")?;
        let found = v["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|j| j["project"] == project && j["model"] == model && j["version"] == version)
            .filter(|j| j["created_at"].as_u64().is_some_and(|t| t + 1 >= since))
            .max_by_key(|j| j["created_at"].as_u64().unwrap_or(0));
        if let Some(id) = found.and_then(|j| j["id"].as_str()) {
            return Ok(id.to_owned());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "the recipe was uploaded, but no job for {project}.{model} {version} appeared within 2 minutes: check the ingest function's logs and its queue's DLQ"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

pub fn jobs(args: &JobsArgs) -> Result<()> {
    let api = args.conn.open()?;
    match &args.cmd {
        JobsCmd::Submit { project, model, version, model_file, recipe, data, eval, wait: wait_for } => {
            use reqwest::Method;
            api.json(Method::POST, "/projects", Some(serde_json::json!({ "name": project })))?;
            api.json(Method::POST, &format!("/projects/{project}/models"), Some(serde_json::json!({ "name": model })))?;
            let (_, v) = api.json(Method::POST, &format!("/models/{project}.{model}/versions"), Some(serde_json::json!({ "version": version })))?;
            let upload = |name: &str, path: &Path| -> Result<Value> {
                let link = v["upload_urls"][name].as_str().ok_or_else(|| anyhow!("no upload link for {name}"))?;
                let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                let (status, body) = api.call(Method::PUT, link, Some(bytes), false)?;
                let out: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if status >= 400 {
                    bail!("uploading {}: {status} {}", path.display(), out["detail"].as_str().unwrap_or(""));
                }
                Ok(out)
            };
            upload("model.onnx", model_file)?;
            if let Some(d) = data {
                upload("calib.npz", d)?;
            }
            if let Some(e) = eval {
                upload("eval.npz", e)?;
            }
            let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let created = upload("recipe.yaml", recipe)?;
            let id = match created["job"].as_str() {
                Some(id) => id.to_owned(),
                // A team's deployment: the link is S3's, which answers with an empty body; the
                // upload event creates the job a moment later. It is the newest job on this
                // version created since the upload began.
                None => created_job(&api, project, model, version, before)?,
            };
            if *wait_for {
                print(&wait(&api, &id)?)
            } else {
                println!("{id}");
                Ok(())
            }
        }
        JobsCmd::List { status } => {
            let q = status.as_ref().map(|s| format!("?status={s}")).unwrap_or_default();
            let v = api.get(&format!("/jobs{q}"))?;
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10} {}.{} {}  {}",
                    j["id"].as_str().unwrap_or(""),
                    j["state"].as_str().unwrap_or(""),
                    j["project"].as_str().unwrap_or(""),
                    j["model"].as_str().unwrap_or(""),
                    j["version"].as_str().unwrap_or(""),
                    j["reason"].as_str().unwrap_or("")
                );
            }
            Ok(())
        }
        JobsCmd::Get { id } => print(&api.get(&format!("/jobs/{id}"))?),
        JobsCmd::Cancel { id } => print(&api.json(reqwest::Method::POST, &format!("/jobs/{id}/cancel"), None)?.1),
    }
}

#[derive(clap::Args)]
pub struct BestArgs {
    #[command(flatten)]
    conn: Conn,
    /// `<project>.<model>`.
    model: String,
    #[arg(long, default_value = "onnxruntime")]
    runtime: String,
}

pub fn best(args: &BestArgs) -> Result<()> {
    print(&args.conn.open()?.get(&format!("/models/{}/best?target_runtime={}", args.model, args.runtime))?)
}

#[derive(clap::Args)]
pub struct DownloadArgs {
    #[command(flatten)]
    conn: Conn,
    /// An artifact id (`art_…`) or a model (`<project>.<model>`: its best artifact).
    what: String,
    #[arg(long, default_value = "onnxruntime")]
    runtime: String,
    #[arg(short, long)]
    out: PathBuf,
}

pub fn download(args: &DownloadArgs) -> Result<()> {
    let api = args.conn.open()?;
    let meta = if args.what.starts_with("art_") {
        api.get(&format!("/artifacts/{}", args.what))?
    } else {
        api.get(&format!("/models/{}/best?target_runtime={}", args.what, args.runtime))?
    };
    let link = meta["uri"].as_str().ok_or_else(|| anyhow!("no download link in {meta}"))?;
    let (status, bytes) = api.call(reqwest::Method::GET, link, None, false)?;
    if status != 200 {
        bail!("download failed: {status} {}", String::from_utf8_lossy(&bytes));
    }
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    if meta["sha256"].as_str() != Some(sha.as_str()) {
        bail!("downloaded bytes hash to {sha}, not the recorded {}", meta["sha256"]);
    }
    let tmp = args.out.with_extension("part");
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, &args.out)?;
    println!("{} -> {} ({} bytes, sha256 {sha} verified)", meta["artifact_id"].as_str().unwrap_or(""), args.out.display(), bytes.len());
    Ok(())
}
