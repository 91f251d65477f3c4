"""Checks that the Grafana dashboard is valid JSON and that every miseg_ and process_ metric
its queries name is registered in server/metrics/metrics.cc (histogram series by their base name;
miseg_ metrics by their .Name("..."), the standard process_ metrics by their name as a
string literal of the process collector)."""
import json
import re
import sys

dashboard_path, metrics_source = sys.argv[1], sys.argv[2]
with open(dashboard_path) as f:
    dashboard = json.load(f)
with open(metrics_source) as f:
    source = f.read()
registered = set(re.findall(r'\.Name\("(miseg_[a-z_]+)"\)', source))
registered |= set(re.findall(r'"(process_[a-z_]+)"', source))
if not any(name.startswith("miseg_") for name in registered):
    sys.exit("no metric names found in %s" % metrics_source)
missing = []
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        for name in re.findall(r"\b(?:miseg|process)_[a-z_]+", target["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in registered and base not in registered:
                missing.append((panel["title"], name))
if missing:
    sys.exit("queries of unknown metrics: %r" % missing)
print("%d panels, every metric registered" % len(dashboard["panels"]))
