"""Stagecraft's planner: model graphs with costs, device clusters, and (later) plans.

Pure Python + networkx at import time. torch is imported only by the modules that trace or
build models (`planner.capture.trace`, `planner.capture.source`, `planner.zoo`), inside the functions that
need it, so the cluster and graph code can be used without torch installed.
"""
