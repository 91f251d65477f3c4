"""Checks that the Grafana dashboard is valid JSON and that every miseg_ metric its queries
name is registered in server/metrics.cc (histogram series by their base name)."""
import json
import re
import sys

dashboard_path, metrics_source = sys.argv[1], sys.argv[2]
with open(dashboard_path) as f:
    dashboard = json.load(f)
with open(metrics_source) as f:
    registered = set(re.findall(r'\.Name\("(miseg_[a-z_]+)"\)', f.read()))
if not registered:
    sys.exit("no metric names found in %s" % metrics_source)
missing = []
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        for name in re.findall(r"\bmiseg_[a-z_]+", target["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in registered and base not in registered:
                missing.append((panel["title"], name))
if missing:
    sys.exit("queries of unknown metrics: %r" % missing)
print("%d panels, every metric registered" % len(dashboard["panels"]))
