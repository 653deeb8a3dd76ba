#!/bin/sh
# Step 2 of the deployment: the lake side (infra/lake-access.bicep) as a deployment of its own, so
# that nothing azd provisions lives in the lake's resource group (azd never sees it; remove it with
# infra/scripts/remove-lake-side.sh). First it checks what the app needs from the lake.
#
# azd runs this as the postprovision hook, with the outputs of infra/main.bicep in the environment.
# On the plain az path, run it after infra/main.bicep:
#   AZURE_RESOURCE_GROUP=<rg> MAIN_DEPLOYMENT_NAME=<name> ./infra/scripts/postprovision.sh
# Needs the Azure CLI, logged in, with: Reader on the lake account, the right to create role
# assignments on the gold container (Owner, User Access Administrator or Role Based Access Control
# Administrator), and EventGrid Contributor on the lake resource group (the nested deployment, and
# the system topic unless one is reused) (README: Before you start).
#
# Lake checks (errors stop the deployment; warnings do not):
#   * the account is readable and the gold container exists (error otherwise);
#   * isHnsEnabled: events for Spark's renames (Microsoft.Storage.BlobRenamed) exist only on accounts
#     with a hierarchical namespace (ADLS Gen2) (warning);
#   * publicNetworkAccess / networkRuleSet.defaultAction: this template gives the app no VNet
#     integration, so a lake that refuses public traffic refuses the app (warning).
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
. "$here/outputs.sh"

app=$(required AZURE_FUNCTION_APP_NAME)
principal=$(required MANAGED_IDENTITY_PRINCIPAL_ID)
storage=$(required AZURE_STORAGE_ACCOUNT_NAME)
lake=$(required LAKE_STORAGE_ACCOUNT_NAME)
lake_rg=$(required LAKE_RESOURCE_GROUP)
gold=$(required GOLD_CONTAINER)
topic=$(required LAKE_SYSTEM_TOPIC_NAME)
create_topic=$(required LAKE_SYSTEM_TOPIC_CREATE)
dead_letter=$(output EVENTGRID_DEAD_LETTER_CONTAINER)

warn() {
    printf 'postprovision: WARNING: %s\n' "$*" >&2
}

# One call; JMESPath to_string() turns booleans and a missing value (null) into words.
if ! facts=$(az storage account show -g "$lake_rg" -n "$lake" --only-show-errors -o tsv \
    --query "join(' ', [to_string(isHnsEnabled), to_string(publicNetworkAccess), to_string(networkRuleSet.defaultAction)])"); then
    echo "postprovision: cannot read the lake account $lake in resource group $lake_rg." >&2
    echo "  Check LAKE_STORAGE_ACCOUNT_NAME / LAKE_RESOURCE_GROUP; whoever deploys needs Reader on the account." >&2
    exit 1
fi
# shellcheck disable=SC2086
set -- $facts
hns=${1:-null} public=${2:-null} default_action=${3:-null}
echo "postprovision: lake $lake: isHnsEnabled=$hns publicNetworkAccess=$public networkRuleSet.defaultAction=$default_action"
if [ "$hns" != "true" ]; then
    warn "$lake has no hierarchical namespace (isHnsEnabled=$hns): it is not ADLS Gen2." \
        "Event Grid sends Microsoft.Storage.BlobRenamed (Spark/Databricks commit by renaming a temp file)" \
        "only for accounts with one, so such commits reach the app only through the timer sweep" \
        "(SWEEP_SCHEDULE, default every 5 minutes). Commits written in place (delta-rs PUT, CopyBlob) still" \
        "trigger at once. A hierarchical namespace cannot be switched on without an account upgrade."
fi
if [ "$public" = "Disabled" ]; then
    warn "$lake has public network access disabled: the app (this template creates no VNet integration)" \
        "cannot read _delta_log/, and every detection fails until you add VNet integration and a private" \
        "endpoint to the lake (README: Hardening). Event delivery itself is not affected."
elif [ "$default_action" = "Deny" ]; then
    warn "$lake has a firewall (networkRuleSet.defaultAction=Deny). Flex Consumption has no fixed outbound" \
        "IP addresses and this template no VNet integration, so the lake refuses the app (403" \
        "AuthorizationFailure on every read) unless you integrate the app with a VNet that the lake" \
        "allows (service endpoint or private endpoint; README: Hardening). Event delivery is not affected."
fi
if ! az storage container-rm show -g "$lake_rg" --storage-account "$lake" -n "$gold" \
    --only-show-errors -o none; then
    echo "postprovision: the gold container '$gold' does not exist in $lake (GOLD_CONTAINER)." >&2
    exit 1
fi

echo "postprovision: deploying infra/lake-access.bicep (read role on $lake/$gold; system topic $topic)"
az deployment group create -g "$rg" -n "lake-access-$app" -f "$infra/lake-access.bicep" \
    --only-show-errors -o none \
    -p functionAppName="$app" identityPrincipalId="$principal" storageAccountName="$storage" \
       lakeStorageAccountName="$lake" lakeResourceGroupName="$lake_rg" goldContainerName="$gold" \
       systemTopicName="$topic" createSystemTopic="$create_topic" deadLetterContainerName="$dead_letter"
echo "postprovision: lake access in place (remove it with ./infra/scripts/remove-lake-side.sh)"
