// Deployed into the APP's resource group by infra/lake-access.bicep: the lake system topic's own
// identity may write undeliverable events to the dead-letter container of the app storage account
// (shared keys are off there), and to nothing else.

param storageAccountName string
param deadLetterContainerName string
@description('Principal id of the lake system topic identity that writes dead-lettered events.')
param deadLetterWriterPrincipalId string

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe' // Storage Blob Data Contributor

resource deadLetterContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  name: '${storageAccountName}/default/${deadLetterContainerName}'
}

resource deadLetterWriter 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(deadLetterContainer.id, deadLetterWriterPrincipalId, storageBlobDataContributor)
  scope: deadLetterContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
    principalId: deadLetterWriterPrincipalId
    principalType: 'ServicePrincipal'
  }
}
