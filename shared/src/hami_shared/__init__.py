"""Common library of the HAMi-compatible GPU sharing stack.

The wire formats that tie the services together (node inventory, pod device lists, bind phase), the resource
names and annotation keys, parsing of extended-resource quantities, and the service kit every service is built
from (``hami_shared.service``: settings, JSON logging, lifecycle, status endpoints, Kubernetes plumbing).
"""
