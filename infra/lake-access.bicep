// The lake side of the app, step 2 of 3: run by the postprovision hook (infra/scripts/postprovision.*)
// after infra/main.bicep, as its OWN deployment, so that nothing azd provisions lives in the lake's
// resource group (`azd down` deletes whole resource groups of what its deployment created). Remove it
// with infra/scripts/remove-lake-side.sh (README: Removing the app).
//
// Deployed to the APP's resource group (the deployment record goes away with it); the module `lake`
// runs in the lake's resource group:
//   * Storage Blob Data Reader on the gold container for the app's managed identity;
//   * the lake account's Event Grid system topic `<account>-events`, unless one is reused;
//   * for a topic it creates: Storage Blob Data Contributor for the topic's identity on the app
//     storage's dead-letter container (module `deadLetter`, in the app's resource group).
// Idempotent: every environment on the same lake deploys the same topic and its own role assignment.

targetScope = 'resourceGroup'

@description('The Function App (output AZURE_FUNCTION_APP_NAME): names this environment\'s nested deployment in the lake resource group.')
param functionAppName string

@description('Principal (object) id of the app\'s managed identity (output MANAGED_IDENTITY_PRINCIPAL_ID of main.bicep).')
param identityPrincipalId string

@description('The app storage account, which holds the dead-letter container (output AZURE_STORAGE_ACCOUNT_NAME).')
param storageAccountName string

@description('The existing lake storage account.')
param lakeStorageAccountName string

@description('Resource group of the lake storage account.')
param lakeResourceGroupName string

@description('Container of the lake with the gold Delta tables (GOLD_CONTAINER).')
param goldContainerName string

@description('The lake system topic (output LAKE_SYSTEM_TOPIC_NAME).')
param systemTopicName string

@description('Create the system topic in the lake resource group (output LAKE_SYSTEM_TOPIC_CREATE); false: an existing topic is reused.')
param createSystemTopic bool

@description('Dead-letter container in the app storage account (output EVENTGRID_DEAD_LETTER_CONTAINER). Empty: no dead-lettering.')
param deadLetterContainerName string = ''

module lake 'app/lake.bicep' = {
  // One nested deployment record per environment in the lake's resource group.
  name: 'lake-access-${take(functionAppName, 52)}'
  scope: resourceGroup(lakeResourceGroupName)
  params: {
    lakeStorageAccountName: lakeStorageAccountName
    goldContainerName: goldContainerName
    identityPrincipalId: identityPrincipalId
    createSystemTopic: createSystemTopic
    systemTopicName: systemTopicName
    // No azd-env-name tag: the topic is shared by every environment on this lake and azd must not
    // count it as its own.
    tags: {
      'created-by': 'powerbi-delta-refresh'
    }
  }
}

module deadLetter 'app/deadletter.bicep' = if (createSystemTopic && !empty(deadLetterContainerName)) {
  name: 'dead-letter-access'
  params: {
    storageAccountName: storageAccountName
    deadLetterContainerName: deadLetterContainerName
    deadLetterWriterPrincipalId: lake.outputs.createdSystemTopicPrincipalId
  }
}

output LAKE_SYSTEM_TOPIC_NAME string = lake.outputs.systemTopicName
