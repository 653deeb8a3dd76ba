// Power BI Delta refresh: Flex Consumption Function App (Python 3.11) and everything it needs, in one
// (empty) resource group, wired to an EXISTING ADLS Gen2 lake in another resource group.
//
// This template deploys NOTHING outside the app's resource group (tests/test_infra.py checks it):
// azd deletes whole resource groups of what its deployment created, so nothing of the azd-managed
// deployment may live in the customer's lake resource group. It only READS the lake account (its
// blob endpoint, through an `existing` reference). The lake side is applied by separate deployments
// that `azd down` never sees, and removed by an explicit command:
//   * infra/lake-access.bicep (postprovision hook): the app's read role on the gold container, the
//     lake's Event Grid system topic (unless one is reused) and its dead-letter role;
//   * infra/eventgrid.bicep (postdeploy hook): the event subscriptions, which need the host's system
//     keys and so the deployed code;
//   * infra/scripts/remove-lake-side.sh removes both (README: Removing the app).
//
// Plain resource declarations only (no registry modules), so the template can be read and scanned
// offline. Deploy with `azd up`, or `az deployment group create -g <rg> -f infra/main.bicep ...`
// (see README.md (Deploying to Azure)).

targetScope = 'resourceGroup'

// ---------------------------------------------------------------------------------------------
// Parameters: environment
// ---------------------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('Name of the environment (azd env name). Used to derive unique resource names.')
param environmentName string

@description('Region of the app resources. Defaults to the resource group region. Flex Consumption must be available there.')
param location string = resourceGroup().location

// ---------------------------------------------------------------------------------------------
// Parameters: the existing lake (no defaults: the template cannot know them)
// ---------------------------------------------------------------------------------------------

@minLength(3)
@maxLength(24)
@description('Name of the existing ADLS Gen2 storage account that holds the gold Delta tables.')
param lakeStorageAccountName string

@minLength(1)
@maxLength(90)
@description('Resource group of the existing lake storage account.')
param lakeResourceGroupName string

@minLength(3)
@maxLength(63)
@description('Container (file system) of the lake that holds the gold Delta tables (app setting GOLD_CONTAINER).')
param goldContainerName string

@description('Name of an Event Grid system topic that already exists on the lake account (an account can have only one). Empty: this template creates one.')
param lakeSystemTopicName string = ''

@description('Resource group of the existing system topic named by lakeSystemTopicName. Empty: the lake resource group.')
param lakeSystemTopicResourceGroupName string = ''

// ---------------------------------------------------------------------------------------------
// Parameters: app settings the code reads (defaults equal the code defaults in refresh/settings.py)
// ---------------------------------------------------------------------------------------------

@minLength(3)
@maxLength(56)
@description('Storage queue for refresh jobs (REFRESH_QUEUE). Its poison queue is <name>-poison.')
param refreshQueueName string = 'refresh-jobs'

@description('Table for watermarks, pending jobs, leases and schedule marks (STATE_TABLE).')
param stateTableName string = 'RefreshState'

@description('Table with one row per refresh job (OUTCOMES_TABLE).')
param outcomesTableName string = 'RefreshOutcomes'

@description('NCRONTAB schedule of the sweep_delta_logs safety-net timer (SWEEP_SCHEDULE), in UTC.')
param sweepSchedule string = '0 */5 * * * *'

@description('Routing config file, relative to the app root (REFRESH_CONFIG). It is deployed with the code.')
param refreshConfigPath string = 'refresh-config.json'

@description('Power BI REST API base URL (POWERBI_API_URL). Change for sovereign clouds.')
param powerBiApiUrl string = 'https://api.powerbi.com/v1.0/myorg'

@description('OAuth scope for Power BI tokens (POWERBI_SCOPE). Change for sovereign clouds.')
param powerBiScope string = 'https://analysis.windows.net/powerbi/api/.default'

@description('More app settings as name/value pairs, for example the tuning knobs documented in README.md (Deploying to Azure) (POWERBI_TIMEOUT_SECONDS, ...). Do not repeat a setting this template manages.')
param extraAppSettings object = {}

// ---------------------------------------------------------------------------------------------
// Parameters: Power BI identity. Default: the app's user-assigned managed identity.
// Optional: a service principal with a client secret, kept in Key Vault.
// ---------------------------------------------------------------------------------------------

@secure()
@description('Client secret of a service principal for Power BI. Empty (default): the managed identity is used and no Key Vault is created.')
param powerBiClientSecret string = ''

@description('Application (client) id of that service principal. Required when powerBiClientSecret is set.')
param powerBiClientId string = ''

@description('Tenant id of that service principal. Empty: the tenant of this deployment.')
param powerBiTenantId string = ''

@description('Expiry of that client secret in Entra ID, as an ISO 8601 UTC date-time (e.g. 2026-12-31T00:00:00Z). Required when powerBiClientSecret is set; recorded on the Key Vault secret.')
param powerBiClientSecretExpiresOn string = ''

@description('Key Vault secret URI (https://<vault>.vault.azure.net/secrets/<name>, no version) whose value is the alert webhook URL (ALERT_WEBHOOK_URL, a Key Vault reference). Empty (default): alerts are recorded, not sent. The app identity needs Key Vault Secrets User on that secret.')
param alertWebhookSecretUri string = ''

// ---------------------------------------------------------------------------------------------
// Parameters: sizing and optional developer access
// ---------------------------------------------------------------------------------------------

@minValue(1)
@maxValue(1000)
@description('Flex Consumption maximum instance count. Keep it low: Power BI, not compute, is the bottleneck.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Flex Consumption instance memory (MB).')
param instanceMemoryMB int = 2048

@description('Zone-redundant Flex Consumption plan (only in regions that support it for Flex); also makes the app storage GZRS.')
param zoneRedundant bool = false

@description('Object id of a developer (user) to get the same data roles on the app storage account, for local runs against Azure. Empty: none.')
param developerPrincipalId string = ''

// ---------------------------------------------------------------------------------------------
// Parameters: alerts
// ---------------------------------------------------------------------------------------------

@description('E-mail address for the alert rules (refresh failed, freshness SLO breached, app silent) through an action group. Empty: no action group and no alert rules.')
param alertEmail string = ''

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, environmentName))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var storageAccountName = '${abbrs.storageStorageAccounts}${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 7)}'
var deadLetterContainerName = 'eventgrid-deadletter'
var createSystemTopic = empty(lakeSystemTopicName)
// An account has one system topic; the one infra/lake-access.bicep creates has this fixed name, so a
// second environment on the same lake reuses it.
var systemTopicName = createSystemTopic ? '${lakeStorageAccountName}-events' : lakeSystemTopicName
var useServicePrincipal = !empty(powerBiClientSecret)

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
  location: location
  tags: tags
}

// ---------------------------------------------------------------------------------------------
// Monitoring, storage, optional Key Vault, the app
// ---------------------------------------------------------------------------------------------

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    tags: tags
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    tags: tags
    name: storageAccountName
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    refreshQueueName: refreshQueueName
    tableNames: [
      stateTableName
      outcomesTableName
    ]
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
    skuName: zoneRedundant ? 'Standard_GZRS' : 'Standard_GRS'
  }
}

module keyVault 'app/keyvault.bicep' = if (useServicePrincipal) {
  name: 'keyvault'
  params: {
    location: location
    tags: tags
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    powerBiClientSecret: powerBiClientSecret
    powerBiClientSecretExpiresOn: powerBiClientSecretExpiresOn
    secretReaderPrincipalId: identity.properties.principalId
    logAnalyticsWorkspaceId: monitoring.outputs.logAnalyticsWorkspaceId
  }
}

// Read only (an `existing` reference deploys nothing): the lake's blob endpoint for LAKE_STORAGE.
// Needs Microsoft.Storage/storageAccounts/read on the lake account (Reader).
resource lakeAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeStorageAccountName
  scope: resourceGroup(lakeResourceGroupName)
}

module functionApp 'app/function.bicep' = {
  name: 'function'
  params: {
    location: location
    tags: tags
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    identityId: identity.id
    identityClientId: identity.properties.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    lakeBlobServiceUri: lakeAccount.properties.primaryEndpoints.blob
    goldContainerName: goldContainerName
    refreshQueueName: refreshQueueName
    stateTableName: stateTableName
    outcomesTableName: outcomesTableName
    sweepSchedule: sweepSchedule
    refreshConfigPath: refreshConfigPath
    powerBiApiUrl: powerBiApiUrl
    powerBiScope: powerBiScope
    powerBiClientId: powerBiClientId
    powerBiTenantId: empty(powerBiTenantId) ? tenant().tenantId : powerBiTenantId
    powerBiClientSecretUri: useServicePrincipal ? keyVault.outputs.secretUri : ''
    alertWebhookSecretUri: alertWebhookSecretUri
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    zoneRedundant: zoneRedundant
    extraAppSettings: extraAppSettings
  }
  dependsOn: [
    rbac
  ]
}

// Alert rules on the app's telemetry, with an e-mail action group (only when alertEmail is set)
module alerts 'app/alerts.bicep' = if (!empty(alertEmail)) {
  name: 'alerts'
  params: {
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    actionGroupName: '${abbrs.insightsActionGroups}${resourceToken}'
    alertEmail: alertEmail
    ruleNamePrefix: '${abbrs.insightsScheduledQueryRules}${resourceToken}'
  }
}

// ---------------------------------------------------------------------------------------------
// Role assignments in the app resource group (the lake's are in infra/lake-access.bicep)
// ---------------------------------------------------------------------------------------------

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityPrincipalId: identity.properties.principalId
    developerPrincipalId: developerPrincipalId
  }
}

// ---------------------------------------------------------------------------------------------
// Outputs (azd stores them in the environment; the postprovision and postdeploy hooks and
// remove-lake-side.sh read them). No secrets.
// ---------------------------------------------------------------------------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_HOSTNAME string = functionApp.outputs.defaultHostName
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output MANAGED_IDENTITY_CLIENT_ID string = identity.properties.clientId
output MANAGED_IDENTITY_PRINCIPAL_ID string = identity.properties.principalId
output GOLD_CONTAINER string = goldContainerName
output LAKE_STORAGE_ACCOUNT_NAME string = lakeStorageAccountName
output LAKE_RESOURCE_GROUP string = lakeResourceGroupName
output LAKE_SYSTEM_TOPIC_NAME string = systemTopicName
// true: infra/lake-access.bicep creates (or keeps) the topic `<lake account>-events`.
output LAKE_SYSTEM_TOPIC_CREATE bool = createSystemTopic
output LAKE_SYSTEM_TOPIC_RESOURCE_GROUP string = createSystemTopic ? lakeResourceGroupName : (empty(lakeSystemTopicResourceGroupName) ? lakeResourceGroupName : lakeSystemTopicResourceGroupName)
// Dead-lettering needs the system topic's own identity with a role on the container; the template
// can only arrange that for a topic it creates. Empty: the subscriptions get no dead-letter target.
output EVENTGRID_DEAD_LETTER_CONTAINER string = createSystemTopic ? deadLetterContainerName : ''
