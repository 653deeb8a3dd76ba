// Deployed into the LAKE's resource group by infra/lake-access.bicep (the postprovision hook), never
// by main.bicep: azd must not know of anything here. The lake account is EXISTING and is not
// modified.
//
// * Storage Blob Data Reader on the gold container only: the app lists and reads _delta_log/, and
//   the blob trigger's host reads the triggering commit's properties. It never writes to the lake.
// * No queue and no queue role in the lake: the blob trigger's connection (LAKE_STORAGE) uses the
//   app storage account's queue service for its poison queue (function.bicep).
// * Receiving events needs no data role: Event Grid pushes them to the app's webhooks, authorized by
//   the host's system keys. Creating the subscriptions needs Event Grid rights of the DEPLOYER.
// * The Event Grid system topic of the account (an account can have only one), unless an existing
//   one is reused. Its system-assigned identity writes dead-lettered events (deadletter.bicep).
//   Its name is fixed (`<account>-events`), so every environment on this lake shares it; each
//   environment's subscriptions have their own names (lake-subscriptions.bicep).

param lakeStorageAccountName string
param goldContainerName string
param identityPrincipalId string
param createSystemTopic bool
param systemTopicName string
param tags object

var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader

resource lake 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: lakeStorageAccountName
}

resource lakeBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: lake
  name: 'default'
}

resource goldContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: lakeBlobService
  name: goldContainerName
}

resource goldReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(goldContainer.id, identityPrincipalId, storageBlobDataReader)
  scope: goldContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = if (createSystemTopic) {
  name: systemTopicName
  location: lake.location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: lake.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output systemTopicName string = systemTopicName
output createdSystemTopicPrincipalId string = createSystemTopic ? systemTopic.identity.principalId : ''
