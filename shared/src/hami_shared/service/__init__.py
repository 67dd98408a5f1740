"""The service kit: one way to run a service of the stack.

Every service (webhook, scheduler extender, device plugin, lib-installer) is furnished from here: its
lifecycle (settings, logging, metrics and health server, its tasks under one TaskGroup, ordered shutdown
on SIGTERM/SIGINT, reload on SIGHUP), its Kubernetes client and error type, and its queued API writer.

- :mod:`.program`: what a service declares about itself (``Program``: name, settings class, environment
  prefix) and the one way its settings are loaded (flag = ``<PREFIX>_<NAME>`` = config key).
- :mod:`.lifecycle`: ``run_service``, the runner behind every ``main``, and ``Lifecycle``, what a service's
  assembly function uses to declare its resources, tasks, shutdown steps and reload.
- :mod:`.kube` (extra ``kube``): ``KubeError``, ``api_error``, ``api_client``: the Kubernetes client setup and
  error mapping each service's thin API adapter is built on.
"""
