#!/usr/bin/env bash
# Give the app's identity a role in each Power BI workspace that refresh-config.json names.
# Azure Resource Manager cannot do this: workspace roles live in Power BI, not in Azure.
#
# Run it as a Power BI user who is Admin of those workspaces (AddGroupUser needs that), after the
# tenant setting "Service principals can use Fabric APIs" allows the identity (README.md (Deploying to Azure)):
#
#   az login                        # as that Power BI user
#   ./infra/scripts/grant-powerbi-access.sh --principal-object-id <object id> [options] [WORKSPACE ...]
#
# Options:
#   --principal-object-id ID  object id of the service principal (default: $MANAGED_IDENTITY_PRINCIPAL_ID,
#                             the managed identity output by main.bicep; with a client secret, the
#                             Enterprise application's object id, not the app registration's)
#   --config PATH             routing config (default: refresh-config.json in the repo root); its
#                             datasets.*.workspace values are the workspaces, unless WORKSPACE names
#                             (or ids) are given on the command line
#   --role ROLE               Contributor (default), Member or Admin
#   --dry-run                 show what would change, change nothing
#
# Idempotent: a principal that already has the role (or a higher one) is skipped; a lower role
# (Viewer) is raised with UpdateGroupUser. Exit status 1 if any workspace failed.
# POWERBI_API_URL (default https://api.powerbi.com/v1.0/myorg) and POWERBI_RESOURCE (default
# https://analysis.windows.net/powerbi/api) select a sovereign cloud.
set -euo pipefail

here=$(cd -- "$(dirname -- "$0")" && pwd)
config="$here/../../refresh-config.json"
principal=${MANAGED_IDENTITY_PRINCIPAL_ID:-}
role=Contributor
dry_run=0
workspaces=()

while [ $# -gt 0 ]; do
    case "$1" in
        --principal-object-id) principal=${2:?--principal-object-id needs a value}; shift 2 ;;
        --config) config=${2:?--config needs a value}; shift 2 ;;
        --role) role=${2:?--role needs a value}; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        --) shift; workspaces+=("$@"); break ;;
        -*) echo "unknown option: $1" >&2; exit 2 ;;
        *) workspaces+=("$1"); shift ;;
    esac
done

if [ -z "$principal" ]; then
    echo "give --principal-object-id (or set MANAGED_IDENTITY_PRINCIPAL_ID)" >&2
    exit 2
fi
case "$role" in
    Contributor|Member|Admin) ;;
    *) echo "--role must be Contributor, Member or Admin (got $role)" >&2; exit 2 ;;
esac

resource=${POWERBI_RESOURCE:-https://analysis.windows.net/powerbi/api}
# The token goes to the helper through the environment, never on a command line.
POWERBI_TOKEN=$(az account get-access-token --resource "$resource" --query accessToken -o tsv)
export POWERBI_TOKEN

exec python3 - "$config" "$principal" "$role" "$dry_run" ${workspaces[@]+"${workspaces[@]}"} <<'PY'
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

config_path, principal, role, dry_run, *names = sys.argv[1:]
dry_run = dry_run == "1"
api = os.environ.get("POWERBI_API_URL", "https://api.powerbi.com/v1.0/myorg").rstrip("/")
token = os.environ.pop("POWERBI_TOKEN")
RANK = {"None": 0, "Viewer": 1, "Contributor": 2, "Member": 3, "Admin": 4}
GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class ApiError(Exception):
    pass


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{api}/{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = response.read().decode() or "{}"
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:500]
        raise ApiError(f"{method} {path}: HTTP {error.code} {detail}") from None
    return json.loads(text)


def odata_string(value):
    return "'" + value.replace("'", "''") + "'"


def workspace_names():
    if names:
        return names
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    found = []
    for key, dataset in (config.get("datasets") or {}).items():
        workspace = dataset.get("workspace") if isinstance(dataset, dict) else None
        if not isinstance(workspace, str) or not workspace.strip():
            raise SystemExit(f"{config_path}: datasets.{key}.workspace is missing")
        if workspace not in found:
            found.append(workspace)
    if not found:
        raise SystemExit(f"{config_path}: no datasets, so no workspaces to grant")
    return found


def find_group(name):
    field = "id" if GUID.match(name) else "name"
    query = urllib.parse.quote(f"{field} eq {odata_string(name)}", safe="")
    groups = call("GET", f"groups?$filter={query}").get("value", [])
    if field == "name":
        groups = [g for g in groups if g.get("name") == name] or groups
    if len(groups) != 1:
        raise ApiError(f"workspace {name!r}: {len(groups)} matches among the workspaces you can access")
    return groups[0]


def grant(name):
    group = find_group(name)
    group_id = group["id"]
    users = call("GET", f"groups/{group_id}/users").get("value", [])
    wanted = principal.lower()
    current = next((u for u in users
                    if wanted in {str(u.get("identifier", "")).lower(), str(u.get("graphId", "")).lower()}),
                   None)
    body = {"identifier": principal, "principalType": "App", "groupUserAccessRight": role}
    if current is None:
        action, method = "add", "POST"
    else:
        right = current.get("groupUserAccessRight", "None")
        if RANK.get(right, 0) >= RANK[role]:
            print(f"{name}: already {right}, skipped")
            return
        action, method = f"raise {right} to", "PUT"
    if dry_run:
        print(f"{name}: would {action} {role} ({method} groups/{group_id}/users)")
        return
    call(method, f"groups/{group_id}/users", body)
    print(f"{name}: {action} {role}: done")


failed = 0
for workspace in workspace_names():
    try:
        grant(workspace)
    except ApiError as error:
        failed += 1
        print(f"{workspace}: FAILED: {error}", file=sys.stderr)
sys.exit(1 if failed else 0)
PY
