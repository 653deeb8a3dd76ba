// Step 3 of 3: the Event Grid subscriptions from the lake's system topic to the app's webhooks.
// Run it AFTER the code is deployed (azd runs it from the postdeploy hook, infra/scripts/postdeploy.*;
// the plain az path is in the README (Deploying to Azure)): Event Grid validates each webhook when the
// subscription is created, and the host's system keys `blobs_extension` and `eventgrid_extension`
// exist only once the host has loaded a blob trigger and an Event Grid trigger.
//
// Deployed to the APP's resource group (it reads the host keys there), as its own deployment, never
// by main.bicep; the subscriptions themselves are created by a module in the system topic's resource
// group, named after the app (one pair per environment). Remove them with
// infra/scripts/remove-lake-side.sh. Reads the lake account's endpoints (Reader on the account). The keys travel as @secure module
// parameters, so they are not kept in the deployment history; nothing here outputs them.

targetScope = 'resourceGroup'

@description('The Function App (output AZURE_FUNCTION_APP_NAME of main.bicep).')
param functionAppName string

@description('The app storage account, which holds the dead-letter container (output AZURE_STORAGE_ACCOUNT_NAME).')
param storageAccountName string

@description('The existing lake storage account (the event source).')
param lakeStorageAccountName string

@description('Resource group of the lake storage account.')
param lakeResourceGroupName string

@description('Container of the lake with the gold Delta tables (GOLD_CONTAINER).')
param goldContainerName string

@description('The lake system topic (output LAKE_SYSTEM_TOPIC_NAME).')
param systemTopicName string

@description('Resource group of the system topic (output LAKE_SYSTEM_TOPIC_RESOURCE_GROUP).')
param systemTopicResourceGroupName string

@description('Dead-letter container in the app storage account (output EVENTGRID_DEAD_LETTER_CONTAINER). Empty: no dead-lettering.')
param deadLetterContainerName string = ''

@minValue(1)
@maxValue(30)
@description('Event Grid delivery attempts per event before it is dropped or dead-lettered.')
param maxDeliveryAttempts int = 30

@minValue(1)
@maxValue(1440)
@description('Minutes Event Grid keeps retrying an event.')
param eventTimeToLiveInMinutes int = 1440

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: functionAppName
}

resource functionHost 'Microsoft.Web/sites/host@2024-04-01' existing = {
  parent: functionApp
  name: 'default'
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource lakeAccount 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeStorageAccountName
  scope: resourceGroup(lakeResourceGroupName)
}

module subscriptions 'app/lake-subscriptions.bicep' = {
  // One nested deployment record per environment in the topic's resource group.
  name: 'event-subscriptions-${take(functionAppName, 44)}'
  scope: resourceGroup(systemTopicResourceGroupName)
  params: {
    systemTopicName: systemTopicName
    functionAppName: functionAppName
    functionAppHostName: functionApp.properties.defaultHostName
    blobsExtensionKey: listKeys(functionHost.id, '2024-04-01').systemKeys.blobs_extension
    eventGridExtensionKey: listKeys(functionHost.id, '2024-04-01').systemKeys.eventgrid_extension
    goldContainerName: goldContainerName
    lakeBlobEndpoint: lakeAccount.properties.primaryEndpoints.blob
    lakeDfsEndpoint: lakeAccount.properties.primaryEndpoints.dfs
    deadLetterStorageAccountId: storage.id
    deadLetterContainerName: deadLetterContainerName
    maxDeliveryAttempts: maxDeliveryAttempts
    eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
  }
}

output EVENT_SUBSCRIPTION_NAMES array = subscriptions.outputs.names
