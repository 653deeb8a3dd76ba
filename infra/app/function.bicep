// The Flex Consumption plan and the Python 3.11 Function App, with every app setting it reads.
// All connections are identity-based (user-assigned managed identity); there are no connection
// strings or keys in any setting. tests/test_infra.py parses the *AppSettings variables below and
// checks them against refresh/settings.py (SETTINGS) in both directions.

param location string
param tags object
param name string
param planName string
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string
param lakeBlobServiceUri string
param goldContainerName string
param refreshQueueName string
param stateTableName string
param outcomesTableName string
param sweepSchedule string
param refreshConfigPath string
param powerBiApiUrl string
param powerBiScope string
param powerBiClientId string
param powerBiTenantId string
@description('Key Vault secret URI of the Power BI service principal secret. Empty: the managed identity calls Power BI.')
param powerBiClientSecretUri string
@description('Key Vault secret URI (without version) holding the alert webhook URL; empty: alerts are recorded, not sent.')
param alertWebhookSecretUri string = ''
param maximumInstanceCount int
param instanceMemoryMB int
param extraAppSettings object
@description('Zone-redundant Flex Consumption plan. Only in regions that support it for Flex, and it needs zone-redundant (ZRS/GZRS) host storage.')
param zoneRedundant bool = false

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  //checkov:skip=CKV_AZURE_225:Opt-in via zoneRedundant: Flex zone redundancy exists only in some regions and requires ZRS/GZRS host storage, so it cannot be the default of a template for any region.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
    zoneRedundant: zoneRedundant
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  //checkov:skip=CKV_AZURE_222:Event Grid delivers lake events by pushing to the app's webhooks (/runtime/webhooks/blobs and /EventGrid) over the public endpoint; it cannot reach a private endpoint. Every endpoint requires a function or system key.
  //checkov:skip=CKV_AZURE_17:Client certificates cannot be used: Event Grid webhook delivery presents none. Callers authenticate with function keys (HTTP auth level FUNCTION) and system keys (webhooks).
  //checkov:skip=CKV_AZURE_212:numberOfWorkers does not apply to Flex Consumption, which scales instances per trigger (maximumInstanceCount); a lost instance is replaced on the next event.
  //checkov:skip=CKV_AZURE_78:Flex Consumption has no FTP/FTPS endpoint, and siteConfig.ftpsState is rejected on Flex sites (ARM error 51021 in regions that enforce the Flex property list, e.g. West Europe); Microsoft's Flex samples do not set it. Publishing is zip deploy with Entra ID only (scm basic auth off).
  //checkov:skip=CKV_AZURE_18:siteConfig.http20Enabled is an App Service setting that Microsoft's Flex Consumption samples do not set; Flex validates siteConfig per region (error 51021), so only minTlsVersion is set. Callers are Event Grid webhooks and the HTTP API over HTTPS with TLS 1.2.
  //checkov:skip=CKV_AZURE_67:Same as CKV_AZURE_18 (the Function App variant of the HTTP version check): http20Enabled is not a Flex Consumption setting.
  //checkov:skip=CKV_AZURE_213:App Service health check is not available on Flex Consumption, and it would need an anonymous endpoint; the health function uses function-level auth and is probed by monitoring instead.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    // Event Grid delivers to the webhooks over the public endpoint (no VNet in this template).
    publicNetworkAccess: 'Enabled'
    keyVaultReferenceIdentity: identityId
    // Only what Flex Consumption supports (as in Microsoft's Flex samples): ftpsState,
    // use32BitWorkerProcess, netFrameworkVersion, functionsRuntimeScaleMonitoringEnabled are rejected
    // with error 51021 in regions that enforce the Flex property list (West Europe among them), and
    // http20Enabled / remoteDebuggingEnabled / scmMinTlsVersion are App Service settings Flex does not use.
    siteConfig: {
      minTlsVersion: '1.2'
      appSettings: appSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

// No basic-auth publishing: SCM (zip deploy) accepts only Entra ID tokens (azd and az use those).
// Flex Consumption has no FTP endpoint, so there is no 'ftp' policy to set.
resource scmPolicy 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2023-12-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// Host storage (AzureWebJobsStorage): blob (keys, leases, deployment), queue (Event Grid blob trigger
// queue, refresh jobs) and table (state, outcomes, diagnostic events), all with the identity.
var hostStorageAppSettings = [
  {
    name: 'AzureWebJobsStorage__blobServiceUri'
    value: storage.properties.primaryEndpoints.blob
  }
  {
    name: 'AzureWebJobsStorage__queueServiceUri'
    value: storage.properties.primaryEndpoints.queue
  }
  {
    name: 'AzureWebJobsStorage__tableServiceUri'
    value: storage.properties.primaryEndpoints.table
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
]

// The lake (LAKE_STORAGE): blob, to read _delta_log/ (the gold container only, read only).
// The queue service of this connection is the APP storage account's, on purpose: the blob trigger
// binding needs one (identity connections of a blob trigger need both service URIs), and all it does
// with it is put a commit whose function failed maxDequeueCount times on `webjobs-blobtrigger-poison`
// there (WebJobs blob extension, SharedBlobQueueListenerFactory: the poison queue of the triggering
// blob's connection; no blob receipts with the Event Grid source). So nothing is created in the
// customer's lake and the app holds no queue role on it.
var lakeStorageAppSettings = [
  {
    name: 'LAKE_STORAGE__blobServiceUri'
    value: lakeBlobServiceUri
  }
  {
    name: 'LAKE_STORAGE__queueServiceUri'
    value: storage.properties.primaryEndpoints.queue
  }
  {
    name: 'LAKE_STORAGE__credential'
    value: 'managedidentity'
  }
  {
    name: 'LAKE_STORAGE__clientId'
    value: identityClientId
  }
]

var monitoringAppSettings = [
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsights.properties.ConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
]

// Settings from refresh/settings.py. Binding expressions (%GOLD_CONTAINER%, %REFRESH_QUEUE%,
// %SWEEP_SCHEDULE%) must be app settings: the host resolves them, not the Python defaults.
var codeAppSettings = [
  {
    name: 'GOLD_CONTAINER'
    value: goldContainerName
  }
  {
    name: 'REFRESH_QUEUE'
    value: refreshQueueName
  }
  {
    name: 'STATE_TABLE'
    value: stateTableName
  }
  {
    name: 'OUTCOMES_TABLE'
    value: outcomesTableName
  }
  {
    name: 'SWEEP_SCHEDULE'
    value: sweepSchedule
  }
  {
    name: 'REFRESH_CONFIG'
    value: refreshConfigPath
  }
  {
    name: 'POWERBI_API_URL'
    value: powerBiApiUrl
  }
  {
    name: 'POWERBI_SCOPE'
    value: powerBiScope
  }
  {
    // a secret (a Teams Workflows URL carries its signature): only ever a Key Vault reference
    name: 'ALERT_WEBHOOK_URL'
    value: empty(alertWebhookSecretUri) ? '' : '@Microsoft.KeyVault(SecretUri=${alertWebhookSecretUri})'
  }
]

// Power BI credential (azure-identity DefaultAzureCredential). With the managed identity,
// AZURE_CLIENT_ID selects the user-assigned identity. With a service principal, the
// EnvironmentCredential reads AZURE_TENANT_ID / AZURE_CLIENT_ID / AZURE_CLIENT_SECRET, and the
// secret is a Key Vault reference resolved with keyVaultReferenceIdentity (the same identity).
var powerBiAppSettings = empty(powerBiClientSecretUri) ? [
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
] : [
  {
    name: 'AZURE_CLIENT_ID'
    value: powerBiClientId
  }
  {
    name: 'AZURE_TENANT_ID'
    value: powerBiTenantId
  }
  {
    name: 'AZURE_CLIENT_SECRET'
    value: '@Microsoft.KeyVault(SecretUri=${powerBiClientSecretUri})'
  }
]

// Operator-supplied settings (a parameter, so the loop is known at deployment start).
var extraAppSettingsList = [for setting in items(extraAppSettings): {
  name: setting.key
  value: setting.value
}]

// Arrays of name/value pairs rather than objects: a for-loop over runtime values (endpoints,
// the connection string) is not allowed in Bicep. Template-managed settings come last.
var appSettings = concat(extraAppSettingsList, hostStorageAppSettings, lakeStorageAppSettings, monitoringAppSettings, codeAppSettings, powerBiAppSettings)

output name string = functionApp.name
output defaultHostName string = functionApp.properties.defaultHostName
