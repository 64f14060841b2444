"""End-to-end harness: a real Kubernetes control plane for tests and the demo.

`python -m e2e up` builds (once) and starts etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok with fake GPU nodes; `e2e.fixtures` exposes it to pytest.
"""
