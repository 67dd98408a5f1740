"""The service kit: one way to run a service of the stack.

Every service (webhook, scheduler extender, device plugin, lib-installer) is furnished from here: its
lifecycle (settings, logging, metrics and health server, its tasks under one TaskGroup, ordered shutdown
on SIGTERM/SIGINT, reload on SIGHUP), its Kubernetes client and error type, and its queued API writer.
"""
