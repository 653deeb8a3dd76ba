// The event subscriptions on the lake's system topic (deployed by infra/eventgrid.bicep into the
// topic's resource group). Only Delta commit files reach the app: data files never invoke it.
//
// One consumer per event kind: every commit event reaches exactly one function.
//
//   <app>-commit-created   BlobCreated -> on_delta_commit (blob trigger webhook, blobs_extension key)
//   <app>-commit-renamed   BlobRenamed -> on_lake_event   (Event Grid trigger webhook, eventgrid_extension key)
//
// Names start with the Function App's name (unique per environment: main.bicep derives it from the
// subscription, resource group and azd environment), so two environments on one lake, which share
// the account's single system topic, never replace each other's subscriptions.
//
// Filter design. Event Grid ANDs every filter of a subscription, and an advanced filter on a key
// the event does not have (data.destinationUrl on BlobCreated, data.url on BlobRenamed) fails. So
// one subscription cannot filter BlobCreated on its name and BlobRenamed on its new name with
// positive filters; hence one subscription per event type, and each goes to one function.
//
// BlobCreated (delta-rs and other writers that PUT the commit under its final name): the subject is
// the blob, so subjectBeginsWith the gold container, subjectEndsWith '.json' and subject
// StringContains '/_delta_log/'. data.api is one of PutBlob / PutBlockList / FlushWithClose /
// CopyBlob: a DFS write also emits BlobCreated for CreateFile (0 bytes) before FlushWithClose.
// It goes to the blob trigger, which reads data.url (BlobRenamed has none) and hands the function a
// BlobClient (SDK type): nothing is downloaded.
//
// BlobRenamed (Spark / Databricks on ADLS Gen2 write `_delta_log/.<N>.json.<uuid>.tmp` and rename it
// to `<N>.json`): the new name is in data.destinationUrl (a dfs URL), so the name filters are on it:
// StringBeginsWith the gold container's dfs or blob URL, StringContains '/_delta_log/',
// StringEndsWith '.json', and data.api RenameFile. subjectBeginsWith the gold container is kept:
// the subject is the new path, and the temp file lives in the same _delta_log/ folder anyway.
// BlobRenamed exists only on accounts with a hierarchical namespace (the postprovision hook warns).
//
// Temp files (.tmp), checkpoints (.parquet), _last_checkpoint, .crc files and data files all fail
// these filters. The app still validates names (a 20-digit version) and the timer sweep catches
// anything an event misses.

param systemTopicName string
@description('The Function App name: the prefix of the subscription names (unique per environment).')
param functionAppName string
param functionAppHostName string
@secure()
param blobsExtensionKey string
@secure()
param eventGridExtensionKey string
param goldContainerName string
param lakeBlobEndpoint string
param lakeDfsEndpoint string
param deadLetterStorageAccountId string
param deadLetterContainerName string
param maxDeliveryAttempts int
param eventTimeToLiveInMinutes int

// At most 48 + 15 characters: Event Grid allows 64 (letters, digits, hyphens, like app names).
var subscriptionPrefix = take(functionAppName, 48)
var goldSubjectPrefix = '/blobServices/default/containers/${goldContainerName}/'
var commitApis = [
  'PutBlob'
  'PutBlockList'
  'FlushWithClose'
  'CopyBlob'
]
var blobTriggerUrl = 'https://${functionAppHostName}/runtime/webhooks/blobs?functionName=Host.Functions.on_delta_commit&code=${blobsExtensionKey}'
var eventGridTriggerUrl = 'https://${functionAppHostName}/runtime/webhooks/EventGrid?functionName=on_lake_event&code=${eventGridExtensionKey}'
var retryPolicy = {
  maxDeliveryAttempts: maxDeliveryAttempts
  eventTimeToLiveInMinutes: eventTimeToLiveInMinutes
}
// Undeliverable events go to a container of the app storage account, written with the system
// topic's own identity (shared keys are disabled there).
var deadLetter = empty(deadLetterContainerName) ? null : {
  identity: {
    type: 'SystemAssigned'
  }
  deadLetterDestination: {
    endpointType: 'StorageBlob'
    properties: {
      resourceId: deadLetterStorageAccountId
      blobContainerName: deadLetterContainerName
    }
  }
}
var createdFilter = {
  includedEventTypes: [
    'Microsoft.Storage.BlobCreated'
  ]
  subjectBeginsWith: goldSubjectPrefix
  subjectEndsWith: '.json'
  isSubjectCaseSensitive: false
  advancedFilters: [
    {
      operatorType: 'StringContains'
      key: 'subject'
      values: [
        '/_delta_log/'
      ]
    }
    {
      operatorType: 'StringIn'
      key: 'data.api'
      values: commitApis
    }
  ]
}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource createdSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: '${subscriptionPrefix}-commit-created'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: blobTriggerUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: createdFilter
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

resource renamedSubscription 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: topic
  name: '${subscriptionPrefix}-commit-renamed'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'WebHook'
      properties: {
        endpointUrl: eventGridTriggerUrl
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Storage.BlobRenamed'
      ]
      subjectBeginsWith: goldSubjectPrefix
      isSubjectCaseSensitive: false
      advancedFilters: [
        {
          operatorType: 'StringBeginsWith'
          key: 'data.destinationUrl'
          values: [
            '${lakeDfsEndpoint}${goldContainerName}/'
            '${lakeBlobEndpoint}${goldContainerName}/'
          ]
        }
        {
          operatorType: 'StringContains'
          key: 'data.destinationUrl'
          values: [
            '/_delta_log/'
          ]
        }
        {
          operatorType: 'StringEndsWith'
          key: 'data.destinationUrl'
          values: [
            '.json'
          ]
        }
        {
          operatorType: 'StringIn'
          key: 'data.api'
          values: [
            'RenameFile'
          ]
        }
      ]
    }
    retryPolicy: retryPolicy
    deadLetterWithResourceIdentity: deadLetter
  }
}

output names array = [
  createdSubscription.name
  renamedSubscription.name
]
