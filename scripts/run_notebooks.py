"""Runs the example notebooks headless (nbclient, the python3 kernel of this venv) against the
`tamp serve` named by TAMP_URL / TAMP_TOKEN, printing each cell's output; exit status 1 on
the first notebook that fails. The notebooks on disk are not rewritten.
Usage: run_notebooks.py notebooks/ptq_only.ipynb [...]"""
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

failed = []
for path in map(Path, sys.argv[1:]):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
        status = "ok"
    except CellExecutionError as e:
        failed.append(path.name)
        status = f"FAILED\n{e}"
    print(f"== {path.name}: {status}")
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                print("   " + out["text"].rstrip().replace("\n", "\n   "))
sys.exit(1 if failed else 0)
