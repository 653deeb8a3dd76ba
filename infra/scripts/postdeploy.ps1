# Step 3 of the deployment: this environment's Event Grid subscriptions (infra/eventgrid.bicep).
# Windows twin of postdeploy.sh (azd postdeploy hook); same inputs and behaviour:
#   $env:AZURE_RESOURCE_GROUP = '<rg>'; $env:MAIN_DEPLOYMENT_NAME = '<name>'; ./infra/scripts/postdeploy.ps1
# It never prints a key.
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version Latest

$infra = Split-Path -Parent $PSScriptRoot
$rg = $env:AZURE_RESOURCE_GROUP
if (-not $rg) { throw 'postdeploy: set AZURE_RESOURCE_GROUP to the app resource group (azd sets it)' }
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
    if (-not $value) { throw "postdeploy: $Name is not set (run azd provision, or set MAIN_DEPLOYMENT_NAME)" }
    return $value
}

$app = Get-Required 'AZURE_FUNCTION_APP_NAME'
$storage = Get-Required 'AZURE_STORAGE_ACCOUNT_NAME'
$lake = Get-Required 'LAKE_STORAGE_ACCOUNT_NAME'
$lakeRg = Get-Required 'LAKE_RESOURCE_GROUP'
$gold = Get-Required 'GOLD_CONTAINER'
$topic = Get-Required 'LAKE_SYSTEM_TOPIC_NAME'
$topicRg = Get-Required 'LAKE_SYSTEM_TOPIC_RESOURCE_GROUP'
$deadLetter = Get-Output 'EVENTGRID_DEAD_LETTER_CONTAINER'

$attempts = if ($env:KEY_WAIT_ATTEMPTS) { [int] $env:KEY_WAIT_ATTEMPTS } else { 30 }
$keyWait = if ($env:KEY_WAIT_SECONDS) { [int] $env:KEY_WAIT_SECONDS } else { 10 }
$retryWait = if ($env:RETRY_WAIT_SECONDS) { [int] $env:RETRY_WAIT_SECONDS } else { 30 }
Write-Host "postdeploy: waiting for the system keys of $app (blobs_extension, eventgrid_extension)"
$query = 'systemKeys.blobs_extension != `null` && systemKeys.eventgrid_extension != `null`'
for ($i = 1; ; $i++) {
    $ready = az functionapp keys list -g $rg -n $app --only-show-errors -o tsv --query $query 2>$null
    if ("$ready".Trim() -ieq 'true') { break }
    if ($i -ge $attempts) {
        throw "postdeploy: the host has no blobs_extension/eventgrid_extension key yet. Check that the code is deployed: az functionapp function list -g $rg -n $app --query [].name"
    }
    Start-Sleep -Seconds $keyWait
}

$deploymentName = if ($env:EVENTGRID_DEPLOYMENT_NAME) { $env:EVENTGRID_DEPLOYMENT_NAME } else { "eventgrid-$app" }
Write-Host "postdeploy: deploying infra/eventgrid.bicep (subscriptions on $topic in $topicRg)"
for ($n = 1; ; $n++) {
    az deployment group create -g $rg -n $deploymentName -f (Join-Path $infra 'eventgrid.bicep') `
        --only-show-errors -o none `
        -p "functionAppName=$app" "storageAccountName=$storage" `
           "lakeStorageAccountName=$lake" "lakeResourceGroupName=$lakeRg" "goldContainerName=$gold" `
           "systemTopicName=$topic" "systemTopicResourceGroupName=$topicRg" `
           "deadLetterContainerName=$deadLetter"
    if ($LASTEXITCODE -eq 0) { break }
    if ($n -ge 3) { throw 'postdeploy: eventgrid.bicep failed 3 times' }
    Write-Host "postdeploy: retrying in $retryWait s (webhook validation fails while the host starts)"
    Start-Sleep -Seconds $retryWait
}
Write-Host 'postdeploy: Event Grid subscriptions are in place (remove them with ./infra/scripts/remove-lake-side.sh)'
