"""The service kit: one way to run a service of the stack (shared/README.md, "The service kit").

``program`` (a service's declaration and its settings), ``lifecycle`` (the runner), ``status`` (``/healthz``,
``/readyz``, ``/metrics``), ``kube`` (extra ``kube``: ``KubeError``, the client setup) and the queued API writer.
"""
