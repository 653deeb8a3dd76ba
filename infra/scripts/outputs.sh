# Sourced by the hook scripts (POSIX sh): the outputs of infra/main.bicep.
#
# azd runs the hooks with the outputs in the environment. On the plain az path, name the main
# deployment and the outputs are read from it:
#   AZURE_RESOURCE_GROUP=<rg> MAIN_DEPLOYMENT_NAME=<name> ./infra/scripts/<script>.sh
# Needs the Azure CLI, logged in. Sets `rg` and `infra`; defines `output NAME` and `required NAME`.

: "${AZURE_RESOURCE_GROUP:?set AZURE_RESOURCE_GROUP to the app resource group (azd sets it)}"
rg=$AZURE_RESOURCE_GROUP
main_deployment=${MAIN_DEPLOYMENT_NAME:-}
infra=$(CDPATH='' cd -- "$here/.." && pwd)
script=$(basename -- "$0" .sh)

# The value of a main.bicep output: from the environment (azd), else from the named deployment.
output() {
    eval "value=\${$1:-}"
    if [ -z "$value" ] && [ -n "$main_deployment" ]; then
        value=$(az deployment group show -g "$rg" -n "$main_deployment" \
            --query "properties.outputs.$1.value" -o tsv --only-show-errors)
    fi
    printf '%s' "$value"
}

required() {
    value=$(output "$1")
    if [ -z "$value" ]; then
        echo "$script: $1 is not set (run azd provision, or set MAIN_DEPLOYMENT_NAME)" >&2
        exit 1
    fi
    printf '%s' "$value"
}
