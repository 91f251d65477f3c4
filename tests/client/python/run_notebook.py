#!/usr/bin/python3
"""Executes client/python/examples/quickstart.ipynb headless (jupyter nbconvert --execute,
Debian's nbconvert and ipykernel) against a real miseg-server this script starts, in the
kernel of the venv PythonPackage.Install made (kernel "miseg-venv": the installed
package), with a few training steps and a tiny U-Net. Then checks the executed notebook's
outputs: no error, the history frame of the cell tagged history-columns has every loss
column and a Dice column per class, the labels of the cell tagged labels-shape have the
held-out source series' shape (read here with pydicom), and the figures (both histories,
their comparison, the overlay) came out as PNGs.

  /usr/bin/python3 run_notebook.py NOTEBOOK VENV_DIR SERVER CLI
"""

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
from miseg_server_process import ServerProcess  # noqa: E402

CLASSES = ["background", "right_ventricle", "myocardium", "left_ventricle"]
LOSS_COLUMNS = ["loss", "supervised", "consistency", "mutual_information",
                "unsupervised_weight"]
STEPS = 4
EXECUTE_TIMEOUT_S = 300


def tagged_output(notebook, tag):
    """The text/plain result of the code cell carrying tag."""
    for cell in notebook["cells"]:
        if tag in cell.get("metadata", {}).get("tags", []):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "execute_result":
                    return "".join(output["data"]["text/plain"])
            raise AssertionError("the cell tagged %s has no result: %r" % (tag, cell))
    raise AssertionError("no cell tagged " + tag)


def source_shape(folder):
    import numpy as np
    import pydicom
    headers = [pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True)
               for n in sorted(os.listdir(folder))]
    images = [h for h in headers if h.Modality != "SEG"]
    assert len(images) != len(headers), "the held-out study has no SEG"
    assert len({(int(h.Rows), int(h.Columns)) for h in images}) == 1
    assert np.isfinite([float(v) for v in images[0].ImagePositionPatient]).all()
    return (len(images), int(images[0].Rows), int(images[0].Columns))


def check(notebook, work):
    errors = [o for c in notebook["cells"] for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    columns = ast.literal_eval(tagged_output(notebook, "history-columns"))
    expected = (["step"] + LOSS_COLUMNS + ["learning_rate"]
                + ["dice_" + c for c in CLASSES[1:]] + ["mean_dice"])
    missing = [c for c in expected if c not in columns]
    assert not missing, "history frame lacks %s: %s" % (missing, columns)
    shape = ast.literal_eval(tagged_output(notebook, "labels-shape"))
    expected_shape = source_shape(os.path.join(work, "studies", "subject-004"))
    assert tuple(shape) == expected_shape, (shape, expected_shape)
    pngs = sum(1 for c in notebook["cells"] for o in c.get("outputs", [])
               if "image/png" in o.get("data", {}))
    assert pngs >= 4, "expected 4 figures (2 histories, comparison, overlay), got %d" % pngs
    overlay = [o for c in notebook["cells"] if "overlay" in c["metadata"].get("tags", [])
               for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert overlay, "the overlay cell shows no image"
    assert os.path.getsize(os.path.join(work, "held-out-seg.dcm")) > 132
    print("notebook ok: %d figures, history columns %s, labels %s" % (pngs, columns, shape))


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    notebook, venv, server_binary, cli = (os.path.abspath(p) for p in sys.argv[1:])
    tmp = tempfile.mkdtemp(prefix="miseg-notebook-")
    server = None
    try:
        server = ServerProcess(server_binary, os.path.join(tmp, "data"),
                               os.path.join(tmp, "ready"))
        server.wait_until_serving()
        work = os.path.join(tmp, "work")
        os.makedirs(work)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MISEG_")}
        jupyter = os.path.join(tmp, "jupyter")
        os.makedirs(jupyter)
        env.update(
            MISEG_ADDRESS="127.0.0.1:%d" % server.grpc_port, MISEG_CLI=cli,
            MISEG_QUICKSTART_STEPS=str(STEPS), MISEG_QUICKSTART_TINY="1",
            MISEG_QUICKSTART_DIR=work, MPLBACKEND="module://matplotlib_inline.backend_inline",
            # Nothing from the user's Jupyter or IPython setup, nothing written to $HOME.
            JUPYTER_CONFIG_DIR=os.path.join(jupyter, "config"),
            JUPYTER_DATA_DIR=os.path.join(jupyter, "data"),
            JUPYTER_RUNTIME_DIR=os.path.join(jupyter, "runtime"),
            IPYTHONDIR=os.path.join(jupyter, "ipython"),
            MPLCONFIGDIR=os.path.join(jupyter, "matplotlib"),
            PYDEVD_DISABLE_FILE_VALIDATION="1")
        out = os.path.join(tmp, "executed")
        subprocess.run(
            [os.path.join(venv, "bin", "python"), "-m", "nbconvert", "--to", "notebook",
             "--execute", notebook, "--output-dir", out, "--output", "quickstart",
             "--ExecutePreprocessor.kernel_name=miseg-venv",
             "--ExecutePreprocessor.timeout=%d" % EXECUTE_TIMEOUT_S],
            check=True, env=env, cwd=work, timeout=EXECUTE_TIMEOUT_S + 60)
        with open(os.path.join(out, "quickstart.ipynb")) as f:
            executed = json.load(f)
        check(executed, work)
        status = server.stop()
        assert status == 0, "miseg-server exit status %s\n%s" % (status, server.log())
    except BaseException:
        if server is not None:
            print(server.log()[-5000:], file=sys.stderr)
        raise
    finally:
        if server is not None:
            server.kill()
        if not os.environ.get("MISEG_KEEP_TEST_DIR"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
