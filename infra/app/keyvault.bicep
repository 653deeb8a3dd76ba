// Only deployed when a Power BI service principal secret is given (main.bicep powerBiClientSecret).
// RBAC authorization, soft delete and purge protection; the app identity may read this one secret
// (Key Vault Secrets User scoped to the secret), through a Key Vault reference in AZURE_CLIENT_SECRET.

param location string
param tags object
param name string
@secure()
param powerBiClientSecret string
@description('ISO 8601 UTC expiry of the client secret in Entra ID (recorded as the secret expiry).')
param powerBiClientSecretExpiresOn string
param secretReaderPrincipalId string
param logAnalyticsWorkspaceId string

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6' // Key Vault Secrets User

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    //checkov:skip=CKV_AZURE_109:Key Vault references are resolved by the Functions platform over the public endpoint; a firewall needs VNet integration, which this template does not create. Access is Entra ID + RBAC only, scoped to one secret.
    //checkov:skip=CKV_AZURE_189:Same reason: without VNet integration the Flex app cannot resolve the Key Vault reference through a private endpoint.
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'powerbi-client-secret'
  properties: {
    value: powerBiClientSecret
    contentType: 'text/plain'
    attributes: {
      enabled: true
      exp: dateTimeToEpoch(powerBiClientSecretExpiresOn)
    }
  }
}

resource secretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(secret.id, secretReaderPrincipalId, keyVaultSecretsUser)
  scope: secret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: secretReaderPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        categoryGroup: 'audit'
        enabled: true
      }
    ]
  }
}

// The URI without a version, so a rotated secret is picked up (within 24 hours, or on restart).
output secretUri string = secret.properties.secretUri
