#!/bin/sh
# Step 3 of the deployment: this environment's Event Grid subscriptions on the lake's system topic
# (infra/eventgrid.bicep), as a deployment of its own (azd never sees it; remove it with
# infra/scripts/remove-lake-side.sh).
#
# azd runs this as the postdeploy hook, with the outputs of infra/main.bicep in the environment.
# On the plain az path, run it after the code is deployed, naming the main deployment:
#   AZURE_RESOURCE_GROUP=<rg> MAIN_DEPLOYMENT_NAME=<name> ./infra/scripts/postdeploy.sh
# and it reads the outputs from that deployment. Needs the Azure CLI, logged in, with: Contributor
# on the app resource group, EventGrid Contributor on the topic's resource group, and Reader on the
# lake storage account (eventgrid.bicep reads its endpoints).
#
# It waits until the host has the system keys the webhooks need (blobs_extension and
# eventgrid_extension exist only once the deployed code's blob trigger and Event Grid trigger have
# loaded), then deploys eventgrid.bicep, retrying while Event Grid's webhook validation fails
# because the host is still starting. It never prints a key.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
. "$here/outputs.sh"

app=$(required AZURE_FUNCTION_APP_NAME)
storage=$(required AZURE_STORAGE_ACCOUNT_NAME)
lake=$(required LAKE_STORAGE_ACCOUNT_NAME)
lake_rg=$(required LAKE_RESOURCE_GROUP)
gold=$(required GOLD_CONTAINER)
topic=$(required LAKE_SYSTEM_TOPIC_NAME)
topic_rg=$(required LAKE_SYSTEM_TOPIC_RESOURCE_GROUP)
dead_letter=$(output EVENTGRID_DEAD_LETTER_CONTAINER)

attempts=${KEY_WAIT_ATTEMPTS:-30}
key_wait=${KEY_WAIT_SECONDS:-10}
retry_wait=${RETRY_WAIT_SECONDS:-30}
echo "postdeploy: waiting for the system keys of $app (blobs_extension, eventgrid_extension)"
i=0
while :; do
    # Prints only true/false, never the keys. The backticks are JMESPath literals.
    # shellcheck disable=SC2016
    ready=$(az functionapp keys list -g "$rg" -n "$app" --only-show-errors -o tsv \
        --query 'systemKeys.blobs_extension != `null` && systemKeys.eventgrid_extension != `null`' \
        2>/dev/null || true)
    case "$ready" in
        [Tt]rue) break ;;
    esac
    i=$((i + 1))
    if [ "$i" -ge "$attempts" ]; then
        echo "postdeploy: the host has no blobs_extension/eventgrid_extension key yet." >&2
        echo "  Check that the code is deployed and on_delta_commit / on_lake_event are listed:" >&2
        echo "  az functionapp function list -g $rg -n $app --query [].name" >&2
        exit 1
    fi
    sleep "$key_wait"
done

echo "postdeploy: deploying infra/eventgrid.bicep ($app-commit-created/-renamed on $topic in $topic_rg)"
n=0
until az deployment group create -g "$rg" -n "${EVENTGRID_DEPLOYMENT_NAME:-eventgrid-$app}" \
    -f "$infra/eventgrid.bicep" --only-show-errors -o none \
    -p functionAppName="$app" storageAccountName="$storage" \
       lakeStorageAccountName="$lake" lakeResourceGroupName="$lake_rg" goldContainerName="$gold" \
       systemTopicName="$topic" systemTopicResourceGroupName="$topic_rg" \
       deadLetterContainerName="$dead_letter"; do
    n=$((n + 1))
    if [ "$n" -ge 3 ]; then
        echo "postdeploy: eventgrid.bicep failed 3 times" >&2
        exit 1
    fi
    echo "postdeploy: retrying in $retry_wait s (webhook validation fails while the host starts)"
    sleep "$retry_wait"
done
echo "postdeploy: Event Grid subscriptions are in place (remove them with ./infra/scripts/remove-lake-side.sh)"
