"""``python -m refresh local``: the function app on one machine, without the Azure Functions host.

The Functions host cannot be installed here (Core Tools downloads a binary), so this package plays
its part for local development and for the end-to-end tests. It hosts the functions registered in
``function_app.py`` exactly as they are declared, reading every trigger and binding from
``app.get_functions()``:

* :mod:`refresh.dev.local.settings`: app settings (``local.settings.json`` ``Values`` under the
  environment, as Core Tools does), ``%SETTING%`` binding expressions, ``host.json``;
* :mod:`refresh.dev.local.invoke`: the function specs read from the app, the invoker running them on
  bounded pools (one per trigger kind) with the binding objects the Python worker would build, the
  delay scheduler; the runners below receive these from the host and do not import it;
* :mod:`refresh.dev.local.host`: loads the app once, builds one runner per trigger, starts and stops them;
* :mod:`refresh.dev.local.queues`: queue triggers (polling, peek-lock, redelivery, poison queue);
* :mod:`refresh.dev.local.blobs`: the lake watcher standing in for Event Grid (Azurite sends no
  events): each new Delta commit to exactly one consumer, as the subscriptions in ``infra/`` do
  (BlobCreated to the blob trigger, BlobRenamed to the Event Grid trigger);
* :mod:`refresh.dev.local.timers`: NCRONTAB timer triggers;
* :mod:`refresh.dev.local.http`: HTTP triggers on ``127.0.0.1:<port>/api/...``;
* :mod:`refresh.dev.local.demo`: ``--demo``, a small gold layer and commits to watch;
* :mod:`refresh.dev.local.cli`: the command line, the embedded Azurite and Power BI simulator.

The README ("Running locally") describes how to use it and how it differs from ``func start``.
"""
