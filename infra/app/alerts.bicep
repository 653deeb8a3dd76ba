// Alerts on the telemetry the app writes (issue 12 item 9): an action group that e-mails one address,
// and three log search alert rules on the Application Insights component. Deployed by main.bicep only
// when the alertEmail parameter is set.
//
// The rules query the OpenTelemetry metrics of refresh/monitoring/metrics.py, which the Azure Monitor
// distro exports to the component's customMetrics table (name, value, valueSum, customDimensions, the
// attributes as strings, e.g. breached: 'True'). Metrics, not the 'refresh outcome:' trace lines:
// host.json samples traces, and a failure must never be sampled away.
//   * refresh failed: refresh.outcomes (a delta counter) with status one of the failure statuses of
//     refresh/monitoring/freshness.py FAILURE_STATUSES; one alert per dataset and status, every run
//     that has a new failure (stateless, autoMitigate false);
//   * freshness breached: refresh.freshness.lag (a gauge, every export interval, per dataset) whose
//     newest value in the window says breached == 'True'; stateful: the alert resolves itself once
//     the dataset's newest value says 'False' (autoMitigate true).
// Both see only telemetry that arrives: an app that is not running (stopped plan, crash on start,
// broken deployment) or that fails every run (storage unreachable) sends none, and neither can fire.
// Hence the third rule, on what the Functions host itself writes rather than on the app's metrics:
//   * app silent: the host writes one row to the 'requests' table per function execution, named after
//     the function (name and operation_Name), with success true/false; host.json excludes Request from
//     sampling, so every execution is there. The timer function heartbeatFunction runs every minute
//     whatever the datasets do. The rule counts its successful executions in the last 15 minutes and
//     fires when there are none (Count of rows LessThan 1: a query that returns no rows counts 0; no
//     dimensions, so there is always exactly one series to compare). Failed executions do not count:
//     a heartbeat that fails every minute (storage unreachable, a broken deployment that still starts)
//     is as silent as one that never runs. Stateful: resolves with the first successful run in the
//     window (autoMitigate true). Log ingestion delay can make it fire late or, with a delay beyond the
//     window, falsely: hence 15 minutes, not 5.
// No identity on the rules (API 2021-08-01 has none): Azure Monitor runs the query with its own access
// to the component in the same subscription; nothing is granted to anyone.

param location string
param tags object
param applicationInsightsName string
param actionGroupName string
param alertEmail string
param ruleNamePrefix string

// Keep in step with refresh/monitoring/metrics.py and refresh/monitoring/freshness.py
// (tests/test_infra.py checks both).
var outcomesMetric = 'refresh.outcomes'
var lagMetric = 'refresh.freshness.lag'
var failureStatuses = '"Failed", "TimedOut", "Disabled", "NotRefreshable", "Rejected"'
// Keep in step with function_app.py: the timer function that runs every minute (tests/test_infra.py
// checks that the app registers it with a schedule that runs it at least every minute).
var heartbeatFunction = 'run_schedules'

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'pbi-refresh'
    enabled: true
    emailReceivers: [
      {
        name: 'alert-email'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource refreshFailed 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${ruleNamePrefix}-refresh-failed'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Power BI refresh failed'
    description: 'A refresh job ended Failed, TimedOut, Disabled, NotRefreshable or Rejected (metric ${outcomesMetric}). Details: the "refresh outcome:" line in traces, GET /api/datasets/{key}/history, or the status page.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: false
    criteria: {
      allOf: [
        {
          query: 'customMetrics\n| where name == "${outcomesMetric}"\n| extend dataset = tostring(customDimensions["dataset"]), status = tostring(customDimensions["status"])\n| where status in (${failureStatuses})\n| summarize failures = sum(valueSum) by dataset, status'
          timeAggregation: 'Total'
          metricMeasureColumn: 'failures'
          dimensions: [
            {
              name: 'dataset'
              operator: 'Include'
              values: [
                '*'
              ]
            }
            {
              name: 'status'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource freshnessBreached 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${ruleNamePrefix}-freshness-breached'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Power BI dataset freshness SLO breached'
    description: 'A dataset\'s lag (metric ${lagMetric}) exceeds its freshness_slo_minutes; resolves when the newest value is no longer breached. Why: python -m refresh explain <dataset>, or the status page.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'customMetrics\n| where name == "${lagMetric}"\n| extend dataset = tostring(customDimensions["dataset"]), breached = tostring(customDimensions["breached"])\n| summarize arg_max(timestamp, breached, value) by dataset\n| where breached == "True"\n| project dataset, lag_minutes = round(value / 60.0, 1)'
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'dataset'
              operator: 'Include'
              values: [
                '*'
              ]
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource appSilent 'Microsoft.Insights/scheduledQueryRules@2021-08-01' = {
  name: '${ruleNamePrefix}-app-silent'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Power BI refresh app silent'
    description: 'No successful run of the every-minute timer function ${heartbeatFunction} (table requests) in the last 15 minutes: the app is not running (plan stopped, crash on start, broken deployment) or every run fails (e.g. storage unreachable). While it is silent the other rules cannot fire. Why: the function app\'s log stream, requests | where operation_Name == "${heartbeatFunction}", and exceptions. Resolves when a run succeeds again.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'requests\n| where operation_Name == "${heartbeatFunction}" and success == true'
          timeAggregation: 'Count'
          operator: 'LessThan'
          threshold: 1
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
output ruleNames array = [
  refreshFailed.name
  freshnessBreached.name
  appSilent.name
]
