#!/bin/sh
# Removes what this environment put on the lake side, which `azd down` never touches (it deletes the
# app's resource group only; the lake's resource group is not part of the azd deployment):
#   * this app's Event Grid subscriptions on the lake's system topic (named <app>-commit-*, or
#     delivering to this app's host name);
#   * the app identity's role assignments on the gold container;
#   * the nested deployment records lake-access-<app> / event-subscriptions-<app>;
#   * with --delete-topic: the system topic, only if this template created it (tag created-by) and
#     no subscription of any other environment or tool is left on it.
#
# Run it BEFORE `azd down` (it reads the environment's outputs, and the identity still exists):
#   ./infra/scripts/remove-lake-side.sh [--delete-topic] && azd down
# Plain az path: AZURE_RESOURCE_GROUP=<rg> MAIN_DEPLOYMENT_NAME=main ./infra/scripts/remove-lake-side.sh
# Needs EventGrid Contributor on the topic's resource group and the right to delete role assignments
# on the gold container. Idempotent: running it again finds nothing to remove.
set -eu

delete_topic=false
for arg in "$@"; do
    case "$arg" in
        --delete-topic) delete_topic=true ;;
        *) echo "usage: $0 [--delete-topic]" >&2; exit 2 ;;
    esac
done

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
. "$here/outputs.sh"

app=$(required AZURE_FUNCTION_APP_NAME)
host=$(output AZURE_FUNCTION_APP_HOSTNAME)
principal=$(required MANAGED_IDENTITY_PRINCIPAL_ID)
lake=$(required LAKE_STORAGE_ACCOUNT_NAME)
lake_rg=$(required LAKE_RESOURCE_GROUP)
gold=$(required GOLD_CONTAINER)
topic=$(required LAKE_SYSTEM_TOPIC_NAME)
topic_rg=$(required LAKE_SYSTEM_TOPIC_RESOURCE_GROUP)
[ -n "$host" ] || host="$app.azurewebsites.net"

subscriptions=$(az eventgrid system-topic event-subscription list -g "$topic_rg" --system-topic-name "$topic" \
    --only-show-errors -o tsv \
    --query "[?starts_with(name, '$app-commit-') || contains(to_string(destination.endpointBaseUrl), '//$host/')].name")
for name in $subscriptions; do
    echo "remove-lake-side: deleting event subscription $name on $topic"
    az eventgrid system-topic event-subscription delete -g "$topic_rg" --system-topic-name "$topic" \
        -n "$name" --yes --only-show-errors -o none
done

lake_id=$(az storage account show -g "$lake_rg" -n "$lake" --query id -o tsv --only-show-errors)
scope="$lake_id/blobServices/default/containers/$gold"
# By principal id, without a Microsoft Graph lookup (works even if the identity is already gone).
assignments=$(az role assignment list --scope "$scope" --only-show-errors -o tsv \
    --query "[?principalId=='$principal' && scope=='$scope'].id")
for id in $assignments; do
    echo "remove-lake-side: deleting role assignment $id"
    az role assignment delete --ids "$id" --only-show-errors -o none
done

for deployment in "lake-access-$app" "event-subscriptions-$app"; do
    for group in "$lake_rg" "$topic_rg"; do
        az deployment group delete -g "$group" -n "$deployment" --only-show-errors -o none 2>/dev/null || true
    done
done

if [ "$delete_topic" = true ]; then
    created_by=$(az eventgrid system-topic show -g "$topic_rg" -n "$topic" --only-show-errors -o tsv \
        --query 'tags."created-by"' 2>/dev/null || true)
    left=$(az eventgrid system-topic event-subscription list -g "$topic_rg" --system-topic-name "$topic" \
        --only-show-errors -o tsv --query 'length(@)')
    if [ "$created_by" != "powerbi-delta-refresh" ]; then
        echo "remove-lake-side: keeping $topic: this template did not create it"
    elif [ "$left" != "0" ]; then
        echo "remove-lake-side: keeping $topic: $left other subscription(s) still use it"
    else
        echo "remove-lake-side: deleting system topic $topic"
        az eventgrid system-topic delete -g "$topic_rg" -n "$topic" --yes --only-show-errors -o none
    fi
fi
echo "remove-lake-side: done; nothing of this environment is left in $lake_rg. Now: azd down"
