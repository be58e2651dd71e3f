//! The Terraform module and the code cannot drift: parses `infra/modules/tamp/*.tf` with
//! hcl-rs and checks the wiring — every crate under `functions/` has a Lambda (and the
//! reverse), every variable the code requires is set, every queue and event target has a
//! DLQ, no IAM statement grants a data-plane action on `*`, functions run `bootstrap` on
//! provided.al2023 (arm64 by default), and every API route Terraform exposes exists in the
//! router, and the web UI is served from its bucket through CloudFront with origin access
//! control and a config.json built from the module's values. Each check is proved to catch a planted mistake. (`make test` also runs
//! `scripts/infra_check.py`: terraform fmt, Terraform's config loader, checkov.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::PathBuf;

use hcl::{Block, Body, Expression, ObjectKey};

fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())).join("..")
}

/// The module's files: (name, text).
fn module_files() -> Vec<(String, String)> {
    let dir = root().join("infra/modules/tamp");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "tf"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    files.sort();
    files
}

fn with_edit(files: &[(String, String)], file: &str, from: &str, to: &str) -> Vec<(String, String)> {
    let mut out = files.to_vec();
    let f = out.iter_mut().find(|(n, _)| n == file).unwrap();
    assert!(f.1.contains(from), "{file} has no {from:?} to plant a mistake in");
    f.1 = f.1.replacen(from, to, 1);
    out
}

/// All top-level blocks of the module.
fn blocks(files: &[(String, String)]) -> Vec<Block> {
    files.iter().flat_map(|(name, text)| hcl::parse(text).unwrap_or_else(|e| panic!("{name}: {e}")).into_blocks()).collect()
}

fn labels(b: &Block) -> Vec<String> {
    b.labels.iter().map(|l| l.as_str().to_owned()).collect()
}

fn find<'a>(all: &'a [Block], kind: &str, ty: &str) -> Vec<&'a Block> {
    all.iter().filter(|b| b.identifier.as_str() == kind && labels(b).first().is_some_and(|t| t == ty)).collect()
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key.as_str() == key).map(|a| &a.expr)
}

fn key_name(k: &ObjectKey) -> String {
    match k {
        ObjectKey::Identifier(i) => i.as_str().to_owned(),
        ObjectKey::Expression(Expression::String(s)) => s.clone(),
        other => format!("{other:?}"),
    }
}

fn object_keys(e: &Expression) -> BTreeSet<String> {
    match e {
        Expression::Object(o) => o.keys().map(key_name).collect(),
        _ => BTreeSet::new(),
    }
}

/// `locals { name = … }` across the module.
fn local<'a>(all: &'a [Block], name: &str) -> Option<&'a Expression> {
    all.iter().filter(|b| b.identifier.as_str() == "locals").find_map(|b| attr(&b.body, name))
}

fn strings(e: &Expression) -> Vec<String> {
    match e {
        Expression::String(s) => vec![s.clone()],
        Expression::Array(a) => a.iter().flat_map(strings).collect(),
        Expression::TemplateExpr(t) => vec![t.to_string()],
        _ => Vec::new(),
    }
}

/// Names in `src` appearing as `<call>("NAME"`.
fn called_with(src: &str, call: &str) -> BTreeSet<String> {
    src.match_indices(&format!("{call}(\"")).map(|(i, m)| src[i + m.len()..].split('"').next().unwrap_or_default().to_owned()).collect()
}

// --- the checks: each returns its findings ---------------------------------------------

fn check_functions(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    let crates: BTreeSet<String> =
        std::fs::read_dir(root().join("functions")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let declared = local(&all, "functions").map(object_keys).unwrap_or_default();
    let resources = find(&all, "resource", "aws_lambda_function");
    if resources.is_empty() {
        out.push("no aws_lambda_function resource".into());
    }
    for c in crates.difference(&declared) {
        out.push(format!("functions/{c} has no Lambda function in local.functions"));
    }
    for d in declared.difference(&crates) {
        out.push(format!("local.functions.{d} has no crate under functions/"));
    }
    for r in resources {
        let b = &r.body;
        let lit = |k: &str| attr(b, k).map(strings).unwrap_or_default();
        if lit("runtime") != ["provided.al2023"] {
            out.push(format!("{:?}: runtime must be provided.al2023", labels(r)));
        }
        if lit("handler") != ["bootstrap"] {
            out.push(format!("{:?}: handler must be bootstrap", labels(r)));
        }
        if !attr(b, "architectures").is_some_and(|e| format!("{e}").contains("local.lambda_architecture")) {
            out.push(format!("{:?}: architectures must come from local.lambda_architecture (the variable, or the built zips' ARCHITECTURE)", labels(r)));
        }
        if !b.blocks().any(|x| x.identifier.as_str() == "dead_letter_config") {
            out.push(format!("{:?}: no dead_letter_config for async invocations", labels(r)));
        }
    }
    // The architecture follows the zips: `make package` writes ARCHITECTURE beside them and
    // the module reads it unless the variable overrides it.
    let arch = local(&all, "lambda_architecture").map(|e| format!("{e}")).unwrap_or_default();
    if !(arch.contains("var.lambda_architecture") && arch.contains("ARCHITECTURE")) {
        out.push(format!("local.lambda_architecture must be var.lambda_architecture or the built zips' ARCHITECTURE file, not {arch:?}"));
    }
    let makefile = std::fs::read_to_string(root().join("Makefile")).unwrap();
    if !makefile.contains("> dist/lambda/ARCHITECTURE") {
        out.push("make package no longer writes dist/lambda/ARCHITECTURE, which the module reads".into());
    }
    out
}

fn check_env(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    let settings = std::fs::read_to_string(root().join("shared/lambda/src/settings.rs")).unwrap();
    let common = local(&all, "common_env").map(object_keys).unwrap_or_default();
    let mut set = common.clone();
    if let Some(Expression::Object(per)) = local(&all, "function_env") {
        for e in per.values() {
            set.extend(object_keys(e));
        }
    }
    for name in called_with(&settings, "req") {
        if !common.contains(&name) {
            out.push(format!("{name} is required by every function (settings.rs) but not in local.common_env"));
        }
    }
    for name in &set {
        if !tamp_lambda::ENV_VARS.contains(&name.as_str()) {
            out.push(format!("{name} is set by Terraform but no function reads it (tamp_lambda::ENV_VARS)"));
        }
    }
    // Secrets (webhook URLs, the HMAC key) reach the functions through SSM, never as values
    // in their environment.
    for name in set.iter().filter(|n| (n.contains("WEBHOOK") || n.contains("SECRET")) && n.as_str() != "TAMP_SECRETS_PARAMETER") {
        out.push(format!("{name} puts a secret in a Lambda environment; store it in the SSM parameter (secrets.tf)"));
    }
    let worker = std::fs::read_to_string(root().join("batch-workers/worker/src/lib.rs")).unwrap();
    let worker_env = local(&all, "worker_env").map(|e| format!("{e}")).unwrap_or_default();
    for name in called_with(&worker, "env_var") {
        if !worker_env.contains(&format!("\"{name}\"")) {
            out.push(format!("the worker requires {name} but local.worker_env does not set it"));
        }
    }
    out
}

fn check_dead_letters(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    for q in find(&all, "resource", "aws_sqs_queue") {
        let name = labels(q)[1].clone();
        if name != "dlq" && attr(&q.body, "redrive_policy").is_none() {
            out.push(format!("aws_sqs_queue.{name} has no redrive_policy (DLQ)"));
        }
    }
    for t in find(&all, "resource", "aws_cloudwatch_event_target") {
        if !t.body.blocks().any(|b| b.identifier.as_str() == "dead_letter_config") {
            out.push(format!("aws_cloudwatch_event_target.{} has no dead_letter_config", labels(t)[1]));
        }
    }
    out
}

/// Actions that have no resource-level permissions (so `*` is the only choice).
const STAR_OK: &[&str] = &["xray:PutTraceSegments", "xray:PutTelemetryRecords", "batch:ListJobs", "batch:DescribeJobs"];
/// Key policies: `*` there means the key itself.
const KEY_POLICIES: &[&str] = &["kms"];

fn check_iam(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    for doc in find(&all, "data", "aws_iam_policy_document") {
        let name = labels(doc)[1].clone();
        for st in doc.body.blocks().filter(|b| b.identifier.as_str() == "statement") {
            let deny = attr(&st.body, "effect").map(strings).is_some_and(|e| e == ["Deny"]);
            let resources = attr(&st.body, "resources").map(strings).unwrap_or_default();
            let actions = attr(&st.body, "actions").map(strings).unwrap_or_default();
            if st.body.blocks().any(|b| b.identifier.as_str() == "principals") && attr(&st.body, "resources").is_none() {
                continue; // an assume-role policy
            }
            if attr(&st.body, "resources").is_none() {
                out.push(format!("{name}: a statement names no resources"));
            }
            if !deny && !KEY_POLICIES.contains(&name.as_str()) && resources.iter().any(|r| r == "*") {
                for a in actions.iter().filter(|a| !STAR_OK.contains(&a.as_str())) {
                    out.push(format!("{name}: {a} on \"*\""));
                }
            }
            if !deny && actions.iter().any(|a| a.ends_with(":*")) && !KEY_POLICIES.contains(&name.as_str()) {
                out.push(format!("{name}: wildcard action in {actions:?}"));
            }
        }
    }
    out
}

fn check_routes(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let api = std::fs::read_to_string(root().join("shared/control/src/api.rs")).unwrap();
    let mut served = BTreeSet::new();
    for (i, m) in api.match_indices(".route(\"") {
        let rest = &api[i + m.len()..];
        let path = rest.split('"').next().unwrap_or_default();
        let line = rest.lines().next().unwrap_or_default();
        for method in ["get", "post", "put", "delete"] {
            if line.contains(&format!("{method}(")) {
                served.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    let mut out = Vec::new();
    let mut exposed = local(&all, "routes").map(object_keys).unwrap_or_default();
    for r in find(&all, "resource", "aws_apigatewayv2_route") {
        if let Some(e) = attr(&r.body, "for_each") {
            exposed.extend(strings(&Expression::Array(match e {
                Expression::FuncCall(f) => f.args.clone(),
                _ => vec![],
            })));
        }
    }
    for route in exposed.iter().filter(|r| r.contains(' ')) {
        if !served.contains(route) {
            out.push(format!("API Gateway routes {route} but the api router does not serve it"));
        }
    }
    out
}

/// AWS Batch's `evaluate_on_exit` semantics: rules in order, the first whose every given
/// condition matches decides; patterns match exactly or, ending in `*`, by prefix; no match
/// retries (while attempts remain).
fn batch_action(rules: &[&Block], exit_code: &str, reason: &str, status_reason: &str) -> String {
    let glob = |p: &str, v: &str| p.strip_suffix('*').map_or(p == v, |prefix| v.starts_with(prefix));
    for r in rules {
        let cond = |k: &str| attr(&r.body, k).and_then(|e| strings(e).into_iter().next());
        let hit =
            [("on_exit_code", exit_code), ("on_reason", reason), ("on_status_reason", status_reason)].iter().all(|(k, v)| cond(k).is_none_or(|p| glob(&p, v)));
        if hit {
            return cond("action").unwrap_or_default().to_uppercase();
        }
    }
    "RETRY".into()
}

/// Batch retries only infrastructure failures: exit 3 (bad input) and any other exit of the
/// worker end the Batch job, and a lost host is retried. The runner sends no retryStrategy of
/// its own (one in SubmitJob replaces the definition's, rules and all).
fn check_batch_retries(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    for d in find(&all, "resource", "aws_batch_job_definition") {
        let name = labels(d)[1].clone();
        let Some(strategy) = d.body.blocks().find(|b| b.identifier.as_str() == "retry_strategy") else {
            out.push(format!("aws_batch_job_definition.{name} has no retry_strategy"));
            continue;
        };
        let rules: Vec<&Block> = strategy.body.blocks().filter(|b| b.identifier.as_str() == "evaluate_on_exit").collect();
        let exited = "Essential container in task exited";
        for (code, what) in [("3", "bad input (exit 3)"), ("1", "a worker error (exit 1)")] {
            let action = batch_action(&rules, code, "", exited);
            if action != "EXIT" {
                out.push(format!("aws_batch_job_definition.{name}: {what} gets {action}; Batch must not retry it"));
            }
        }
        let action = batch_action(&rules, "", "", "Host EC2 (instance i-0123456789abcdef0) terminated.");
        if action != "RETRY" {
            out.push(format!("aws_batch_job_definition.{name}: a lost host gets {action}; it should be retried"));
        }
    }
    let runner = std::fs::read_to_string(root().join("shared/adapters-aws/src/batch.rs")).unwrap();
    if runner.contains(".retry_strategy(") {
        out.push("shared/adapters-aws/src/batch.rs sends a retryStrategy with SubmitJob, replacing the job definition's rules".into());
    }
    out
}

/// Both machine classes reach the functions: the CPU queue and job definition for CPU
/// stages, the GPU ones for training (`AwsBatchRunner` routes by `StageRun::device`), and the
/// GPU job definition asks Batch for a GPU.
fn check_queues(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    let Some(Expression::Object(env)) = local(&all, "common_env") else { return vec!["local.common_env is not an object".into()] };
    for (key, want) in [
        ("TAMP_BATCH_QUEUE", "aws_batch_job_queue.cpu.name"),
        ("TAMP_BATCH_JOB_DEFINITION", "aws_batch_job_definition.cpu.name"),
        ("TAMP_BATCH_GPU_QUEUE", "aws_batch_job_queue.gpu.name"),
        ("TAMP_BATCH_GPU_JOB_DEFINITION", "aws_batch_job_definition.gpu.name"),
    ] {
        match env.iter().find(|(k, _)| key_name(k) == key).map(|(_, v)| text(v)) {
            Some(t) if t.trim() == want => {}
            other => out.push(format!("local.common_env.{key} must be {want}, not {other:?}")),
        }
    }
    let settings = std::fs::read_to_string(root().join("shared/lambda/src/settings.rs")).unwrap();
    for name in ["TAMP_BATCH_GPU_QUEUE", "TAMP_BATCH_GPU_JOB_DEFINITION"] {
        if !called_with(&settings, "opt").contains(name) {
            out.push(format!("shared/lambda/src/settings.rs does not read {name}"));
        }
    }
    match find(&all, "resource", "aws_batch_job_definition").into_iter().find(|d| labels(d)[1] == "gpu") {
        Some(d) if attr(&d.body, "container_properties").map(text).is_some_and(|t| t.contains("type = \"GPU\"")) => {}
        _ => out.push("aws_batch_job_definition.gpu does not ask for a GPU (resourceRequirements type GPU)".into()),
    }
    out
}

/// The expression as HCL text.
fn text(e: &Expression) -> String {
    hcl::format::to_string(e).unwrap_or_default()
}

/// The UI behind CloudFront: its bucket is read through origin access control by this
/// distribution only, and its `config.json` carries the API's URL and the OIDC settings from
/// the module's own values, under the keys the UI reads (ui/src/api/client.ts, UiConfig).
fn check_ui(files: &[(String, String)]) -> Vec<String> {
    let all = blocks(files);
    let mut out = Vec::new();
    let one = |ty: &str, name: &str| find(&all, "resource", ty).into_iter().find(|b| labels(b).get(1).is_some_and(|n| n == name));
    let Some(cfg) = local(&all, "ui_config") else { return vec!["no local.ui_config (the UI's config.json)".into()] };
    let cfg_text = text(cfg);
    for (key, want) in [("api_base_url", "aws_apigatewayv2_api.http.api_endpoint"), ("issuer", "var.jwt_issuer"), ("client_id", "var.ui_oidc_client_id")] {
        if !cfg_text.lines().any(|l| l.contains(key) && l.contains(want)) {
            out.push(format!("local.ui_config.{key} is not {want}"));
        }
    }
    let client = std::fs::read_to_string(root().join("ui/src/api/client.ts")).unwrap();
    for key in ["api_base_url", "issuer", "client_id", "mode: 'oidc'"] {
        if !client.contains(key) {
            out.push(format!("the UI (ui/src/api/client.ts) does not read `{key}` from config.json"));
        }
    }
    if !cfg_text.contains("\"oidc\"") {
        out.push("local.ui_config.auth.mode is not \"oidc\"".into());
    }
    // The module's outputs say the same: the API's URL and the UI's config are one value each.
    let output = |name: &str| {
        all.iter().find(|b| b.identifier.as_str() == "output" && labels(b).first().is_some_and(|n| n == name)).and_then(|b| attr(&b.body, "value")).map(text)
    };
    if output("api_url").is_none_or(|v| !cfg_text.contains(v.trim())) {
        out.push("local.ui_config.api_base_url is not the module's api_url output".into());
    }
    if output("ui_config").is_none_or(|v| v.trim() != "local.ui_config") {
        out.push("the module has no ui_config output of local.ui_config".into());
    }
    match one("aws_s3_object", "ui_config") {
        Some(b)
            if attr(&b.body, "key").is_some_and(|k| strings(k) == ["config.json"])
                && attr(&b.body, "content").is_some_and(|c| text(c).contains("local.ui_config")) => {}
        _ => out.push("no aws_s3_object.ui_config writing jsonencode(local.ui_config) to config.json".into()),
    }
    let Some(dist) = one("aws_cloudfront_distribution", "ui") else { return [out, vec!["no aws_cloudfront_distribution.ui".into()]].concat() };
    let origin = dist.body.blocks().find(|b| b.identifier.as_str() == "origin");
    if !origin.is_some_and(|o| attr(&o.body, "origin_access_control_id").is_some_and(|e| text(e).contains("aws_cloudfront_origin_access_control.ui.id"))) {
        out.push("the UI distribution's origin does not use aws_cloudfront_origin_access_control.ui".into());
    }
    if !origin.is_some_and(|o| attr(&o.body, "domain_name").is_some_and(|e| text(e).contains("aws_s3_bucket.ui.bucket_regional_domain_name"))) {
        out.push("the UI distribution's origin is not the UI bucket".into());
    }
    let signs_all = one("aws_cloudfront_origin_access_control", "ui").and_then(|b| attr(&b.body, "signing_behavior")).is_some_and(|e| strings(e) == ["always"]);
    if !signs_all {
        out.push("the UI's origin access control does not sign every request".into());
    }
    match one("aws_s3_bucket_policy", "ui").and_then(|b| attr(&b.body, "policy")).map(text) {
        Some(p) if p.contains("cloudfront.amazonaws.com") && p.contains("aws_cloudfront_distribution.ui.arn") => {}
        _ => out.push("the UI bucket's policy does not limit reads to the UI distribution (AWS:SourceArn)".into()),
    }
    let pab = one("aws_s3_bucket_public_access_block", "ui");
    for k in ["block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"] {
        if !pab.is_some_and(|b| attr(&b.body, k).is_some_and(|e| matches!(e, Expression::Bool(true)))) {
            out.push(format!("the UI bucket's public access block lacks {k} = true"));
        }
    }
    let api_cors = one("aws_apigatewayv2_api", "http")
        .and_then(|b| b.body.blocks().find(|c| c.identifier.as_str() == "cors_configuration").map(|c| hcl::format::to_string(&c.body).unwrap_or_default()));
    if !api_cors.is_some_and(|c| c.contains("local.ui_origin")) {
        out.push("the API does not allow the UI's origin (cors_configuration)".into());
    }
    out
}

// --- tests ------------------------------------------------------------------------------

#[test]
fn the_module_is_wired_to_the_code() {
    let files = module_files();
    let findings: Vec<String> = [
        check_functions(&files),
        check_env(&files),
        check_dead_letters(&files),
        check_iam(&files),
        check_routes(&files),
        check_batch_retries(&files),
        check_ui(&files),
        check_queues(&files),
    ]
    .concat();
    assert!(findings.is_empty(), "infra/modules/tamp drifted from the code:\n{}", findings.join("\n"));
}

#[test]
fn a_function_without_a_resource_is_caught() {
    let planted = with_edit(&module_files(), "main.tf", "    notify       = { memory = 256", "    # notify removed = { memory = 256");
    let f = check_functions(&planted);
    assert!(f.iter().any(|m| m.contains("functions/notify has no Lambda")), "{f:?}");
}

#[test]
fn a_target_without_a_dead_letter_queue_is_caught() {
    let planted =
        with_edit(&module_files(), "events.tf", "  dead_letter_config {\n    arn = aws_sqs_queue.dlq[\"events\"].arn\n  }\n}\n\n# Batch", "}\n\n# Batch");
    let f = check_dead_letters(&planted);
    assert!(f.iter().any(|m| m.contains("aws_cloudwatch_event_target.uploads has no dead_letter_config")), "{f:?}");
    let planted = with_edit(&module_files(), "queues.tf", "  redrive_policy = jsonencode({", "  not_a_redrive_policy = jsonencode({");
    assert!(check_dead_letters(&planted).iter().any(|m| m.contains("aws_sqs_queue.main has no redrive_policy")));
}

#[test]
fn a_star_resource_on_a_data_plane_action_is_caught() {
    let planted = with_edit(
        &module_files(),
        "lambda.tf",
        "actions   = [\"s3:GetObject\"]\n    resources = [\"${aws_s3_bucket.data.arn}/uploads/*\"]",
        "actions   = [\"s3:GetObject\"]\n    resources = [\"*\"]",
    );
    let f = check_iam(&planted);
    assert!(f.iter().any(|m| m.contains("s3:GetObject on \"*\"")), "{f:?}");
}

#[test]
fn a_missing_environment_variable_is_caught() {
    let planted = with_edit(&module_files(), "main.tf", "    TAMP_TABLE                = aws_dynamodb_table.meta.name\n", "");
    let f = check_env(&planted);
    assert!(f.iter().any(|m| m.contains("TAMP_TABLE is required")), "{f:?}");
    let planted = with_edit(&module_files(), "main.tf", "TAMP_RETRY_DELAY_S ", "TAMP_RETRY_DELAY_MS");
    assert!(check_env(&planted).iter().any(|m| m.contains("TAMP_RETRY_DELAY_MS is set by Terraform but no function reads it")));
    let planted =
        with_edit(&module_files(), "main.tf", "      TAMP_SECRETS_PARAMETER = local.secrets_parameter", "      TAMP_WEBHOOK_SECRET = var.webhook_secret");
    assert!(check_env(&planted).iter().any(|m| m.contains("TAMP_WEBHOOK_SECRET puts a secret in a Lambda environment")));
}

#[test]
fn a_gpu_queue_wired_to_the_cpu_one_is_caught() {
    let planted = with_edit(&module_files(), "main.tf", "= aws_batch_job_queue.gpu.name", "= aws_batch_job_queue.cpu.name");
    let f = check_queues(&planted);
    assert!(f.iter().any(|m| m.contains("TAMP_BATCH_GPU_QUEUE must be aws_batch_job_queue.gpu.name")), "{f:?}");
}

#[test]
fn a_route_the_router_lacks_is_caught() {
    let planted = with_edit(&module_files(), "api.tf", "\"GET /audit\"", "\"GET /audits\"");
    assert!(check_routes(&planted).iter().any(|m| m.contains("GET /audits")));
}

#[test]
fn a_retry_rule_that_retries_bad_input_is_caught() {
    let planted = with_edit(&module_files(), "batch.tf", "    evaluate_on_exit {\n      on_reason = \"*\"\n      action    = \"EXIT\"\n    }\n", "");
    let f = check_batch_retries(&planted);
    assert!(f.iter().any(|m| m.contains("bad input (exit 3) gets RETRY")), "{f:?}");
}

#[test]
fn a_ui_config_not_from_the_module_outputs_is_caught() {
    let planted = with_edit(&module_files(), "ui.tf", "api_base_url = aws_apigatewayv2_api.http.api_endpoint", "api_base_url = \"https://api.example.com\"");
    let f = check_ui(&planted);
    assert!(f.iter().any(|m| m.contains("api_base_url")), "{f:?}");
    let planted = with_edit(&module_files(), "ui.tf", "client_id = var.ui_oidc_client_id", "client_id = \"tamp\"");
    assert!(check_ui(&planted).iter().any(|m| m.contains("client_id")));
}

#[test]
fn a_ui_bucket_readable_without_the_distribution_is_caught() {
    let planted = with_edit(&module_files(), "ui.tf", "Condition = { StringEquals = { \"AWS:SourceArn\" = aws_cloudfront_distribution.ui.arn } }", "");
    assert!(check_ui(&planted).iter().any(|m| m.contains("AWS:SourceArn")));
    let planted = with_edit(&module_files(), "ui.tf", "origin_access_control_id = aws_cloudfront_origin_access_control.ui.id", "");
    assert!(check_ui(&planted).iter().any(|m| m.contains("aws_cloudfront_origin_access_control")));
}
