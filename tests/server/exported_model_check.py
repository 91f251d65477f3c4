"""The Python side of the exported-model test (model_transfer_e2e_test.cc), run with
/usr/bin/python3 and Debian's python3-torch.

  check MODEL_DIR SLICES LABELS S G DATASET JOB
      Loads MODEL_DIR/model.pt with torch.jit.load, runs it on the S x 1 x G x G float32
      slices miseg prepared (SLICES, raw little-endian), takes the argmax over the classes
      and compares with the labels miseg computed (LABELS, S x G x G uint8). Checks
      model.json against what the test knows. Exit 0 when every label matches.
  bad-shape MODEL_DIR OUT_DIR
      Writes OUT_DIR/model.pt, a TorchScript module that answers two channels whatever
      model.json says, beside a copy of MODEL_DIR/model.json (an import must refuse it).
"""
import json
import os
import shutil
import sys

import numpy as np
import torch


def check(model_dir, slices_path, labels_path, s, g, dataset, job):
    s, g, job = int(s), int(g), int(job)
    info = json.load(open(os.path.join(model_dir, "model.json")))
    problems = []
    expected = {"format": "miseg-torchscript-1", "dataset": dataset, "training_job": str(job),
                "grid_size": str(g), "spacing_policy": "fit_field_of_view"}
    for key, value in expected.items():
        if str(info.get(key)) != value:
            problems.append("model.json %s: %r, expected %r" % (key, info.get(key), value))
    names = [c["name"] for c in info["classes"]]
    if names != ["background", "right_ventricle", "myocardium", "left_ventricle"]:
        problems.append("model.json classes: %r" % names)
    codes = {c["name"]: c.get("type", {}).get("code_value") for c in info["classes"]}
    if codes.get("left_ventricle") != "87878005" or codes.get("myocardium") != "74281007":
        problems.append("model.json class codes: %r" % codes)
    if not info.get("miseg_version") or "clip_low_percentile" not in info:
        problems.append("model.json lacks the version or the normalisation")
    if not os.path.getsize(os.path.join(model_dir, "README.md")):
        problems.append("README.md is empty")

    model = torch.jit.load(os.path.join(model_dir, "model.pt"), map_location="cpu").eval()
    slices = torch.from_numpy(np.fromfile(slices_path, dtype="<f4").reshape(s, 1, g, g).copy())
    want = np.fromfile(labels_path, dtype=np.uint8).reshape(s, g, g)
    with torch.no_grad():
        logits = model(slices)
    if tuple(logits.shape) != (s, len(names), g, g):
        problems.append("logits of shape %r" % (tuple(logits.shape),))
    else:
        got = logits.argmax(dim=1).to(torch.uint8).numpy()
        differ = int((got != want).sum())
        print("python labels: %d of %d pixels differ from miseg's; classes present %r"
              % (differ, want.size, sorted(set(np.unique(want).tolist()))))
        if differ:
            problems.append("%d labels differ" % differ)
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


class TwoChannels(torch.nn.Module):
    def forward(self, x):
        return torch.cat([x, -x], dim=1)


def bad_shape(model_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    torch.jit.script(TwoChannels()).save(os.path.join(out_dir, "model.pt"))
    shutil.copy(os.path.join(model_dir, "model.json"), os.path.join(out_dir, "model.json"))
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "check":
        sys.exit(check(*sys.argv[2:]))
    if sys.argv[1] == "bad-shape":
        sys.exit(bad_shape(*sys.argv[2:]))
    sys.exit("usage: see the docstring")
