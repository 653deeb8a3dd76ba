# Step 2 of the deployment: the lake side (infra/lake-access.bicep) as a deployment of its own.
# Windows twin of postprovision.sh (azd postprovision hook); same inputs, checks and behaviour:
#   $env:AZURE_RESOURCE_GROUP = '<rg>'; $env:MAIN_DEPLOYMENT_NAME = '<name>'; ./infra/scripts/postprovision.ps1
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$infra = Split-Path -Parent $PSScriptRoot
$rg = $env:AZURE_RESOURCE_GROUP
if (-not $rg) { throw 'postprovision: set AZURE_RESOURCE_GROUP to the app resource group (azd sets it)' }
$mainDeployment = $env:MAIN_DEPLOYMENT_NAME

function Get-Output([string] $Name) {
    $value = [Environment]::GetEnvironmentVariable($Name)
    if (-not $value -and $mainDeployment) {
        $value = az deployment group show -g $rg -n $mainDeployment `
            --query "properties.outputs.$Name.value" -o tsv --only-show-errors
    }
    return "$value".Trim()
}

function Get-Required([string] $Name) {
    $value = Get-Output $Name
    if (-not $value) { throw "postprovision: $Name is not set (run azd provision, or set MAIN_DEPLOYMENT_NAME)" }
    return $value
}

$app = Get-Required 'AZURE_FUNCTION_APP_NAME'
$principal = Get-Required 'MANAGED_IDENTITY_PRINCIPAL_ID'
$storage = Get-Required 'AZURE_STORAGE_ACCOUNT_NAME'
$lake = Get-Required 'LAKE_STORAGE_ACCOUNT_NAME'
$lakeRg = Get-Required 'LAKE_RESOURCE_GROUP'
$gold = Get-Required 'GOLD_CONTAINER'
$topic = Get-Required 'LAKE_SYSTEM_TOPIC_NAME'
$createTopic = (Get-Required 'LAKE_SYSTEM_TOPIC_CREATE').ToLowerInvariant()
$deadLetter = Get-Output 'EVENTGRID_DEAD_LETTER_CONTAINER'

$query = "join(' ', [to_string(isHnsEnabled), to_string(publicNetworkAccess), to_string(networkRuleSet.defaultAction)])"
$facts = az storage account show -g $lakeRg -n $lake --only-show-errors -o tsv --query $query
if ($LASTEXITCODE -ne 0) {
    throw "postprovision: cannot read the lake account $lake in resource group $lakeRg. Check LAKE_STORAGE_ACCOUNT_NAME / LAKE_RESOURCE_GROUP; whoever deploys needs Reader on the account."
}
$hns, $public, $defaultAction = "$facts".Trim() -split '\s+'
Write-Host "postprovision: lake ${lake}: isHnsEnabled=$hns publicNetworkAccess=$public networkRuleSet.defaultAction=$defaultAction"
if ($hns -ne 'true') {
    Write-Warning ("postprovision: $lake has no hierarchical namespace (isHnsEnabled=$hns): it is not ADLS Gen2. " +
        'Event Grid sends Microsoft.Storage.BlobRenamed (Spark/Databricks commit by renaming a temp file) only for accounts with one, ' +
        'so such commits reach the app only through the timer sweep (SWEEP_SCHEDULE, default every 5 minutes). ' +
        'Commits written in place (delta-rs PUT, CopyBlob) still trigger at once.')
}
if ($public -eq 'Disabled') {
    Write-Warning ("postprovision: $lake has public network access disabled: the app (no VNet integration in this template) " +
        'cannot read _delta_log/ until you add VNet integration and a private endpoint to the lake (README: Hardening).')
} elseif ($defaultAction -eq 'Deny') {
    Write-Warning ("postprovision: $lake has a firewall (networkRuleSet.defaultAction=Deny). Flex Consumption has no fixed outbound " +
        'IP addresses and this template no VNet integration, so the lake refuses the app (403 AuthorizationFailure) unless you ' +
        'integrate the app with a VNet that the lake allows (README: Hardening).')
}
az storage container-rm show -g $lakeRg --storage-account $lake -n $gold --only-show-errors -o none
if ($LASTEXITCODE -ne 0) { throw "postprovision: the gold container '$gold' does not exist in $lake (GOLD_CONTAINER)." }

Write-Host "postprovision: deploying infra/lake-access.bicep (read role on $lake/$gold; system topic $topic)"
az deployment group create -g $rg -n "lake-access-$app" -f (Join-Path $infra 'lake-access.bicep') `
    --only-show-errors -o none `
    -p "functionAppName=$app" "identityPrincipalId=$principal" "storageAccountName=$storage" `
       "lakeStorageAccountName=$lake" "lakeResourceGroupName=$lakeRg" "goldContainerName=$gold" `
       "systemTopicName=$topic" "createSystemTopic=$createTopic" "deadLetterContainerName=$deadLetter"
if ($LASTEXITCODE -ne 0) { throw 'postprovision: infra/lake-access.bicep failed' }
Write-Host 'postprovision: lake access in place (remove it with ./infra/scripts/remove-lake-side.sh)'
