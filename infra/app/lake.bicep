// Deployed into the lake's resource group. The lake account is EXISTING and is not modified, apart
// from one queue for the blob trigger's poison messages.
//
// * Storage Blob Data Reader on the gold container only: the app reads _delta_log/ and never writes.
// * Storage Queue Data Contributor on the queue webjobs-blobtrigger-poison only: the Event Grid blob
//   trigger moves a blob that failed 5 times to that queue, in the queue service of the account of
//   its connection (LAKE_STORAGE), not of AzureWebJobsStorage.
// * Receiving events needs no data role: Event Grid pushes them to the app's webhooks, authorized by
//   the host's system keys. Creating the subscriptions needs Event Grid rights of the DEPLOYER.
// * The Event Grid system topic of the account (an account can have only one), unless an existing
//   one is reused. Its system-assigned identity writes dead-lettered events (see rbac.bicep).

param lakeStorageAccountName string
param goldContainerName string
param identityPrincipalId string
param createSystemTopic bool
param systemTopicName string
param tags object

var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1' // Storage Blob Data Reader
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
var blobTriggerPoisonQueueName = 'webjobs-blobtrigger-poison'

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

resource lakeQueueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' existing = {
  parent: lake
  name: 'default'
}

resource poisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: lakeQueueService
  name: blobTriggerPoisonQueueName
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

resource poisonQueueWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(poisonQueue.id, identityPrincipalId, storageQueueDataContributor)
  scope: poisonQueue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributor)
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
