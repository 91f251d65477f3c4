"""ApiDoc.MatchesProto: docs/api.md against proto/miseg/v1/miseg.proto and the server.
Every RPC of the proto has a row in the doc, under its service's heading, with its exact
declaration (request and response types, streaming); the doc names no RPC the proto lacks;
each row's permission is the one the server enforces (Permission::kX beside the method's
name in server/*.cc); every error named is a gRPC status code.

usage: check_api_doc.py REPO"""
import glob
import re
import sys

repo = sys.argv[1]
proto = open(repo + "/proto/miseg/v1/miseg.proto").read()
doc = open(repo + "/docs/api.md").read()
CODES = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
         "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
         "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
         "UNAUTHENTICATED"}
PERMISSIONS = {"Read": "read", "Segment": "segment", "Upload": "upload", "Train": "train",
               "Promote": "promote", "CreateDataset": "create-dataset",
               "DeleteStudy": "delete-study", "Work": "work"}


def normalise(declaration):
    return re.sub(r"\s+", " ", declaration.strip().rstrip(";"))


# The proto: service -> [declaration].
declared = {}
for service, body in re.findall(r"^service (\w+) \{(.*?)^\}", proto, re.S | re.M):
    declared[service] = [normalise(d) for d in re.findall(r"^\s*(rpc [^;]+);", body, re.M)]

# The server: method -> permission.
enforced = {}
for path in glob.glob(repo + "/server/**/*.cc", recursive=True):
    source = open(path).read()
    for method, permission in re.findall(r'"(\w+)",\s*Permission::k(\w+)', source):
        enforced[method] = PERMISSIONS[permission]
    # FileDownloadReactor (worker service) checks Permission::kWork for each method it serves.
    if "FileDownloadReactor(" in source and "Permission::kWork" in source:
        for method in re.findall(r'new FileDownloadReactor\([^"]*"(\w+)"', source):
            enforced[method] = "work"

# The doc: its sections and rows.
documented = {}
section = None
errors = []
for line in doc.splitlines():
    heading = re.match(r"^### (\w+)$", line)
    if heading:
        section = heading.group(1)
        documented[section] = []
        continue
    row = re.match(r"^\| `(rpc [^`]+)` \| ([a-z-]+) \|([^|]*)\|", line)
    if row and section:
        declaration, permission, codes = normalise(row.group(1)), row.group(2), row.group(3)
        documented[section].append(declaration)
        method = re.match(r"rpc (\w+)", declaration).group(1)
        if method in enforced and enforced[method] != permission:
            errors.append("%s.%s: the doc says %s, the server checks %s" % (
                section, method, permission, enforced[method]))
        if method not in enforced:
            errors.append("%s.%s: no permission check found in server/" % (section, method))
        for code in re.findall(r"`([A-Z_]+)`", codes):
            if code not in CODES:
                errors.append("%s.%s: %s is not a gRPC status code" % (section, method, code))

for service, rpcs in declared.items():
    if service not in documented:
        errors.append("service %s is not documented" % service)
        continue
    for rpc in rpcs:
        if rpc not in documented[service]:
            errors.append("%s: `%s` is not documented (or differs)" % (service, rpc))
    for rpc in documented[service]:
        if rpc not in rpcs:
            errors.append("%s: the doc's `%s` is not in the proto" % (service, rpc))
for service in documented:
    if service not in declared:
        errors.append("the doc's service %s is not in the proto" % service)
if errors:
    sys.exit("docs/api.md does not match:\n  " + "\n  ".join(errors))
print("docs/api.md: %d services, %d RPCs, as the proto declares and the server enforces" % (
    len(declared), sum(len(r) for r in declared.values())))
